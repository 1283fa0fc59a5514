"""Examples for fedstep users (importable from the repository root, e.g. `examples.sklearn_trainer:train`)."""
