"""A run's AWS cost, estimated from its metrics (`fedstep cost <run>`, the report's "Cost estimate").

`prices.py` is the one table of us-east-1 on-demand prices, with the date they were read and their
sources; `model.py` turns a run's facts (rounds, participants, durations, bytes) into requests,
GB-seconds and bytes per service, split per participant, and prices them. Both are pure Python, so
the estimate is unit-tested without AWS; `fedstep.render.cost` reads the facts of a deployed run.
The assumptions are listed in docs/cost.md.
"""
