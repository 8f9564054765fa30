"""Draws one Grafana time-series panel to a PNG with matplotlib, from a real Prometheus's range queries."""

from __future__ import annotations

import math
import re
from datetime import datetime
from pathlib import Path

# Grafana's units as the axis shows them.
UNIT_LABELS = {"s": "seconds", "percentunit": "fraction", "reqps": "requests/s", "watt": "W", "currencyUSD": "$/h"}


def legend_text(template: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template)


def render_panel(panel: dict, results: list[tuple[dict, list[dict]]], out: Path) -> int:
    """``results`` pairs each target with its query_range result; returns how many lines were drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    plt.style.use("dark_background")
    fig, ax = plt.subplots(figsize=(9, 4.6), dpi=110)
    fig.patch.set_facecolor("#181b1f")
    ax.set_facecolor("#181b1f")
    drawn = 0
    for target, series_list in results:
        dashed = any(word in target["legendFormat"] for word in ("target", "objective", "provisioned"))
        for series in series_list:
            points = [(datetime.fromtimestamp(t), float(v)) for t, v in series["values"] if math.isfinite(float(v))]
            if not points:
                continue
            times, values = zip(*points)
            ax.plot(times, values, linestyle="--" if dashed else "-", linewidth=2.2 if dashed else 1.6,
                    label=legend_text(target["legendFormat"], series["metric"]))
            drawn += 1
    ax.set_title(panel["title"], loc="left", fontsize=12, color="#d8d9da")
    unit = panel["fieldConfig"]["defaults"].get("unit", "")
    ax.set_ylabel(UNIT_LABELS.get(unit, unit), color="#9fa1a6")
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
    ax.grid(color="#2c3235", linewidth=0.8)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.tick_params(colors="#9fa1a6", labelsize=8)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), fontsize=8, frameon=False, ncol=min(drawn, 5) or 1)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, facecolor=fig.get_facecolor())
    plt.close(fig)
    return drawn
