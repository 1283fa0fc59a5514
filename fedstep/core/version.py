"""fedstep's version and its wire schema's, in the core so that every part (the agent, the function,
the operator's tools) reads them without importing the `fedstep` package root."""

__version__ = "0.1.0"

SCHEMA_VERSION = 2
"""Version of every wire format (round message, update item, round summary, model file metadata)."""
