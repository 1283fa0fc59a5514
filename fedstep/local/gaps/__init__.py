"""What moto lacks, filled in: one shim per gap, each with a canary test in tests/test_moto_gaps.py that
fails once moto fixes the gap (then the shim goes). moto runs the synthesized CloudFormation template, but:

1. `sns_subscriptions`: its CloudFormation skips `AWS::SNS::Subscription`;
2. `step_functions_execution`: Step Functions executes definitions only when switched on, and the state
   machines CloudFormation created stay in the non-executing backend;
3. `lambda_in_process`: it cannot run Lambda code without Docker (the handler runs in this process);
4. `stream_delivery`: it delivers DynamoDB stream records synchronously, inside the write;
5. `kms_from_cloudformation`: its `AWS::KMS::Key` handler fails on CloudFormation's tags and policy objects;
6. `iam_role_policies`: its `AWS::IAM::Role` handler stores inline policies as objects;
7. `stop_execution`: its StopExecution does not interrupt an execution waiting for a task token;
8. `task_failure_cause`: its SendTaskFailure drops the cause;
9. `sns_fanout`: its SNS delivers a message to a topic's first 100 subscriptions only;
10. `s3_ranged_get`: its S3 reads a whole object for every ranged GET;
11. `iam_enforcement`: its IAM enforcement authorizes most requests on resource `*`, without condition keys;
12. `step_functions_role`: its Step Functions interpreter calls services with fixed fake credentials;
13. `s3_versioning`: its CloudFormation creates buckets without their versioning;
14. `stream_filters`: its DynamoDB stream delivery ignores the event source mapping's filters.

Each shim's `gap` says what moto does and what AWS does; `apply(...)` fills the gap and `undo()` restores
what it replaced. `PATCHES` replace moto code for the whole process (`apply_patches` when the local cloud
starts); the `STACK_SHIMS` act on a deployed stack through the API; `undo_all` undoes them all.
(`AWS::SQS::QueuePolicy`, `AWS::S3::BucketPolicy`, `AWS::SNS::TopicPolicy`, alarms, and the optional
backup plan and audit trail are skipped too: `skipped_resources.UNSUPPORTED_RESOURCES` names each with the
reason the local cloud can do without it, and the local cloud refuses a stack holding any other type moto
cannot create.)
"""

from __future__ import annotations

from fedstep.local.gaps import (
    iam_enforcement,
    iam_role_policies,
    kms_from_cloudformation,
    lambda_in_process,
    s3_ranged_get,
    s3_versioning,
    sns_fanout,
    sns_subscriptions,
    step_functions_execution,
    step_functions_role,
    stop_execution,
    stream_delivery,
    stream_filters,
    task_failure_cause,
)
from fedstep.local.gaps.lambda_in_process import REPO, LocalLambdaContext, verify_code_matches_checkout
from fedstep.local.gaps.moto_server import MOTO_VERSION, check_patch_point, reset_backends
from fedstep.local.gaps.shim import PatchShim, Shim, StackShim
from fedstep.local.gaps.step_functions_execution import enable_step_functions_execution
from fedstep.local.gaps.stream_delivery import STREAM_ATTEMPTS, stop_stream_workers, wait_for_stream_batches

SNS_SUBSCRIPTIONS = sns_subscriptions.SHIM
STEP_FUNCTIONS_EXECUTION = step_functions_execution.SHIM
LAMBDA_IN_PROCESS = lambda_in_process.SHIM
STREAM_DELIVERY = stream_delivery.SHIM
KMS_FROM_CLOUDFORMATION = kms_from_cloudformation.SHIM
IAM_ROLE_POLICIES = iam_role_policies.SHIM
STOP_EXECUTION = stop_execution.SHIM
TASK_FAILURE_CAUSE = task_failure_cause.SHIM
SNS_FANOUT = sns_fanout.SHIM
S3_RANGED_GET = s3_ranged_get.SHIM
IAM_ENFORCEMENT = iam_enforcement.SHIM
STEP_FUNCTIONS_ROLE = step_functions_role.SHIM
S3_VERSIONING = s3_versioning.SHIM
STREAM_FILTERS = stream_filters.SHIM

# Applied in this order (the stream delivery wraps the in-process runner), undone in reverse.
PATCHES: tuple[PatchShim, ...] = (
    LAMBDA_IN_PROCESS,
    STREAM_DELIVERY,
    KMS_FROM_CLOUDFORMATION,
    IAM_ROLE_POLICIES,
    STOP_EXECUTION,
    TASK_FAILURE_CAUSE,
    SNS_FANOUT,
    S3_RANGED_GET,
    IAM_ENFORCEMENT,
    STEP_FUNCTIONS_ROLE,
    S3_VERSIONING,
    STREAM_FILTERS,
)
STACK_SHIMS: tuple[StackShim, ...] = (SNS_SUBSCRIPTIONS, STEP_FUNCTIONS_EXECUTION)
SHIMS: dict[str, Shim] = {shim.name: shim for shim in (*STACK_SHIMS, *PATCHES)}
"""Every shim by name, in the order of the gaps above."""


def apply_patches() -> None:
    """Patch moto for the whole process (each patch once; applying again changes nothing)."""
    check_patch_point()
    for shim in PATCHES:
        shim.apply()


def undo_all() -> None:
    """Give moto back its own behaviour: every shim's `undo`, patches in reverse order of application."""
    for shim in reversed(PATCHES):
        shim.undo()
    for stack_shim in STACK_SHIMS:
        stack_shim.undo()


__all__ = [
    "IAM_ENFORCEMENT",
    "IAM_ROLE_POLICIES",
    "KMS_FROM_CLOUDFORMATION",
    "LAMBDA_IN_PROCESS",
    "MOTO_VERSION",
    "PATCHES",
    "REPO",
    "S3_RANGED_GET",
    "S3_VERSIONING",
    "SHIMS",
    "SNS_FANOUT",
    "SNS_SUBSCRIPTIONS",
    "STACK_SHIMS",
    "STEP_FUNCTIONS_EXECUTION",
    "STEP_FUNCTIONS_ROLE",
    "STOP_EXECUTION",
    "STREAM_ATTEMPTS",
    "STREAM_DELIVERY",
    "STREAM_FILTERS",
    "TASK_FAILURE_CAUSE",
    "LocalLambdaContext",
    "PatchShim",
    "Shim",
    "StackShim",
    "apply_patches",
    "check_patch_point",
    "enable_step_functions_execution",
    "reset_backends",
    "stop_stream_workers",
    "undo_all",
    "verify_code_matches_checkout",
    "wait_for_stream_batches",
]
