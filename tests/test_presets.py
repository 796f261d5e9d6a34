"""Presets say what they use and how long they take; the benches that run them write their sections."""
from __future__ import annotations

import re

import pytest

from bench import gpu_bases, quick_tour, report
from engine import cli, methods, presets, runner
from engine.store import Store
from engine.validation import check_spec


@pytest.mark.fast
def test_every_preset_validates_and_says_its_data_model_and_time(tmp_path):
    store = Store(tmp_path / "ws")
    for name, p in presets.PRESETS.items():
        plan = p()
        ok, problems = presets.check(plan)
        # CIFAR-10 lives beside the checkout (../shared/datasets) or at SLIMBENCH_CIFAR10: where it is not,
        # the only problem a GPU preset may have is saying so
        absent = [q for q in problems if "data.path: not found" in q and "cifar10" in q]
        after = [q for q in problems if q.endswith("skipped because the job it starts from is invalid")]
        assert (ok or absent) and sorted(problems) == sorted(absent + after) and (absent or not after), (name, problems)
        text = presets.describe(name, store)
        assert plan[0]["data"]["name"].replace("cifar10", "CIFAR-10").replace("fashion-mnist", "Fashion-MNIST") in text
        # no history in a fresh workspace: said so, with the estimate for the machine it was sized on
        assert "No run like its jobs has finished on this machine yet" in text and p.basis in text
        assert all(s["name"].startswith(f"{p.label}: ") for s in plan)


@pytest.mark.fast
def test_quick_tour_trains_a_resnet20_base_and_a_fair_student_pair():
    plan = presets.quick_tour()
    base = plan[0]
    assert base["model"] == {"arch": "resnet20"} and base["train"]["epochs"] == presets.QUICK_BASE_EPOCHS
    assert "test_limit" not in base["data"]  # scored on the full test set
    by = {s["method"]["name"]: s for s in plan[1:]}
    assert set(by) == set(methods.load_all()) - {"baseline", "control", "autocompress"}  # controls: with_controls
    # distill and its plain control: the same student, width and epochs
    assert by["distill"]["method"]["params"] == {**by["compact"]["method"]["params"], **{
        k: v for k, v in by["distill"]["method"]["params"].items() if k not in by["compact"]["method"]["params"]}}
    assert by["compact"]["method"]["params"] == presets.QUICK_STUDENT
    # TRP keeps its own 2 training epochs (1 cost 0.55 pt at the same 3.2x; docs/BENCHMARKS.md)
    trp_default = next(p.default for p in methods.get("lowrank_svd").params if p.name == "reg_epochs")
    assert by["lowrank_svd"]["method"]["params"]["reg_epochs"] == trp_default == 2
    # the runtime row times eager and ONNX Runtime only: compiling was most of its time (`bench runtimes` compiles)
    assert by["runtime"]["method"]["params"]["compile"] is False


@pytest.mark.fast
def test_quick_tour_cuts_match_their_anchors_and_get_their_measured_recovery():
    """A row with a published anchor cuts as many MACs as the anchor states (within 5 %), and gets the
    recovery epochs measured to bring it near it (docs/BENCHMARKS.md, "The Quick tour's rows")."""
    by = {s["method"]["name"]: s["method"]["params"] for s in presets.quick_tour()[1:]}
    for name, share, epochs in (("prune_structured", presets.QUICK_STRUCT_MACS_KEPT, 3),
                                ("lowrank_svd", presets.QUICK_LOWRANK_MACS_KEPT, 2)):
        assert by[name]["target_macs"] == share and by[name]["finetune_epochs"] == epochs, name
        cuts = [float(x) for x in re.findall(r"(\d+\.\d+)x", quick_tour.ANCHORS[name])]
        assert any(abs(c * share - 1) <= 0.05 for c in cuts), (name, cuts)
    # the pipeline's structured step is the structured row's own recipe, then INT8
    assert by["pipeline"]["steps"] == [{"name": "prune_structured", "params": by["prune_structured"]},
                                       {"name": "quantize_int8", "params": {}}]
    # SFP at its default share (30 % of every layer's filters: 2.11x on this ResNet-20, as the ResNet-56 anchor)
    sfp_ratio = next(p.default for p in methods.get("soft_filter_pruning").params if p.name == "ratio")
    assert "ratio" not in by["soft_filter_pruning"] and sfp_ratio == 0.3 and "30 %" in quick_tour.ANCHORS[
        "soft_filter_pruning"] and "2.11x" in quick_tour.ANCHORS["soft_filter_pruning"]
    # He et al.'s schedule (the method's default): every epoch soft-prunes, none fine-tunes after the hard cut
    sfp_ft = next(p.default for p in methods.get("soft_filter_pruning").params if p.name == "finetune_epochs")
    assert by["soft_filter_pruning"]["epochs"] == 2 and by["soft_filter_pruning"]["finetune_epochs"] == sfp_ft == 0
    # ... and so does the thorough preset's, its epochs all soft
    assert "finetune_epochs" not in presets.THOROUGH_PARAMS["soft_filter_pruning"] and sfp_ft == 0
    # the preset's description says the cuts it makes
    uses = presets.PRESETS["Quick tour (CPU)"].uses
    assert f"{1 / presets.QUICK_STRUCT_MACS_KEPT:.1f}x" in uses and f"{1 / presets.QUICK_LOWRANK_MACS_KEPT:.1f}x" in uses


@pytest.mark.fast
def test_literature_preset_trains_the_three_bases_on_cuda_within_the_stated_epochs():
    plan = presets.cifar10_literature("/data/cifar10.zip")
    assert [(s["model"]["arch"], s["train"]["epochs"], s["train"]["device"]) for s in plan] == [
        (a, n, "cuda") for a, n in presets.LITERATURE_EPOCHS.items()]
    assert {s["method"]["name"] for s in plan} == {"baseline"} and plan[0]["data"]["batch_size"] == 512
    assert set(presets.LITERATURE_TARGETS) == set(presets.LITERATURE_EPOCHS)


@pytest.mark.fast
def test_cli_lists_the_presets_with_their_descriptions(home, capsys):
    assert cli.main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in presets.PRESETS:
        assert name in out and presets.describe(name, Store()) in out


@pytest.mark.fast
def test_a_block_written_by_its_own_command_survives_its_section_being_rewritten(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "DOC", tmp_path / "BENCHMARKS.md")
    report.write_block("gpu", "literature-bases", "### Literature bases\n\nfirst", "python -m bench gpu-bases")
    assert "## GPU benchmarks" in report.DOC.read_text()   # the section is started for it
    report.write_section("gpu", "gpu body", "make bench-gpu")
    report.write_block("gpu", "literature-bases", "### Literature bases\n\nsecond", "python -m bench gpu-bases")
    report.write_section("cpu", "cpu body", "make bench")
    text = report.DOC.read_text()
    gpu = text[text.index("<!-- begin:gpu -->"):text.index("<!-- end:gpu -->")]
    assert "gpu body" in gpu and "second" in gpu and "first" not in text
    assert text.count("### Literature bases") == 1 and "cpu body" not in gpu


def test_gpu_bases_bench_trains_measures_and_renders_its_block_on_cpu(tmp_path, monkeypatch):
    """The `python -m bench gpu-bases` code path with tiny settings: 48 images, 1 epoch, one net."""
    monkeypatch.setenv("SLIMBENCH_HOME", str(tmp_path / "ws"))
    data = {"name": "digits", "limit": 48, "test_limit": 40, "batch_size": 16}
    plan = presets.cifar10_literature(data=data, epochs={"resnet20": 1}, device="cpu",
                                      measure={"onnx": False, "latency_runs": 3, "warmup_runs": 1, "paired_rounds": 0})
    res = gpu_bases.run(plan, Store(tmp_path / "ws"), log=lambda m: None)
    (row,) = res["rows"]
    assert row["arch"] == "resnet20" and 0 <= row["accuracy"] <= 1 and row["met"] is False and row["train_ips"] > 0
    text = gpu_bases.section(res, data)
    assert text.startswith("### Literature bases")
    assert f"| resnet20 | 1 | {100 * row['accuracy']:.2f} % | 91.5 % | missed by" in text
    assert "one device call's budget 540 s" in text


def test_quick_tour_section_judges_every_row_and_pairs_kd_with_plain(tmp_path, monkeypatch):
    """The tour's section on tiny data: real runs (base, distilled and plain student), the verdicts from them."""
    monkeypatch.setenv("SLIMBENCH_HOME", str(tmp_path / "ws"))
    store = Store(tmp_path / "ws")
    data = {"name": "digits", "limit": 300, "val_fraction": 0.2}
    measure = {"onnx": False, "latency_runs": 3, "warmup_runs": 1, "paired_rounds": 0}
    plan = [{"name": "t: baseline", "data": data, "model": {"arch": "resnet20"}, "method": {"name": "baseline"},
             "train": {"epochs": 2}, "measure": measure}]
    for m in ("distill", "compact"):
        plan.append({"name": f"t: {m}", "data": data, "model": {"from_run": presets.BASE},
                     "method": {"name": m, "params": {"student": "resnet20", "width": 0.5, "epochs": 1}},
                     "train": {"epochs": 1}, "measure": measure})
    ids: list[str] = []
    for s in plan:
        ids.append(runner.run_spec(check_spec(presets.resolve([s], ids)[0]), store)["run_id"])
    j = quick_tour.judge({"rows": [store.get(i) for i in ids], "store": store, "wall_s": 12.0, "problems": [],
                          "load": (1.0, 1.0, 1.0)})
    assert [r["method"] for r in j["rows"]] == ["baseline", "distill", "compact"]
    recs = [store.get(i)["record"] for i in ids]
    assert [r["accuracy"] for r in j["rows"]] == [r["accuracy"] for r in recs]
    assert [r["chance"] for r in j["rows"]] == [quick_tour.at_chance(r) for r in recs]
    kd = j["kd"]
    assert kd["n"] == recs[1]["test_images"]
    assert kd["delta"] == pytest.approx(recs[1]["accuracy"] - recs[2]["accuracy"], abs=1e-9)
    assert kd["ci95"][0] <= kd["delta"] <= kd["ci95"][1]
    text = quick_tour.render(j, plan)
    assert "**12 s** (target < 600 s — met" in text
    assert "Distilled vs the same student trained plainly" in text and "McNemar p" in text
    assert text.count("\n| ") == 1 + 3   # the header, then a row per job
    assert quick_tour.ANCHORS["distill"] in text and "CIFAR-10" in text
    compact_row = next(ln for ln in text.splitlines() if ln.startswith("| compact |"))
    assert f"| {recs[0]['macs'] / recs[2]['macs']:.2f} |" in compact_row   # the MAC cut beside its Δ
    # where the time goes: each row's wall seconds from its record's phases, and the longest chain of jobs
    secs = [sum(r["phase_seconds"].values()) for r in recs]
    assert compact_row.startswith(f"| compact | {secs[2]:.0f} | ")
    slow = max((1, 2), key=lambda i: secs[i])
    assert j["critical"] == ["baseline", j["rows"][slow]["method"]]
    assert j["critical_s"] == pytest.approx(secs[0] + secs[slow])
    assert f"critical path **baseline → {j['rows'][slow]['method']} {secs[0] + secs[slow]:.0f} s**" in text


@pytest.mark.fast
def test_the_critical_path_follows_each_job_after_the_one_it_starts_from():
    # a base, two children of it, a grandchild of the cheap child: the chain base -> cheap -> grandchild wins
    assert quick_tour.critical_path([10, 5, 8, 4], [None, 0, 0, 1]) == (19, [0, 1, 3])
    assert quick_tour.critical_path([10, None], [None, 0])[0] == 10   # a job with no record adds nothing
    assert quick_tour.job_seconds({"phase_seconds": {"train": 2.5, "measure": 1.0}}) == 3.5
    assert quick_tour.job_seconds({}) is None
    assert quick_tour.top_phases({"phase_seconds": {"data": 1, "train": 9, "measure": 4}}) == "training 9 · timing 4"


@pytest.mark.fast
def test_chance_is_judged_by_the_accuracy_interval():
    assert quick_tour.at_chance({"accuracy": 0.11, "accuracy_ci95": [0.09, 0.13], "num_classes": 10})
    assert not quick_tour.at_chance({"accuracy": 0.2, "accuracy_ci95": [0.17, 0.23], "num_classes": 10})
