"""``python -m bench literature --part NET``: the GPU literature table, one net per device call. Its recipes are
valid jobs, the deadline planner leaves a job that does not fit pending (and says so), writing one net's part keeps
the others', targets are judged met or missed, and one part runs end to end on CPU at tiny settings."""
from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from bench import literature as lit
from bench import recipe_table as rt
from bench import report
from engine import export, literature, models
from engine.store import Store

from conftest import CIFAR_SMALL

BASE = {"run_id": "b", "accuracy": 0.935, "macs": 1000, "size_bytes": 4000}


def fake_row(key: str, macs: int = 476, acc: float = 0.93) -> dict:
    return {"id": f"run-{key}", "record": {"run_id": f"run-{key}", "accuracy": acc, "macs": macs, "size_bytes": 2000,
                                           "delta_accuracy_ci95": [-0.01, 0.0]}}


@pytest.mark.fast
def test_every_part_is_valid_jobs_at_the_issue_compression(tmp_path):
    cifar = tmp_path / "cifar10.zip"   # the spec check wants the file to exist; nothing reads it here (a clean
    cifar.write_bytes(b"")             # clone may have no ../shared/datasets)
    for part in lit.NETS:
        net, path = models.build(part, 10, small_input=True), tmp_path / f"{part}.pt"
        export.save_bundle(export.make_bundle(net, arch=part, num_classes=10, small_input=True, meta={}), path)
        rows = lit.recipes(part, 1.0, 0.1)
        for r in rows:
            job = rt.spec(r.label, {"name": "cifar10", "path": str(cifar)}, {"checkpoint": str(path)}, r.method,
                          r.params)
            assert job.method.name == r.method
            assert r.cost or r.method == "quantize_int8", r.key   # every training row can be estimated
    for part in lit.NETS:   # a pipe in a cell would shift the table's columns
        assert not any("|" in r.label + r.target.text for r in lit.recipes(part, 1.0, 0.1)), part
    keys = {p: [r.key for r in lit.recipes(p)] for p in lit.NETS}
    assert keys == {"resnet56": ["structured", "sfp"],
                    "resnet18": ["structured", "small5x", "int8", "kd", "plain", "unstructured"],
                    "resnet20": ["lowrank"]}
    r56, r18, r20 = ({r.key: r for r in lit.recipes(p, 1.0, 0.1)} for p in lit.NETS)
    assert rt.has_control(r56["structured"]) and rt.has_control(r56["sfp"]) and rt.has_control(r20["lowrank"])
    assert [k for k, r in r18.items() if rt.has_control(r)] == ["structured"]   # KD is judged against plain instead
    assert r18["small5x"].parent == "structured" and r18["kd"].params["student"] == r18["plain"].params["student"]
    assert r18["kd"].params["epochs"] == r18["plain"].params["epochs"]
    assert r56["structured"].params["finetune_lr"] == 0.1 and r20["lowrank"].params["target_macs"] <= 1 / 2.8
    # --epochs-scale multiplies every row's epochs, never below one
    assert lit.recipes("resnet56", 0)[0].params["finetune_epochs"] == 1
    assert lit.recipes("resnet56", 2)[0].params["finetune_epochs"] == 2 * lit.EPOCHS["resnet56"]["structured"]


@pytest.mark.fast
def test_estimates_follow_the_documented_arithmetic():
    pace = {"s_epoch": 2.0, "overhead_s": 20.0, "base_epochs": 90}
    est = lit.estimator(pace, BASE)
    struct, sfp = lit.recipes("resnet56")
    n = lit.EPOCHS["resnet56"]["structured"]
    assert est(struct, None) == pytest.approx(n * 2.0 * 0.5 + 20)          # 0.48 of the MACs: the 0.5 floor
    assert est(sfp, None) == pytest.approx(lit.EPOCHS["resnet56"]["sfp"] * 2.0 + 20)   # soft: full MACs
    # a control: base epochs + the row's, at the row's measured MAC share
    assert est(struct, fake_row("s", macs=700)) == pytest.approx((90 + n) * 0.7 * 2.0 + 20)
    # a cut net measured training at the base's pace (launch-bound): its control and the next are estimated at that
    slow = fake_row("s", macs=476)
    slow["record"]["train_seconds"] = n * 2.0 * 0.9
    assert est(struct, slow) == pytest.approx((90 + n) * 0.9 * 2.0 + 20) and pace["observed_share"] == 0.9
    assert est(sfp, fake_row("f", macs=476)) == pytest.approx((90 + lit.EPOCHS["resnet56"]["sfp"]) * 0.9 * 2.0 + 20)
    int8 = next(r for r in lit.recipes("resnet18") if r.key == "int8")
    assert est(int8, None) == pytest.approx(2 * 20)


@pytest.mark.fast
def test_the_planner_skips_a_job_that_does_not_fit_and_lists_it_pending(monkeypatch):
    """A control estimated past the deadline is not started; the next row, which fits, still runs; the part's
    text names what is pending and why."""
    clock = [0.0]
    budget = rt.Budget(100, clock=lambda: clock[0])
    started = []

    def fake_run_job(job, store, resume):
        started.append(job.name)
        clock[0] += 10
        key = "sfp" if "soft filter" in job.name else "structured"
        if job.method.name == "control":
            return ({"run_id": "c", "accuracy": 0.92, "control_arch": "resnet56", "control_width": 0.7,
                     "control_macs_ratio": 1.0, "control_epochs": 100, "control_delta_pt": 1.0,
                     "control_delta_ci95_pt": [0.2, 1.8]}, {}, None)
        row = fake_row(key)
        return row["record"], row, None
    monkeypatch.setattr(rt, "run_job", fake_run_job)
    monkeypatch.setattr(rt, "spec", lambda name, data, model, method, params, **k: SimpleNamespace(
        name=name, method=SimpleNamespace(name=method)))
    estimates = {("structured", False): 30, ("structured", True): 500, ("sfp", False): 40, ("sfp", True): 45}
    res = rt.new_result(BASE, {}, {"part": "resnet56", "base_epochs": 90, "scale": 1.0, "rewind_lr": None,
                                   "data": {"name": "cifar10"}, "minutes": 100 / 60,
                                   "pace": {"s_epoch": 2.0, "overhead_s": 20.0, "how": "measured on the base"}})
    rt.run_rows(lit.recipes("resnet56"), res, {}, store=None, name="t", log=lambda m: None, budget=budget,
                estimate=lambda r, row: estimates[(r.key, row is not None)])
    assert len(started) == 3 and not any("control of structured" in s for s in started)
    assert set(res["rows"]) == {"structured", "sfp"} and set(res["controls"]) == {"sfp"}
    assert res["pending"] == ["control of structured"] and "estimated 500 s, 90 s left" in res["skipped"][
        "control of structured"]
    text = lit.part_text("resnet56", res, store=None, cmd="python -m bench literature --part resnet56")
    assert "**Pending (not started: their estimate did not fit what was left):** control of structured" in text
    struct_line = next(ln for ln in text.splitlines() if ln.startswith("| structured"))
    assert "**pending**: not started (estimated 500 s" in struct_line
    # with one control still pending the structured-vs-control target is not called met
    assert "Every structured row beats its control: **not judged yet**" in text
    # a row whose start never ran is pending too, not dropped
    res18 = rt.new_result(BASE, {}, {})
    rt.run_rows([r for r in lit.recipes("resnet18") if r.key == "small5x"], res18, {}, store=None, name="t",
                log=lambda m: None)
    assert res18["pending"] == ["small5x"] and "its start (structured)" in res18["skipped"]["small5x"]


@pytest.mark.fast
def test_writing_one_part_keeps_the_other_nets_text(tmp_path):
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text(report.HEADER + "\n<!-- begin:gpu -->\n## GPU benchmarks\n\nolder GPU text\n<!-- end:gpu -->\n")

    def write(part: str, text: str) -> str:
        body = lit.block_body(part, text, report.previous_text(doc))
        report.write_block("gpu", lit.BLOCK, body, f"python -m bench literature --part {part}", doc)
        return doc.read_text()
    write("resnet56", "resnet56 first run")
    write("resnet20", "resnet20 run")
    out = write("resnet56", "resnet56 second run")
    assert "resnet20 run" in out and "resnet56 second run" in out and "resnet56 first run" not in out
    assert "older GPU text" in out and out.count("<!-- begin:gpu/literature -->") == 1
    parts = re.findall(r"<!-- begin:gpu/literature/(\w+) -->", out)
    assert parts == ["resnet56", "resnet20"]     # in NETS order, whichever ran last


@pytest.mark.fast
def test_targets_judged_met_or_missed_and_a_weak_base_flagged():
    struct, _ = lit.recipes("resnet56")
    assert rt.judge(struct, {"accuracy": 0.933, "macs": 470, "size_bytes": 2000}, BASE, None) == "met"
    assert rt.judge(struct, {"accuracy": 0.931, "macs": 470, "size_bytes": 2000}, BASE, None) == \
        "missed: Δ missed by 0.10 pt"
    assert "1.90x < 2.1x fewer MACs" in rt.judge(struct, {"accuracy": 0.94, "macs": 526, "size_bytes": 2000}, BASE,
                                                  None)
    kd = next(r for r in lit.recipes("resnet18") if r.key == "kd")
    student = {"accuracy": 0.92, "macs": 74, "size_bytes": 300}
    assert rt.judge(kd, student, {**BASE, "accuracy": 0.945}, 0.7) == "met"
    weak_teacher = rt.judge(kd, student, {**BASE, "accuracy": 0.935}, 0.7)
    assert weak_teacher == "missed: teacher 93.50 % < 94 %"
    int8 = next(r for r in lit.recipes("resnet18") if r.key == "int8")
    assert rt.judge(int8, {"accuracy": 0.931, "macs": 1000, "size_bytes": 1000}, BASE, None) == \
        "missed: Δ outside ±0.3 pt by 0.10 pt"
    full = {"accuracy": 0.933, "macs": 1000, "size_bytes": 1000, "test_images": 10000}
    assert rt.judge(int8, full, BASE, None) == "met"
    assert rt.judge(int8, {**full, "test_images": 200}, BASE, None) == \
        "missed: scored on 200 test images, not 10,000"   # the target is set on the full test set
    res = {"base": {**BASE, "accuracy": 0.91}, "reused": {},
           "settings": {"base_epochs": 90, "data": {"name": "cifar10"}}}
    best = max(p.base_acc for p in literature.matching("resnet56", "cifar10"))
    assert f"**Flagged: {best - 91:.2f} pt below the literature's base ({best:.2f} %)**" in lit.base_line("resnet56",
                                                                                                          res)
    res["base"]["accuracy"] = (best - 0.5) / 100
    assert "Flagged" not in lit.base_line("resnet56", res) and "within 1 pt" in lit.base_line("resnet56", res)


@pytest.mark.slow
@pytest.mark.skipif(not CIFAR_SMALL.is_file(), reason=f"no {CIFAR_SMALL}")
def test_one_part_end_to_end_on_cpu_writes_a_scratch_file_not_the_benchmarks(tmp_path, monkeypatch):
    """``--device cpu --tiny``: the resnet20 part (base, TRP, its control) on a few CIFAR images, in ~40 s on one
    core; docs/BENCHMARKS.md is left alone."""
    monkeypatch.setenv("SLIMBENCH_HOME", str(tmp_path / "ws"))
    before = report.DOC.read_text() if report.DOC.is_file() else None
    out = tmp_path / "scratch.md"
    rc = lit.main(["--part", "resnet20", "--device", "cpu", "--tiny", "--limit", "160", "--test-limit", "100",
                   "--cifar", str(CIFAR_SMALL), "--workspace", str(tmp_path / "ws"), "--out", str(out),
                   "--save-base", str(tmp_path / "base.pt")])
    assert rc == 0
    assert (report.DOC.read_text() if report.DOC.is_file() else None) == before
    text = out.read_text()
    assert "<!-- begin:gpu/literature/resnet20 -->" in text
    row = next(ln for ln in text.splitlines() if ln.startswith("| low-rank TRP"))
    cells = [c.strip() for c in row.strip("|").split(" | ")]
    assert len(cells) == 12 and re.fullmatch(r"0\.\d{4}", cells[1])
    assert re.match(r"resnet\d+ x[\d.]+, [\d.]+, \d+ ep, 0\.\d{4}", cells[6])     # the control ran
    assert cells[11] == "met" or cells[11].startswith("missed")
    assert "TRP (spatial), resnet20 cifar10" in cells[9]
    assert "Job seconds, measured (estimated): lowrank" in text and "_Part resnet20:" in text
    assert (tmp_path / "base.pt").is_file()
    # a later call from the saved base: nothing trains the base again, and the part says where it came from
    store_runs = len(Store(tmp_path / "ws").list())
    rc = lit.main(["--part", "resnet20", "--device", "cpu", "--tiny", "--limit", "160", "--test-limit", "100",
                   "--cifar", str(CIFAR_SMALL), "--workspace", str(tmp_path / "ws"), "--out", str(out),
                   "--base-checkpoint", str(tmp_path / "base.pt"), "--minutes", "0.01"])
    assert rc == 0
    text = out.read_text()
    assert "checkpoint base.pt, scored as it is" in text and "not trained here" in text
    assert "**Pending (not started" in text and "lowrank (estimated" in text   # 0.6 s left: nothing fits
    assert len(Store(tmp_path / "ws").list()) == store_runs + 1                # the base scored, nothing else
    # the route across sessions: the same workspace with --resume reuses the trained base, the row and its control
    rc = lit.main(["--part", "resnet20", "--device", "cpu", "--tiny", "--limit", "160", "--test-limit", "100",
                   "--cifar", str(CIFAR_SMALL), "--workspace", str(tmp_path / "ws"), "--out", str(out), "--resume",
                   "--minutes", "0.01"])
    assert rc == 0 and len(Store(tmp_path / "ws").list()) == store_runs + 1  # nothing ran: all reused, past the deadline
    text = out.read_text()
    assert "Pending" not in text and text.count("reused run") == 3 and "trained 1 epochs" in text
