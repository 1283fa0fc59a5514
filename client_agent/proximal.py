"""FedProx's proximal term on the client (Li et al. 2020, "Federated Optimization in Heterogeneous
Networks"): local training minimises  loss(w) + mu/2 * ||w - w_global||^2, which keeps a client
with skewed data from drifting far from the round's global model.

The default Keras trainer adds the term as a regularizer on every trainable variable (composed with
any regularizer the model already has), so Keras' own `fit` includes it in the loss it
differentiates: the reported `train_loss` is FedProx's local objective. A custom train function
reads mu from `training.instructions["proximal_mu"]` and applies it itself.
"""

from __future__ import annotations

from typing import Any

PROXIMAL_MU = "proximal_mu"
"""The round instruction that carries mu (FedProx's `mu` parameter; absent or 0: no term)."""


def proximal_mu(instructions: dict[str, Any]) -> float:
    """mu from the round's instructions; 0.0 when absent. ValueError for a negative or non-number."""
    value = instructions.get(PROXIMAL_MU, 0.0)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"instruction {PROXIMAL_MU} must be a number >= 0, got {value!r}")
    return float(value)


class _Proximal:
    """The regularizer of one variable: its previous regularizer plus mu/2 * ||w - anchor||^2."""

    def __init__(self, anchor: Any, mu: float, previous: Any) -> None:
        self.anchor, self.mu, self.previous = anchor, mu, previous

    def __call__(self, weights: Any) -> Any:
        from keras import ops

        term = 0.5 * self.mu * ops.sum(ops.square(weights - self.anchor))
        return term if self.previous is None else term + self.previous(weights)


def add_proximal_term(model: Any, mu: float) -> None:
    """Anchor every trainable variable of the Keras `model` at its current value (the round's global
    weights) and add the proximal term with weight `mu` to its loss. Call before `fit`, once."""
    from keras import ops

    for variable in model.trainable_variables:
        anchor = ops.convert_to_tensor(variable.numpy())
        variable.regularizer = _Proximal(anchor, mu, variable.regularizer)
