"""The auto-compress search in the dashboard, from hand-made records (nothing trains): its page, finished
(winner, front with test accuracies labelled, stopped trials, front against hand-made runs), ended with
no trial within the limit, and live from a running search's journal; the Experiments tab that launches
one (a budget of 0 refused under its field, nothing queued); Compare grouping the trials under it."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from conftest import plain
from engine import searches
from engine.store import Store

ROOT = Path(__file__).resolve().parent.parent
DATA = {"name": "digits", "limit": 200, "test_limit": 120, "batch_size": 32}
BASE_SIZE, BASE_MACS = 44_000_000, 36_000_000


def _run(store: Store, run_id: str, method: str, parent: str | None, state: str = "done", params=None,
         start: str | None = None, **rec) -> str:
    """A run of ``method`` that ``parent`` ran; ``start``: the run it starts from where that differs (a trial
    starts from the search's start, as its spec and record say, while the search ran it)."""
    start = start or parent
    spec = {"name": rec.get("name", run_id), "data": DATA, "train": {"epochs": 1},
            "model": {"from_run": start} if start else {"arch": "resnet18"},
            "method": {"name": method, "params": params or {}}}
    store.create(spec, state=state, run_id=run_id, parent=parent, created=time.time())
    if state == "done":
        store.update(run_id, record={"run_id": run_id, "method": method, "arch": "resnet18", "dataset": "digits",
                                     "parent": start, "finished": time.time(), "params": 1000, **rec},
                     finished=time.time())
    return run_id


def trial(n: int, run_id: str | None, state: str, val=None, drop=None, ratio=None, why=None, cand="unstructured"):
    return {"trial": n, "state": state, "recipe": f"recipe {n} ({cand})", "params": {"candidate": cand},
            "run_id": run_id, "val_accuracy": val, "drop_pt": drop, "cost": None if ratio is None else ratio * BASE_SIZE,
            "cost_ratio": ratio, "why": why, "repeat_of": None}


def insert_study(home: Path, winner: bool = True, params_over: dict | None = None, rec_over: dict | None = None) -> dict:
    """A base, a hand-made pruned run from it, and a finished search with three trials (one stopped);
    ``params_over`` / ``rec_over``: its params and record fields changed."""
    store = Store(home)
    base = _run(store, "20260101-000000-base00", "baseline", None, name="base", accuracy=0.95,
                size_bytes=BASE_SIZE, macs=BASE_MACS, latency_ms=3.0)
    hand = _run(store, "20260101-000001-hand00", "prune_structured", base, name="hand pruned", accuracy=0.93,
                size_bytes=BASE_SIZE // 2, macs=BASE_MACS // 2, latency_ms=2.0)
    sid = "20260101-000002-srch00"
    params = {"max_drop_pt": 1.0 if winner else 0.0, "objective": "size", "trials": 3, "space": ["unstructured", "distill"],
              **(params_over or {})}
    t0, t1 = f"{sid[:-2]}t0", f"{sid[:-2]}t1"
    trials = [trial(0, t0, "complete", 0.945, 0.5, 0.25), trial(1, t1, "complete", 0.90, 5.0, 0.1, cand="distill"),
              trial(2, None, "pruned", why="stopped after its fine-tune: validation accuracy 50.00 %, 45 pt below")]
    front = [{**trials[1], "test_accuracy": 0.91}, {**trials[0], "test_accuracy": 0.94}]
    extra = {"search_trials": 3, "search_killed": 1, "search_trial_list": trials, "search_front": front,
             "search_start_val_accuracy": 0.95}
    if winner:
        extra.update(search_winner=t0, search_why="trial 0: recipe 0; validation accuracy 94.50 % against the "
                     "start's 95.00 %: lost 0.50 pt (Δ -0.50 pt) (limit: 1 pt lost)")
    else:
        extra.update(search_winner=None, search_why="no trial met the limit (0 pt on validation, size minimised); "
                     "closest: trial 0 (recipe 0): accuracy: lost 0.50 pt on validation, over the 0 pt limit",
                     search_closest=[{**trials[0], "bound_by": "accuracy: lost 0.50 pt on validation, over the 0 pt "
                                      "limit"}])
    extra.update(rec_over or {})
    _run(store, sid, "autocompress", base, params=params, name="my search", accuracy=0.95 if not winner else 0.94,
         size_bytes=BASE_SIZE // 4, macs=BASE_MACS, **extra)
    for t, acc, ratio in ((t0, 0.94, 0.25), (t1, 0.91, 0.1)):
        _run(store, t, "prune_unstructured", sid, start=base, name=f"my search · trial {t[-1]}", accuracy=acc,
             params={"amount": 0.75, "schedule": None},
             size_bytes=int(BASE_SIZE * ratio), macs=BASE_MACS, latency_ms=3.0)
    return {"base": base, "hand": hand, "search": sid, "trials": [t0, t1]}


def page(name: str, run: str | None = None) -> AppTest:
    at = AppTest.from_file(str(ROOT / "dashboard.py"), default_timeout=120)
    at.run()
    if name != "experiments":
        at.switch_page(f"views/{name}.py")
    if run:
        at.query_params["run"] = run
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def table(at: AppTest, column: str):
    """The first table showing ``column`` (tables drawn in a fragment carry no key AppTest reads)."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


def text(at: AppTest) -> str:
    return "\n".join(plain(str(e.value)) for kind in ("success", "error", "warning", "info", "caption", "markdown")
                     for e in getattr(at, kind))


def test_a_finished_search_shows_its_winner_front_and_stopped_trials(page_ws):
    ids = insert_study(page_ws)
    at = page("search", ids["search"])
    shown = text(at)
    assert "Winner" in shown and "trial 0: recipe 0" in shown
    assert "Test set read only for the final front" in shown
    assert "No control for this recipe" in shown and "None:" not in shown   # words, not a Python None
    front = table(at, "test accuracy")
    assert list(front["test accuracy"]) == pytest.approx([91, 94]) and list(front["winner"]) == [False, True]
    stopped = table(at, "why")
    assert "stopped after its fine-tune" in stopped["why"].iloc[0]
    charts = {c.proto.id: c.proto.spec for c in at.get("plotly_chart")}
    assert len(charts) == 2                                   # trials on validation; front vs hand-made on test
    specs = " ".join(charts.values())
    assert "hand-made runs" in specs and "limit: 1 pt below the start" in specs and "VALIDATION" in specs
    assert any("Winner" in str(b.proto) for b in at.get("download_button") + at.get("button"))
    hand = next(json.loads(spec) for spec in charts.values() if "hand-made runs" in spec)
    drawn = next(t for t in hand["data"] if t["name"] == "hand-made runs")
    assert [c[0] for c in drawn["customdata"]] == ["hand pruned"]      # not the search's own trials


def test_the_search_page_writes_accuracy_in_percent_and_differences_in_points(page_ws):
    """One format on the page: the tile, the sentences, the tables and both plots give accuracy in %, and
    differences in pt (no fraction such as 0.9450 beside a 94 % axis)."""
    ids = insert_study(page_ws)
    at = page("search", ids["search"])
    assert at.metric[4].value == "95.00 %"
    shown = text(at)
    assert "validation accuracy 94.50 % against the start's 95.00 %: lost 0.50 pt (Δ -0.50 pt)" in shown
    for d in at.dataframe:
        formats = {c: json.loads(d.proto.columns).get(c, {}).get("type_config", {}).get("format")
                   for c in ("validation accuracy", "test accuracy", "drop (pt)") if c in d.value.columns}
        assert all(f == ("%.2f pt" if c == "drop (pt)" else "%.2f %%") for c, f in formats.items()), formats
        for c in formats.keys() - {"drop (pt)"}:
            assert d.value[c].dropna().between(1, 100).all()                 # percent, not a fraction
    for chart in at.get("plotly_chart"):
        fig = json.loads(chart.proto.spec)
        assert fig["layout"]["yaxis"]["ticksuffix"] == " %" and "tickformat" not in fig["layout"]["yaxis"]
        ys = [y for trace in fig["data"] for y in trace.get("y") or []]
        assert ys and all(1 < y <= 100 for y in ys)
        assert not any(".4f" in (trace.get("hovertemplate") or "") for trace in fig["data"])
    trials = json.loads(next(c.proto.spec for c in at.get("plotly_chart") if "VALIDATION" in c.proto.spec))
    hover = [cd[2] for trace in trials["data"] for cd in trace.get("customdata") or [] if len(cd) > 2]
    assert "(lost 0.50 pt (Δ -0.50 pt))" in hover

def test_a_drop_rounding_to_zero_reads_0_and_unset_options_are_left_out(page_ws):
    t0 = "20260101-000002-srcht0"
    front = [{**trial(0, t0, "complete", 0.95, -1e-9, 0.25), "test_accuracy": 0.94}]
    ids = insert_study(page_ws, rec_over={"search_front": front})
    at = page("search", ids["search"])
    drop = table(at, "test accuracy")["drop (pt)"].iloc[0]
    assert drop == 0 and not math.copysign(1, drop) < 0          # 0.00, never "-0.00"
    recipe = json.loads(at.json[0].proto.body)
    assert recipe["params"] == {"amount": 0.75}                     # no "schedule": null


def test_a_search_without_a_winner_says_so_with_the_closest_trials(page_ws):
    ids = insert_study(page_ws, winner=False)
    at = page("search", ids["search"])
    assert "No trial met the limit" in text(at)
    closest = table(at, "bound by")
    assert "over the 0 pt limit" in closest["bound by"].iloc[0]


def test_a_running_search_is_read_from_its_journal(page_ws):
    """Live: the trials come from the Optuna journal the running search appends to."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    ids = insert_study(page_ws)
    store = Store(page_ws)
    sid = _run(store, "20260101-000009-live00", "autocompress", ids["base"], state="running",
               params={"objective": "size", "trials": 5}, name="live search")
    storage = JournalStorage(JournalFileBackend(str(store.run_dir(sid) / searches.JOURNAL)))
    study = optuna.create_study(study_name=searches.STUDY, storage=storage)
    dist = {"candidate": optuna.distributions.CategoricalDistribution(["unstructured", "distill"])}
    for n, (val, drop, ratio) in enumerate(((0.946, 0.4, 0.5), (0.90, 5.0, 0.2))):
        study.add_trial(optuna.trial.create_trial(params={"candidate": "unstructured"}, distributions=dist, value=ratio,
                                                  user_attrs={"recipe": f"live recipe {n}", "val_accuracy": val,
                                                              "drop_pt": drop, "cost_ratio": ratio}))
    at = page("search", sid)
    shown = text(at)
    assert "Best so far: trial 0, live recipe 0" in shown
    assert at.metric[1].value == "2 / 5"
    assert len(at.get("plotly_chart")) == 1


def test_the_experiments_tab_refuses_a_zero_budget_and_queues_a_search(page_ws):
    ids = insert_study(page_ws)
    at = page("experiments")
    assert not any(w.key == "search_start" for w in at.selectbox)      # drawn only in its open tab
    at.session_state["exp_tab"] = "Auto-compress"
    at.run()
    start = at.selectbox(key="search_start")
    assert any(ids["base"] in o for o in start.options)              # labelled "name · id"
    assert not any(t in o for t in ids["trials"] for o in start.options)  # a search's trials: its row stands for them
    start.set_value(ids["base"])
    at.number_input(key="ac_trials").set_value(0)
    at.run()
    assert any("method.params.trials" in plain(e.value) and "0 trials" in plain(e.value) for e in at.error)
    at.button(key="launch_search").click()
    at.run()
    assert any("Nothing was queued" in plain(e.value) for e in at.error)
    assert not Store(page_ws).list("queued")
    at.number_input(key="ac_trials").set_value(2)
    at.run()
    at.button(key="launch_search").click()
    at.run()
    queued = Store(page_ws).list("queued")
    assert [r["spec"]["method"]["name"] for r in queued] == ["autocompress"]
    assert queued[0]["spec"]["model"]["from_run"] == ids["base"]
    assert queued[0]["spec"]["method"]["params"]["trials"] == 2
    data = queued[0]["spec"]["data"]                              # the start's data: trials compare on its splits
    assert {k: data[k] for k in DATA} == DATA


def test_the_experiments_tab_starts_from_the_newest_trained_base_not_the_newest_search(page_ws):
    ids = insert_study(page_ws)                 # the search and the hand-pruned run are newer than the base
    at = page("experiments")
    at.session_state["exp_tab"] = "Auto-compress"
    at.run()
    start = at.selectbox(key="search_start")
    assert any(ids["search"] in o for o in start.options)       # still offered, only not first
    assert start.value == ids["base"]


@pytest.mark.fast
def test_the_default_start_prefers_a_base_then_any_model_but_a_search_or_an_analysis():
    def row(run_id, method):
        return {"id": run_id, "spec": {"method": {"name": method}}}
    search, sens, pruned, base = (row("s", "autocompress"), row("a", "sensitivity"), row("p", "prune_structured"),
                                  row("b", "baseline"))
    assert searches.default_start([search, sens, pruned, base]) == "b"          # newest first
    assert searches.default_start([search, sens, pruned]) == "p"
    assert searches.default_start([search]) == "s" and searches.default_start([]) is None
    assert searches.default_start([search, {"id": "u", "spec": {}}]) == "u"     # no method: a base as given

def test_the_experiments_tab_offers_the_latency_runtime_and_batch(page_ws):
    ids = insert_study(page_ws)
    at = page("experiments")
    at.session_state["exp_tab"] = "Auto-compress"
    at.run()
    at.selectbox(key="search_start").set_value(ids["base"])
    at.run()
    assert not any(w.key == "ac_runtime" for w in at.selectbox)      # asked only for the latency objective
    objective = at.selectbox(key="ac_objective")
    assert any("Latency: CPU, at a batch, in a runtime you choose" in o for o in objective.options)
    objective.set_value("latency")
    at.run()
    at.selectbox(key="ac_runtime").set_value("onnxruntime")
    at.number_input(key="ac_batch").set_value(4)
    at.number_input(key="ac_trials").set_value(2)
    at.run()
    at.button(key="launch_search").click()
    at.run()
    params = Store(page_ws).list("queued")[0]["spec"]["method"]["params"]
    assert (params["objective"], params["runtime"], params["batch"]) == ("latency", "onnxruntime", 4)


def test_the_experiments_tab_offers_the_gpu_only_where_cuda_is(page_ws, monkeypatch):
    """Timed on: asked only on a machine with CUDA; choosing the GPU offers its runtimes (no OpenVINO) and queues
    device cuda. Without CUDA nothing is asked and the search times on the CPU."""
    from engine.methods import autocompress, search_latency
    ids = insert_study(page_ws)

    def open_latency():
        at = page("experiments")
        at.session_state["exp_tab"] = "Auto-compress"
        at.run()
        at.selectbox(key="search_start").set_value(ids["base"])
        at.selectbox(key="ac_objective").set_value("latency")
        at.run()
        return at
    at = open_latency()
    if not autocompress.cuda_here():
        assert not any(w.key == "ac_device" for w in at.radio)
    real = search_latency.unavailable
    monkeypatch.setattr(autocompress, "cuda_here", lambda: True)
    monkeypatch.setattr(search_latency, "unavailable", lambda r, device="cpu": (
        ("not available on this machine: OpenVINO does not run on cuda" if r == "openvino" else None)
        if device == "cuda" else real(r, device)))
    at = open_latency()
    at.radio(key="ac_device").set_value("cuda")
    at.run()
    assert "openvino" not in at.selectbox(key="ac_runtime").options
    at.selectbox(key="ac_runtime").set_value("onnxruntime")
    at.number_input(key="ac_trials").set_value(2)
    at.run()
    at.button(key="launch_search").click()
    at.run()
    params = Store(page_ws).list("queued")[0]["spec"]["method"]["params"]
    assert (params["objective"], params["runtime"], params["device"]) == ("latency", "onnxruntime", "cuda")


def test_a_latency_search_page_says_which_runtime_and_batch_it_timed_in(page_ws):
    timing = "each trial timed as it ended, one trial at a time, at batch 2 in best (each model's fastest runtime here)"
    ids = insert_study(page_ws, params_over={"objective": "latency", "runtime": "best", "batch": 2},
                       rec_over={"search_timing": timing})
    store = Store(page_ws)
    rec = store.get(ids["search"])["record"]
    store.update(ids["search"], record={**rec, "search_front": [{**t, "runtime": "openvino"} for t in rec["search_front"]]})
    at = page("search", ids["search"])
    shown = text(at)
    assert "CPU latency at batch 2 in each model's fastest runtime here" in shown
    assert f"Latency timing: {timing}" in shown
    assert set(table(at, "timed in")["timed in"]) == {"openvino"}


def test_a_gpu_latency_search_page_says_it_timed_on_the_gpu(page_ws):
    timing = "each trial timed as it ended, one trial at a time, on cuda (NVIDIA H200), at batch 1 in best"
    ids = insert_study(page_ws, params_over={"objective": "latency", "runtime": "best", "batch": 1, "device": "cuda"},
                       rec_over={"search_timing": timing, "search_latency_device": "cuda (NVIDIA H200)"})
    shown = text(page("search", ids["search"]))
    assert "GPU (cuda) latency at batch 1 in each model's fastest runtime here" in shown and "CPU latency" not in shown
    assert f"Latency timing: {timing}" in shown


def test_compare_groups_a_searchs_trials_under_it(page_ws):
    ids = insert_study(page_ws)
    at = page("compare")
    runs = at.dataframe[0].value
    assert ids["search"] in set(runs["run_id"]) and not set(ids["trials"]) & set(runs["run_id"])
    trials = table(at, "winner")
    assert set(trials["run_id"]) == set(ids["trials"]) and trials["winner"].sum() == 1
    # 3 trials ran, one stopped before it made a model: "2 trials" read as if the search had run two
    assert any("Trials of the auto-compress search my search: 2 models from its 3 trials, winner" in e.proto.label
               for e in at.expander)


@pytest.mark.fast
def test_a_launch_is_refused_for_an_objective_its_start_never_measured(tmp_path):
    from engine.spec import SpecError
    store = Store(tmp_path / "ws")
    base = _run(store, "20260101-000000-base00", "baseline", None, accuracy=0.9, size_bytes=BASE_SIZE, macs=BASE_MACS)
    params = {"objective": "latency", "trials": 2}
    with pytest.raises(SpecError) as e:
        searches.check_launch(store, base, params)
    assert e.value.field == "method.params.objective" and "latency_ms" in str(e.value)
    spec = searches.check_launch(store, base, {**params, "objective": "size"})
    assert spec["model"] == {"from_run": base} and spec["data"] == DATA


def test_jobs_links_a_search_and_its_trials_to_the_search_page(page_ws):
    ids = insert_study(page_ws)
    at = page("jobs")
    assert at.selectbox(key="job_select").value == ids["search"]   # the table's first row, not a newer hidden trial
    for job in (ids["search"], ids["trials"][0]):
        at.selectbox(key="job_select").set_value(job)
        at.run()
        links = [str(e.proto) for e in at.get("page_link")]
        assert any(f"run={ids['search']}" in link and "search" in link for link in links), links


def test_the_search_page_without_a_search_says_where_to_start_one(page_ws):
    at = page("search")
    assert "No auto-compress search yet" in text(at) and not at.error


def test_hostile_names_on_the_search_page_and_tab_are_text(page_ws):
    """A search, its trials' recipes and its start named with Markdown/HTML show as text (test_security's check)."""
    from test_security import HOSTILE, _assert_no_live_markup
    ids = insert_study(page_ws)
    store = Store(page_ws)
    for rid in (ids["search"], ids["base"]):
        row = store.get(rid)
        store.update(rid, name=HOSTILE, record={**row["record"], "name": HOSTILE})
    rec = store.get(ids["search"])["record"]
    trials = [{**t, "recipe": HOSTILE} for t in rec["search_trial_list"]]
    store.update(ids["search"], record={**rec, "search_trial_list": trials, "search_why": HOSTILE,
                                        "search_front": [{**t, "test_accuracy": 0.9} for t in trials[:2]]})
    at = page("search", ids["search"])
    _assert_no_live_markup(at, HOSTILE)
    specs = [chart.proto.spec for chart in at.get("plotly_chart")]
    assert specs and not any("<img src=x>" in s for s in specs)
    at = page("experiments")
    at.session_state["exp_tab"] = "Auto-compress"
    at.run()
    link = next(e.proto.label for e in at.get("page_link") if "latest search" in e.proto.label)
    assert plain(link).endswith(f"{HOSTILE} · {ids['search']}") and "](" not in link   # escaped: no live link


@pytest.mark.fast
def test_the_pages_objectives_are_the_searchs_own():
    """engine.searches keeps a torch-free copy of the search's objective table; a new objective must reach both,
    and the launch tab offers only what this machine can measure."""
    from engine.methods import autocompress
    from views import search_launch
    assert searches.COST_KEYS == autocompress.OBJECTIVES
    assert set(searches.COST_LABELS) == set(autocompress.OBJECTIVES) == set(search_launch.OBJECTIVES)
    assert set(autocompress.objectives_here()) <= set(autocompress.OBJECTIVES)
    assert ("energy" in autocompress.objectives_here()) == (autocompress.energy_unmeasurable() is None)


def test_a_repeated_trial_is_counted_so_the_tiles_add_up(page_ws):
    """TPE drew trial 0's recipe again as trial 3: its result is reused, nothing trains. The tiles read
    "Trials 4 / 4", "Scored 2", "Stopped or refused 1" and nowhere the fourth; a Repeats tile names it."""
    store = Store(page_ws)
    ids = insert_study(page_ws, params_over={"trials": 4})
    rec = store.get(ids["search"])["record"]
    trials = rec["search_trial_list"] + [{**rec["search_trial_list"][0], "trial": 3, "repeat_of": 0}]
    store.update(ids["search"], record={**rec, "search_trials": 4, "search_trial_list": trials})
    at = page("search", ids["search"])
    tiles = {m.label: m.value for m in at.metric}
    assert tiles["Trials"] == "4 / 4" and tiles["Scored"] == "2" and tiles["Stopped or refused"] == "1"
    assert tiles["Repeats"] == "1"
    assert "trial 3 = trial 0" in next(m.proto.help for m in at.metric if m.label == "Repeats")
    done = int(tiles["Trials"].split(" / ")[0])
    assert done == sum(int(tiles[k]) for k in ("Scored", "Stopped or refused", "Repeats"))


def test_the_experiments_tab_offers_every_candidate_of_the_engine_and_searches_its_default_space(page_ws):
    """The tab offered five of the engine's six candidates: INT8 alone, the start in INT8 that the search tries
    first (the point every recipe should beat), could be neither chosen nor searched from the dashboard, while
    `python -m engine autocompress` searched it by default."""
    from engine import methods
    from engine.methods import autocompress
    ids = insert_study(page_ws)
    at = page("experiments")
    at.session_state["exp_tab"] = "Auto-compress"
    at.run()
    space = at.multiselect(key="ac_space")
    assert len(space.options) == len(autocompress.CANDIDATES) and "INT8 alone" in space.options
    cli_default = next(p.default for p in methods.get("autocompress").params if p.name == "space")
    # the default space is the engine's (its FP32 cuts, for a GPU latency search, are offered, not chosen)
    assert list(space.value) == list(autocompress.DEFAULT_SPACE) == list(cli_default)
    assert {"structured pruning (FP32)", "block pruning (FP32)", "low-rank SVD (FP32)"} <= set(space.options)
    at.selectbox(key="search_start").set_value(ids["base"])
    at.number_input(key="ac_trials").set_value(2)
    at.run()
    at.button(key="launch_search").click()
    at.run()
    queued = Store(page_ws).list("queued")
    assert queued[0]["spec"]["method"]["params"]["space"] == list(cli_default)
