"""The plan launched last in this session (a preset or a custom experiment): its overall ETA, and a toast
plus a browser notification when every job of it has ended, whichever page is open (the sidebar runs
this on each of them)."""
from __future__ import annotations

import json

import streamlit as st

from engine import estimate, jobs
from engine.store import Store
from views.common import md_text

LAUNCHED = "launched"            # set by Experiments: the ids of the plan it queued last
ANNOUNCED = "plan_announced"     # the plan whose end was announced (once per plan)


def launched_ids() -> list[str]:
    return list(st.session_state.get(LAUNCHED) or [])


def title(rows: list[dict]) -> str:
    """The plan's experiment, else its preset's label ("Quick tour: baseline" -> "Quick tour"), else ""."""
    spec = (rows[0].get("spec") or {}) if rows else {}
    return spec.get("experiment") or str(spec.get("name") or "").split(":")[0].strip()


def status(store: Store, concurrency: int | None = None) -> tuple[list[dict], estimate.Remaining] | None:
    ids = launched_ids()
    if not ids:
        return None
    rows = jobs.rows_of(ids, store)
    if not rows:
        return None
    return rows, estimate.remaining(rows, store, concurrency or jobs.worker_status(store)["concurrency"])


def summary(store: Store, concurrency: int | None = None, *, full: bool = False) -> None:
    """The plan's progress line (and, on Jobs, ``full``: a bar and the notification opt-in); announces
    its end once. ``concurrency``: the worker's jobs at once, where the caller has read it."""
    got = status(store, concurrency)
    if got is None:
        return
    rows, left = got
    name = title(rows)
    shown = f" **{md_text(name)}**" if name else ""
    ended = {s: sum(r["state"] == s for r in rows) for s in ("done", "failed", "cancelled", "interrupted")}
    outcome = ", ".join(f"{n} {s}" for s, n in ended.items() if n)
    line = f"{left.text()}: {outcome}" if left.finished else left.text()
    if full:
        st.progress(left.done / left.jobs, text=f"Launched plan{shown}: {line}")
        opt_in()
    else:
        st.caption(f"Plan{shown}: {line}")
    key = ",".join(launched_ids())
    if left.finished and st.session_state.get(ANNOUNCED) != key:
        st.session_state[ANNOUNCED] = key
        st.toast(f"Plan{shown} finished: {outcome}", icon=":material/task_alt:")
        notify(f"Slimbench: plan {name} finished".replace("  ", " "), outcome, key)


def opt_in() -> None:
    """A button that asks the browser for permission to notify; browsers ask only on a click."""
    st.iframe("""
<button id="b" style="font:13px sans-serif;padding:4px 10px;border:1px solid #ccc;border-radius:6px;background:#fff;
cursor:pointer">Notify me in the browser when it finishes</button><span id="s" style="font:12px sans-serif;color:#666;
margin-left:8px"></span>
<script>
const N = window.parent.Notification || window.Notification, b = document.getElementById("b"),
      s = document.getElementById("s");
function show() {
  if (!N) { b.disabled = true; s.textContent = "this browser has no notifications"; return; }
  s.textContent = {granted: "on: a notification comes when the plan ends", denied: "blocked in this browser's site " +
                   "settings", default: ""}[N.permission];
  b.style.display = N.permission === "default" ? "" : "none";
}
b.onclick = () => N.requestPermission().then(show);
show();
</script>""", height=36)


def notify(title_: str, body: str, tag: str) -> None:
    """Show a browser notification (if allowed) once per ``tag``, even when the page is rerun."""
    st.iframe(f"""<script>
const N = window.parent.Notification || window.Notification, tag = {json.dumps(tag)};
const seen = window.parent.sessionStorage, k = "slimbench-notified:" + tag;
if (N && N.permission === "granted" && !seen.getItem(k)) {{
  seen.setItem(k, "1");
  new N({json.dumps(title_)}, {{body: {json.dumps(body)}, tag: tag}});
}}
</script>""", height=1)
