"""fedstep: serverless federated learning on AWS.

This package is the shared core (numpy-only: wire formats, message schemas, storage keys, aggregation
strategies) plus the operator CLI and the embedded local cloud. The core modules never import
TensorFlow or the CDK; the Lambda bundle contains them and nothing else.
"""

__version__ = "0.1.0"

SCHEMA_VERSION = 2
"""Version of every wire format (round message, update item, round summary, model file metadata)."""
