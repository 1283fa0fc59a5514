"""Deploying a synthesized cloud assembly with plain CloudFormation calls (what `cdk deploy` does).

Publishes the file assets named in `<stack>.assets.json` to their bootstrap bucket (zipping
directory assets), records the bootstrap version parameter the template checks, creates the stack
and waits for it. The resource types moto cannot create are checked before and after
(`fedstep.local.gaps.skipped_resources`).
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

from fedstep.local.gaps import skipped_resources

BOOTSTRAP_VERSION_PARAMETER = "/cdk-bootstrap/hnb659fds/version"
BOOTSTRAP_VERSION = "30"


def zip_directory(source: Path, target: Path) -> Path:
    """A deterministic zip of `source` (sorted names, fixed timestamps), written once."""
    if target.exists():
        return target
    tmp = target.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for path in sorted(source.rglob("*")):
            if path.is_file():
                info = zipfile.ZipInfo(str(path.relative_to(source)), date_time=(1980, 1, 1, 0, 0, 0))
                info.external_attr = (0o755 if os.access(path, os.X_OK) else 0o644) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, path.read_bytes(), compresslevel=1)
    tmp.rename(target)
    return target


def prune_stale_assets(assembly: Path, stack_name: str) -> int:
    """Delete bundles (about 80 MB each) of earlier synths that the current manifest no longer names."""
    current = set(json.loads((assembly / f"{stack_name}.assets.json").read_text()).get("files", {}))
    removed = 0
    for path in assembly.glob("asset.*"):
        if path.name.removeprefix("asset.").split(".")[0] not in current:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
            removed += 1
    for path in assembly.glob("*.zip"):
        if path.stem not in current:
            path.unlink()
            removed += 1
    return removed


def publish_assets(assembly: Path, stack_name: str, s3: Any, account: str, region: str) -> int:
    manifest = json.loads((assembly / f"{stack_name}.assets.json").read_text())
    count = 0
    for asset_id, asset in manifest.get("files", {}).items():
        source = assembly / asset["source"]["path"]
        if asset["source"].get("packaging") == "zip":
            source = zip_directory(source, assembly / f"{asset_id}.zip")
        for dest in asset["destinations"].values():
            bucket = dest["bucketName"].replace("${AWS::AccountId}", account).replace("${AWS::Region}", region)
            try:
                s3.head_bucket(Bucket=bucket)
            except s3.exceptions.ClientError:
                s3.create_bucket(Bucket=bucket)
            s3.upload_file(str(source), bucket, dest["objectKey"])
            count += 1
    return count


def create_stack(assembly: Path, stack_name: str, cfn: Any, ssm: Any) -> dict[str, Any]:
    """Create the stack from `<stack>.template.json`; return the template."""
    template_text = (assembly / f"{stack_name}.template.json").read_text()
    ssm.put_parameter(Name=BOOTSTRAP_VERSION_PARAMETER, Value=BOOTSTRAP_VERSION, Type="String", Overwrite=True)
    cfn.create_stack(
        StackName=stack_name,
        TemplateBody=template_text,
        Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"],
    )
    cfn.get_waiter("stack_create_complete").wait(StackName=stack_name, WaiterConfig={"Delay": 1, "MaxAttempts": 120})
    return json.loads(template_text)


# The allow-list of types the local cloud skips, and the checks against it, live in one place:
UNSUPPORTED_RESOURCES = skipped_resources.UNSUPPORTED_RESOURCES
check_template = skipped_resources.check_template
check_created = skipped_resources.check_created
