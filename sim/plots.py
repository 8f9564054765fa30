"""PNG figures of the scenarios' JSON (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(result: dict, path: Path) -> None:
    """Draw the figure of ``result`` (the JSON of a scenario run) into ``path``."""
    {"hexgen": _hexgen, "polca": _polca, "tco": _tco}[result["scenario"]](result, Path(path))


def _hexgen(result: dict, path: Path) -> None:
    plt = _pyplot()
    curves = result["curves"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for policy, att in curves["sloAttainmentByRate"].items():
        left.plot(curves["rateGrid"], [100 * a for a in att], marker="o", label=policy)
    left.axhline(90, color="grey", linestyle=":", linewidth=1)
    left.axvline(result["nominalRateRps"], color="grey", linestyle="--", linewidth=1)
    left.set(xlabel="arrival rate (requests/s)", ylabel="SLO attainment (%)",
             title=f"SLO attainment vs rate (SLO {result['sloS']:.0f} s)")
    left.legend()
    for policy, p95 in curves["latencyP95ByScale"].items():
        right.plot(curves["sloScales"], p95, marker="o", label=policy)
    right.set(xlabel="SLO scale (x mean workflow time)", ylabel="P95 latency (s)", yscale="log",
              title=f"P95 latency vs SLO scale at {result['nominalRateRps']} requests/s")
    right.legend()
    fig.suptitle("hexgen: A100, A100, A6000, L40S serving the Text-to-SQL workflow")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _polca(result: dict, path: Path) -> None:
    plt = _pyplot()
    rows = result["growth"]
    pct = [r["extraServersPct"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(pct, [r["sloAttainmentLossPct"] for r in rows], marker="o", color="tab:red", label="capped vs uncapped")
    left.axhline(2, color="grey", linestyle=":", linewidth=1)
    left.set(xlabel="servers added (%)", ylabel="SLO attainment lost to capping (points)",
             title="Performance lost under the power budget")
    left.legend()
    budget = result["budgetWatts"]
    for key, style in (("uncapped", "--"), ("capped", "-")):
        right.plot(pct, [100 * r[key]["overBudgetFraction"] for r in rows], marker="o", linestyle=style,
                   label=f"{key}: time over budget")
    right.axhline(100 * result["overBudgetTolerance"], color="grey", linestyle=":", linewidth=1)
    right.set(xlabel="servers added (%)", ylabel="time above the budget (%)",
              title=f"Power budget {budget / 1000:.2f} kW (base fleet's nameplate)")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _tco(result: dict, path: Path) -> None:
    plt = _pyplot()
    rows = result["results"]
    labels = [f"{r['configuration']}\n" + ", ".join(f"{n}x {c}" for c, n in r["devices"].items()) for r in rows]
    values = [r["usdPer1kRequests"] for r in rows]
    fig, ax = plt.subplots(figsize=(10, 0.7 * len(rows) + 1.5))
    colors = ["tab:blue" if i == 0 else "tab:gray" if len(r["devices"]) == 1 else "tab:green" for i, r in enumerate(rows)]
    bars = ax.barh(range(len(rows)), values, color=colors)
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    for bar, v in zip(bars, values):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" ${v:.2f}", va="center", fontsize=8)
    ax.set(xlabel="US$ per 1,000 requests (devices + energy)",
           title=f"Cheapest fleet per configuration meeting the SLO for 90 % at {result['nominalRateRps']} requests/s\n"
                 "blue: newest homogeneous, grey: other homogeneous, green: mixes")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
