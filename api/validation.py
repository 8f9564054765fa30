"""Turning a Kubernetes object (a dict) into a model, with every problem named by field path.

Used by ``tessera validate``, the operator (``Valid`` condition) and the admission webhook, so that
all three say the same thing in the same words.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

import networkx as nx
from jinja2 import StrictUndefined, TemplateSyntaxError
from jinja2.sandbox import SandboxedEnvironment
from pydantic import BaseModel, ValidationError

from tessera.api.common import API_VERSION
from tessera.api.hardware import HardwareClass
from tessera.api.model_profile import ModelProfile
from tessera.api.power import PowerBudget
from tessera.api.workflow import AgentWorkflow, AgentWorkflowSpec, DraftMethod, StageKind

Resource = Union[AgentWorkflow, HardwareClass, PowerBudget, ModelProfile]

KINDS: dict[str, type[BaseModel]] = {
    "AgentWorkflow": AgentWorkflow,
    "HardwareClass": HardwareClass,
    "PowerBudget": PowerBudget,
    "ModelProfile": ModelProfile,
}


@dataclass(frozen=True)
class FieldProblem:
    path: str  # e.g. "spec.stages[2].dependsOn[0]"
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" if self.path else self.reason


class ResourceError(ValueError):
    """An object that is not a valid Tessera resource; ``problems`` lists every field at fault."""

    def __init__(self, kind: str, name: str, problems: list[FieldProblem]):
        self.kind, self.name, self.problems = kind, name, problems
        super().__init__("; ".join(str(p) for p in problems))


def describe(doc: Any) -> tuple[str, str]:
    """(kind, name) of a document for error messages, whatever shape it has."""
    if not isinstance(doc, dict):
        return "?", "?"
    meta = doc.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    return str(doc.get("kind") or "?"), str(name or "?")


def parse_resource(doc: Any) -> Resource:
    """The model for a Tessera object; raises ResourceError naming every bad field."""
    kind, name = describe(doc)
    if not isinstance(doc, dict):
        raise ResourceError(kind, name, [FieldProblem("", f"expected a mapping, got {type(doc).__name__}")])
    if doc.get("apiVersion") != API_VERSION:
        found = doc.get("apiVersion")
        reason = "missing" if found is None else f"unsupported {found!r}"
        raise ResourceError(kind, name, [FieldProblem("apiVersion", f"{reason}; expected {API_VERSION!r}")])
    model = KINDS.get(doc.get("kind"))  # type: ignore[arg-type]
    if model is None:
        raise ResourceError(
            kind, name, [FieldProblem("kind", f"unknown kind {doc.get('kind')!r}; expected one of {', '.join(KINDS)}")]
        )
    try:
        resource = model.model_validate(doc)
    except ValidationError as err:
        raise ResourceError(kind, name, pydantic_problems(err)) from None
    problems = semantic_problems(resource)
    if problems:
        raise ResourceError(kind, name, problems)
    return resource  # type: ignore[return-value]


def pydantic_problems(err: ValidationError) -> list[FieldProblem]:
    out = []
    for item in err.errors(include_url=False):
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field"
        out.append(FieldProblem(format_path(item["loc"]), message))
    return out


def format_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part == "[key]":
            continue
        else:
            path += f".{part}" if path else str(part)
    return path


def semantic_problems(resource: BaseModel) -> list[FieldProblem]:
    """Rules that span fields, which a schema cannot express."""
    if isinstance(resource, AgentWorkflow):
        return workflow_problems(resource.spec)
    if isinstance(resource, HardwareClass):
        spec = resource.spec
        if spec.idle_watts >= spec.tdp_watts:
            return [FieldProblem("spec.idleWatts", f"must be lower than tdpWatts ({spec.tdp_watts:g})")]
    if isinstance(resource, PowerBudget):
        cap = resource.spec.capping
        problems = []
        if cap.threshold_t1_percent > cap.threshold_t2_percent:
            problems.append(FieldProblem(
                "spec.capping.thresholdT1Percent", f"must not exceed thresholdT2Percent ({cap.threshold_t2_percent:g})"
            ))
        if cap.all_cap_percent > cap.low_priority_cap_percent:
            problems.append(FieldProblem(
                "spec.capping.allCapPercent",
                f"must not exceed lowPriorityCapPercent ({cap.low_priority_cap_percent:g}): T2 caps harder than T1",
            ))
        return problems
    return []


def stage_graph(spec: AgentWorkflowSpec) -> nx.DiGraph:
    """Edges run from a stage to the stages that depend on it."""
    graph = nx.DiGraph()
    graph.add_nodes_from(stage.name for stage in spec.stages)
    for stage in spec.stages:
        graph.add_edges_from((dep, stage.name) for dep in stage.depends_on if dep in graph)
    return graph


def workflow_problems(spec: AgentWorkflowSpec) -> list[FieldProblem]:
    problems: list[FieldProblem] = []
    first_index: dict[str, int] = {}
    for i, stage in enumerate(spec.stages):
        here = f"spec.stages[{i}]"
        if stage.name in first_index:
            problems.append(FieldProblem(
                f"{here}.name", f"duplicate stage name {stage.name!r} (also spec.stages[{first_index[stage.name]}])"
            ))
        first_index.setdefault(stage.name, i)
        problems += _stage_problems(here, stage)
    names = set(first_index)
    for i, stage in enumerate(spec.stages):
        for k, dep in enumerate(stage.depends_on):
            if dep not in names:
                problems.append(FieldProblem(f"spec.stages[{i}].dependsOn[{k}]", f"unknown stage {dep!r}"))
    try:
        cycle = nx.find_cycle(stage_graph(spec))
    except nx.NetworkXNoCycle:
        cycle = None
    if cycle:
        loop = [edge[0] for edge in cycle] + [cycle[0][0]]
        problems.append(FieldProblem("spec.stages", "dependency cycle " + " -> ".join(loop)))

    slo = spec.slo
    if slo.deadline_ms is not None and slo.deadline_ms < slo.latency_ms:
        problems.append(FieldProblem("spec.slo.deadlineMs", f"must be at least latencyMs ({slo.latency_ms:g})"))
    placement = spec.placement
    allowed = set(placement.allowed_classes)
    for stage_name, cls in placement.pinned.items():
        if stage_name not in names:
            problems.append(FieldProblem(f"spec.placement.pinned.{stage_name}", f"unknown stage {stage_name!r}"))
        if allowed and cls not in allowed:
            problems.append(FieldProblem(
                f"spec.placement.pinned.{stage_name}", f"class {cls!r} is not in allowedClasses"
            ))
    return problems


# Which block each kind reads; a kind without one of its own needs an implementation.
KIND_BLOCKS = {StageKind.llm: "llm", StageKind.retrieval: "retrieval", StageKind.tool: "tool", StageKind.sql: "sql"}
_TEMPLATES = SandboxedEnvironment(undefined=StrictUndefined)


def _template_problems(here: str, stage) -> list[FieldProblem]:
    """Templates that do not parse, named by field (they are rendered per request by the runtime)."""
    fields = []
    if stage.llm is not None:
        fields += [("llm.prompt", stage.llm.prompt), ("llm.system", stage.llm.system)]
    if stage.retrieval is not None:
        fields.append(("retrieval.query", stage.retrieval.query))
    if stage.tool is not None:
        fields += [("tool.http.url", stage.tool.http.url), ("tool.http.body", stage.tool.http.body)]
    if stage.sql is not None:
        fields.append(("sql.query", stage.sql.query))
    problems = []
    for field, source in fields:
        if source is None:
            continue
        try:
            _TEMPLATES.parse(source)
        except TemplateSyntaxError as err:
            problems.append(FieldProblem(f"{here}.{field}", f"template syntax error on line {err.lineno}: {err.message}"))
    return problems


def _kind_problems(here: str, stage) -> list[FieldProblem]:
    problems = []
    own = KIND_BLOCKS.get(stage.kind)
    for block in KIND_BLOCKS.values():
        if block != own and getattr(stage, block) is not None:
            problems.append(FieldProblem(f"{here}.{block}", f"only {block} stages take {block}; this is a {stage.kind.value} stage"))
    if stage.implementation is None:
        if stage.kind is StageKind.transform:
            problems.append(FieldProblem(f"{here}.implementation", "required for transform stages (module:function)"))
        elif stage.kind is not StageKind.llm and getattr(stage, own) is None:
            problems.append(FieldProblem(
                f"{here}.{own}", f"required for {stage.kind.value} stages, unless an implementation is given"
            ))
    return problems + _template_problems(here, stage)


def _stage_problems(here: str, stage) -> list[FieldProblem]:
    problems = _kind_problems(here, stage)
    if stage.kind is StageKind.llm:
        for field, value in (("model", stage.model), ("inputTokens", stage.input_tokens),
                             ("outputTokens", stage.output_tokens)):
            if value is None:
                problems.append(FieldProblem(f"{here}.{field}", "required for llm stages"))
    elif stage.measured_latency_ms is None and stage.gflops is None and stage.megabytes is None:
        problems.append(FieldProblem(
            here, f"a {stage.kind.value} stage needs measuredLatencyMs or a gflops/megabytes estimate"
        ))
    spec_dec = stage.speculative_decoding
    if spec_dec is not None:
        if stage.kind is not StageKind.llm:
            problems.append(FieldProblem(f"{here}.speculativeDecoding", "only llm stages decode speculatively"))
        elif spec_dec.method is DraftMethod.draft_model and not spec_dec.draft_model:
            problems.append(FieldProblem(f"{here}.speculativeDecoding.draftModel", "required for method draftModel"))
    return problems
