"""The policy evaluator the DynamoDB permission tests rely on, against IAM's documented semantics."""

from __future__ import annotations

import pytest

from fedstep.local.iam.policy import ALLOW, EXPLICIT_DENY, IMPLICIT_DENY, evaluate

TABLE = "arn:aws:dynamodb:us-east-1:123456789012:table/T"


def statement(condition: dict, effect: str = "Allow", action: str = "dynamodb:PutItem") -> dict:
    return {"Effect": effect, "Action": action, "Resource": TABLE, "Condition": condition}


OWN = statement(
    {
        "ForAllValues:StringEquals": {"dynamodb:LeadingKeys": ["CLIENT#c1"], "dynamodb:Attributes": ["pk", "sk", "a"]},
        "Null": {"dynamodb:LeadingKeys": "false"},
        "StringEqualsIfExists": {"dynamodb:ReturnValues": "NONE"},
    }
)
BASE = {"dynamodb:LeadingKeys": ["CLIENT#c1"], "dynamodb:Attributes": ["pk", "sk"]}


@pytest.mark.parametrize(
    ("context", "expected"),
    [
        (BASE, ALLOW),
        ({**BASE, "dynamodb:ReturnValues": "NONE"}, ALLOW),
        ({**BASE, "DynamoDB:leadingkeys": ["CLIENT#c1"]}, ALLOW),  # key names are case-insensitive
        ({**BASE, "dynamodb:LeadingKeys": ["CLIENT#c2"]}, IMPLICIT_DENY),
        ({**BASE, "dynamodb:LeadingKeys": ["client#c1"]}, IMPLICIT_DENY),  # values are not
        ({**BASE, "dynamodb:LeadingKeys": ["run-1"]}, IMPLICIT_DENY),
        ({**BASE, "dynamodb:LeadingKeys": ["CLIENT#c1", "CLIENT#c2"]}, IMPLICIT_DENY),
        ({**BASE, "dynamodb:Attributes": ["pk", "sk", "evil"]}, IMPLICIT_DENY),
        ({**BASE, "dynamodb:ReturnValues": "ALL_OLD"}, IMPLICIT_DENY),
        ({"dynamodb:Attributes": ["pk"]}, IMPLICIT_DENY),  # ForAllValues alone would allow a missing key; Null does not
    ],
)
def test_a_put_item_is_allowed_only_in_the_bound_partition_with_the_bound_attributes(context, expected):
    assert evaluate([OWN], "dynamodb:PutItem", TABLE, context) == expected


def test_the_action_and_the_resource_must_match_too():
    assert evaluate([OWN], "dynamodb:DeleteItem", TABLE, BASE) == IMPLICIT_DENY
    assert evaluate([OWN], "dynamodb:PutItem", TABLE + "2", BASE) == IMPLICIT_DENY
    assert evaluate([{**OWN, "Action": "dynamodb:*"}], "DynamoDB:PutItem", TABLE, BASE) == ALLOW


def test_for_all_values_holds_over_a_missing_key_and_for_any_value_does_not():
    all_values = statement({"ForAllValues:StringEquals": {"dynamodb:LeadingKeys": ["CLIENT#c1"]}})
    any_value = statement({"ForAnyValue:StringEquals": {"dynamodb:LeadingKeys": ["CLIENT#c1"]}})
    assert evaluate([all_values], "dynamodb:PutItem", TABLE, {}) == ALLOW
    assert evaluate([all_values], "dynamodb:PutItem", TABLE, {"dynamodb:LeadingKeys": []}) == ALLOW
    assert evaluate([any_value], "dynamodb:PutItem", TABLE, {}) == IMPLICIT_DENY


@pytest.mark.parametrize(
    ("keys", "expected"),
    [(["run-1"], ALLOW), (["CLIENT#c1"], IMPLICIT_DENY), (["run-1", "CLIENT#c1"], IMPLICIT_DENY), ([], ALLOW)],
)
def test_wildcards_and_negated_set_operators(keys, expected):
    not_clients = statement({"ForAllValues:StringNotLike": {"dynamodb:LeadingKeys": ["CLIENT#*"]}})
    assert evaluate([not_clients], "dynamodb:PutItem", TABLE, {"dynamodb:LeadingKeys": keys}) == expected


def test_a_negated_operator_over_a_missing_key_holds_and_a_positive_one_does_not():
    assert evaluate([statement({"StringNotEquals": {"aws:x": "a"}})], "dynamodb:PutItem", TABLE, {}) == ALLOW
    assert evaluate([statement({"StringEquals": {"aws:x": "a"}})], "dynamodb:PutItem", TABLE, {}) == IMPLICIT_DENY


def test_an_explicit_deny_wins():
    allow_all = {"Effect": "Allow", "Action": "dynamodb:*", "Resource": "*"}
    deny_others = statement({"ForAnyValue:StringNotLike": {"dynamodb:LeadingKeys": ["CLIENT#c1"]}}, effect="Deny")
    assert evaluate([allow_all, deny_others], "dynamodb:PutItem", TABLE, BASE) == ALLOW
    other = {"dynamodb:LeadingKeys": ["CLIENT#c2"]}
    assert evaluate([allow_all, deny_others], "dynamodb:PutItem", TABLE, other) == EXPLICIT_DENY


KEY = "arn:aws:kms:us-east-1:123456789012:key/k"
SNS = {"Service": "sns.amazonaws.com"}


def test_a_resource_policy_statement_applies_only_to_the_principal_it_names():
    """A key policy's statement for a service principal, with confused-deputy conditions."""
    by_sns = {
        "Effect": "Allow",
        "Principal": {"Service": ["sns.amazonaws.com"]},
        "Action": ["kms:Decrypt", "kms:GenerateDataKey"],
        "Resource": "*",
        "Condition": {
            "StringEquals": {"aws:SourceAccount": "123456789012"},
            "ArnLike": {"aws:SourceArn": "arn:aws:sns:us-east-1:123456789012:topic"},
        },
    }
    ours = {"aws:SourceAccount": "123456789012", "aws:SourceArn": "arn:aws:sns:us-east-1:123456789012:topic"}
    assert evaluate([by_sns], "kms:Decrypt", KEY, ours, principal=SNS) == ALLOW
    assert evaluate([by_sns], "kms:Decrypt", KEY, ours, principal={"Service": "cloudwatch.amazonaws.com"}) == (
        IMPLICIT_DENY
    )
    assert evaluate([by_sns], "kms:Decrypt", KEY, ours, principal={"AWS": "arn:aws:iam::123456789012:root"}) == (
        IMPLICIT_DENY
    )
    other = {"aws:SourceAccount": "999999999999", "aws:SourceArn": "arn:aws:sns:us-east-1:999999999999:topic"}
    assert evaluate([by_sns], "kms:Decrypt", KEY, other, principal=SNS) == IMPLICIT_DENY
    assert evaluate([by_sns], "kms:Decrypt", KEY, {}, principal=SNS) == IMPLICIT_DENY  # no source: refused
    for everyone in ("*", {"AWS": "*"}):  # equivalent in a resource policy (the evaluator errs towards allowing)
        assert evaluate([{**by_sns, "Principal": everyone, "Condition": {}}], "kms:Decrypt", KEY, {}, SNS) == ALLOW


def test_without_a_principal_the_principal_element_is_not_evaluated():
    """An identity policy's statements have none; a key policy evaluated so would ignore it."""
    stated = {
        "Effect": "Allow",
        "Principal": {"Service": "sns.amazonaws.com"},
        "Action": "kms:Decrypt",
        "Resource": "*",
    }
    assert evaluate([stated], "kms:Decrypt", KEY, {}) == ALLOW


def test_a_trust_policy_statement_has_no_resource_and_names_who_may_assume_the_role():
    partner = "arn:aws:iam::111122223333:role/fl-agent"
    trust = {"Effect": "Allow", "Principal": {"AWS": partner}, "Action": "sts:AssumeRole"}
    role = "arn:aws:iam::123456789012:role/r"
    assert evaluate([trust], "sts:AssumeRole", role, {}, principal={"AWS": partner}) == ALLOW
    other = {"AWS": "arn:aws:iam::123456789012:role/other"}
    assert evaluate([trust], "sts:AssumeRole", role, {}, principal=other) == IMPLICIT_DENY
    account = {**trust, "Principal": {"AWS": "arn:aws:iam::123456789012:root"}}  # the whole account
    assert evaluate([account], "sts:AssumeRole", role, {}, principal=other) == ALLOW
    assert evaluate([{**trust, "Principal": {"AWS": "123456789012"}}], "sts:AssumeRole", role, {}, principal=other) == (
        ALLOW
    )
    assert evaluate([account], "sts:AssumeRole", role, {}, principal={"AWS": partner}) == IMPLICIT_DENY
    assert evaluate([account], "sts:AssumeRole", role, {}, principal={"Service": "sns.amazonaws.com"}) == IMPLICIT_DENY
