"""In-memory adapters of the core's ports (`fedstep.core.ports`), faithful where the protocol depends
on it: conditional writes are atomic (a lock, as DynamoDB and S3 make them), the bucket is versioned
and write-once keys refuse a second write, and every record is checked against its service limit.

They run the core without AWS: the unit tests, `tests/round_world.py` and the benches. The round
table's rules are the typed record's (`fedstep.core.round_record`); tests/test_round_table_contract.py
and tests/test_model_store_contract.py run the same suite against these and the AWS adapters on moto.
They import nothing but the core (an import-linter contract in pyproject.toml).
"""

from fedstep.memory.messaging import RecordingPublisher, RecordingReporter
from fedstep.memory.sizes import record_bytes
from fedstep.memory.store import MemoryStore
from fedstep.memory.table import MemoryTable

__all__ = ["MemoryStore", "MemoryTable", "RecordingPublisher", "RecordingReporter", "record_bytes"]
