"""Shared building blocks of the custom-resource models: camelCase wire format, metadata, conditions;
and the small parsers the commands share."""

from __future__ import annotations

import argparse
import re
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints
from pydantic.alias_generators import to_camel

GROUP = "tessera.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
# The apiVersion field of every Tessera object (one definition: the models' Literal is built from it).
ApiVersion = Literal[API_VERSION]  # type: ignore[valid-type]

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _dns1123(kind: str, pattern: re.Pattern[str], characters: str, limit: int) -> Any:
    """A pydantic string type that must be a DNS-1123 ``kind`` (the names Kubernetes accepts)."""
    def check(value: str) -> str:
        if len(value) > limit or not pattern.match(value):
            raise ValueError(f"{value!r} is not a DNS-1123 {kind} (lower-case letters, {characters}, "
                             f"starting and ending with a letter or digit, at most {limit} characters)")
        return value

    return Annotated[str, StringConstraints(max_length=limit), AfterValidator(check)]


DNSLabel = _dns1123("label", DNS1123_LABEL, "digits and '-'", 63)
DNSSubdomain = _dns1123("subdomain", DNS1123_SUBDOMAIN, "digits, '-' and '.'", 253)


class WireModel(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields are errors (typos get caught)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
        allow_inf_nan=False,  # every float on the wire is finite: .inf or .nan would reach the planner's arithmetic
    )

    def to_wire(self) -> dict[str, Any]:
        """The object as it is written to the API server: camelCase, unset optional fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class ObjectMeta(BaseModel):
    """The parts of Kubernetes metadata Tessera reads; everything else is kept as it is."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    name: DNSSubdomain
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    generation: int | None = None
    uid: str | None = None


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(WireModel):
    """A Kubernetes-style condition, keyed by ``type``."""

    type: str
    status: ConditionStatus
    reason: str = Field(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$", max_length=1024)
    message: str = Field(default="", max_length=32768)
    observed_generation: int | None = Field(default=None, ge=0)
    last_transition_time: str | None = None


def format_watts(watts: float) -> str:
    """Watts as people read them: "300 W" below a kilowatt, "2.4 kW" above, "1.25 MW" above a megawatt."""
    magnitude = abs(watts)
    if magnitude < 1000:
        return f"{watts:.0f} W"
    if magnitude < 1_000_000:
        return f"{watts / 1000:.3g} kW" if magnitude < 100_000 else f"{watts / 1000:.0f} kW"
    return f"{watts / 1_000_000:.3g} MW"


def positive_int(text: str) -> int:
    """An argparse ``type`` for counts given on a command line: a whole number of at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return int(text)


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def set_condition(conditions: list[Condition], new: Condition) -> list[Condition]:
    """Conditions with ``new`` in place of its type; the transition time moves only when the status changes."""
    out: list[Condition] = []
    replaced = False
    for cond in conditions:
        if cond.type != new.type:
            out.append(cond)
            continue
        replaced = True
        keep_time = cond.status == new.status and cond.last_transition_time
        out.append(new.model_copy(update={"last_transition_time": keep_time or new.last_transition_time or now_rfc3339()}))
    if not replaced:
        out.append(new.model_copy(update={"last_transition_time": new.last_transition_time or now_rfc3339()}))
    return out
