"""plan_workflow on the examples, infeasible answers naming what binds, what-if, and the properties
every optimum must have (checked with the exact solver on random instances)."""

from __future__ import annotations

import random
import re
from dataclasses import replace

import pytest

from tessera.planner import plan_workflow, what_if
from tessera.planner.bench import random_instance
from tessera.planner.inventory import PowerGroup
from tessera.planner.problem import build_problem
from tessera.planner.solution import feasible
from tessera.planner.solve_exact import solve_exact
from tessera.planner.synthetic import with_slo


@pytest.mark.parametrize("solver", ["fast", "exact"])
def test_every_example_gets_a_feasible_plan_within_its_slo(workflows, inventory, solver):
    for workflow in workflows.values():
        plan = plan_workflow(workflow.spec, inventory, solver)
        assert plan.feasible, (workflow.metadata.name, plan.binding_constraints)
        assert set(plan.stages) == {s.name for s in workflow.spec.stages}
        assert plan.predicted.latency_ms_at_slo <= workflow.spec.slo.latency_ms
        assert plan.predicted.latency_ms_p50 <= plan.predicted.latency_ms_at_slo
        assert plan.predicted.usd_per_hour == pytest.approx(sum(s.usd_per_hour for s in plan.stages.values()))
        per_1k = plan.predicted.usd_per_hour / (workflow.spec.slo.requests_per_second * 3.6)
        assert plan.predicted.usd_per1k_requests == pytest.approx(per_1k)


def test_plans_are_deterministic_and_exact_is_never_beaten(workflows, inventory):
    for workflow in workflows.values():
        fast = plan_workflow(workflow.spec, inventory, "fast")
        again = plan_workflow(workflow.spec, inventory, "fast")
        exact = plan_workflow(workflow.spec, inventory, "exact")
        assert fast.stages == again.stages
        assert exact.predicted.usd_per_hour <= fast.predicted.usd_per_hour * (1 + 1e-6)


def test_plan_respects_pinning_and_allowed_classes(workflows, inventory):
    spec = workflows["rag-assistant"].spec
    pinned = spec.model_copy(update={"placement": spec.placement.model_copy(
        update={"pinned": {"answer": "h100-sxm"}, "allowed_classes": ["h100-sxm", "cpu-epyc"]})})
    plan = plan_workflow(pinned, inventory)
    assert plan.feasible
    assert plan.stages["answer"].hardware_class == "h100-sxm"
    assert {s.hardware_class for s in plan.stages.values()} <= {"h100-sxm", "cpu-epyc"}


def test_unreachable_slo_names_the_best_latency_and_the_stage(workflows, inventory):
    spec = with_slo(workflows["rag-assistant"].spec, 100)
    plan = plan_workflow(spec, inventory)
    assert not plan.feasible
    (message,) = plan.binding_constraints
    assert message.startswith("SLO 100 ms unreachable: best p99 ")
    best_ms = float(message.split("best p99 ")[1].split(" ms")[0])
    assert best_ms > 100
    assert " with answer on " in message  # the LLM call dominates the critical path


def test_too_few_devices_names_the_class_and_the_shortfall(workflows, inventory):
    only_l4 = inventory.replace_devices({name: (3 if name == "l4" else 0) for name in inventory.classes})
    spec = workflows["rag-assistant"].spec
    slow = spec.model_copy(update={"slo": spec.slo.model_copy(update={"requests_per_second": 0.1})})
    plan = plan_workflow(slow, only_l4, "exact")
    assert not plan.feasible
    (message,) = plan.binding_constraints
    found = re.fullmatch(r"devices of l4: the cheapest placement needs (\d+), 3 free \(short by (\d+)\)", message)
    assert found, message
    assert int(found[1]) >= 4 and int(found[1]) - 3 == int(found[2])  # four stages hold one device each at least


def test_a_rate_no_free_devices_keep_up_with_is_named(workflows, inventory):
    only_l4 = inventory.replace_devices({name: (3 if name == "l4" else 0) for name in inventory.classes})
    plan = plan_workflow(workflows["rag-assistant"].spec, only_l4)
    assert not plan.feasible
    (message,) = plan.binding_constraints
    assert re.fullmatch(r"stage answer: keeping up with 5 calls/s needs at least (\d+) devices of l4 "
                        r"\(the fewest of any allowed class\), 3 free", message), message


def test_power_budget_too_small_names_the_budget_and_the_excess(workflows, inventory):
    tiny = PowerGroup("gpu-rows", frozenset(inventory.classes), 300, 10_000, 0.6, 300, 0)
    plan = plan_workflow(workflows["rag-assistant"].spec, replace(inventory, power_groups=(tiny,)), "exact")
    assert not plan.feasible
    assert any(b.startswith("PowerBudget gpu-rows: expected draw ") and "exceeds the 300 W available (over by " in b
               for b in plan.binding_constraints), plan.binding_constraints


def test_an_exhausted_power_budget_reads_as_such(workflows, inventory):
    gone = PowerGroup("gpu-rows", frozenset(inventory.classes), -50, 10_000, 0.6, 1, 0)  # others hold more than all
    plan = plan_workflow(workflows["rag-assistant"].spec, replace(inventory, power_groups=(gone,)), "exact")
    (message,) = [b for b in plan.binding_constraints if b.startswith("PowerBudget gpu-rows: expected draw ")]
    assert "exceeds the budget (no power left for this plan)" in message and " 0.0 kW" not in message, message


def test_unknown_references_are_reported_not_raised(workflows, inventory):
    spec = workflows["rag-assistant"].spec
    stages = [s.model_copy(update={"model": "no-such-model"}) if s.name == "answer" else s for s in spec.stages]
    placement = spec.placement.model_copy(update={"allowed_classes": ["tpu-v9"]})
    plan = plan_workflow(spec.model_copy(update={"stages": stages, "placement": placement}), inventory)
    assert not plan.feasible
    assert plan.binding_constraints == [
        "spec.placement.allowedClasses: unknown HardwareClass 'tpu-v9'",
        "stage answer: unknown ModelProfile 'no-such-model'",
    ]


def test_what_if_reports_the_changes(workflows, inventory):
    spec = workflows["rag-assistant"].spec
    without_gaudi = inventory.replace_devices({**inventory.free_devices, "gaudi3": 0})
    answer = what_if(spec, inventory, without_gaudi)
    assert answer.before.stages["answer"].hardware_class == "gaudi3"
    assert answer.after.stages["answer"].hardware_class != "gaudi3"
    assert any(line.startswith("answer: gaudi3 ") for line in answer.changes)
    assert any(line.startswith("usdPerHour: ") for line in answer.changes)
    assert what_if(spec, inventory, inventory).changes == ["no change"]
    gone = what_if(spec, inventory, inventory.replace_devices({c: 0 for c in inventory.classes}))
    assert gone.changes[0] == "feasible: true -> false"


def test_speculative_draft_placement_is_a_planner_choice(workflows, inventory):
    spec = workflows["chat"].spec
    stage = spec.stages[0]
    sd = stage.speculative_decoding
    for placement in ("colocated", "l4"):
        pinned = stage.model_copy(update={"speculative_decoding": sd.model_copy(update={"draft_placement": placement})})
        plan = plan_workflow(spec.model_copy(update={"stages": [pinned]}), inventory)
        assert plan.feasible
        assert plan.stages["chat"].draft_hardware_class == (None if placement == "colocated" else "l4")
    problem = build_problem(spec, inventory)
    assert {o.draft_class for o in problem.options[0]} > {None}  # auto: the draft may move to other classes


def _instances(count: int, seed: int):
    from tessera.planner.synthetic import example_inventory

    base = example_inventory()
    rng = random.Random(seed)
    return [random_instance(rng, base, rng.randint(3, 6), rng.randint(2, 4), power=True) for _ in range(count)]


def _optimum(spec, inventory) -> float | None:
    problem = build_problem(spec, inventory)
    solution = solve_exact(problem)
    if solution.choice is None:
        return None
    assert feasible(problem, solution.choice)
    return sum(problem.options[s][o].usd_per_hour for s, o in enumerate(solution.choice))


@pytest.fixture(scope="module")
def instances():
    return _instances(6, seed=11)


def test_more_devices_never_worsen_the_optimum(instances):
    for spec, inventory in instances:
        before = _optimum(spec, inventory)
        after = _optimum(spec, inventory.replace_devices({c: 2 * n + 1 for c, n in inventory.free_devices.items()}))
        assert after is not None and after <= before * (1 + 1e-6)


def test_a_looser_slo_never_raises_the_cost(instances):
    for spec, inventory in instances:
        before = _optimum(spec, inventory)
        after = _optimum(with_slo(spec, spec.slo.latency_ms * 1.5), inventory)
        assert after is not None and after <= before * (1 + 1e-6)


def test_a_tighter_power_budget_never_lowers_the_cost(instances):
    for spec, inventory in instances:
        before = _optimum(spec, inventory)
        group = inventory.power_groups[0]
        tighter = replace(group, expected_limit_watts=group.expected_limit_watts * 0.8,
                          peak_limit_watts=group.peak_limit_watts * 0.8)
        after = _optimum(spec, replace(inventory, power_groups=(tighter,)))
        assert after is None or after >= before * (1 - 1e-6)
