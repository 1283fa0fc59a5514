"""Public on-demand prices of the services a run uses, in us-east-1 (US East, N. Virginia), in USD.

One table, read on `PRICES_READ` from the pages named in each entry's `source`. Every price is per
single unit (a request, a GB-second, a GB), so a cost is `quantity x usd`. Free tiers are not
subtracted (they are per account and month, not per run), and volume tiers beyond the first are
ignored (a run never reaches them). Other regions differ: this table is us-east-1 only.

Where a figure could not be confirmed from a page read on that date, its `note` says so: those are
the figures as commonly published for us-east-1, to be checked on the source page before relying
on them.
"""

from __future__ import annotations

from dataclasses import dataclass

PRICES_READ = "2026-11-30"
"""The day the prices below were read (UTC)."""
REGION = "us-east-1"
REGION_NOTE = (
    "prices are us-east-1 on-demand; other regions differ (e.g. Step Functions is $0.0279 per 1,000 in us-west-1)"
)

_SFN = "https://aws.amazon.com/step-functions/pricing/"
_LAMBDA = "https://aws.amazon.com/lambda/pricing/"
_S3 = "https://aws.amazon.com/s3/pricing/"
_SQS = "https://aws.amazon.com/sqs/pricing/"
_SNS = "https://aws.amazon.com/sns/pricing/"
_DDB = "https://aws.amazon.com/dynamodb/pricing/on-demand/"
_DDB_STREAMS = "https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/CostOptimization_StreamsUsage.html"
_KMS = "https://aws.amazon.com/kms/pricing/"
_CLOUDTRAIL = "https://aws.amazon.com/cloudtrail/pricing/"


@dataclass(frozen=True)
class Price:
    key: str
    service: str
    item: str
    unit: str
    usd: float
    """USD per one `unit`."""
    source: str
    note: str = ""


PRICES: tuple[Price, ...] = (
    Price(
        "sfn.transition",
        "Step Functions",
        "standard-workflow state transitions",
        "transition",
        0.025 / 1_000,
        _SFN,
        "confirmed: $0.025 per 1,000 in us-east-1; retries count as transitions",
    ),
    Price(
        "lambda.request",
        "Lambda",
        "requests",
        "request",
        0.20 / 1_000_000,
        _LAMBDA,
        "$0.20 per 1M; seen in summaries of the AWS page, not on the page itself",
    ),
    Price(
        "lambda.gb_s",
        "Lambda",
        "compute, x86_64",
        "GB-second",
        0.0000166667,
        _LAMBDA,
        "first 6 billion GB-s a month; seen in summaries of the AWS page, not on the page itself",
    ),
    Price(
        "s3.put",
        "S3",
        "PUT, COPY, POST, LIST requests (S3 Standard)",
        "request",
        0.005 / 1_000,
        _S3,
        "$0.005 per 1,000; not confirmed on the AWS page (third-party summaries)",
    ),
    Price(
        "s3.get",
        "S3",
        "GET and other requests (S3 Standard)",
        "request",
        0.0004 / 1_000,
        _S3,
        "$0.0004 per 1,000; not confirmed on the AWS page (third-party summaries)",
    ),
    Price(
        "s3.transfer_out_gb",
        "S3",
        "data transfer out to the internet (on-prem clients' downloads)",
        "GB",
        0.09,
        _S3,
        "first 10 TB a month; 100 GB a month free per account; not confirmed on the AWS page",
    ),
    Price(
        "s3.storage_gb_month",
        "S3",
        "storage, S3 Standard",
        "GB-month",
        0.023,
        _S3,
        "first 50 TB; not confirmed on the AWS page (third-party summaries)",
    ),
    Price(
        "sqs.request",
        "SQS",
        "standard queue requests (each 64 KB chunk)",
        "request",
        0.40 / 1_000_000,
        _SQS,
        "$0.40 per 1M; several third-party summaries agree, not read on the AWS page",
    ),
    Price(
        "sns.publish",
        "SNS",
        "standard topic publishes (each 64 KB chunk)",
        "request",
        0.50 / 1_000_000,
        _SNS,
        "$0.50 per 1M; third-party summaries, not read on the AWS page",
    ),
    Price(
        "sns.sqs_delivery",
        "SNS",
        "deliveries to SQS queues",
        "delivery",
        0.0,
        _SNS,
        "no charge for deliveries to SQS, as commonly published: NOT confirmed on a page read that day",
    ),
    Price(
        "ddb.wru",
        "DynamoDB",
        "on-demand write request units",
        "WRU",
        0.625 / 1_000_000,
        _DDB,
        "$0.625 per 1M since the Nov 2024 price cut; third-party summaries",
    ),
    Price(
        "ddb.rru",
        "DynamoDB",
        "on-demand read request units",
        "RRU",
        0.125 / 1_000_000,
        _DDB,
        "$0.125 per 1M since the Nov 2024 price cut; third-party summaries",
    ),
    Price(
        "ddb.stream_read",
        "DynamoDB",
        "stream read request units (GetRecords)",
        "request",
        0.02 / 100_000,
        _DDB_STREAMS,
        "reads by Lambda triggers are free (confirmed, AWS docs); the $0.02 per 100,000 for other readers is not",
    ),
    Price(
        "ddb.stream_read_lambda",
        "DynamoDB",
        "stream reads by the aggregation function's trigger",
        "request",
        0.0,
        _DDB_STREAMS,
        "confirmed (AWS docs): GetRecords calls made by Lambda triggers are not charged",
    ),
    Price(
        "ddb.storage_gb_month",
        "DynamoDB",
        "table storage (standard table class)",
        "GB-month",
        0.25,
        _DDB,
        "first 25 GB a month free per account; not confirmed on the AWS page",
    ),
    Price(
        "kms.request",
        "KMS",
        "symmetric key requests (GenerateDataKey, Decrypt, ...)",
        "request",
        0.03 / 10_000,
        _KMS,
        "$0.03 per 10,000; 20,000 free a month; third-party summary of the AWS page",
    ),
    Price(
        "kms.key_month",
        "KMS",
        "customer-managed key (not per run: the stack's one key)",
        "key-month",
        1.0,
        _KMS,
        "confirmed on the AWS page: $1 a month, +$1 per rotated version; not included in a run's estimate",
    ),
    Price(
        "cloudtrail.data_event",
        "CloudTrail",
        "data events delivered to the audit trail (deployment config `audit`)",
        "event",
        0.10 / 100_000,
        _CLOUDTRAIL,
        "$0.10 per 100,000 data events, as commonly published; not read on the AWS page that day. The trail's "
        "bucket storage and KMS requests are not included",
    ),
)

BY_KEY: dict[str, Price] = {p.key: p for p in PRICES}
SERVICES: tuple[str, ...] = tuple(dict.fromkeys(p.service for p in PRICES))
"""The services priced, in table order."""


def price(key: str) -> Price:
    """The price named `key` (KeyError names the known keys)."""
    try:
        return BY_KEY[key]
    except KeyError:
        raise KeyError(f"no price {key!r}; known: {sorted(BY_KEY)}") from None
