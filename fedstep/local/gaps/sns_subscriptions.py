"""Gap 1: moto's CloudFormation skips `AWS::SNS::Subscription`; create the template's subscriptions (and
its nested stacks')."""

from __future__ import annotations

import json
from typing import Any

from fedstep.local.gaps.shim import StackShim


class SnsSubscriptions(StackShim):
    name = "sns_subscriptions"
    gap = (
        "moto's CloudFormation accepts AWS::SNS::Subscription but creates nothing (it warns 'Tried to parse'), so "
        "a topic's queues never receive its messages. AWS subscribes each queue, with the subscription's raw "
        "delivery, filter policy and redrive policy (dead-letter queue). The shim creates them from the template "
        "and from the templates of its nested stacks (AWS::CloudFormation::Stack, which moto does create)."
    )

    def apply(self, cfn: Any, sns: Any, sqs: Any, stack_name: str, template: dict[str, Any]) -> int:
        """Create every SNS subscription of the template, and of its nested stacks', that moto skipped;
        returns how many."""
        ids = self.physical_ids(cfn, stack_name)
        [stack] = cfn.describe_stacks(StackName=stack_name)["Stacks"]
        parameters = {p["ParameterKey"]: p["ParameterValue"] for p in stack.get("Parameters", [])}

        def queue_arn(logical_id: str) -> str:
            attributes = sqs.get_queue_attributes(QueueUrl=ids[logical_id], AttributeNames=["QueueArn"])
            return attributes["Attributes"]["QueueArn"]

        def value(ref: dict[str, Any]) -> str:
            """A `Ref` (a resource's physical id, or a parameter) or a queue's `Fn::GetAtt [id, Arn]`."""
            if "Ref" in ref:
                return parameters[ref["Ref"]] if ref["Ref"] in parameters else ids[ref["Ref"]]
            logical_id, attribute = ref["Fn::GetAtt"]
            if attribute != "Arn":
                raise RuntimeError(f"local cloud: unsupported reference {ref}")
            return queue_arn(logical_id)

        created = 0
        for props in (r["Properties"] for r in template["Resources"].values() if r["Type"] == "AWS::SNS::Subscription"):
            if props["Protocol"] != "sqs":
                raise RuntimeError(f"local cloud: unsupported subscription {props}")
            attributes = {"RawMessageDelivery": str(props.get("RawMessageDelivery", False)).lower()}
            if "FilterPolicy" in props:
                attributes["FilterPolicy"] = json.dumps(props["FilterPolicy"])
            if "RedrivePolicy" in props:
                attributes["RedrivePolicy"] = json.dumps(
                    {"deadLetterTargetArn": value(props["RedrivePolicy"]["deadLetterTargetArn"])}
                )
            sns.subscribe(
                TopicArn=value(props["TopicArn"]),
                Protocol="sqs",
                Endpoint=value(props["Endpoint"]),
                Attributes=attributes,
            )
            created += 1
        for logical_id, resource in template["Resources"].items():
            if resource["Type"] == "AWS::CloudFormation::Stack":
                body = cfn.get_template(StackName=ids[logical_id])["TemplateBody"]
                nested = json.loads(body) if isinstance(body, str) else body
                created += self.apply(cfn, sns, sqs, ids[logical_id], nested)
        return created

    def undo(self) -> None:
        """Nothing to restore: no moto code is replaced. The subscriptions are stack state, cleared with the
        rest of moto's state by the next reset."""


SHIM = SnsSubscriptions()
