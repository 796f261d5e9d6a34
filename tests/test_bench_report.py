"""The benchmark report logic: verdicts follow the figures, sections are replaced in place."""
from __future__ import annotations

import pytest

from bench import __main__ as bench_cli  # noqa: F401  (the command itself must at least import)
from bench import methods_table, report
from bench import runtimes as bench_rt
from engine.accuracy_text import target_mark, target_value

BASE = {"label": "base", "method": "baseline", "accuracy": 0.90, "size_bytes": 40e6, "macs": 500e6, "latency_ms": 5.0}


def rows(*extra: dict) -> dict:
    rs = [dict(BASE), *[dict(r) for r in extra]]
    methods_table._derive(rs, BASE)
    return {"base": BASE, "rows": rs, "skipped": []}


@pytest.mark.fast
def test_targets_are_judged_on_the_best_qualifying_row():
    res = rows({"label": "s30", "method": "prune_structured", "accuracy": 0.888, "size_bytes": 20e6, "macs": 240e6,
                "latency_ms": 3.0},
               {"label": "s50", "method": "prune_structured", "accuracy": 0.897, "size_bytes": 10e6, "macs": 125e6,
                "latency_ms": 2.5},
               {"label": "int8", "method": "quantize_int8", "accuracy": 0.899, "size_bytes": 10e6, "macs": 500e6,
                "latency_ms": 4.0})
    checks = {c: (f, v) for c, f, v in methods_table.claims(res)}
    assert checks["channel pruning: >= 2x fewer MACs at <= 0.5 pt loss"] == ("s50: 4.00x, -0.30 pt", "met")
    assert checks["unstructured: 90% sparsity at <= 0.5 pt loss"][1] == "not reached"
    assert checks["INT8 >= 1.5x faster than its FP32 model in the same runtime (ONNX Runtime, CPU, batch 1)"] == ("1.25x", "missed by 0.25x")
    assert checks["80% smaller at <= 1 pt accuracy loss"][1] == "not met"  # 4x smaller is 75 %, not 80 %


def test_runtime_backends_are_compared_with_eager_on_the_same_device():
    rt = {"label": "rt", "method": "runtime", "accuracy": 0.9, "size_bytes": 40e6, "macs": 500e6, "latency_ms": 5.0,
          "runtimes": {"eager_cpu": {"latency_ms": 10.0}, "compile_cpu": {"latency_ms": 20.0},
                       "onnxruntime_cpu": {"latency_ms": 5.0}, "compile_cuda": {"skipped": "no CUDA"}}}
    checks = {c: (f, v) for c, f, v in methods_table.claims(rows(rt))}
    assert checks["compile vs eager (cpu, batch 1): not always faster"] == ("0.50x (separate runs)", "slower")
    assert checks["onnxruntime vs eager (cpu, batch 1): not always faster"] == ("2.00x (separate runs)", "faster")
    rt["runtimes"]["compile_cpu"]["x_vs_eager"] = 1.1          # the job's interleaved timing wins
    checks = {c: (f, v) for c, f, v in methods_table.claims(rows(rt))}
    assert checks["compile vs eager (cpu, batch 1): not always faster"] == ("1.10x (paired)", "faster")
    assert not any("cuda" in c for c in checks)


def test_sections_are_rewritten_in_place(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "DOC", tmp_path / "BENCHMARKS.md")
    report.write_section("cpu", "first cpu", "make bench")
    report.write_section("gpu", "gpu body", "make bench-gpu")
    report.write_section("cpu", "second cpu", "make bench")
    text = report.DOC.read_text()
    assert "second cpu" in text and "first cpu" not in text and "gpu body" in text
    assert text.index("begin:cpu") < text.index("begin:gpu")


@pytest.mark.fast
def test_take_lands_the_gpu_section_a_device_call_sent_back_and_refuses_a_rehearsal(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(report, "DOC", tmp_path / "BENCHMARKS.md")
    report.write_section("cpu", "cpu figures", "make bench")
    report.write_section("gpu", "stale gpu figures", "make bench-gpu")
    came_back = tmp_path / "out" / "BENCHMARKS.md"     # the device's copy: this document, then a part run there
    came_back.parent.mkdir()
    came_back.write_text(report.DOC.read_text().replace("stale gpu figures", "fresh H200 figures"))
    assert bench_cli.main(["take", str(came_back)]) == 0
    text = report.DOC.read_text()
    assert "fresh H200 figures" in text and "stale gpu figures" not in text and "cpu figures" in text
    assert text.count("begin:gpu -->") == 1
    assert "nothing new" in report.take_section(came_back)              # landing twice changes nothing
    rehearsal = tmp_path / "rehearsal.md"
    rehearsal.write_text(text.replace("fresh H200 figures", "figures on AMD EPYC, 2 cores, 24 GiB RAM, no GPU"))
    assert bench_cli.main(["take", str(rehearsal)]) == 2
    assert "CPU rehearsal" in capsys.readouterr().err and "fresh H200 figures" in report.DOC.read_text()
    assert "no gpu section" in report.take_section(tmp_path / "absent.md")


def test_bench_command_refuses_a_missing_dataset(tmp_path, capsys):
    assert bench_cli.main(["cpu", "--cifar", str(tmp_path / "absent.zip")]) == 2
    assert "CIFAR-10 zip not found" in capsys.readouterr().err


def test_x_faster_is_the_rows_paired_figure_when_it_has_one():
    res = rows({"label": "paired", "method": "prune_structured", "accuracy": 0.9, "size_bytes": 20e6, "macs": 250e6,
                "latency_ms": 10.0, "paired_speedup": 1.6, "paired_speedup_range": [1.5, 1.7]},
               {"label": "old", "method": "prune_structured", "accuracy": 0.9, "size_bytes": 20e6, "macs": 250e6,
                "latency_ms": 2.5})
    by = {r["label"]: r for r in res["rows"]}
    assert by["paired"]["x_faster"] == 1.6 and by["paired"]["x_faster_spread"] == "1.50-1.70"
    assert by["old"]["x_faster"] == 2.0 and by["old"]["x_faster_spread"] == "separate"
    assert by["base"]["x_faster"] == 1.0
    checks = {c: f for c, f, _ in methods_table.claims(res)}
    assert checks["paired: realised speed-up ÷ MAC reduction"] == "1.60x / 2.00x = 0.80"
    res = rows({"label": "int8", "method": "quantize_int8", "accuracy": 0.9, "latency_ms": 0.1,
                "paired_speedup": 50.0, "paired_speedup_range": [40.0, 60.0], "int8_speedup": 1.6,
                "int8_speedup_range": [1.5, 1.7]},
               {"label": "pipe", "method": "pipeline", "accuracy": 0.9, "latency_ms": 0.1, "paired_speedup": 80.0,
                "int8_speedup": 1.6, "step_records": [
                    {"paired_speedup": 2.0, "paired_speedup_range": [1.8, 2.2]},
                    {"paired_speedup": 40.0, "paired_speedup_range": [30.0, 50.0], "int8_speedup": 1.5,
                     "int8_speedup_range": [1.4, 1.6]}]})
    by = {r["label"]: r for r in res["rows"]}
    assert by["int8"]["x_faster"] == 1.6 and by["int8"]["x_faster_spread"] == "1.50-1.70"  # not 50x vs eager
    assert by["pipe"]["x_faster"] == 3.0 and by["pipe"]["x_faster_spread"] == "2.52-3.52"  # its steps multiplied


@pytest.mark.fast
def test_rows_show_where_they_ship_and_the_claims_are_judged_there():
    """A compact net or a pruned one is judged in the runtime it ships in, against the base exported there too;
    the eager figure stays beside it."""
    base = {**BASE, "run_id": "b1", "best_artefact_runtime": "onnxruntime", "deploy": {"onnxruntime": {"latency_ms": 1.0}}}
    compact = {"label": "compact", "method": "compact", "accuracy": 0.85, "size_bytes": 10e6, "macs": 125e6,
               "latency_ms": 4.0, "paired_speedup": 1.3, "paired_speedup_range": [1.2, 1.4],
               "deploy": {"eager": {"latency_ms": 4.0}, "onnxruntime": {"latency_ms": 0.3}},
               "deploy_paired_runtime": "onnxruntime", "deploy_paired_speedup": 3.4,
               "deploy_paired_speedup_range": [3.1, 3.6]}
    pruned = {"label": "s50", "method": "prune_structured", "accuracy": 0.9, "size_bytes": 10e6, "macs": 125e6,
              "latency_ms": 4.0, "paired_speedup": 1.5, "deploy": {"openvino": {"latency_ms": 0.25}},
              "deploy_paired_runtime": "openvino", "deploy_paired_speedup": 3.8}
    eager_only = {"label": "s30", "method": "prune_structured", "accuracy": 0.9, "size_bytes": 20e6, "macs": 250e6,
                  "latency_ms": 4.0, "paired_speedup": 1.2}
    rs = [{**base, "label": "base row"}, compact, pruned, eager_only]   # the bench's base row is a copy of the base
    methods_table._derive(rs, base)
    assert (rs[0]["ships_in"], rs[0]["shipped_latency_ms"], rs[0]["x_faster_shipped"]) == ("ONNX Runtime", 1.0, 1.0)
    assert (compact["ships_in"], compact["x_faster_shipped"], compact["x_faster_shipped_spread"]) == (
        "ONNX Runtime", 3.4, "3.10-3.60")
    assert eager_only["ships_in"] is None and eager_only["x_faster_shipped"] is None
    checks = {c: (f, v) for c, f, v in methods_table.claims({"base": base, "rows": rs, "skipped": []})}
    assert checks["compact architecture ~4x faster than the base (CPU, batch 1)"] == (
        "3.40x in ONNX Runtime (eager: 1.30x)", "missed by 0.60x")
    assert checks["s50: realised speed-up ÷ MAC reduction in OpenVINO"] == ("3.80x / 4.00x = 0.95", "met")
    assert checks["s50: realised speed-up ÷ MAC reduction"][0] == "1.50x / 4.00x = 0.38"
    assert not any(c.startswith("s30: realised speed-up ÷ MAC reduction in") for c in checks)
    assert checks["s50: realised speed-up ÷ MAC reduction"][1] == "(1.0 = latency follows MACs)"
    small = {**base, "macs": 10e6}   # a net of a few MMACs: the share is shown, the target judged elsewhere
    pruned["macs"] = 2.5e6
    checks = {c: (f, v) for c, f, v in methods_table.claims({"base": small, "rows": rs, "skipped": []})}
    assert checks["s50: realised speed-up ÷ MAC reduction in OpenVINO"][1].startswith(
        "(1.0 = latency follows MACs; the ≥ 0.9 target is judged on a compute-bound net")
    compact.pop("deploy_paired_runtime")   # not deployed: judged on eager, and says so
    methods_table._derive(rs, base)
    checks = {c: (f, v) for c, f, v in methods_table.claims({"base": base, "rows": rs, "skipped": []})}
    assert checks["compact architecture ~4x faster than the base (CPU, batch 1)"] == ("1.30x (eager)", "missed by 2.70x")


def test_global_and_uniform_ranking_at_the_same_share_are_compared():
    res = rows({"label": "u50", "method": "prune_structured", "allocation": "uniform", "method_params": {"ratio": 0.5},
                "accuracy": 0.88, "size_bytes": 10e6, "macs": 125e6, "latency_ms": 2.5},
               {"label": "g50", "method": "prune_structured", "allocation": "global", "method_params": {"ratio": 0.5},
                "accuracy": 0.885, "size_bytes": 12e6, "macs": 250e6, "latency_ms": 3.0})
    checks = {c: (f, v) for c, f, v in methods_table.claims(res)}
    figure, verdict = checks["structured 50% of channels: one global ranking vs the same share of every layer"]
    assert figure == "global +0.50 pt, 2.00x vs 4.00x fewer MACs" and verdict == "global more accurate"


@pytest.mark.fast
def test_cpu_methods_section_names_its_fashion_mnist_base_and_the_anchors_dataset():
    from engine import presets
    res = rows({"label": "s50", "method": "prune_structured", "accuracy": 0.88, "size_bytes": 10e6, "macs": 125e6,
                "latency_ms": 2.5})
    text = bench_cli.methods_section(res, dict(presets.QUICK_DATA), "resnet20", 5, 1, 3, gpu=False)
    assert text.startswith(f"### Methods on Fashion-MNIST (limit {presets.QUICK_DATA['limit']}, image size 16), "
                           "CIFAR ResNet-20 base "
                           "(top-1 0.900)")
    assert "Published anchors are CIFAR-10 or ImageNet figures" in text and "| s50 | 0.88 |" in text


SAMPLE = """# Slimbench benchmarks

<!-- begin:cpu -->
## CPU benchmarks

- Command: `make bench`

<!-- begin:cpu/efficiency -->
### Engine efficiency and measurement trust

old efficiency figures
<!-- end:cpu/efficiency -->

<!-- begin:cpu/methods -->
### Methods on Fashion-MNIST

old methods table
<!-- end:cpu/methods -->

<!-- begin:cpu/queue -->
### Queue throughput

old queue figures
<!-- end:cpu/queue -->

_Whole command: 900 s._

<!-- begin:cpu/int8-formats -->
### INT8 formats

int8 block of its own command
<!-- end:cpu/int8-formats -->
<!-- end:cpu -->

<!-- begin:gpu -->
gpu text
<!-- end:gpu -->
"""


@pytest.mark.fast
def test_skipped_sections_keep_their_previous_text_in_place(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "DOC", tmp_path / "BENCHMARKS.md")
    report.DOC.write_text(SAMPLE)
    monkeypatch.setattr(bench_cli, "optional_section", lambda module, title: f"### {title}\n\nnew {module}")
    (tmp_path / "cifar.zip").write_bytes(b"")
    assert bench_cli.main(["cpu", "--cifar", str(tmp_path / "cifar.zip"), "--skip", "efficiency,methods"]) == 0
    text = report.DOC.read_text()
    cpu = text[text.index("<!-- begin:cpu -->"):text.index("<!-- end:cpu -->")]
    # the skipped parts are kept word for word, in their places; the rerun ones are replaced
    order = ["old efficiency figures", "old methods table", "new bench.queue_load", "new bench.pages",
             "new bench.quick_tour", "new bench.camera_photos", "int8 block of its own command"]
    assert [cpu.index(s) for s in order] == sorted(cpu.index(s) for s in order)
    assert "old queue figures" not in text and cpu.count("<!-- begin:cpu/methods -->") == 1
    assert "kept from an earlier run: efficiency, methods" in cpu and "900 s" not in cpu
    assert "gpu text" in text
    # a skip with nothing to keep leaves the part out; a section name that does not exist is refused
    body, kept = report.section_body("cpu", ["efficiency", "queue"], {"queue": "q"}, {"efficiency"}, "")
    assert kept == [] and body == "<!-- begin:cpu/queue -->\nq\n<!-- end:cpu/queue -->"
    assert bench_cli.main(["cpu", "--cifar", str(tmp_path / "cifar.zip"), "--skip", "tuor"]) == 2
    # while a run goes, a part it has not reached shows its earlier text (a run killed mid-way loses none)
    old = "\n\n".join(report.part("cpu", k, f"old {k}") for k in ("efficiency", "queue", "tour"))
    order = ["efficiency", "queue", "tour"]
    body, kept, waiting = report.progress_body("cpu", order, {"efficiency": "new"}, {"queue"}, old, done=False)
    assert (kept, waiting) == (["queue"], ["tour"]) and "old tour" in body and "old efficiency" not in body
    body, kept, waiting = report.progress_body("cpu", order, {"efficiency": "new"}, {"queue"}, old, done=True)
    assert (kept, waiting) == (["queue"], []) and "old tour" not in body


@pytest.mark.fast
def test_target_marks_never_round_a_miss_into_a_pass_or_read_missed_by_nothing():
    """The runtimes block read "**0.90** ... target ≥ 0.9 — missed by 0.00" for 0.8967: a miss shows the digits
    that tell it from the target."""
    assert (target_value(0.8967, 0.9), target_mark(0.8967, 0.9)) == ("0.897", "missed by 0.003")
    assert (target_value(96.96, 97, 1), target_mark(96.96, 97, 1, " pt")) == ("96.96", "missed by 0.04 pt")
    assert (target_value(95.5, 97, 1), target_mark(95.5, 97, 1, " pt")) == ("95.5", "missed by 1.5 pt")
    assert (target_value(0.9, 0.9), target_mark(0.9, 0.9)) == ("0.90", "met")          # the floor itself meets it
    assert (target_value(0.91234, 0.9), target_mark(0.91234, 0.9)) == ("0.91", "met")  # a pass keeps its digits
    assert target_mark(1.996, 2.0, unit="x") == "missed by 0.004x"
    assert target_mark(0.9 - 1e-9, 0.9) == "missed by less than 0.000001" and target_mark(None, 0.9) == "not measured"
    for value in (0.85, 0.895, 0.8967, 0.89949, 0.89999, 0.8999999):   # never "0.00", never the target's own digits
        mark, shown = target_mark(value, 0.9), target_value(value, 0.9)
        assert float(mark.removeprefix("missed by ").removeprefix("less than ")) > 0, mark
        assert float(shown.removeprefix("< ")) < 0.9 or shown == "< 0.900000", shown

    def res(realised, agreement):
        row = {"runtime": "onnxruntime", "latency_ms": 1.0, "realised": realised, "speedup": 3.5}
        int8 = [{"key": k, "runtime": "onnxruntime", "latency_ms": 1.0, "speedup": 1.996, "agreement": agreement}
                for k in ("int8", "pruned_int8")]
        return {"rows": [row, *int8], "macs_cut": 3.99, "int8_format": "qdq", "agreement_images": 1000}
    lines = bench_rt.verdicts(res(0.8967, 0.9696))
    assert "**0.897** in onnxruntime" in lines[0] and "target ≥ 0.9 — missed by 0.003)" in lines[0]
    assert "**1.996x** its own FP32 at batch 1 (target ≥ 2.0x — missed by 0.004x)" in lines[1]
    assert "**96.96 %** on 1,000 test images (target ≥ 97% — missed by 0.04 pt)" in lines[2]
    assert "**0.90** in onnxruntime" in bench_rt.verdicts(res(0.9, 0.97))[0] and "— met)" in bench_rt.verdicts(
        res(0.9, 0.97))[0]


@pytest.mark.fast
def test_share_of_the_matmul_peak_is_a_median_of_alternating_rounds():
    """The network and the matmul are timed round by round, so a slow spell of a shared machine slows both
    (measured minutes apart, the peak once read below the network's own rate: "125 %")."""
    import torch

    from bench import efficiency
    sh = efficiency.inference_share_of_peak(torch.device("cpu"), arch="resnet20", batch=2, rounds=3, n=128)
    lo, hi = sh["share_range"]
    assert sh["rounds"] == 3 and 0 < lo <= sh["share"] <= hi
    assert sh["gflops_achieved"] / sh["peak_gflops"] == pytest.approx(sh["share"], rel=1.0)  # same order
