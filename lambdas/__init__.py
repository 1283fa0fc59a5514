"""Lambda handlers: thin adapters from AWS events to the core in `fedstep`."""
