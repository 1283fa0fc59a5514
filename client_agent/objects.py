"""Reading an object a message references: never more than the reference's size.

A round or evaluation message names each object it needs as an `ObjectRef` (key, sha256, bytes).
`read` asks S3 for exactly bytes 0 to `bytes - 1` (a ranged GET), learns the object's real size
from the answer (`Content-Range`, or `Content-Length` when a store ignores the range), refuses an
object of another size before reading its body, stops reading at `bytes` whatever the answer
claims, and checks the sha256. A 10-byte reference to a 300 MB object costs a 10-byte read at most.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError

from fedstep.aws.errors import error_code
from fedstep.core.errors import FedstepError
from fedstep.core.schemas import ObjectRef

CHUNK_BYTES = 1 << 20
"""Bytes read per chunk (1 MiB): the progress bar advances by this."""


class BadReference(FedstepError):
    """An object that does not match the reference a message gave for it (size or sha256)."""


def read(s3: Any, bucket: str, ref: ObjectRef, advance: Callable[[int], Any] = lambda n: None) -> bytes:
    """The object `ref` in `bucket`: exactly `ref.bytes` bytes whose sha256 is `ref.sha256`; calls
    `advance(n)` after each chunk of n bytes. `BadReference` when its size or sha256 differs (nothing
    of a larger object's body is read); S3's own errors (missing object, access denied) propagate."""
    where = f"s3://{bucket}/{ref.key}"
    if ref.bytes < 1:
        raise BadReference(f"the message names {where} with a size of 0 bytes; a model file is never empty")
    try:
        resp = s3.get_object(Bucket=bucket, Key=ref.key, Range=f"bytes=0-{ref.bytes - 1}")
    except ClientError as exc:
        if error_code(exc) == "InvalidRange":  # S3's answer for a range on an empty object
            raise BadReference(f"{where} is empty; the message says {ref.bytes} bytes") from None
        raise
    body = resp["Body"]
    size = object_size(resp)
    if size != ref.bytes:
        with contextlib.suppress(Exception):
            body.close()
        raise BadReference(f"{where} is {_count(size)}; the message says {ref.bytes} bytes: refused unread")
    chunks, digest, got = [], hashlib.sha256(), 0
    while got < ref.bytes:  # never asks the stream for more than the reference's size
        chunk = body.read(min(CHUNK_BYTES, ref.bytes - got))
        if not chunk:
            break
        got += len(chunk)
        chunks.append(chunk)
        digest.update(chunk)
        advance(len(chunk))
    with contextlib.suppress(Exception):
        body.close()
    if got != ref.bytes:
        raise BadReference(f"{where} ended after {got} of the {ref.bytes} bytes the message says")
    if digest.hexdigest() != ref.sha256:
        raise BadReference(f"{where} does not match the sha256 in the message")
    return b"".join(chunks)


def object_size(resp: dict[str, Any]) -> int | None:
    """The whole object's size from a GetObject answer: the total of `ContentRange`
    (`bytes 0-9/300000000`) for a ranged answer, else `ContentLength`; None if neither says."""
    content_range = str(resp.get("ContentRange") or "")
    total = content_range.rpartition("/")[2]
    if total.isdigit():
        return int(total)
    length = resp.get("ContentLength")
    return int(length) if isinstance(length, int) else None


def _count(size: int | None) -> str:
    return "of unknown size" if size is None else f"{size} bytes"
