"""Every validation rule with a valid and an invalid input; problems name the field and the reason."""

from __future__ import annotations

import pytest

from tessera.api import AgentWorkflow, HardwareClass, ResourceError, parse_resource

from .factories import hardware_class, power_budget, stage, with_change, workflow


def problems_of(doc) -> list[str]:
    try:
        parse_resource(doc)
    except ResourceError as err:
        return [str(p) for p in err.problems]
    return []


def test_valid_workflow_parses_with_defaults():
    wf = parse_resource(workflow())
    assert isinstance(wf, AgentWorkflow)
    assert wf.spec.priority == 0
    assert wf.spec.slo.percentile == 99
    assert wf.spec.placement.objective.value == "tco"
    assert [s.name for s in wf.spec.stages] == ["a", "b"]


def test_round_trip_is_camel_case():
    wire = parse_resource(workflow()).to_wire()
    assert wire["spec"]["slo"]["latencyMs"] == 2000
    assert wire["spec"]["stages"][1]["dependsOn"] == ["a"]
    assert parse_resource(wire).to_wire() == wire


BAD_WORKFLOWS = [
    # (description, document, expected "path: reason" fragment)
    ("unknown dependency", workflow([stage("a", deps=["nope"])]), "spec.stages[0].dependsOn[0]: unknown stage 'nope'"),
    ("duplicate names", workflow([stage("a"), stage("a")]), "spec.stages[1].name: duplicate stage name 'a'"),
    ("self loop", workflow([stage("a", deps=["a"])]), "spec.stages: dependency cycle a -> a"),
    ("name not DNS-1123", workflow([stage("Gen_SQL")]), "spec.stages[0].name: 'Gen_SQL' is not a DNS-1123 label"),
    ("negative tokens", workflow([stage("a", inputTokens=-5)]), "spec.stages[0].inputTokens: Input should be greater than 0"),
    ("llm without model", workflow([stage("a", model=None)]), "spec.stages[0].model: required for llm stages"),
    ("tool without estimate", workflow([stage("t", kind="tool", measuredLatencyMs=None)]),
     "spec.stages[0]: a tool stage needs measuredLatencyMs or a gflops/megabytes estimate"),
    ("percentile 100", with_change(workflow(), "spec.slo", {"latencyMs": 100, "percentile": 100}),
     "spec.slo.percentile: Input should be less than 100"),
    ("percentile 0", with_change(workflow(), "spec.slo", {"latencyMs": 100, "percentile": 0}),
     "spec.slo.percentile: Input should be greater than 0"),
    ("deadline below target", with_change(workflow(), "spec.slo", {"latencyMs": 100, "deadlineMs": 50}),
     "spec.slo.deadlineMs: must be at least latencyMs"),
    ("pinned outside allowed", workflow(placement={"allowedClasses": ["h100"], "pinned": {"a": "a100"}}),
     "spec.placement.pinned.a: class 'a100' is not in allowedClasses"),
    ("pinned unknown stage", workflow(placement={"pinned": {"zz": "a100"}}), "spec.placement.pinned.zz: unknown stage 'zz'"),
    ("unknown field", with_change(workflow(), "spec.slo", {"latencyMs": 100, "latency": 5}), "spec.slo.latency: unknown field"),
    ("bad kind enum", workflow([stage("a", kind="gpu", measuredLatencyMs=3)]), "spec.stages[0].kind: Input should be 'llm'"),
    ("no stages", with_change(workflow(), "spec.stages", []), "spec.stages: List should have at least 1 item"),
    ("speculation on a tool", workflow([stage("t", kind="tool", speculativeDecoding={"method": "ngram"})]),
     "spec.stages[0].speculativeDecoding: only llm stages decode speculatively"),
    ("draft model missing", workflow([stage("a", speculativeDecoding={"method": "draftModel"})]),
     "spec.stages[0].speculativeDecoding.draftModel: required for method draftModel"),
    ("missing slo", {**workflow(), "spec": {"stages": [stage("a")]}}, "spec.slo: Field required"),
    ("wrong api version", {**workflow(), "apiVersion": "tessera.dev/v2"}, "apiVersion: unsupported 'tessera.dev/v2'"),
    ("unknown kind", {**workflow(), "kind": "Workflow"}, "kind: unknown kind 'Workflow'"),
]


@pytest.mark.parametrize("doc,expected", [(d, e) for _, d, e in BAD_WORKFLOWS], ids=[n for n, _, _ in BAD_WORKFLOWS])
def test_bad_workflow_is_rejected_naming_field_and_reason(doc, expected):
    problems = problems_of(doc)
    assert any(expected in p for p in problems), problems


def test_cycle_names_every_stage_on_it():
    doc = workflow([stage("a", deps=["c"]), stage("b", deps=["a"]), stage("c", deps=["b"]), stage("d", deps=["a"])])
    (problem,) = problems_of(doc)
    assert problem.startswith("spec.stages: dependency cycle ")
    cycle = problem.removeprefix("spec.stages: dependency cycle ").split(" -> ")
    assert set(cycle) == {"a", "b", "c"} and cycle[0] == cycle[-1]


@pytest.mark.parametrize(
    "change,expected",
    [
        ({"idleWatts": 400}, "spec.idleWatts: must be lower than tdpWatts (300)"),
        ({"memoryGiB": 0}, "spec.memoryGiB: Input should be greater than 0"),
        ({"peakTflops": {}}, "spec.peakTflops: Dictionary should have at least 1 item"),
        ({"peakTflops": {"fp64": 10}}, "spec.peakTflops.fp64: Input should be 'fp32'"),
        ({"usdPerHour": -1}, "spec.usdPerHour: Input should be greater than 0"),
    ],
)
def test_bad_hardware_class(change, expected):
    assert any(expected in p for p in problems_of(hardware_class(**change))), problems_of(hardware_class(**change))


def test_hardware_class_dtype_fallback():
    hw = parse_resource(hardware_class(peakTflops={"bf16": 100, "fp32": 10}))
    assert isinstance(hw, HardwareClass)
    assert hw.spec.peak_flops("fp8") == pytest.approx(100e12)  # falls back to the next wider dtype listed
    assert hw.spec.peak_flops("fp32") == pytest.approx(10e12)


@pytest.mark.parametrize(
    "capping,expected",
    [
        ({"thresholdT1Percent": 97, "thresholdT2Percent": 90}, "spec.capping.thresholdT1Percent: must not exceed"),
        ({"allCapPercent": 80, "lowPriorityCapPercent": 70}, "spec.capping.allCapPercent: must not exceed"),
        ({"thresholdT2Percent": 120}, "spec.capping.thresholdT2Percent: Input should be less than or equal to 100"),
    ],
)
def test_bad_power_budget(capping, expected):
    assert any(expected in p for p in problems_of(power_budget(**capping)))


def test_valid_power_budget():
    assert problems_of(power_budget(thresholdT1Percent=80, thresholdT2Percent=90)) == []


def test_non_mapping_document():
    assert problems_of(["not", "a", "mapping"]) == ["expected a mapping, got list"]


# What each stage kind runs: its own block, or an implementation.
RUNS_CASES = [
    ("retrieval without a collection", workflow([stage("r", kind="retrieval", implementation=None)]),
     "spec.stages[0].retrieval: required for retrieval stages, unless an implementation is given"),
    ("transform without implementation", workflow([stage("t", kind="transform", implementation=None)]),
     "spec.stages[0].implementation: required for transform stages (module:function)"),
    ("tool without endpoint", workflow([stage("t", kind="tool", implementation=None)]),
     "spec.stages[0].tool: required for tool stages, unless an implementation is given"),
    ("an llm block on a sql stage", workflow([stage("s", kind="sql", llm={"prompt": "hi"})]),
     "spec.stages[0].llm: only llm stages take llm; this is a sql stage"),
    ("a prompt that does not parse", workflow([stage("a", llm={"prompt": "{{ input "})]),
     "spec.stages[0].llm.prompt: template syntax error on line 1"),
    ("a bad import path", workflow([stage("t", kind="transform", implementation="not a path")]),
     "spec.stages[0].implementation: String should match pattern"),
    ("an http tool without scheme", workflow([stage("t", kind="tool", implementation=None,
                                                     tool={"http": {"url": "example.com"}})]),
     "spec.stages[0].tool.http.url: String should match pattern"),
]


@pytest.mark.parametrize("doc,expected", [c[1:] for c in RUNS_CASES], ids=[c[0] for c in RUNS_CASES])
def test_what_a_stage_runs_is_checked(doc, expected):
    with pytest.raises(ResourceError) as err:
        parse_resource(doc)
    assert any(str(p).startswith(expected) for p in err.value.problems), err.value.problems


def test_an_llm_stage_may_omit_its_prompt():
    """The runtime's default prompt is the request's input, so a chat stage needs no template."""
    parse_resource(workflow([stage("a")]))
