"""fedstep: serverless federated learning on AWS.

This package is the shared core (numpy-only: wire formats, message schemas, storage keys, aggregation
strategies) plus the operator CLI and the embedded local cloud. The core modules never import
TensorFlow or the CDK; the Lambda bundle contains them and nothing else.

The Python API (`fedstep.simulate`, `fedstep.Operator`, `fedstep.Client`; see fedstep/api.py and
docs/python-api.md) is imported on first use, so `import fedstep` stays light.
"""

from typing import Any

from fedstep.core.version import SCHEMA_VERSION, __version__

_API = ("simulate", "Operator", "Client")
__all__ = ["SCHEMA_VERSION", "Client", "Operator", "__version__", "simulate"]


def __getattr__(name: str) -> Any:
    """`fedstep.simulate`, `fedstep.Operator`, `fedstep.Client`, imported from fedstep.api when first used."""
    if name in _API:
        # by name, not an import statement: the core imports this package, and must not depend on the API
        import importlib

        return getattr(importlib.import_module("fedstep.api"), name)
    raise AttributeError(f"module 'fedstep' has no attribute {name!r}")
