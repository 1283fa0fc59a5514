"""The core: numpy and safetensors only (keys, schemas, tensors, strategies, rounds). No boto3, no
Keras: the Lambda bundle and the client agent both use it, and a test enforces the direction."""
