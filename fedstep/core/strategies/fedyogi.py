"""FedYogi (Reddi et al. 2021, "Adaptive Federated Optimization"): the server optimizer of
`fedstep.core.strategies.fedopt` with Yogi's second moment

    v <- v - (1 - beta_2) delta^2 sign(v - delta^2)

Defaults (Flower's): eta 0.01, beta_1 0.9, beta_2 0.99, tau 1e-3. Before the first round m = 0 and
v = tau^2."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fedstep.core.strategies.fedopt import FedOpt


@dataclass(frozen=True)
class FedYogiParams:
    eta: float = field(default=0.01, metadata={"help": "server learning rate eta (> 0)"})
    beta_1: float = field(default=0.9, metadata={"help": "first-moment decay beta_1, in [0, 1)"})
    beta_2: float = field(default=0.99, metadata={"help": "second-moment rate beta_2, in [0, 1)"})
    tau: float = field(default=1e-3, metadata={"help": "adaptivity tau (> 0): added to sqrt(v); v starts at tau^2"})


class FedYogi(FedOpt):
    """m <- beta_1 m + (1-beta_1) delta; v <- v - (1-beta_2) delta^2 sign(v - delta^2);
    x <- x + eta m / (sqrt(v) + tau); m = 0 and v = tau^2 at first.
    Defaults: eta 0.01, beta_1 0.9, beta_2 0.99, tau 1e-3."""

    name = "fedyogi"
    summary = "adaptive server optimizer, Yogi (Reddi et al. 2021, Adaptive Federated Optimization)"
    Params = FedYogiParams

    def second_moment(self, v: np.ndarray, squared: np.ndarray) -> np.ndarray:
        return v - (1.0 - self.params.beta_2) * squared * np.sign(v - squared)
