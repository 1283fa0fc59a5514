"""The operator library: what the `fedstep` command line and the Python API (`fedstep.Operator`) do,
without argparse and without printing.

- `stack`: the deployed stack a command works on (its outputs and one AWS client per service);
- `settings`: the run settings (flags, run files and keyword arguments, mapped onto the run record);
- `start`: start, resume and plan runs; `operate`: stop a run, download its models;
- `views`: a run as the operator sees it (its record, rounds, execution, failures, open round);
- `client_rounds`: each client's own metrics per round; `registry`: promotion and the approved model;
- `evaluation`: evaluation requests to the clients (or on the operator's data);
- `statistics`: federated statistics requests and a run's standardization;
- `cost`: a run's estimated AWS cost; `paths`: where outputs are written by default.

Progress and warnings go to callbacks the caller gives (the CLI prints them to stderr); errors are
`FedstepError`s with the message the user reads.
"""
