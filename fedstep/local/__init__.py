"""The embedded local cloud: fedstep's real stack deployed into a moto server on 127.0.0.1."""
