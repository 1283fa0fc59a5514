"""Evaluating IAM policies for one request, as IAM does: the local cloud's IAM enforcement
(`fedstep.local.gaps.iam_enforcement`) evaluates every request with it, and tests evaluate deployed
policies with forged requests.

moto's own evaluation is not enough: it passes resource `*` for most services, knows no DynamoDB
condition keys (`dynamodb:LeadingKeys`, `dynamodb:Attributes`), treats a condition that does not hold
as an explicit deny, and compares trust-policy principals as plain strings. No well-kept Python
library does this (the closest, principalmapper 1.1.5, is unmaintained since 2022, AGPL-licensed
and does not import on Python 3.11), so this is the subset fedstep's policies use, after the IAM
documentation ("Policy evaluation logic", "Condition operators", "Single-valued vs. multivalued
context keys", "AWS JSON policy elements: Principal"); `tests/test_iam_policy.py` pins the semantics.

- A request is allowed when an Allow statement matches and no Deny statement does.
- A statement matches when its Action (or NotAction), Resource (or NotResource), Principal (trust
  policies) and every condition operator block match.
- Operators: String{Equals,NotEquals,Like,NotLike}, Arn{Equals,Like}, Bool, Null; the IfExists
  suffix; the ForAllValues: and ForAnyValue: set prefixes. Keys are case-insensitive, values not.
- A missing key makes a positive operator false and a negated one true; IfExists makes it true;
  ForAllValues over a missing or empty key is true, ForAnyValue false.
"""

from __future__ import annotations

import json
import re
from typing import Any

ALLOW, IMPLICIT_DENY, EXPLICIT_DENY = "Allow", "ImplicitDeny", "ExplicitDeny"


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _wildcard(pattern: str, value: str, case_sensitive: bool = True) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, 0 if case_sensitive else re.IGNORECASE) is not None


def _compare(base: str, expected: str, actual: str) -> bool:
    if base in ("StringEquals", "ArnEquals"):
        return actual == expected
    if base in ("StringLike", "ArnLike"):
        return _wildcard(expected, actual)
    if base == "Bool":
        return actual.lower() == expected.lower()
    raise ValueError(f"condition operator {base} is not supported by this evaluator")


def _operator_holds(operator: str, block: dict[str, Any], context: dict[str, Any]) -> bool:
    set_op, _, name = operator.rpartition(":")
    if_exists = name.endswith("IfExists")
    name = name.removesuffix("IfExists")
    negated = "Not" in name
    base = name.replace("Not", "")
    lowered = {k.lower(): v for k, v in context.items()}
    for key, expected in block.items():
        present = key.lower() in lowered
        actual_values = [str(v) for v in _as_list(lowered.get(key.lower(), []))]
        expected_values = [str(v) for v in _as_list(expected)]
        if base == "Null":
            holds = all((not present) == (e.lower() == "true") for e in expected_values)
        elif not present and not set_op:
            holds = if_exists or negated
        elif set_op == "ForAllValues":
            holds = all(any(_compare(base, e, a) for e in expected_values) != negated for a in actual_values)
        elif set_op == "ForAnyValue":
            holds = any(any(_compare(base, e, a) for e in expected_values) != negated for a in actual_values)
        else:
            [actual] = actual_values
            holds = any(_compare(base, e, actual) for e in expected_values) != negated
        if not holds:
            return False
    return True


def _element_matches(statement: dict[str, Any], element: str, value: str, case_sensitive: bool) -> bool:
    """Whether `value` matches the statement's `element` (Action, Resource) or misses its `Not` form;
    a statement without either (a trust policy has no Resource) matches."""
    if element in statement:
        return any(_wildcard(p, value, case_sensitive) for p in _as_list(statement[element]))
    if f"Not{element}" in statement:
        return not any(_wildcard(p, value, case_sensitive) for p in _as_list(statement[f"Not{element}"]))
    return element == "Resource"


def account_of(arn: str) -> str:
    """The account id in an IAM or STS ARN (`arn:aws:iam::123456789012:user/x`), or a bare account id."""
    return arn if arn.isdigit() else (arn.split(":")[4] if arn.count(":") >= 5 else "")


Caller = str | dict[str, str]
"""Who makes a request: an IAM user's or role session's ARN, a service (`lambda.amazonaws.com`), or
either as a policy's Principal element names it (`{"AWS": arn}`, `{"Service": name}`)."""


def principal_matches(expected: Any, principal: Caller | None) -> bool:
    """Whether a statement's Principal names `principal` (None: an identity policy, which names none).
    `"*"` names everyone; an account (`arn:aws:iam::ACCOUNT:root` or the bare id) names every
    principal of that account, whose own policies must then allow the request too (`trust_allows`)."""
    if isinstance(principal, dict):
        [principal] = principal.values()
    if principal is None:
        return expected is None
    if expected is None:
        return False
    if expected == "*":
        return True
    names = [str(v) for kind in ("AWS", "Service") for v in _as_list(expected.get(kind, []))]
    account = account_of(principal)
    return any(n in ("*", principal) or (account and n in (account, f"arn:aws:iam::{account}:root")) for n in names)


def statement_matches(
    statement: dict[str, Any], action: str, resource: str, context: dict[str, Any], principal: Caller | None = None
) -> bool:
    if not _element_matches(statement, "Action", action, case_sensitive=False):
        return False
    if not _element_matches(statement, "Resource", resource, case_sensitive=True):
        return False
    if principal is not None and not principal_matches(statement.get("Principal"), principal):
        return False
    return all(_operator_holds(op, block, context) for op, block in statement.get("Condition", {}).items())


def evaluate(
    statements: list[dict[str, Any]],
    action: str,
    resource: str,
    context: dict[str, Any],
    principal: Caller | None = None,
) -> str:
    """ALLOW, IMPLICIT_DENY or EXPLICIT_DENY for one request under these statements (a trust policy's
    when `principal` names the caller)."""
    matching = [s["Effect"] for s in statements if statement_matches(s, action, resource, context, principal)]
    if "Deny" in matching:
        return EXPLICIT_DENY
    return ALLOW if "Allow" in matching else IMPLICIT_DENY


def statements_of(document: Any) -> list[dict[str, Any]]:
    """A policy document's statements, from its JSON text or object (`Statement` may be one object)."""
    parsed = json.loads(document) if isinstance(document, str) else document
    return [dict(s) for s in _as_list(parsed.get("Statement", []))]


def _names_directly(statement: dict[str, Any], caller: str) -> bool:
    principal = statement.get("Principal")
    return isinstance(principal, dict) and caller in [str(v) for v in _as_list(principal.get("AWS", []))]


def trust_allows(trust_policy: Any, caller: str, identity_allows: bool, action: str = "sts:AssumeRole") -> bool:
    """Whether `caller` may assume a role with this trust policy: the policy must name it, directly (its
    ARN: no identity policy needed) or through its account (then its own policies must allow the call)."""
    statements = statements_of(trust_policy)
    if evaluate(statements, action, "*", {}, principal=caller) != ALLOW:
        return False
    return identity_allows or any(s.get("Effect") == "Allow" and _names_directly(s, caller) for s in statements)


def put_item_context(item: dict[str, Any], return_values: str | None = None) -> dict[str, Any]:
    """The condition keys of a PutItem of `item` (what DynamoDB sends IAM)."""
    context: dict[str, Any] = {"dynamodb:LeadingKeys": [item["pk"]], "dynamodb:Attributes": sorted(item)}
    if return_values is not None:
        context["dynamodb:ReturnValues"] = return_values
    return context


def resolve(value: Any, arn_of: dict[str, str]) -> Any:
    """A synthesized template's policy with its intrinsic functions replaced: `Fn::GetAtt [id, Arn]`
    and `Ref id` by `arn_of[id]`, `Fn::Join` joined."""
    if isinstance(value, list):
        return [resolve(v, arn_of) for v in value]
    if not isinstance(value, dict):
        return value
    if "Fn::GetAtt" in value:
        return arn_of[value["Fn::GetAtt"][0]]
    if "Ref" in value:
        return arn_of.get(value["Ref"], value["Ref"])
    if "Fn::Join" in value:
        separator, parts = value["Fn::Join"]
        return separator.join(str(resolve(p, arn_of)) for p in parts)
    return {k: resolve(v, arn_of) for k, v in value.items()}


__all__ = [
    "ALLOW",
    "EXPLICIT_DENY",
    "IMPLICIT_DENY",
    "Caller",
    "account_of",
    "evaluate",
    "principal_matches",
    "put_item_context",
    "resolve",
    "statements_of",
    "trust_allows",
]
