"""Gap 10: moto reads a whole object for every ranged GET, and answers a malformed range with the whole
object; read only the range, and refuse a range that is not one."""

from __future__ import annotations

import re
from typing import Any

from fedstep.local.gaps.shim import PatchShim

_SIMPLE_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")
_SUFFIX_RANGE = re.compile(r"^bytes=-(\d+)$")


class S3RangedGet(PatchShim):
    name = "s3_ranged_get"
    gap = (
        "moto's GetObject reads the whole object (FakeKey.value: every byte, copied) and then cuts the asked range "
        "out of it, so a ranged read of a 1 GiB object copies 1 GiB: the slices of a sliced aggregation, each "
        "reading a few MiB of every update, would copy terabytes. AWS reads the range. For a single range "
        "`bytes=a-b` (or `a-`) within the object, without `partNumber` or conditions, the shim reads just those "
        "bytes under the key's lock and answers 206 with moto's own headers. moto also answers a malformed or empty "
        "range (`bytes=0--1`, `bytes=5-2`) with the whole object; AWS ignores a header it cannot parse the same "
        "way, but a client must never rely on it: the shim refuses such a range (416 InvalidRange), so code that "
        "sends one fails here. A suffix range (`bytes=-n`), several ranges and conditional reads go to moto."
    )

    def replacements(self) -> list[tuple[type, str, Any]]:
        from moto.s3.responses import S3Response

        original = S3Response.get_object

        from moto.s3.exceptions import InvalidRange

        def get_object(self: Any) -> Any:
            requested = self.headers.get("range") or ""
            match = _SIMPLE_RANGE.match(requested)
            conditional = any(h in self.headers for h in ("If-Match", "If-None-Match", "If-Modified-Since"))
            if not requested or conditional or self._get_int_param("partNumber") or _SUFFIX_RANGE.match(requested):
                return original(self)
            key, _ = self._get_key()
            if match is None or (match.group(2) and int(match.group(2)) < int(match.group(1))):
                raise InvalidRange(requested, str(key.size))  # malformed or empty: never the whole object
            begin, last = int(match.group(1)), key.size - 1
            end = min(int(match.group(2)), last) if match.group(2) else last
            if begin > end:
                raise InvalidRange(requested, str(key.size))  # outside the object
            headers = self._get_cors_headers_other()
            if key.version_id != "null":
                headers["x-amz-version-id"] = key.version_id
            headers.update(key.response_dict)
            headers.update(key.metadata)
            with key.lock:
                key._value_buffer.seek(begin)
                data = key._value_buffer.read(end - begin + 1)
            headers.update(
                {
                    "Accept-Ranges": "bytes",
                    "content-range": f"bytes {begin}-{end}/{key.size}",
                    "content-length": str(len(data)),
                }
            )
            return 206, headers, data

        return [(S3Response, "get_object", get_object)]


SHIM = S3RangedGet()
