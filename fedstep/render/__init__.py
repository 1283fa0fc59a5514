"""Text, tables, JSON and plots of what the operator library (`fedstep.operator`) returns: what the
command line (`fedstep.cli`) prints, the Python API (`fedstep.api`) returns or prints, and the report
(`fedstep.report`) draws. Every string a client wrote passes through `text.clean` before it is shown."""
