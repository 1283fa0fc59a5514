"""Monitoring: a CloudWatch dashboard of the runs and of each round, and alarms that tell a person.

- `<project>-executions-failed`: a training execution failed or timed out (5-minute sum >= 1);
- `<project>-dead-letters-<n>`: one of up to 10 dead-letter queues holds a message (one alarm per 10
  queues, each a metric-math sum: CloudWatch allows 10 metrics in one alarm). The stack's own
  dead-letter queues (two, three with `alarm_email`) are watched by `-1`; each client group's by alarms
  in its nested stack, numbered on.

Both notify the alarm topic `<project>-alarms` (KMS-encrypted, TLS-only); `alarm_email` in the
deployment config subscribes an address, with a dead-letter queue `<project>-undelivered-alarms` for
the notifications SNS cannot deliver. CloudWatch may publish to the topic, and use the key for it, only
for this account's alarms named `<project>-*`. The dashboard `<project>-training` graphs the
executions, the dead-letter queues, and the aggregation function's per-round metrics (namespace
`fedstep`, dimensions service and project; see lambdas/aggregate.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subs
from aws_cdk import aws_sqs as sqs
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from infra import secure
from infra.aggregation import METRICS_NAMESPACE
from infra.config import DeploymentConfig

PERIOD = cdk.Duration.minutes(5)
QUEUES_PER_ALARM = 10  # CloudWatch allows 10 metrics in one alarm's math expression


def dead_letter_alarm_count(queues: int) -> int:
    return -(-queues // QUEUES_PER_ALARM)


def alarm_on_any(
    scope: Construct, construct_id: str, metric: cw.IMetric, name: str, description: str, topic: sns.ITopic
) -> cw.Alarm:
    """An alarm `name` when `metric` (a sum over its period) is 1 or more, telling `topic`; no data is not
    a breach. Every alarm of the stack is of this kind."""
    alarm = metric.create_alarm(
        scope,
        construct_id,
        alarm_name=name,
        alarm_description=description,
        threshold=1,
        evaluation_periods=1,
        comparison_operator=cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
        treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
    )
    alarm.add_alarm_action(cw_actions.SnsAction(topic))
    return alarm


def dead_letter_alarms(
    scope: Construct, project: str, queues: Sequence[sqs.IQueue], first: int, topic: sns.ITopic
) -> list[cw.Alarm]:
    """Alarms `<project>-dead-letters-<first>`, ... over `queues`, 10 to an alarm (a metric-math sum of
    their visible messages), each notifying `topic`. Created in `scope`'s stack (a client group's alarms
    live in its nested stack, next to its queues)."""
    alarms = []
    for n in range(dead_letter_alarm_count(len(queues))):
        group = queues[n * QUEUES_PER_ALARM : (n + 1) * QUEUES_PER_ALARM]
        messages = {
            f"q{i}": q.metric_approximate_number_of_messages_visible(period=PERIOD, statistic="Maximum")
            for i, q in enumerate(group)
        }
        alarm = alarm_on_any(
            scope,
            f"DeadLetters{first + n}",
            cw.MathExpression(expression=" + ".join(messages), using_metrics=messages, period=PERIOD),
            f"{project}-dead-letters-{first + n}",
            "A dead-letter queue holds a message: a malformed round message or a round "
            "that failed 5 times on a client (<project>-<client>-dlq), or a stream batch the aggregation "
            "function failed on (<project>-aggregation-failures). Inspect the queue, fix, redrive.",
            topic,
        )
        alarms.append(alarm)
    return alarms


def client_dead_letters_search(project: str) -> cw.SearchExpression:
    """Every client dead-letter queue's visible messages (`<project>-<client>-dlq`), found by a search:
    the queues live in the client groups' nested stacks, and a search graphs up to 500 of them without
    naming (and referencing) each one."""
    tokens = " ".join(f"QueueName={token}" for token in project.split("-"))
    return cw.SearchExpression(
        expression='SEARCH(\'{AWS/SQS,QueueName} MetricName="ApproximateNumberOfMessagesVisible" '
        f"{tokens} QueueName=dlq', 'Maximum', {int(PERIOD.to_seconds())})",
        label="client dead-letter queues",
        period=PERIOD,
    )


class Monitoring(Construct):
    """The alarm topic, the stack's own alarms (failed executions; its dead-letter queues, numbered from 1)
    and the dashboard. The client groups' dead-letter alarms live in their nested stacks
    (`infra.client_group`), numbered after these."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: DeploymentConfig,
        machine: sfn.StateMachine,
        dead_letter_queues: list[sqs.IQueue],
        key: kms.Key,
    ) -> None:
        super().__init__(scope, construct_id)
        project = config.project
        self.topic = secure.topic(self, "AlarmTopic", f"{project}-alarms", key)
        alarms = cdk.Stack.of(self).format_arn(
            service="cloudwatch",
            resource="alarm",
            resource_name=f"{project}-*",
            arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME,
        )
        self.topic.add_to_resource_policy(
            iam.PolicyStatement(
                sid="CloudWatchAlarmsPublish",
                principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
                actions=["sns:Publish"],
                resources=[self.topic.topic_arn],
                conditions={"ArnLike": {"aws:SourceArn": alarms}},
            )
        )
        secure.let_service_use_key(
            key, "CloudWatchAlarmsUseKey", "cloudwatch.amazonaws.com", ["kms:Decrypt", "kms:GenerateDataKey*"], alarms
        )
        if config.alarm_email:
            dead_letter_queues = [*dead_letter_queues, self._mail(project, config.alarm_email, key)]

        failed = cw.MathExpression(
            expression="failed + timedOut",
            using_metrics={
                "failed": machine.metric_failed(period=PERIOD, statistic="Sum"),
                "timedOut": machine.metric_timed_out(period=PERIOD, statistic="Sum"),
            },
            label="failed or timed-out executions",
            period=PERIOD,
        )
        self.alarms = [
            alarm_on_any(
                self,
                "ExecutionsFailed",
                failed,
                f"{project}-executions-failed",
                "A training run failed or timed out: `fedstep status <run>` shows the error "
                "and its cause (e.g. QuorumNotMet with the counts).",
                self.topic,
            )
        ]
        self.alarms += dead_letter_alarms(self, project, dead_letter_queues, 1, self.topic)

        self.dashboard = cw.Dashboard(
            self, "Dashboard", dashboard_name=f"{project}-training", default_interval=cdk.Duration.days(1)
        )
        self.dashboard.add_widgets(
            cw.TextWidget(
                markdown=f"# {project}: federated training\nRuns are executions of `{config.state_machine_name}`; "
                "per-round metrics come from the aggregation function (`fedstep status <run>` for one run).",
                width=24,
                height=2,
            )
        )
        self.dashboard.add_widgets(
            cw.GraphWidget(
                title="Runs (executions)",
                left=[
                    machine.metric_started(period=PERIOD, statistic="Sum", label="started"),
                    machine.metric_succeeded(period=PERIOD, statistic="Sum", label="succeeded"),
                    machine.metric_failed(period=PERIOD, statistic="Sum", label="failed"),
                    machine.metric_aborted(period=PERIOD, statistic="Sum", label="stopped"),
                ],
                width=12,
            ),
            cw.GraphWidget(
                title="Messages in dead-letter queues",
                left=[
                    *(
                        q.metric_approximate_number_of_messages_visible(period=PERIOD, statistic="Maximum")
                        for q in dead_letter_queues
                    ),
                    client_dead_letters_search(project),
                ],
                legend_position=cw.LegendPosition.HIDDEN if len(config.clients) > 10 else cw.LegendPosition.BOTTOM,
                width=12,
            ),
        )

        def metric(name: str, label: str, statistic: str = "Average") -> cw.Metric:
            return cw.Metric(
                namespace=METRICS_NAMESPACE,
                metric_name=name,
                dimensions_map={"service": "fedstep-aggregate", "project": project},
                statistic=statistic,
                period=PERIOD,
                label=label,
            )

        self.dashboard.add_widgets(
            cw.GraphWidget(
                title="Participants and rejected updates per round",
                left=[metric("Participants", "participants"), metric("RejectedUpdates", "rejected", "Sum")],
                width=8,
            ),
            cw.GraphWidget(
                title="Round and aggregation duration (s)",
                left=[metric("RoundDuration", "round"), metric("AggregationDuration", "aggregation")],
                width=8,
            ),
            cw.GraphWidget(
                title="Bytes aggregated per round", left=[metric("BytesAggregated", "bytes", "Sum")], width=8
            ),
        )
        self.dashboard.add_widgets(
            *(
                cw.GraphWidget(
                    title=f"Weighted {name.lower()}",
                    left=[
                        metric(f"Weighted{name}", "after local training"),
                        metric(f"Weighted{name}Before", "global model (before)"),
                    ],
                    width=12,
                )
                for name in ("Accuracy", "Loss")
            )
        )

    def _mail(self, project: str, address: str, key: kms.Key) -> sqs.Queue:
        """Subscribe `address` to the alarm topic, with a dead-letter queue for the notifications SNS
        cannot deliver (`<project>-undelivered-alarms`, encrypted like the others); the queue, for the
        dead-letter alarms to watch."""
        undelivered = secure.dead_letter_queue(self, "UndeliveredAlarms", f"{project}-undelivered-alarms", key)
        secure.acknowledge(
            undelivered, "AwsSolutions-SQS3", "This queue is itself the dead-letter queue of the alarm e-mail."
        )
        secure.let_sns_deliver(key, "AlarmTopicDeliversToEncryptedQueues", self.topic)
        self.topic.add_subscription(subs.EmailSubscription(address, dead_letter_queue=undelivered))
        return undelivered
