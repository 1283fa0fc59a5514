"""CDK constructs for fedstep's server side. Depends on aws-cdk-lib only (never on TensorFlow)."""
