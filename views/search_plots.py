"""The search page's two plots: trials on validation accuracy against the objective (live), and the final
front against the hand-made runs on the same start (test split, once the search has ended)."""
from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from engine import searches
from engine.accuracy_text import change
from views.common import plot_text

FRONT, LIMIT, START, WIN = "#2563eb", "#dc2626", "#111827", "#f59e0b"
SHARE_TICKS = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10]   # labelled as shares
CANDIDATE_COLOURS = ("#0ea5e9", "#8b5cf6", "#10b981", "#f97316", "#64748b")


def _axis_title(s: searches.Search) -> str:
    return f"{s.cost_label} as a share of the start's (log; left is cheaper)"


def _layout(fig: go.Figure, s: searches.Search, y_title: str) -> go.Figure:
    fig.update_layout(height=430, margin=dict(l=10, r=10, t=30, b=10), legend=dict(orientation="h", y=-0.2),
                      hovermode="closest")
    fig.update_xaxes(type="log", title=_axis_title(s), tickvals=SHARE_TICKS, tickformat=".1~%")
    fig.update_yaxes(title=y_title, ticksuffix=" %")   # accuracies in percent, as the page's tiles and tables
    return fig


def trials_figure(s: searches.Search) -> go.Figure | None:
    """Scored trials by candidate, the current front as a step line, the limit as a line, the best so far
    (or the winner) starred; None before any trial is scored."""
    scored = [t for t in s.trials if t.get("val_accuracy") is not None and t.get("cost_ratio") is not None
              and t.get("repeat_of") is None]
    if not scored:
        return None
    fig = go.Figure()
    candidates = list(dict.fromkeys((t.get("params") or {}).get("candidate", "?") for t in scored))
    for i, cand in enumerate(candidates):
        pts = [t for t in scored if (t.get("params") or {}).get("candidate", "?") == cand]
        fig.add_trace(go.Scatter(
            x=[t["cost_ratio"] for t in pts], y=[pct(t["val_accuracy"]) for t in pts], mode="markers", name=cand,
            marker=dict(size=11, color=CANDIDATE_COLOURS[i % len(CANDIDATE_COLOURS)], line=dict(width=1, color="white")),
            customdata=[[t["trial"], plot_text(t.get("recipe") or ""),
                         "" if t.get("drop_pt") is None else f"({change(t['drop_pt'])})"] for t in pts],
            hovertemplate="trial %{customdata[0]}: %{customdata[1]}<br>validation %{y:.2f} % %{customdata[2]}"
                          "<br>cost %{x:.3f}x the start's<extra></extra>"))
    front = sorted(s.front, key=lambda t: t["cost_ratio"])
    if front:
        fig.add_trace(go.Scatter(x=[t["cost_ratio"] for t in front], y=[pct(t["val_accuracy"]) for t in front],
                                 mode="lines", line=dict(color=FRONT, width=2, shape="hv"), name="Pareto front",
                                 hoverinfo="skip"))
    best = next((t for t in scored if t.get("run_id") == s.winner), None) if s.done else s.best_so_far()
    if best:
        fig.add_trace(go.Scatter(x=[best["cost_ratio"]], y=[pct(best["val_accuracy"])], mode="markers",
                                 name="winner" if s.done else "best so far", hoverinfo="skip",
                                 marker=dict(symbol="star", size=20, color=WIN, line=dict(width=1, color=START))))
    ys = [pct(t["val_accuracy"]) for t in scored]
    if s.start_val is not None:
        fig.add_trace(go.Scatter(x=[1.0], y=[pct(s.start_val)], mode="markers", name="start", marker=dict(
            symbol="diamond", size=12, color=START), hovertemplate="the start: validation %{y:.2f} %<extra></extra>"))
        ys.append(pct(s.start_val))
        limit = pct(s.start_val) - s.limit
        if limit > 0:   # a limit below 0 % bounds nothing: no line, and the axis stays on the points
            fig.add_hline(y=limit, line=dict(color=LIMIT, dash="dash"), annotation_position="bottom left",
                          annotation_text=f"limit: {s.limit:g} pt below the start")
            ys.append(limit)
    if s.target:
        fig.add_vline(x=1 / s.target, line=dict(color=LIMIT, dash="dot"),
                      annotation_text=f"target 1/{s.target:g}", annotation_position="top left")
    fig = _layout(fig, s, "accuracy on the VALIDATION split")
    fig.update_yaxes(range=_padded(ys))
    return fig


def pct(acc: float) -> float:
    return 100 * acc


def _padded(ys: list[float]) -> list[float]:
    """A y range around ``ys`` (percent) with a margin, inside [0, 100]."""
    lo, hi = min(ys), max(ys)
    pad = max(2.0, (hi - lo) * 0.1)
    return [max(0.0, lo - pad), min(100.0, hi + pad)]


def against_hand_made(s: searches.Search, others: list[dict[str, Any]]) -> go.Figure | None:
    """The front's test accuracies beside the hand-made runs' on the same start, same cost axis; None
    when there is nothing to set the front against."""
    hand = [(r, searches.cost_ratio(r, s.start, s.objective)) for r in others]
    hand = [(r, x) for r, x in hand if x is not None and r.get("accuracy") is not None]
    front = sorted((t for t in s.front if t.get("test_accuracy") is not None and t.get("cost_ratio") is not None),
                   key=lambda t: t["cost_ratio"])
    if not hand:
        return None
    fig = go.Figure()
    fig.add_trace(go.Scatter(
        x=[x for _, x in hand], y=[pct(r["accuracy"]) for r, _ in hand], mode="markers", name="hand-made runs",
        marker=dict(size=11, color="#94a3b8", symbol="square", line=dict(width=1, color=START)),
        customdata=[[plot_text(r.get("name") or r["run_id"]), r.get("method")] for r, _ in hand],
        hovertemplate="%{customdata[0]} (%{customdata[1]})<br>test %{y:.2f} %<br>cost %{x:.3f}x the start's"
                      "<extra></extra>"))
    if front:
        fig.add_trace(go.Scatter(
            x=[t["cost_ratio"] for t in front], y=[pct(t["test_accuracy"]) for t in front], mode="lines+markers",
            name="search front", line=dict(color=FRONT, width=2, shape="hv"), marker=dict(size=11, color=FRONT),
            customdata=[[t["trial"], plot_text(t.get("recipe") or "")] for t in front],
            hovertemplate="trial %{customdata[0]}: %{customdata[1]}<br>test %{y:.2f} %<br>cost %{x:.3f}x the "
                          "start's<extra></extra>"))
    if s.start.get("accuracy") is not None:
        fig.add_trace(go.Scatter(x=[1.0], y=[pct(s.start["accuracy"])], mode="markers", name="start",
                                 marker=dict(symbol="diamond", size=12, color=START),
                                 hovertemplate="the start: test %{y:.2f} %<extra></extra>"))
    fig = _layout(fig, s, "accuracy on the TEST split")
    ys = [pct(r["accuracy"]) for r, _ in hand] + [pct(t["test_accuracy"]) for t in front] + \
        ([pct(s.start["accuracy"])] if s.start.get("accuracy") is not None else [])
    fig.update_yaxes(range=_padded(ys))
    return fig
