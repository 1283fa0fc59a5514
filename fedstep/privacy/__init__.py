"""Differential privacy accounting with Google's dp-accounting (RDP): the adapter of the core's
`Accountant` port, shared by the aggregation function (client-level DP of a run) and the client
agent (record-level DP-SGD). Every epsilon fedstep reports comes from here; no hand-written formula."""
