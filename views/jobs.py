"""Jobs: the live queue (running first, cancelled hidden unless asked; each job's phase in words with its
ETA; an auto-compress search one row with its trials against its budget, the trials folded under it), the
launched plan's overall ETA and end notice, cancel / retry of one job, the ticked rows or a whole experiment
(a search cancelled with its running trials), and a job's curves and log."""
from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st

from engine import estimate, jobs, results, searches
from engine.store import FINAL_STATES
from views import job_groups, plan
from views.common import (fmt_bytes, fmt_count, fmt_ms, fmt_seconds, fmt_value, follow_activity, get_store, md_text,
                          plural)

st.title("Jobs")
store = get_store()

status = jobs.worker_status(store)
active = status["queued"] + status["running"] > 0
stuck = jobs.stuck_jobs(store)
if stuck and status["queued"] == len(stuck) and not status["running"]:
    # a worker would claim nothing: each queued job needs a run that was interrupted
    st.warning(f"{plural(len(stuck), 'queued job')} cannot start: " + "; ".join(f"{job} is {why}" for job, why in stuck.items()),
               icon=":material/pause_circle:")
elif status["queued"] and not status["alive"]:  # running jobs alone may be a CLI's: no worker needed
    c1, c2 = st.columns([3, 1])
    n = status["queued"]
    c1.warning(f"{plural(n, 'job')} {'is' if n == 1 else 'are'} queued but no worker is running: start one to run "
               f"{'it' if n == 1 else 'them'}.")
    if c2.button("Start worker", key="start_worker", type="primary"):
        jobs.ensure_worker(store)
        st.rerun()

# Refresh fast while something runs; at idle a slow poll keeps the CPU cost low (a fragment rerun
# costs ~85 ms of CPU whatever it draws); the table reruns the page when activity starts or stops.
REFRESH_S = 1.5 if active else 10.0


def job_rows(limit: int = 300) -> list[dict]:
    return jobs.list_jobs(store, limit=limit)


STATE_ORDER = {"running": 0, "queued": 1}   # what is moving first, then the rest newest first


def ordered(rows: list[dict], hide_cancelled: bool, folded: dict[str, str] | None = None) -> list[dict]:
    """Running jobs first, then queued ones, then the others, each newest first (rows come newest first
    and the sort is stable); cancelled ones left out when ``hide_cancelled``, and the runs ``folded`` names
    (a search's trials, listed under the table instead)."""
    shown = [r for r in rows if not (hide_cancelled and r["state"] == "cancelled") and r["id"] not in (folded or {})]
    return sorted(shown, key=lambda r: STATE_ORDER.get(r["state"], 2))


def reset_selection() -> None:
    """A new table key: the selection empties (it names rows by position, which a new order would change)."""
    st.session_state["jobs_table_n"] = st.session_state.get("jobs_table_n", 0) + 1


def table_key() -> str:
    return f"jobs_table~{st.session_state.get('jobs_table_n', 0)}"


def selected_rows() -> list[int]:
    state = st.session_state.get(table_key())
    return list((state or {}).get("selection", {}).get("rows", [])) if state else []


def bulk(action: str, ids: list[str]) -> None:
    """Cancel or retry ``ids`` (a button's callback; a cancel's ids carry each search's live trials, see
    ``job_groups.with_live_trials``); what happened shows as a toast on the next run."""
    outcome = (jobs.cancel_many if action == "cancel" else jobs.retry_many)(ids, store)
    ok = [j for j, why in outcome.items() if why is None]
    refused = {j: why for j, why in outcome.items() if why is not None}
    verb = "Cancel requested for" if action == "cancel" else "Queued again:"
    st.session_state["jobs_notice"] = ([f"{verb} {len(ok)} job(s)"] if ok else []) + \
        [f"{j}: {why}" for j, why in refused.items()]
    reset_selection()


@st.fragment(run_every=REFRESH_S)
def queue_table() -> None:
    follow_activity(active, jobs.worker_status(store))
    for line in st.session_state.pop("jobs_notice", []):
        st.toast(md_text(line))
    plan.summary(store, status["concurrency"], full=True)
    rows = job_rows()
    if not rows:
        st.info("No jobs yet. Launch some on **Experiments**.")
        return
    hide = st.session_state.get("jobs_hide_cancelled", True)
    by_id = {r["id"]: r for r in rows}
    owner = job_groups.trial_owner(rows)
    folded = {} if st.session_state.get("jobs_show_trials") else owner
    searched = {s: job_groups.progress(by_id[s], rows, owner) for s in dict.fromkeys(owner.values()) if s in by_id}
    # While rows are selected the order is held (the selection names rows by position); cells still update.
    held = st.session_state.get("jobs_order") if selected_rows() else None
    shown = [by_id[j] for j in held if j in by_id] if held else ordered(rows, hide, folded)
    st.session_state["jobs_order"] = [r["id"] for r in shown]
    table = [cells(r, results.job_progress(r), searched.get(r["id"]), r["id"] in owner) for r in shown]
    counts = pd.Series([r["state"] for r in rows]).value_counts()
    hidden = int(counts.get("cancelled", 0)) if hide else 0
    st.caption(" · ".join(f"{k}: **{v}**" for k, v in counts.items())
               + (f" · {hidden} cancelled hidden" if hidden else ""))
    # What matters first (the job, its state, what it does or why it failed) comes first; the
    # table scrolls sideways to the labels and ids. Long names wrap whole: a glide cell has no hover text.
    text = st.column_config.TextColumn
    st.dataframe(pd.DataFrame(table, columns=["job", "experiment", "id", "state", "progress", "activity", "error"]),
                 hide_index=True, width="stretch", key=table_key(), on_select="rerun", selection_mode="multi-row",
                 row_height=row_height([t["job"] for t in table]), column_order=SHOWN_COLUMNS,
                 column_config={"job": text(width=JOB_WIDTH_PX, pinned=True), "experiment": text(width=110),
                                "id": text(width=165), "state": text(width=75),
                                "progress": st.column_config.ProgressColumn("progress", min_value=0, max_value=1,
                                                                            format="percent", width=90),
                                "activity": text(width=240, help="a live job's phase (loading data, training "
                                                                 "epoch k/n, fine-tuning, calibrating, measuring, "
                                                                 "exporting), the time that phase (not the job) has "
                                                                 "left and its speed; a finished job's run time "
                                                                 "(whole under Job details)"),
                                "error": text(width="medium", help="why it failed (whole under Job details)")})
    if folded:
        in_table = {r["id"] for r in shown}
        search_trials([(by_id[s], p) for s, p in searched.items() if s in in_table])
    chosen = [st.session_state["jobs_order"][i] for i in selected_rows() if i < len(shown)]
    stoppable = [j for j in chosen if by_id[j]["state"] in ("queued", "running")]
    retryable = [j for j in chosen if by_id[j]["state"] in jobs.RETRYABLE]
    row = st.container(horizontal=True)  # buttons at their own width, wrapping on a narrow page
    row.button(f"Cancel selected ({len(stoppable)})", key="bulk_cancel", icon=":material/stop:", disabled=not stoppable,
               on_click=bulk, args=("cancel", job_groups.with_live_trials(stoppable, rows, owner)),
               help="the selected jobs that are queued or running; a search's running trials stop with it")
    row.button(f"Retry selected ({len(retryable)})", key="bulk_retry", icon=":material/replay:", disabled=not retryable,
               on_click=bulk, args=("retry", retryable), help="the selected jobs that were interrupted, failed or "
                                                              "cancelled")
    st.caption("Tick rows in the table to act on several jobs; or act on a whole experiment below.")
    experiments = sorted({e for e in ((r.get("spec") or {}).get("experiment") for r in rows) if e})
    if experiments:
        e1, e2, e3 = st.columns([2, 1, 1], vertical_alignment="bottom")
        exp = e1.selectbox("All jobs of experiment", experiments, key="bulk_experiment")
        live = jobs.matching(store, experiment=exp, states=("queued", "running"))
        # a search's trials are the search's to rerun (a retry of the search continues it): one it stopped on
        # purpose, retried alone, would run outside it and be counted here as one more job to retry
        again = [j for j in jobs.matching(store, experiment=exp, states=jobs.RETRYABLE) if j not in owner]
        e2.button(f"Cancel all ({len(live)})", key="bulk_cancel_experiment", disabled=not live,
                  on_click=bulk, args=("cancel", job_groups.with_live_trials(live, rows, owner)),
                  help="every queued or running job of this experiment, a search's trials included")
        e3.button(f"Retry all ({len(again)})", key="bulk_retry_experiment", disabled=not again,
                  on_click=bulk, args=("retry", again),
                  help="every interrupted, failed or cancelled job of this experiment; a search's trials are "
                       "left to the search (retrying it continues it from its finished trials)")
        of_exp = [r for r in rows if (r.get("spec") or {}).get("experiment") == exp]
        waiting = " (no worker is running: the time counts from when one starts)" if live and not status["alive"] else ""
        st.caption(f"Experiment **{md_text(exp)}**: " + estimate.remaining(of_exp, store, status["concurrency"]).text()
                   + waiting)


def cells(r: dict, p: dict, search: job_groups.SearchProgress | None, trial: bool) -> dict:
    """One table row; a search with trials shows how many of its budget have ended as its progress, and
    a trial (shown when asked) says whose it is."""
    name = r.get("name") or r.get("method") or ""
    progress, doing = p["progress"], activity(r, p)
    if search is not None:
        progress = search.fraction if search.fraction is not None else progress
        doing = " · ".join(x for x in (search.text(), doing if r["state"] in ("running", "queued") else "") if x)
    return {"job": ("↳ " if trial else "") + name, "experiment": label_of(r), "id": r["id"], "state": r["state"],
            "progress": progress, "activity": doing, "error": r.get("error") or ""}


def search_trials(groups: list[tuple[dict, job_groups.SearchProgress]]) -> None:
    """Each search's trials folded under the table, one expander a search (newest first)."""
    for s, p in groups:
        with st.expander(f"Trials of the search {md_text(s.get('name') or s['id'])}: {p.text()}",
                         icon=":material/travel_explore:"):
            st.page_link("views/search.py", label="Its trials against the objective, live: the search's page",
                         icon=":material/travel_explore:", query_params={"run": s["id"]})
            rows = [cells(r, results.job_progress(r), None, False) for r in p.trials]
            st.dataframe(pd.DataFrame(rows, columns=["job", "state", "progress", "activity", "error", "id"]),
                         hide_index=True, width="stretch", key=f"trials_{s['id']}",
                         column_config={"progress": st.column_config.ProgressColumn("progress", min_value=0,
                                                                                    max_value=1, format="percent")})


SHOWN_COLUMNS = ("job", "state", "progress", "activity", "error", "experiment", "id")
JOB_WIDTH_PX = 260
# Streamlit wraps a cell's text only in rows taller than 4 rem (64 px); a line of the table's text
# takes ~20 px and the job column holds ~32 characters of it.
WRAP_MIN_PX, LINE_PX, PAD_PX, CHARS_PER_LINE, MAX_LINES = 65, 20, 8, 32, 8


def row_height(names: list[str]) -> int | None:
    """Rows tall enough for the longest job name to wrap whole (up to MAX_LINES lines); None, one
    line, while every name fits on one."""
    lines = max((-(-len(n) // CHARS_PER_LINE) for n in names), default=1)
    return None if lines <= 1 else max(WRAP_MIN_PX, PAD_PX + LINE_PX * min(lines, MAX_LINES))


SELECT_CHARS = 40   # what the Job select shows of a name at 800 px, its id beside it


def short(name: str) -> str:
    """``name`` cut at a word to fit the Job select (the page writes it whole under the select)."""
    if len(name) <= SELECT_CHARS:
        return name
    cut = name[:SELECT_CHARS - 1].rsplit(" ", 1)[0].rstrip(" ,;:·→-")
    return (cut or name[:SELECT_CHARS - 1]) + "…"


def method_of(r: dict | None) -> str | None:
    return ((r or {}).get("spec") or {}).get("method", {}).get("name")


def label_of(r: dict) -> str:
    spec = r.get("spec") or {}
    return " / ".join(v for v in (spec.get("experiment"), spec.get("group")) if v)


def activity(r: dict, p: dict) -> str:
    """One cell for what a job is doing (its phase in words, the phase's ETA, img/s, from its
    ``job_progress``) or, once ended, how long it ran."""
    if r["state"] in ("running", "queued"):
        return " · ".join(x for x in (
            p["phase"], p["eta_s"] is not None and f"{fmt_seconds(p['eta_s'])} left",
            p["images_per_s"] is not None and f"{p['images_per_s']:.0f} img/s") if x)
    if r.get("started") and r.get("finished"):
        return f"ran {fmt_seconds(r['finished'] - r['started'])}"
    return ""


st.session_state.setdefault("jobs_hide_cancelled", True)  # a kept widget: its default goes through state
st.toggle("Hide cancelled jobs", key="jobs_hide_cancelled", on_change=reset_selection)
if any(searches.is_search(r) for r in job_rows()):  # offered only where there are trials to show
    st.toggle("Show search trials in the table", key="jobs_show_trials", on_change=reset_selection,
              help="an auto-compress search's trials are runs of their own; folded under the table by default, "
                   "the search's row showing how many of its budget have ended")
queue_table()

st.divider()
st.subheader("Job details")
all_rows = job_rows()
if all_rows:
    names = {r["id"]: str(r.get("name") or r.get("method") or "") for r in all_rows}
    labels = {j: f"{short(n)} · {j}" for j, n in names.items()}
    # a running job, else the newest; of those the table shows (not a search's trial or a cancelled job it hides)
    in_table = set(st.session_state.get("jobs_order") or []) or set(labels)
    default = next((i for i, r in enumerate(all_rows) if r["state"] == "running" and r["id"] in in_table),
                   next((i for i, r in enumerate(all_rows) if r["id"] in in_table), 0))
    job_id = st.selectbox("Job", list(labels), index=default, format_func=labels.get, key="job_select",
                          help="a long name is shortened here and written whole under the list")
    selected = next(r for r in all_rows if r["id"] == job_id)
    if short(names[job_id]) != names[job_id]:  # the select cuts its text at its width: the name whole, wrapping
        st.markdown(f"**{md_text(names[job_id])}**")

    # A finished job's curves and log no longer change: poll only while it can still move (a retry
    # reruns the page, so polling resumes when it brings the job back to life).
    @st.fragment(run_every=None if selected["state"] in FINAL_STATES else REFRESH_S)
    def job_detail() -> None:
        row = store.get(job_id)
        if row is None:
            st.error("This job no longer exists; pick another one.")
            return
        bar = st.container(horizontal=True, vertical_alignment="center")  # buttons at their own width
        if bar.button("Cancel", key="cancel", disabled=row["state"] in FINAL_STATES, icon=":material/stop:",
                      help="a search's running trials stop with it"):
            rows = job_rows()
            ids = job_groups.with_live_trials([job_id], rows, job_groups.trial_owner(rows))
            jobs.cancel_many(ids, store)
            st.toast(f"Cancel requested for {job_id}" + (f" and its {len(ids) - 1} live trial(s)" if len(ids) > 1
                                                         else ""))
        if bar.button("Retry", key="retry", disabled=row["state"] not in jobs.RETRYABLE, icon=":material/replay:"):
            try:
                jobs.retry(job_id, store)
            except (ValueError, RuntimeError) as e:
                st.error(f"Cannot retry: {md_text(e)}")
            else:
                st.toast(f"{job_id} queued again")
                st.rerun()  # the whole page: the queue table and this panel poll again
        row["last_event"] = store.last_events([job_id]).get(job_id)
        doing = activity(row, results.job_progress(row))  # whole here: the table's cell may cut it
        doing = "" if doing == row["state"] else doing  # a queued job's activity is "queued": said once
        bar.markdown(f"**{row['state']}**" + (f" · {md_text(doing)}" if doing else "")
                    + (f" — {md_text(row['error'])}" if row.get("error") else ""))
        rec = row.get("record") or {}
        if row["state"] == "done" and rec:
            tiles = st.container(horizontal=True, vertical_alignment="center")  # wraps, never cutting a number
            m = [tiles] * 5
            m[0].metric("Accuracy", fmt_value(rec.get("accuracy"), ".4f"))
            m[1].metric("Size", fmt_bytes(rec.get("size_bytes")))
            m[2].metric("MACs", fmt_count(rec.get("macs")))
            m[3].metric("Latency", fmt_ms(rec.get("latency_ms")),
                        help="CPU, batch 1, median")
            m[4].page_link("views/compare.py", label="Against its base on Compare", icon=":material/compare_arrows:",
                           query_params={"run": job_id})
            if rec.get("phase_seconds"):
                st.caption(results.phase_summary(rec["phase_seconds"]))
        parent = store.get(row["parent"]) if row.get("parent") else None
        search = job_id if method_of(row) == "autocompress" else \
            row["parent"] if method_of(parent) == "autocompress" else None
        if search:
            st.page_link("views/search.py", icon=":material/travel_explore:", query_params={"run": search},
                         label="Its trials live: the search's page" if search == job_id else
                         "A trial of an auto-compress search: the search's page")
        curves = results.curves(store.events(job_id))
        if curves.empty:
            st.caption("No training curves yet (they appear once the job trains).")
        else:
            curves["series"] = curves["stage"] + curves["split"].map({"train": " · training batches",
                                                                      "val": " · validation"})
            a, b = st.columns(2)
            for col, metric in ((a, "loss"), (b, "accuracy")):
                fig = px.line(curves.dropna(subset=[metric]), x="epoch", y=metric, color="series", markers=True,
                              height=300, title=metric)
                fig.update_layout(margin=dict(l=10, r=10, t=40, b=10), legend_title_text="")
                if metric == "accuracy":
                    fig.update_yaxes(range=[0, 1.02])
                col.plotly_chart(fig, key=f"curve_{metric}", config={"displayModeBar": False})
        st.code(jobs.job_log(job_id, store, tail=60) or "(no log yet)", language="log", height=260)

    job_detail()
