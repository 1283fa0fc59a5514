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


def lazy_operator_epsilon(
    noise_multiplier: float,
    threshold: int,
    clip: float,
    max_inputs: int,
    dimension: int,
    rounds: int,
    delta: float,
    replace_one: bool = False,
) -> float:
    """Distributed DP's epsilon against the operator (the core's `OperatorAccountant`;
    `fedstep.core.dp.operator_round_epsilon`): the fixed-point step of a round of `max_inputs` inputs
    clipped to `clip`, noised for `threshold` survivors (`fedstep.privacy.secagg.inputs.InputCodec`,
    as the clients encode), then `fedstep.privacy.distributed.client_level_operator_epsilon`; imported
    on first use."""
    from fedstep.privacy.distributed import client_level_operator_epsilon, client_sigma
    from fedstep.privacy.secagg.inputs import InputCodec

    codec = InputCodec(clip, 1, max_inputs, client_sigma(noise_multiplier * clip, threshold))
    clip_steps = clip / codec.values.step
    return client_level_operator_epsilon(noise_multiplier, threshold, clip_steps, dimension, rounds, delta, replace_one)
