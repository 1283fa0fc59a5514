"""Evaluating an identity policy for one request, as IAM does: for the DynamoDB condition keys that
moto's IAM enforcement does not evaluate (`dynamodb:LeadingKeys`, `dynamodb:Attributes`).

No well-kept Python library does this (the closest, principalmapper 1.1.5, is unmaintained since
2022, AGPL-licensed and does not import on Python 3.11), so this is the small subset fedstep's
policies use, after the IAM documentation ("Policy evaluation logic", "Condition operators",
"Single-valued vs. multivalued context keys"); `tests/test_iam_policy.py` pins the semantics.

- A request is allowed when an Allow statement matches and no Deny statement does.
- A statement matches when its Action, Resource and every condition operator block match, and, in a
  resource policy (a key policy, a topic policy), its Principal names the caller: `"*"`, or
  `{"Service": ...}` / `{"AWS": ...}` listing it (`evaluate(..., principal=...)`). A statement without
  Resource (a role's trust policy) is about the resource it is attached to.
- Operators: String{Equals,NotEquals,Like,NotLike}, Arn{Equals,Like}, Bool, Null; the IfExists
  suffix; the ForAllValues: and ForAnyValue: set prefixes. Keys are case-insensitive, values not.
- A missing key makes a positive operator false and a negated one true; IfExists makes it true;
  ForAllValues over a missing or empty key is true, ForAnyValue false.
"""

from __future__ import annotations

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


Principal = dict[str, str]
"""Who makes a request, as a policy's Principal element names it: {"Service": "sns.amazonaws.com"},
{"AWS": "arn:aws:iam::123456789012:role/x"}."""


def _account_of(arn: str) -> str | None:
    """The account an AWS principal's ARN (or a bare account id) belongs to."""
    if arn.isdigit():
        return arn
    parts = arn.split(":")
    return parts[4] if len(parts) > 5 and parts[2] in ("iam", "sts") else None


def _names(value: str, kind: str, caller: Principal) -> bool:
    """Whether one principal value names the caller: itself, "*", or for an AWS account (its root ARN
    or id) any principal of that account (IAM then defers to the caller's own policies, which this
    evaluator takes to allow: it errs towards allowing)."""
    called = caller.get(kind)
    if value == "*" or value == called:
        return True
    account_wide = value.isdigit() or value.endswith(":root")
    return kind == "AWS" and called is not None and account_wide and _account_of(value) == _account_of(called)


def _principal_matches(named: Any, caller: Principal) -> bool:
    """Whether a statement's Principal element names `caller` ("*", or {"AWS": "*"}, names everyone)."""
    if named == "*":
        return True
    return any(_names(value, kind, caller) for kind, values in named.items() for value in _as_list(values))


def statement_matches(
    statement: dict[str, Any],
    action: str,
    resource: str,
    context: dict[str, Any],
    principal: Principal | None = None,
) -> bool:
    """Whether `statement` applies to the request; with `principal` (a resource policy's request), its
    Principal element must name the caller (a statement without one is an identity policy's)."""
    if principal is not None and "Principal" in statement and not _principal_matches(statement["Principal"], principal):
        return False
    if not any(_wildcard(a, action, case_sensitive=False) for a in _as_list(statement.get("Action", []))):
        return False
    # A role's trust policy has no Resource: it is about the role it is attached to.
    if "Resource" in statement and not any(_wildcard(r, resource) for r in _as_list(statement["Resource"])):
        return False
    return all(_operator_holds(op, block, context) for op, block in statement.get("Condition", {}).items())


def evaluate(
    statements: list[dict[str, Any]],
    action: str,
    resource: str,
    context: dict[str, Any],
    principal: Principal | None = None,
) -> str:
    """ALLOW, IMPLICIT_DENY or EXPLICIT_DENY for one request under these statements (by `principal`,
    for a resource policy's statements)."""
    matching = [s["Effect"] for s in statements if statement_matches(s, action, resource, context, principal)]
    if "Deny" in matching:
        return EXPLICIT_DENY
    return ALLOW if "Allow" in matching else IMPLICIT_DENY


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


__all__ = ["ALLOW", "EXPLICIT_DENY", "IMPLICIT_DENY", "Principal", "evaluate", "put_item_context", "resolve"]
