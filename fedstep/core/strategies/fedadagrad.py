"""FedAdagrad (Reddi et al. 2021, "Adaptive Federated Optimization"): the server optimizer of
`fedstep.core.strategies.fedopt` with Adagrad's second moment

    v <- v + delta^2

Defaults (Flower's): eta 0.1, beta_1 0.0 (m is then the round's mean delta), tau 1e-9. Before the
first round m = 0 and v = tau^2."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fedstep.core.strategies.fedopt import FedOpt


@dataclass(frozen=True)
class FedAdagradParams:
    eta: float = field(default=0.1, metadata={"help": "server learning rate eta (> 0)"})
    beta_1: float = field(default=0.0, metadata={"help": "first-moment decay beta_1, in [0, 1) (0: no momentum)"})
    tau: float = field(default=1e-9, metadata={"help": "adaptivity tau (> 0): added to sqrt(v); v starts at tau^2"})


class FedAdagrad(FedOpt):
    """m <- beta_1 m + (1-beta_1) delta; v <- v + delta^2; x <- x + eta m / (sqrt(v) + tau);
    m = 0 and v = tau^2 at first. Defaults: eta 0.1, beta_1 0.0, tau 1e-9."""

    name = "fedadagrad"
    summary = "adaptive server optimizer, Adagrad (Reddi et al. 2021, Adaptive Federated Optimization)"
    Params = FedAdagradParams

    def second_moment(self, v: np.ndarray, squared: np.ndarray) -> np.ndarray:
        return v + squared
