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
