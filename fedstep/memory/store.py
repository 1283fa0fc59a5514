"""The model registry in memory: a versioned bucket (`fedstep.core.ports.ModelStore`, `MultipartStore`)."""

from __future__ import annotations

import threading

from fedstep.core.ports import RangeRead


class MemoryStore:
    """A versioned bucket: each key's versions in order (a version id is its position); `put_once`
    refuses an existing key (S3 `If-None-Match: *`). `bytes_read` counts what reads returned, per
    key; `puts` and `deleted` list the keys written and deleted, in order."""

    def __init__(self) -> None:
        self.objects: dict[str, list[bytes]] = {}
        self.puts: list[str] = []
        self.bytes_read: dict[str, int] = {}
        self.uploads: dict[str, dict[int, bytes]] = {}
        self.deleted: list[str] = []
        self.lock = threading.Lock()

    def _count(self, key: str, n: int) -> None:
        with self.lock:
            self.bytes_read[key] = self.bytes_read.get(key, 0) + n

    def get(self, key: str) -> bytes:
        self._count(key, len(self.objects[key][-1]))
        return self.objects[key][-1]

    def put(self, key: str, data: bytes) -> None:
        with self.lock:
            self.objects.setdefault(key, []).append(bytes(data))
            self.puts.append(key)

    def put_once(self, key: str, data: bytes) -> bool:
        with self.lock:
            if key in self.objects:
                return False
            self.objects[key] = [bytes(data)]
            self.puts.append(key)
            return True

    def _version(self, key: str, version: str | None) -> bytes:
        versions = self.objects[key]
        return versions[int(version)] if version is not None else versions[-1]

    def read_range(self, key: str, start: int, length: int, version: str | None = None) -> RangeRead:
        if start < 0 or length < 1:  # S3 answers a malformed range with the whole object: never ask for one
            raise ValueError(f"an empty or inverted range was requested: start {start}, length {length}")
        data = self._version(key, version)
        self._count(key, len(data[start : start + length]))
        return RangeRead(data[start : start + length], len(data), version or str(len(self.objects[key]) - 1))

    def read_into(self, key: str, start: int, buffer: memoryview, version: str | None) -> None:
        if start < 0:
            raise ValueError(f"a negative range start was requested: {start}")
        data = memoryview(self._version(key, version))[start : start + len(buffer)]  # no copy but the buffer's
        if len(data) != len(buffer):
            raise ValueError("object ended early")
        self._count(key, len(data))
        buffer[:] = data

    def delete(self, key: str) -> None:
        with self.lock:
            self.objects.pop(key, None)
            self.deleted.append(key)

    # -- MultipartStore ---------------------------------------------------------------------------
    def start_upload(self, key: str) -> str:
        with self.lock:
            upload_id = f"upload-{len(self.uploads)}"
            self.uploads[upload_id] = {}
            return upload_id

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> None:
        if number > 1 and len(data) == 0:
            raise ValueError("empty part")
        with self.lock:
            self.uploads[upload_id][number] = bytes(data)

    def complete_upload(self, key: str, upload_id: str, parts: int) -> None:
        with self.lock:
            if upload_id not in self.uploads and key in self.objects:
                return
            got = self.uploads.pop(upload_id)
            if sorted(got) != list(range(1, parts + 1)):
                raise ValueError(f"parts {sorted(got)} of {parts}")
            self.objects.setdefault(key, []).append(b"".join(got[n] for n in range(1, parts + 1)))
            self.puts.append(key)
