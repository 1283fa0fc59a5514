"""Gap 13: moto's CloudFormation creates buckets without their VersioningConfiguration; version them."""

from __future__ import annotations

from typing import Any

from fedstep.local.gaps.shim import PatchShim


class S3Versioning(PatchShim):
    name = "s3_versioning"
    gap = (
        "moto's `AWS::S3::Bucket` handler applies BucketEncryption and Tags and drops the rest of the bucket's "
        "properties, VersioningConfiguration among them: the model registry, versioned in the template, is "
        "unversioned locally, so every read returns version id 'null' and a plan pinning the version it checked "
        "pins nothing. AWS versions the bucket. The shim turns versioning on (or suspends it) as the template says, "
        "right after moto creates the bucket."
    )

    def replacements(self) -> list[tuple[type, str, Any]]:
        from moto.s3.models import FakeBucket, s3_backends
        from moto.utilities.utils import get_partition

        original = FakeBucket.create_from_cloudformation_json.__func__  # type: ignore[attr-defined]

        def create(
            cls: Any, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str, **kwargs: Any
        ) -> Any:
            bucket = original(cls, resource_name, cloudformation_json, account_id, region_name, **kwargs)
            status = (cloudformation_json.get("Properties", {}).get("VersioningConfiguration") or {}).get("Status")
            if status in ("Enabled", "Suspended"):
                s3_backends[account_id][get_partition(region_name)].put_bucket_versioning(bucket.name, status)
            return bucket

        return [(FakeBucket, "create_from_cloudformation_json", classmethod(create))]


SHIM = S3Versioning()
