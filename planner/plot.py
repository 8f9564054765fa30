"""A picture of a plan: the stage graph left to right, each stage coloured by its hardware class."""

from __future__ import annotations

import networkx as nx

from tessera.api.plan import Plan
from tessera.api.validation import stage_graph
from tessera.api.workflow import AgentWorkflowSpec
from tessera.planner.inventory import Inventory


def draw_plan(spec: AgentWorkflowSpec, plan: Plan, inventory: Inventory, path: str) -> None:
    """Write a PNG: stages in dependency layers, coloured by class, labelled with replicas and latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    graph = stage_graph(spec)
    for layer, names in enumerate(nx.topological_generations(graph)):
        for name in names:
            graph.nodes[name]["layer"] = layer
    positions = nx.multipartite_layout(graph, subset_key="layer")
    classes = sorted({s.hardware_class for s in plan.stages.values()})
    palette = plt.get_cmap("tab10")
    colour = {cls: palette(i % 10) for i, cls in enumerate(classes)}
    generations = list(nx.topological_generations(graph))
    width = max(8.0, 2.4 * len(generations))
    height = max(3.0, 1.2 * max(len(g) for g in generations) + 1.5)
    fig, ax = plt.subplots(figsize=(width, height))
    nx.draw_networkx_edges(graph, positions, ax=ax, arrows=True, arrowsize=14, node_size=4000, edge_color="#555555")
    for name in graph.nodes:  # each stage a box in its class's colour
        stage = plan.stages.get(name)
        label = name if stage is None else (
            f"{name}\n{stage.hardware_class} x{stage.replicas}"
            + (f" tp{stage.tensor_parallel}" if stage.tensor_parallel > 1 else "")
            + f"\n{stage.predicted_latency_ms / 1000:.2f} s/call"
        )
        face = colour[stage.hardware_class] if stage is not None else "lightgrey"
        x, y = positions[name]
        ax.text(x, y, label, ha="center", va="center", fontsize=8,
                bbox={"boxstyle": "round,pad=0.4", "facecolor": face, "alpha": 0.85, "edgecolor": "black"})
    legend = [Patch(facecolor=colour[c], edgecolor="black", label=f"{c} ({inventory.classes[c].generation})")
              for c in classes]
    ax.legend(handles=legend, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(4, len(legend)), fontsize=8)
    ax.margins(x=0.08, y=0.25)
    p = plan.predicted
    title = "infeasible: " + "; ".join(plan.binding_constraints) if not plan.feasible or p is None else (
        f"p{spec.slo.percentile:g} {p.latency_ms_at_slo / 1000:.1f} s (SLO {spec.slo.latency_ms / 1000:g} s), "
        f"${p.usd_per_hour:.2f}/h, {p.watts:,.0f} W, objective {plan.objective}"
    )
    ax.set_title(title, fontsize=10)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
