"""Property-based: random DAGs validate; any graph with a cycle is rejected with the cycle named."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.api import ResourceError, parse_resource

from .factories import stage, workflow


@st.composite
def dags(draw):
    n = draw(st.integers(min_value=1, max_value=25))
    names = [f"s{i}" for i in range(n)]
    stages = []
    for i, name in enumerate(names):
        deps = draw(st.lists(st.sampled_from(names[:i]), unique=True, max_size=min(i, 4))) if i else []
        stages.append(stage(name, deps=deps))
    order = draw(st.permutations(range(n)))  # the listed order need not be topological
    return [stages[i] for i in order]


@st.composite
def graphs_with_a_cycle(draw):
    stages = draw(dags())
    n = len(stages)
    by_name = {s["name"]: s for s in stages}
    length = draw(st.integers(min_value=1, max_value=min(n, 6)))
    cycle = draw(st.lists(st.sampled_from(sorted(by_name)), min_size=length, max_size=length, unique=True))
    for i, name in enumerate(cycle):  # cycle[i] depends on cycle[i-1]: closes a loop
        prev = cycle[i - 1]
        if prev not in by_name[name]["dependsOn"]:
            by_name[name]["dependsOn"] = by_name[name]["dependsOn"] + [prev]
    return stages


@settings(max_examples=60, deadline=None)
@given(dags())
def test_random_dags_validate(stages):
    wf = parse_resource(workflow(stages))
    assert len(wf.spec.stages) == len(stages)


@settings(max_examples=60, deadline=None)
@given(graphs_with_a_cycle())
def test_any_cycle_is_rejected_and_named(stages):
    try:
        parse_resource(workflow(stages))
    except ResourceError as err:
        messages = [p.reason for p in err.problems if p.path == "spec.stages"]
    else:
        raise AssertionError("a graph with a cycle validated")
    assert len(messages) == 1 and messages[0].startswith("dependency cycle ")
    loop = messages[0].removeprefix("dependency cycle ").split(" -> ")
    assert loop[0] == loop[-1]
    deps = {s["name"]: set(s["dependsOn"]) for s in stages}
    # every step of the named cycle is a real dependency edge
    for before, after in zip(loop, loop[1:]):
        assert before in deps[after]
