"""The shareable report: Compare's current view as one self-contained HTML file that opens offline.

It holds the accuracy-vs-cost plots (interactive Plotly, plotly.js embedded once rather than fetched
from a CDN), the table with each accuracy's 95 % interval, Δ accuracy with its paired interval and the
paired speed-ups with their range, every run's recipe (spec, resolved training recipe), the machine
each was measured on, and the published points for the nets the literature has. Every string a user
supplied is escaped. ``cost_figure`` is also what Compare draws, so the file shows what the page does.
"""
from __future__ import annotations

import html
import json
import math
import time
from typing import Any, Iterable

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import plotly.io as pio

from engine import record, results

# Record keys that say where a run was measured, in the order the machine section lists them.
MACHINE_KEYS = ("latency_device", "cpu_model", "threads", "runtime", "gpu_name", "device", "host", "torch_version",
                "onnxruntime_version")
RECIPE_KEYS = ("method", "method_params", "recipe", "parent", "epochs", "optimizer", "lr")


def _text(value: Any) -> Any:
    """A user's string as literal text in a Plotly label (it reads a subset of HTML there)."""
    return html.escape(value, quote=False) if isinstance(value, str) else value


def _tick_text(v: float) -> str:
    """200000 -> "200k", 1e6 -> "1M", 0.2 -> "0.2": the whole value, its unit in the axis title."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if v >= scale:
            return f"{v / scale:g}{suffix}"
    return f"{v:g}"


def log_ticks(values: Iterable[float]) -> tuple[list[float], list[str]]:
    """Ticks at 1, 2 and 5 times the powers of ten that span ``values``, each labelled in full. Plotly labels a
    log axis spanning under a decade or two "2 3 4 … 9 1M": a bare "2" read as 2 bytes, not 200 kB."""
    vals = [float(v) for v in values if _num(v) and v > 0]
    if not vals:
        return [], []
    lo, hi = min(vals), max(vals)
    ticks = [m * 10.0 ** e for e in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
             for m in (1, 2, 5)]
    inside = [t for t in ticks if lo / 1.5 <= t <= hi * 1.5]
    if len(inside) < 2:  # a narrow range: the nearest tick either side
        inside = [max(t for t in ticks if t <= lo), min(t for t in ticks if t >= hi)]
    inside = sorted(set(round(t, 12) for t in inside))
    return inside, [_tick_text(t) for t in inside]


def cost_figure(view: pd.DataFrame, cost: str, axis_label: str, log_x: bool = True, show_front: bool = True,
                include_chance: bool = False, height: int = 460,
                template: str | None = None) -> tuple[go.Figure | None, pd.DataFrame, pd.DataFrame | None]:
    """Accuracy against ``cost`` for the runs in ``view``: points by method, the Pareto front per test set,
    and on the MACs axis the published points. Returns (figure or None when no run has both values, the
    plotted rows, the published points drawn or None). ``template``: plotly's (None: the default, Streamlit's
    inside the dashboard)."""
    view = view.assign(pareto=results.pareto_mask(view, cost, include_chance=include_chance))
    scaled = {f.name: view[f.name] * f.shown_scale for f in record.FIELDS if f.shown_scale != 1 and f.name in view}
    plot_df = view.assign(**scaled).dropna(subset=[cost, "accuracy"])
    plot_df = plot_df.assign(name=plot_df["name"].map(_text), method_params=plot_df["method_params"].map(_text),
                             flags=plot_df["flags"].map(_text))
    if plot_df.empty:
        return None, plot_df, None
    latency = cost == "latency_ms"
    if latency:  # each point's spread: its median up to its 90th percentile
        plot_df = plot_df.assign(latency_spread=(plot_df["latency_p90_ms"] - plot_df["latency_ms"]).clip(lower=0),
                                 no_spread=0.0)
    # On the latency axis the symbol is the runtime: ONNX Runtime INT8 and PyTorch eager are different
    # engines, and their latencies are not one scale a point can move along.
    fig = px.scatter(plot_df, x=cost, y="accuracy", color="method", symbol="runtime" if latency else "arch",
                     log_x=log_x, hover_name="name", height=height, template=template,
                     error_x="latency_spread" if latency else None,
                     error_x_minus="no_spread" if latency else None,
                     hover_data={"run_id": True, "method_params": True, "x_smaller": ":.2f", "x_faster": ":.2f",
                                 "delta_accuracy": ":+.1f", "latency_ms": ":.3f", "latency_p90_ms": ":.3f",
                                 "runtime": True, "size_bytes": ":,", "macs": ":,", "arch": not latency,
                                 "flags": True},
                     labels={cost: axis_label, "accuracy": "test accuracy", "delta_accuracy": "Δ accuracy (pt)",
                             "runtime": "timed in", "latency_p90_ms": "latency p90 (ms)", "flags": "warnings"})
    fig.update_traces(marker=dict(size=11, line=dict(width=1, color="white")))
    if show_front:  # one front per test set: accuracies on different data do not compete
        groups = list(view[view["pareto"]].groupby(results.TEST_SET, dropna=False, sort=False))
        for i, (_key, front) in enumerate(groups):
            front = front.sort_values(cost)
            fig.add_trace(go.Scatter(
                x=front[cost], y=front["accuracy"], mode="lines+markers", legendgroup="front",
                showlegend=i == 0, name="Pareto front" + (" (one per test set)" if len(groups) > 1 else ""),
                marker=dict(size=17, symbol="circle-open", color="rgba(17,24,39,0.55)"),
                line=dict(color="rgba(17,24,39,0.55)", dash="dash", shape="hv"), hoverinfo="skip"))
    lo, hi = plot_df["accuracy"].min(), plot_df["accuracy"].max()
    published = results.literature_points(view) if cost == "macs" else None
    if published is not None and not published.empty:
        # our base's MACs ÷ the published reduction: where that result sits on this net's axis
        fig.add_trace(go.Scatter(
            x=published["macs"], y=published["accuracy"], mode="markers", name="published (literature)",
            marker=dict(size=12, symbol="diamond", color="#f59e0b", line=dict(width=1, color="#78350f")),
            customdata=published[["method", "net", "base_acc", "result_acc", "delta_pt", "mac_reduction",
                                  "setting", "source"]].map(_text).to_numpy(),
            hovertemplate="<b>%{customdata[0]}</b> (published, %{customdata[1]})<br>"
                          "accuracy %{customdata[3]} % from a base of %{customdata[2]} % (Δ %{customdata[4]} pt)"
                          "<br>%{customdata[5]}x fewer MACs: %{customdata[6]}<br>source: %{customdata[7]}"
                          "<extra></extra>"))
        lo, hi = min(lo, published["accuracy"].min()), max(hi, published["accuracy"].max())
    fig.update_yaxes(range=[max(0.0, lo - 0.05), min(1.0, hi + 0.05) + 0.01])
    if log_x:
        xs = list(plot_df[cost]) + (list(published["macs"]) if published is not None and not published.empty else [])
        tickvals, ticktext = log_ticks(xs)
        fig.update_xaxes(tickmode="array", tickvals=tickvals, ticktext=ticktext)
    # the legend below, as the search page's: beside the plot it left a narrow page a sliver of plot
    fig.update_layout(margin=dict(l=10, r=10, t=10, b=10), legend=dict(orientation="h", y=-0.2))
    return fig, plot_df, published


# -- the file -----------------------------------------------------------------------------------
def _e(v: Any) -> str:
    return html.escape("" if v is None else str(v))


def _num(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


def _fmt(v: Any, spec: str) -> str:
    return format(v, spec) if _num(v) else ""


def _interval(low: Any, high: Any, spec: str, scale: float = 1.0, sep: str = " to ") -> str:
    return f"{format(scale * low, spec)}{sep}{format(scale * high, spec)}" if _num(low) and _num(high) else ""


def table_rows(view: pd.DataFrame, by_id: dict[str, dict[str, Any]]) -> list[dict[str, str]]:
    """The report's table: one row per run, each figure with its interval beside it."""
    rows = []
    for _, r in view.iterrows():
        rec = by_id.get(r["run_id"], {})
        ci = rec.get("accuracy_ci95") or [None, None]
        is_base = r["run_id"] == r["base_id"]
        rows.append({
            "run": f"{r['name'] or r['run_id']} ({r['run_id']})" if r["name"] else r["run_id"],
            "method": r["method"], "arch": r["arch"], "dataset": r["dataset"],
            "accuracy": _fmt(r["accuracy"], ".4f"),
            "accuracy 95% CI": _interval(ci[0], ci[1], ".4f"),
            "Δ accuracy (pt)": "" if is_base else _fmt(100 * r["delta_accuracy"], "+.2f"),
            "Δ 95% CI (pt, paired)": "" if is_base else _interval(r["delta_ci_low"], r["delta_ci_high"], "+.2f", 100),
            "size": _fmt(r["size_bytes"] / 1e6, ",.3f") + " MB" if _num(r["size_bytes"]) else "",
            "x smaller": "" if is_base else _fmt(r["x_smaller"], ".2f"),
            "MACs": _fmt(r["macs"], ",.0f"),
            "x fewer MACs": "" if is_base else _fmt(r["x_fewer_macs"], ".2f"),
            "latency (ms)": _fmt(r["latency_ms"], ".3f"),
            "x faster": "" if is_base else _fmt(r["x_faster"], ".2f")
            + (" (paired)" if bool(r.get("x_faster_paired")) and _num(r["x_faster"]) else ""),
            "x faster range": "" if is_base else _interval(r["x_faster_low"], r["x_faster_high"], ".2f", sep="–"),
            "timed in": r.get("runtime") or "",
            "Pareto (MACs)": "yes" if r["pareto_macs"] else "",
            "warnings": r.get("flags") or "",
        })
    return rows


def machines(by_id: dict[str, dict[str, Any]], run_ids: list[str]) -> list[dict[str, str]]:
    """Each distinct machine the runs in view were measured on, with the runs measured there."""
    seen: dict[tuple, list[str]] = {}
    for rid in run_ids:
        rec = by_id.get(rid, {})
        key = tuple((k, str(rec[k])) for k in MACHINE_KEYS if rec.get(k) not in (None, ""))
        seen.setdefault(key, []).append(rid)
    return [{**dict(key), "runs": ", ".join(rids)} for key, rids in seen.items()]


def _html_table(rows: list[dict[str, str]], cls: str = "") -> str:
    if not rows:
        return "<p>None.</p>"
    cols = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{_e(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_e(r.get(c, ''))}</td>" for c in cols) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _recipe(rid: str, rec: dict[str, Any], spec: dict[str, Any] | None) -> str:
    title = f"{rec.get('name') or rid} · {rid} · {rec.get('method')}"
    parts = {"spec (as run)": spec, "recipe (resolved)": rec.get("recipe"), "method parameters": rec.get("method_params"),
             "started from": rec.get("parent")}
    body = "".join(f"<h4>{_e(k)}</h4><pre>{_e(json.dumps(v, indent=2, sort_keys=True, default=str))}</pre>"
                   for k, v in parts.items() if v not in (None, {}, ""))
    return f"<details><summary>{_e(title)}</summary>{body}</details>"


STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;color:#111827}
h1{margin-bottom:.2rem} .meta{color:#6b7280;margin-top:0}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0 1.5rem}
th,td{border:1px solid #e5e7eb;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f3f4f6} pre{background:#f9fafb;padding:.5rem;overflow-x:auto;font-size:.8rem}
details{margin:.3rem 0} summary{cursor:pointer}
"""


def report_html(view: pd.DataFrame, by_id: dict[str, dict[str, Any]], specs: dict[str, dict[str, Any] | None],
                include_chance: bool = False, filters: str = "") -> str:
    """The whole report as one HTML document (``view``: rows of ``results.table``; ``specs``: run id -> spec)."""
    view = view.assign(pareto_macs=results.pareto_mask(view, "macs", include_chance=include_chance))
    plots, first = [], True
    for label, cost in results.cost_axes().items():
        # Inside the dashboard the default template is Streamlit's, whose colours are placeholders ("#000001"
        # ...) that only its page fills in: the file drew every method in black. A template of plotly's own.
        fig, _, _ = cost_figure(view, cost, label, log_x=True, show_front=True, include_chance=include_chance,
                                template="plotly_white")
        if fig is None:
            continue
        # plotly.js goes into the file once, with the first plot: the file then opens offline.
        div = pio.to_html(fig, full_html=False, include_plotlyjs=True if first else False,
                          config={"displaylogo": False}, div_id=f"plot-{cost}")
        first = False
        plots.append(f"<h3>Accuracy against {_e(label)}</h3>{div}")
    published = results.literature_points(view)
    lit = published[["method", "net", "dataset", "base_acc", "result_acc", "delta_pt", "mac_reduction", "setting",
                     "source"]].to_dict("records") if not published.empty else []
    recipes = "".join(_recipe(rid, by_id.get(rid, {}), specs.get(rid)) for rid in view["run_id"])
    made = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Slimbench report</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>
<body>
<h1>Slimbench report</h1>
<p class="meta">{len(view)} run(s), made {made}{(" · filters: " + _e(filters)) if filters else ""}.
Accuracy intervals are 95 % Wilson intervals over the test images; Δ accuracy is against each run's base, its
interval paired over the answers that flipped; "x faster" is paired (timed interleaved with its start, in the same
runtime) where marked, and its range is the slowest and fastest round.</p>
<h2>Accuracy against cost</h2>
{"".join(plots) or "<p>No run in view has both accuracy and a cost measured.</p>"}
<h2>Runs</h2>
{_html_table(table_rows(view, by_id), "runs")}
<h2>Machines</h2>
{_html_table(machines(by_id, list(view["run_id"])), "machines")}
<h2>Published results for these nets</h2>
{_html_table([{k: v for k, v in r.items()} for r in lit], "literature") if lit else
 "<p>The literature table has no published points for the nets and data in view.</p>"}
<h2>Recipes</h2>
{recipes}
</body></html>
"""
