"""``python -m bench recipes-cpu --resume``: a table assembled from parts run at different times reuses
each finished job of the same spec instead of running it again (tiny data: digits, 1 epoch)."""
from __future__ import annotations

import re

from bench import recipes_cpu as rc
from engine.store import Store


def test_resume_reuses_every_finished_job_and_writes_the_same_table(home, monkeypatch):
    """A second invocation over the same workspace runs nothing: the base, the recipe and its control
    are the finished runs of the same specs, each row says which run it reused, the numbers are equal."""
    store, data, quiet = Store(home), {"name": "digits", "limit": 400, "test_limit": 200}, (lambda msg: None)
    first = rc.run(data, 1, 1, 1, store, only={"structured"}, log=quiet, resume=True)  # nothing to reuse yet
    assert set(first["rows"]) == {"structured"} and set(first["controls"]) == {"structured"} and not first["failed"]
    assert first["reused"] == {}
    finished = {r["id"] for r in store.list()}

    def ran_again(*a, **k):
        raise AssertionError("a job with a finished run of its spec ran again")
    monkeypatch.setattr(rc.runner, "run_spec", ran_again)
    ids = {"base": first["base"]["run_id"], "structured": first["rows"]["structured"]["id"],
           "control of structured": first["controls"]["structured"]["run_id"]}
    second = rc.run(data, 1, 1, 1, store, only={"structured"}, log=quiet, resume=True)
    assert {k: v.split()[2] for k, v in second["reused"].items()} == ids
    with_base = rc.run(data, 1, 1, 1, store, base_id=ids["base"], only={"structured"}, log=quiet, resume=True)
    assert set(with_base["reused"]) == {"structured", "control of structured"}
    assert {r["id"] for r in store.list()} == finished

    def table(res):
        text = rc.section(res, store)
        assert ("reused run" in text) == bool(res["reused"])
        text = re.sub(r"(; | \()reused run \S+ from \d{4}-\d\d-\d\d \d\d:\d\d UTC\)?", "", text)
        return [ln for ln in text.splitlines() if not ln.startswith("- Whole command")]
    assert table(second) == table(first) == table(with_base)
    line = next(ln for ln in rc.section(second, store).splitlines() if ln.startswith("| structured"))
    assert f"(reused run {ids['structured']} from " in line and f"; reused run {ids['control of structured']}" in line
    # a changed spec is not the same job: it would run
    changed = rc.spec("x", data, {"from_run": ids["base"]}, "prune_structured",
                      {"target_macs": rc.STRUCT_MACS_KEPT, "finetune_epochs": 2})
    assert rc.finished_run(store, changed) is None
