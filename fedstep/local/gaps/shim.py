"""What a shim is: one gap in moto, `apply` to fill it, `undo` to give moto back its own behaviour."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar


class Shim:
    """One gap in moto and what fills it. A subclass names itself after its module (`name`), describes
    the gap in one paragraph (`gap`: what moto does, what AWS does) and defines `apply(...)` and `undo()`."""

    name: ClassVar[str]
    gap: ClassVar[str]

    @property
    def module(self) -> str:
        """The shim's source file, relative to the checkout (named by canary tests' messages)."""
        return f"fedstep/local/gaps/{self.name}.py"

    def undo(self) -> None:
        raise NotImplementedError


_MISSING = object()


@dataclass(frozen=True)
class _Replaced:
    owner: type
    attribute: str
    original: Any  # the owner's own entry (a function, a classmethod), or _MISSING if it was inherited
    replacement: Any


class PatchShim(Shim):
    """A shim that replaces attributes of moto's classes: `replacements()` says which, and with what."""

    def __init__(self) -> None:
        self._replaced: list[_Replaced] = []

    def replacements(self) -> list[tuple[type, str, Any]]:
        """(class, attribute, replacement) for each attribute to replace; called by `apply`."""
        raise NotImplementedError

    @property
    def applied(self) -> bool:
        return bool(self._replaced)

    def apply(self) -> None:
        """Replace the attributes (once: applying an applied shim changes nothing)."""
        if self._replaced:
            return
        for owner, attribute, replacement in self.replacements():
            original = owner.__dict__.get(attribute, _MISSING)
            self._replaced.append(_Replaced(owner, attribute, original, replacement))
            setattr(owner, attribute, replacement)

    def undo(self) -> None:
        """Put back exactly what `apply` replaced (nothing if not applied). Refuses while a later patch of the
        same attribute is in place: shims that stack on one another are undone in reverse order."""
        for r in self._replaced:
            if r.owner.__dict__.get(r.attribute) is not r.replacement:
                raise RuntimeError(f"{r.owner.__name__}.{r.attribute} was replaced after the shim {self.name}")
        for r in reversed(self._replaced):
            if r.original is _MISSING:
                delattr(r.owner, r.attribute)
            else:
                setattr(r.owner, r.attribute, r.original)
        self._replaced.clear()


class CloudFormationFix(PatchShim):
    """A shim that rewrites one resource type's Properties before moto's CloudFormation handler reads them."""

    def resource_class(self) -> type:
        raise NotImplementedError

    def fix(self, properties: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def replacements(self) -> list[tuple[type, str, Any]]:
        resource_class = self.resource_class()
        original: Callable[..., Any] = resource_class.create_from_cloudformation_json.__func__  # type: ignore[attr-defined]
        fix = self.fix

        def create(cls: Any, resource_name: str, cloudformation_json: Any, *args: Any, **kwargs: Any) -> Any:
            properties = fix(dict(cloudformation_json.get("Properties", {})))
            return original(cls, resource_name, {**cloudformation_json, "Properties": properties}, *args, **kwargs)

        return [(resource_class, "create_from_cloudformation_json", classmethod(create))]


class StackShim(Shim):
    """A shim that fills its gap in a deployed stack, through the AWS API: `apply(...)` takes the clients and
    the stack. It replaces nothing of moto's."""

    @staticmethod
    def physical_ids(cfn: Any, stack_name: str) -> dict[str, str]:
        """The stack's physical resource ids by logical id."""
        pages = cfn.get_paginator("list_stack_resources").paginate(StackName=stack_name)
        return {r["LogicalResourceId"]: r["PhysicalResourceId"] for p in pages for r in p["StackResourceSummaries"]}
