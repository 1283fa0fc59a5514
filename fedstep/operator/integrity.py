"""`fedstep verify <run>`: every object the run's records name (and those of the runs it continues),
hashed again and compared with the sha256 recorded for it (`fedstep.core.integrity`)."""

from __future__ import annotations

from typing import Any

from fedstep.aws.adapters import DynamoRoundTable, S3ModelStore
from fedstep.aws.errors import missing_object
from fedstep.aws.stack import StackOutputs
from fedstep.core import integrity


def verify_run(run_id: str, outputs: StackOutputs, s3: Any, table: DynamoRoundTable) -> integrity.IntegrityReport:
    """The run's integrity report. `NoSuchRun` (a FedstepError) if the stack has no such run; AWS
    errors other than a missing object (access denied, no endpoint) are raised: nothing was checked."""
    store = S3ModelStore(outputs.bucket, s3)
    return integrity.verify_run(run_id, store, table, missing=missing_object)
