"""Differential privacy accounting with Google's dp-accounting (RDP): the adapter of the core's
`Accountant` port, shared by the aggregation function (client-level DP of a run) and the client
agent (record-level DP-SGD). Every epsilon fedstep reports comes from here; no hand-written formula."""


def lazy_client_epsilon(
    noise_multiplier: float,
    sample: int,
    population: int,
    steps: int,
    delta: float,
    unsampled: int = 0,
    selection: str = "fixed",
) -> float:
    """dp-accounting's epsilon for a run's selection (`fedstep.privacy.accounting.client_epsilon`),
    imported on first use: only DP runs pay for loading it (scipy). The aggregation's accountant."""
    from fedstep.privacy.accounting import client_epsilon

    return client_epsilon(noise_multiplier, sample, population, steps, delta, unsampled, selection)
