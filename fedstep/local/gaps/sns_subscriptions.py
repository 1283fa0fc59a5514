"""Gap 1: moto's CloudFormation skips `AWS::SNS::Subscription`; create the template's subscriptions."""

from __future__ import annotations

import json
from typing import Any

from fedstep.local.gaps.shim import StackShim


class SnsSubscriptions(StackShim):
    name = "sns_subscriptions"
    gap = (
        "moto's CloudFormation accepts AWS::SNS::Subscription but creates nothing (it warns 'Tried to parse'), so "
        "a topic's queues never receive its messages. AWS subscribes each queue, with the subscription's raw "
        "delivery, filter policy and redrive policy (dead-letter queue). The shim creates them from the template."
    )

    def apply(self, cfn: Any, sns: Any, sqs: Any, stack_name: str, template: dict[str, Any]) -> int:
        """Create every SNS subscription of the template that moto skipped; returns how many."""
        ids = self.physical_ids(cfn, stack_name)

        def queue_arn(logical_id: str) -> str:
            attributes = sqs.get_queue_attributes(QueueUrl=ids[logical_id], AttributeNames=["QueueArn"])
            return attributes["Attributes"]["QueueArn"]

        created = 0
        for props in (r["Properties"] for r in template["Resources"].values() if r["Type"] == "AWS::SNS::Subscription"):
            topic_arn = ids[props["TopicArn"]["Ref"]]
            queue_logical_id, attribute = props["Endpoint"]["Fn::GetAtt"]
            if props["Protocol"] != "sqs" or attribute != "Arn":
                raise RuntimeError(f"local cloud: unsupported subscription {props}")
            attributes = {"RawMessageDelivery": str(props.get("RawMessageDelivery", False)).lower()}
            if "FilterPolicy" in props:
                attributes["FilterPolicy"] = json.dumps(props["FilterPolicy"])
            if "RedrivePolicy" in props:
                dlq_logical_id, _ = props["RedrivePolicy"]["deadLetterTargetArn"]["Fn::GetAtt"]
                attributes["RedrivePolicy"] = json.dumps({"deadLetterTargetArn": queue_arn(dlq_logical_id)})
            sns.subscribe(
                TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn(queue_logical_id), Attributes=attributes
            )
            created += 1
        return created

    def undo(self) -> None:
        """Nothing to restore: no moto code is replaced. The subscriptions are stack state, cleared with the
        rest of moto's state by the next reset."""


SHIM = SnsSubscriptions()
