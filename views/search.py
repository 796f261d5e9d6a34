"""Search: one auto-compress search, live while it runs (the journal its trials are written to, polled
as Jobs polls) and complete once it ends: its trials on validation accuracy against the objective with
the current Pareto front and the limit, the best trial so far, the trials stopped and why; finished,
the winner and why, its control and downloads, the front's test accuracies (read only then) and the
front against the hand-made runs on the same start."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from engine import jobs, results, searches
from engine.accuracy_text import change, percent, points
from engine.spec import SpecError
from engine.store import FINAL_STATES
from views import search_plots
from views.common import download, download_best, fmt_seconds, get_store, md_text, run_label

st.title("Auto-compress search")
store = get_store()
REFRESH_S = 2.0   # while the search runs: a trial's point appears within this of its journal entry

rows = searches.searches_of(store.list())
if not rows:
    st.info("No auto-compress search yet. Start one on **Experiments**, tab *Auto-compress*, or with "
            "`python -m engine autocompress --from-run RUN`.")
    st.page_link("views/experiments.py", label="Experiments", icon=":material/science:")
    st.stop()

labels = {r["id"]: run_label(r) for r in rows}
linked = st.query_params.get("run")   # /search?run=ID: Jobs and Compare link a search here
if linked and linked not in labels:
    st.warning(f"Run {md_text(linked)} is no auto-compress search in this workspace; showing the newest.")
run_id = st.selectbox("Search", list(labels), index=list(labels).index(linked) if linked in labels else 0,
                      format_func=labels.get, key="search_run")
if st.query_params.get("run") != run_id:
    st.query_params["run"] = run_id    # the address names the search shown: a link to it opens it
state_at_start = next(r["state"] for r in rows if r["id"] == run_id)


def budget_text(s: searches.Search) -> str:
    p = s.params
    what = s.cost_label
    goal = f"{what} at most 1/{s.target:g} of the start's, most accurate wins" if s.target else f"{what} minimised"
    budget = " and ".join(x for x in (f"{p['trials']} trials", p.get("minutes") and f"{p['minutes']:g} min") if x)
    return (f"Limit **{s.limit:g} pt** of validation accuracy · objective: {goal} · budget: {budget} · "
            f"candidates: {', '.join(p.get('space') or [])}")


@st.fragment(run_every=None if state_at_start in FINAL_STATES else REFRESH_S)
def live() -> None:
    try:
        s = searches.load(store, run_id)
    except SpecError as e:
        st.error(md_text(e))
        return
    if (s.state in FINAL_STATES) != (state_at_start in FINAL_STATES):
        st.rerun()   # it ended (or a retry brought it back): the whole page, polling as its state calls for
    st.caption(budget_text(s))
    if s.timing:
        st.caption(f"Latency timing: {md_text(s.timing)}")
    scored = [t for t in s.trials if t.get("val_accuracy") is not None and t.get("repeat_of") is None]
    running = [t for t in s.trials if t["state"] == "running"]
    # a trial that drew a recipe already scored reuses that trial's result: without a tile of its own, 3 trials
    # read as 1 scored + 1 stopped, the third nowhere (a repeat of a stopped trial is stopped, and counted there)
    repeats = [t for t in s.trials if t.get("repeat_of") is not None and t not in s.stopped]
    tiles = st.container(horizontal=True)   # tiles that wrap on a narrow page, never cutting a number
    c = [tiles] * 6
    c[0].metric("State", s.state)
    c[1].metric("Trials", f"{sum(t['state'] in ('complete', 'pruned') for t in s.trials)} / {s.params['trials']}",
                help="finished or stopped, against the budget (a resumed search counts its earlier trials)")
    c[2].metric("Scored", len(scored), help="trials whose model was scored on the validation split")
    c[3].metric("Stopped or refused", len(s.stopped))
    if repeats:
        c[5].metric("Repeats", len(repeats), help="trials whose drawn recipe had already been tried: the earlier "
                    "trial's result is reused, nothing is trained again (" + ", ".join(
                        f"trial {t['trial']} = trial {t['repeat_of']}" for t in repeats) + ")")
    c[4].metric("Start, validation", percent(s.start_val),
                help="the start's top-1 on the validation split, which every trial's drop is measured against")
    if s.state == "queued":
        st.info("Queued: the search starts when the worker picks it up.", icon=":material/hourglass_top:")
    if s.state in ("failed", "cancelled", "interrupted"):
        st.error(f"The search {s.state}" + (f": {md_text(s.error)}" if s.error else ".") + " A retry on **Jobs** "
                 "continues it from its finished trials.", icon=":material/error:")
    for t in running:
        st.caption(f"Running: trial {t['trial']}: {md_text(t.get('recipe') or 'drawing its recipe')}")

    fig = search_plots.trials_figure(s)
    if fig is None:
        st.info("No trial scored yet: each trial's point appears here once its model is scored on the validation "
                "split.", icon=":material/scatter_plot:")
    else:
        st.plotly_chart(fig, key="search_trials", config={"displaylogo": False})

    if s.done:
        conclusion(s)
    else:
        best = s.best_so_far()
        if best:
            st.success(f"Best so far: trial {best['trial']}, {md_text(best['recipe'])}: validation accuracy "
                       f"{percent(best['val_accuracy'])} ({change(best['drop_pt'])}), {s.objective} "
                       f"{best['cost_ratio']:.3f}x the start's.", icon=":material/trending_up:")
        elif scored:
            st.warning("No trial within the limit yet.", icon=":material/trending_flat:")
    stopped_table(s)
    trials_table(s)


def pct(acc: float | None) -> float | None:
    """A top-1 fraction as the tables show it: in percent (the tiles', sentences' and plots' unit)."""
    return None if acc is None else 100 * acc


def conclusion(s: searches.Search) -> None:
    if not s.winner:
        st.error(f"**No trial met the limit.** {md_text(s.why or '')}.", icon=":material/block:")
        if s.closest:
            st.markdown("**The closest trials and what bound them**")
            st.dataframe(pd.DataFrame([{"trial": t["trial"], "recipe": t.get("recipe"),
                                        "validation accuracy": pct(t.get("val_accuracy")),
                                        "drop (pt)": points(t.get("drop_pt")),
                                        f"{s.objective} ÷ start": t.get("cost_ratio"), "bound by": t.get("bound_by")}
                                       for t in s.closest]), hide_index=True, width="stretch", key="search_closest",
                         column_config=number_formats(s))
        hand_made_section(s)
        return
    st.success(f"**Winner**: {md_text(s.why or s.winner)}.", icon=":material/trophy:")
    win = store.get(s.winner) or {}
    rec = win.get("record") or {}
    a, b = st.columns([3, 2])
    with a:
        st.markdown("**Why this one: its recipe**")
        method = (win.get("spec") or {}).get("method") or {}
        # an option left unset (null) means its default: shown, it reads as a value
        st.json({**method, "params": {k: v for k, v in (method.get("params") or {}).items() if v is not None}},
                expanded=2)
    with b:
        st.markdown("**Its control**")
        control_section(s.winner, win)
    st.markdown("**Downloads of the winner**")
    files = st.container(horizontal=True)   # buttons at their own width, wrapping on a narrow page (as Compare's)
    d = [files] * 3
    with d[0]:
        download(s.winner, "checkpoint", "Winner's checkpoint (.pt)", key="search_dl_pt",
                 note="Loads with Slimbench (engine.export.load_model).")
    with d[1]:
        download(s.winner, "onnx", "Winner's ONNX model", key="search_dl_onnx")
    with d[2]:
        download_best(s.winner, rec, key="search_dl_best")
    st.page_link("views/compare.py", label="The winner on Compare (every measurement, model card)",
                 icon=":material/compare_arrows:", query_params={"run": s.winner})
    front_section(s)
    hand_made_section(s)


def control_section(winner: str, win: dict) -> None:
    from engine.methods import control
    recs = {r["id"]: r for r in store.list() if (r.get("spec") or {}).get("method", {}).get("name") == "control"}
    mine = [r for r in recs.values() if ((r.get("spec") or {}).get("method") or {}).get("params", {}).get("of_run")
            == winner]
    done = [r for r in mine if r["state"] == "done" and r.get("record")]
    if done:
        st.info(md_text(results.control_verdict(done[-1]["record"])), icon=":material/balance:")
    elif mine:
        st.caption(f"Its control is {mine[-1]['state']} (job {mine[-1]['id']}).")
    elif not control.controllable((win.get("spec") or {}).get("method") or {}):
        st.caption("No control for this recipe: a control (the same family trained from scratch at the winner's "
                   "MACs) is trained only for structured, low-rank, factorisation or distillation results that end "
                   "in a PyTorch model.")
    else:
        st.caption("Not trained yet: the same family scaled to the winner's MACs, trained from scratch with the "
                   "same epoch budget, tells whether compressing beat simply training a smaller net.")
        if st.button("Queue its control", key="search_control", icon=":material/balance:"):
            spec = win["spec"]
            job = jobs.submit({"name": f"control of {win.get('name') or winner}", "data": spec["data"],
                               "model": spec["model"], "train": spec.get("train", {}),
                               "measure": spec.get("measure", {}),
                               "method": {"name": "control", "params": {"of_run": winner}}}, store)
            st.toast(f"Control queued: {job}")


def number_formats(s: searches.Search) -> dict:
    num = st.column_config.NumberColumn
    return {"validation accuracy": num(format="%.2f %%"), "test accuracy": num(format="%.2f %%"),
            "drop (pt)": num(format="%.2f pt", help="validation accuracy lost against the start, in points "
                                                    "(negative: gained)"),
            f"{s.objective} ÷ start": num(format="%.3f", help=f"the trial's {s.objective} over the start's")}


def front_section(s: searches.Search) -> None:
    st.markdown("**The final Pareto front**")
    st.caption("Test set read only for the final front: the search chose on the validation split, and only once "
               "it ended were the front's models scored on the test split. These test accuracies steered nothing.")
    st.dataframe(pd.DataFrame([{"trial": t["trial"], "recipe": t.get("recipe"),
                                "validation accuracy": pct(t.get("val_accuracy")),
                                "drop (pt)": points(t.get("drop_pt")),
                                f"{s.objective} ÷ start": t.get("cost_ratio"),
                                "test accuracy": pct(t.get("test_accuracy")),
                                **({"timed in": t.get("runtime")} if s.objective == "latency" else {}),
                                "winner": t.get("run_id") == s.winner, "run": t.get("run_id")} for t in s.front]),
                 hide_index=True, width="stretch", key="search_front", column_config=number_formats(s))


def hand_made_section(s: searches.Search) -> None:
    recs = {r["run_id"]: r for r in results.records(store)}
    others = searches.hand_made(recs, store.list(), s)
    st.markdown("**The front against the hand-made runs on the same start**")
    fig = search_plots.against_hand_made(s, others)
    if fig is None:
        st.caption("No hand-made run (a preset or a method launched by hand) starts from this search's start yet; "
                   "run the Quick tour or a custom experiment from it to see whether the search beats them.")
        return
    st.caption("Both on the test split (the front's test accuracies were read after the search ended); a hand-made "
               "run above and left of the front would beat the search.")
    st.plotly_chart(fig, key="search_vs_hand_made", config={"displaylogo": False})


def stopped_table(s: searches.Search) -> None:
    stopped = s.stopped
    if not stopped:
        return
    with st.expander(f"Trials stopped early or refused ({len(stopped)}), and why", icon=":material/content_cut:",
                     expanded=True):
        st.dataframe(pd.DataFrame([{"trial": t["trial"], "recipe": t.get("recipe"), "why": t.get("why") or t["state"]}
                                   for t in stopped]), hide_index=True, width="stretch", key="search_stopped",
                     column_config={"why": st.column_config.TextColumn(width="large")})


def trials_table(s: searches.Search) -> None:
    if not s.trials:
        return
    with st.expander(f"Every trial ({len(s.trials)})", icon=":material/list:"):
        st.dataframe(pd.DataFrame([{"trial": t["trial"], "state": t["state"], "recipe": t.get("recipe"),
                                    "validation accuracy": pct(t.get("val_accuracy")),
                                    "drop (pt)": points(t.get("drop_pt")),
                                    f"{s.objective} ÷ start": t.get("cost_ratio"),
                                    "repeat of": t.get("repeat_of"), "run": t.get("run_id")} for t in s.trials]),
                     hide_index=True, width="stretch", key="search_all", column_config=number_formats(s))


live()
row = store.get(run_id) or {}
if row.get("started"):
    ended = row.get("finished")
    st.caption(f"Started {pd.Timestamp(row['started'], unit='s'):%Y-%m-%d %H:%M:%S} UTC"
               + (f", ran {fmt_seconds(ended - row['started'])}" if ended else "")
               + f" · run `{run_id}`")
