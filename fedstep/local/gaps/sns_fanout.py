"""Gap 9: moto's SNS publishes a message to a topic's first 100 subscriptions only; deliver it to all."""

from __future__ import annotations

from typing import Any

from fedstep.local.gaps.shim import PatchShim


class SnsFanout(PatchShim):
    name = "sns_fanout"
    gap = (
        "moto's Topic.publish delivers a message to the first page of the topic's subscriptions (100, the page "
        "size of ListSubscriptionsByTopic) and drops it for the others, so with more than 100 clients the later "
        "ones never receive a round. AWS delivers to every subscription whose filter policy matches (millions per "
        "topic). The shim walks every page of the topic's subscriptions."
    )

    def replacements(self) -> list[tuple[type, str, Any]]:
        from moto.moto_api._internal import mock_random
        from moto.sns.models import Topic

        def publish(
            self: Any,
            message: str,
            subject: str | None = None,
            message_attributes: dict[str, Any] | None = None,
            group_id: str | None = None,
            deduplication_id: str | None = None,
            message_structure: str | None = None,
        ) -> str:
            message_id = str(mock_random.uuid4())
            next_token: Any = None
            while True:
                page, next_token = self.sns_backend.list_subscriptions_by_topic(self.arn, next_token)
                for subscription in page:
                    subscription.publish(
                        message,
                        message_id,
                        subject=subject,
                        message_attributes=message_attributes,
                        group_id=group_id,
                        deduplication_id=deduplication_id,
                        message_structure=message_structure,
                    )
                if next_token is None:
                    break
            self.sent_notifications.append((message_id, message, subject, message_attributes, group_id))
            return message_id

        return [(Topic, "publish", publish)]


SHIM = SnsFanout()
