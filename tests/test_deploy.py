"""Deployment runtimes: every artefact loads in its runtime and agrees with PyTorch; a runtime that is
missing is recorded "not available", never an error; timings under load are flagged and the paired
timer falls back to one thread; energy comes from a hardware counter or is "not available"."""
from __future__ import annotations

import builtins
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import compare_page, run_here, run_spec
from engine import cli as engine_cli
from engine import conditions, deploy, measure, models, results, sweeps
from engine.spec import JobSpec, SpecError
from engine.store import Store

SHAPE = (3, 8, 8)
CFG = SimpleNamespace(threads=1, latency_runs=3, warmup_runs=1, batch_size=8, gpu_batch_size=8, compile=False,
                      compile_timeout_s=60)


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return models.build("resnet20", 10, True, width=0.25).eval()


def plan(tmp_path: Path, model: torch.nn.Module) -> deploy.Plan:
    from engine import export
    onnx = tmp_path / "model.onnx"
    export.export_onnx(model, SHAPE, onnx)
    torch.manual_seed(1)   # float16 images, as the runner holds its verification set (runner._test_images)
    return deploy.Plan(model=model, input_shape=SHAPE, folder=tmp_path, images=torch.randn(200, *SHAPE).half(), cfg=CFG,
                       onnx_path=onnx)


@pytest.mark.fast
def test_each_artefact_loads_in_its_runtime_and_agrees_with_pytorch(tmp_path):
    model = tiny_model()
    entries = deploy.deploy_all(plan(tmp_path, model))
    ran = {k: v for k, v in entries.items() if "latency_ms" in v}
    assert {"eager", "onnxruntime", "openvino"} <= set(ran), entries
    for name, e in ran.items():
        assert e["verified"] and e["agreement"] >= deploy.AGREEMENT_TARGET, (name, e)
        assert e["verified_images"] == 200 and e["latency_ms"] > 0 and e["throughput"] > 0
        assert isinstance(e["loaded"], bool) and e["load_avg"] is not None
    # each shipped file, loaded again from disk in its runtime, gives PyTorch's answers
    x = torch.randn(16, *SHAPE)
    want = model(x).argmax(1)
    for name in ("onnxruntime", "openvino"):
        path = Path(ran[name]["artefact"])
        assert all(f.is_file() for f in deploy.artefact_files(path))
        got = deploy.DEPLOYMENTS[name].load(path, model, "cpu", 1)(x)
        assert torch.equal(got.argmax(1), want), name
    assert entries["compile"] == {"not_available": "not run: measure.compile is off (compiling takes minutes)"}
    assert deploy.best(entries) in ran


@pytest.mark.fast
def test_deploying_and_counting_macs_run_no_forward_with_autograd_on(tmp_path):
    """A forward over the verification images with autograd on keeps every activation for a backward that
    never comes: it grew a CIFAR ResNet-18 job by ~4.6 GB at 1,000 images (a camera-photos job past its bound)."""
    model = tiny_model()
    graphs = []
    def hook(module, args, out):
        graphs.append(torch.is_grad_enabled())
    handles = [m.register_forward_hook(hook) for m in model.modules()]
    p = plan(tmp_path, model)   # the ONNX export's trace runs before the hooks count
    graphs.clear()
    entries = deploy.deploy_all(p)
    measure.count_macs(model, SHAPE)
    for h in handles:
        h.remove()
    assert "latency_ms" in entries["eager"] and graphs, entries
    assert not any(graphs), f"{sum(graphs)} of {len(graphs)} module calls ran with autograd on"
    assert not deploy.reference_logits(model, p.images).requires_grad


@pytest.mark.fast
def test_the_verification_images_are_the_first_test_images_as_the_model_takes_them():
    from engine import data as data_mod
    from engine import runner
    from engine.spec import DataSpec
    data = data_mod.load(DataSpec(name="digits", test_limit=300))
    first = torch.cat([x for x, _ in data.loader("test", "cpu", batch_size=256)])
    held = runner._test_images(data, 270)
    assert held.dtype == torch.float16                                   # half the memory of float32
    assert torch.equal(held, first[:270].half())                         # across a batch boundary
    assert torch.equal(runner._test_images(data, 1000), first.half())   # more than there are: all of them
    assert runner._test_images(data, 0).numel() == 0


@pytest.mark.fast
def test_a_runtime_that_is_not_installed_is_recorded_not_available(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_openvino(name, *args, **kwargs):
        if name == "openvino" or name.startswith("openvino."):
            raise ImportError("No module named 'openvino'")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_openvino)
    entries = deploy.deploy_all(plan(tmp_path, tiny_model()))
    assert entries["openvino"] == {"not_available": "not available on this machine: the openvino package is not "
                                                    "installed"}
    assert entries["onnxruntime"]["verified"]
    if not torch.cuda.is_available():
        assert deploy.DEPLOYMENTS["onnxruntime"].available("cuda").startswith(deploy.NOT_HERE)
    # a runtime that fails on this graph is recorded too, and the others still run
    monkeypatch.setattr(deploy.OnnxRuntime, "load", lambda *a: (_ for _ in ()).throw(RuntimeError("bad graph")))
    entries = deploy.deploy_all(plan(tmp_path, tiny_model()))
    assert entries["onnxruntime"] == {"not_available": "ONNX Runtime could not run this model: bad graph"}
    assert entries["eager"]["verified"]


@pytest.mark.fast
def test_a_timing_under_load_is_flagged_and_the_paired_timer_falls_back_to_one_thread(monkeypatch):
    monkeypatch.setattr(conditions, "load_average", lambda: conditions.cores() + 3.0)
    model = tiny_model()
    speed = measure.measure_speed(model, SHAPE, torch.device("cpu"), 4, runs=3, warmup=1, threads=1)
    assert speed["loaded"] is True and speed["load_avg"] == conditions.cores() + 3.0
    p = measure.paired_speedup(model, model, SHAPE, torch.device("cpu"), runs=4, warmup=1, threads=2, rounds=1)
    assert p["threads"] == 1 and p["threads_fallback"].startswith("timed on 1 thread: load average")
    flag = results.flags({"run_id": "r", "loaded": True, "load_avg": 5.0, "deploy": {"openvino": {"loaded": True}}},
                         {"run_id": "r"})
    assert flag == ["timed under load (load 5.00): latency, openvino latency taken while other processes held cores "
                    "it needed (the load average above the CPU count, or their CPU use during the timing)"]
    monkeypatch.setattr(conditions, "load_average", lambda: 0.0)   # an idle machine: no fall-back, no flag
    monkeypatch.setattr(conditions, "busy_seconds", lambda: 0.0)    # (and nobody else running meanwhile)
    assert conditions.contended(2) is None and conditions.contended(1) is None
    p = measure.paired_speedup(model, model, SHAPE, torch.device("cpu"), runs=4, warmup=1, threads=1, rounds=1)
    assert p["threads"] == 1 and p["threads_fallback"] is None and p["loaded"] is False
    assert results.flags({"run_id": "r", "loaded": False}, {"run_id": "r"}) == []


@pytest.mark.fast
def test_a_timing_while_other_processes_take_the_cores_is_flagged_though_the_load_average_trails(monkeypatch):
    """The 1-minute load average lags: tests that had just started read 0.78 on 2 cores while a run's eager
    latencies came out ~60x the same model timed alone. Other processes' CPU during the timing itself counts."""
    import itertools
    monkeypatch.setattr(conditions, "load_average", lambda: 0.5)
    busy = itertools.count(0.0, 1e6)   # every reading: a million more CPU seconds used machine-wide
    monkeypatch.setattr(conditions, "busy_seconds", lambda: next(busy))
    out = {}
    with conditions.probe(1, out):
        time.sleep(0.25)
    assert out["others_cpu"] > conditions.cores() and out["loaded"] is True
    monkeypatch.setattr(conditions, "load_average", lambda: 0.0)
    if conditions.cores() >= 2:   # the paired timer's fall-back sees them too, before it starts
        assert "other processes used" in conditions.contended(2, sample_s=0.05)
    monkeypatch.setattr(conditions, "busy_seconds", lambda: 5.0)   # nobody else: not flagged
    with conditions.probe(conditions.cores(), out):
        time.sleep(0.25)
    assert out["others_cpu"] == 0.0 and out["loaded"] is False
    # one thread on 2+ cores leaves the others a core: a neighbour on it is no contention, more is
    assert not conditions.others_took_cores(conditions.cores() - 1.0, 1)
    assert conditions.others_took_cores(conditions.cores() - 0.5, 1)
    flag = results.flags({"run_id": "r", "loaded": True, "load_avg": 0.78, "others_cpu": 1.9}, {"run_id": "r"})
    assert flag[0].startswith("timed under load (load 0.78), other processes using 1.90 cores: latency")


@pytest.mark.fast
def test_energy_comes_from_rapl_when_readable_and_is_never_guessed(tmp_path, monkeypatch):
    monkeypatch.setattr(conditions, "RAPL_ROOT", tmp_path / "none")
    meter = conditions.EnergyMeter("cpu")
    out: dict = {}
    with meter.measure(out):
        pass
    assert out["joules"] is None and meter.source is None
    assert measure.energy_fields(None, 10, meter)["energy_source"].startswith("not available: no RAPL counter")
    zone = tmp_path / "rapl" / "intel-rapl:0"
    (tmp_path / "rapl" / "intel-rapl:0:0").mkdir(parents=True)   # a subzone: counted inside its package
    zone.mkdir()
    (zone / "max_energy_range_uj").write_text("1000000\n")
    (zone / "energy_uj").write_text("999000\n")
    monkeypatch.setattr(conditions, "RAPL_ROOT", tmp_path / "rapl")
    meter = conditions.EnergyMeter("cpu")
    with meter.measure(out):
        (zone / "energy_uj").write_text("3000\n")   # wrapped round: 1,000 + 3,000 µJ used
    assert out["joules"] == pytest.approx(0.004)
    assert measure.energy_fields(out["joules"], 4, meter) == {"energy_mj_per_image": pytest.approx(1.0),
                                                              "energy_source": "RAPL (CPU package)"}
    (zone / "energy_uj").chmod(0)
    if not (zone / "energy_uj").exists() or _readable(zone / "energy_uj"):
        return   # running as root: every file reads
    assert "not readable" in conditions.EnergyMeter("cpu").reason


def _readable(path: Path) -> bool:
    try:
        path.read_text()
        return True
    except OSError:
        return False


@pytest.mark.fast
def test_bad_deploy_settings_are_refused_naming_the_field():
    for field, value in (("verify_images", 0), ("compile_timeout_s", 5), ("deploy", "yes")):
        with pytest.raises(SpecError, match=f"measure.{field}"):
            JobSpec.from_dict({"model": {"arch": "resnet20"}, "measure": {field: value}})


def test_a_pruned_run_is_deployed_and_timed_against_its_start_in_the_same_runtime(tiny_base, session_home, tmp_path,
                                                                                   capsys, monkeypatch):
    m = {"onnx": True, "latency_runs": 5, "warmup_runs": 1, "verify_images": 300, "paired_rounds": 2, "threads": 1}
    rec = run_here({"data": {"name": "digits"}, "model": {"from_run": tiny_base["run_id"]},
                    "method": {"name": "prune_structured", "params": {"ratio": 0.5, "finetune_epochs": 0}},
                    "measure": m}, session_home)
    dep = rec["deploy"]
    for name in ("eager", "onnxruntime", "openvino"):
        assert dep[name]["verified"] and dep[name]["verified_images"] == 300, (name, dep[name])
    assert rec["best_runtime"] in dep and rec["best_latency_ms"] == dep[rec["best_runtime"]]["latency_ms"]
    assert Path(rec["best_artefact"]).is_file()
    # the start (tiny_base deployed eager-only: onnx off) is exported to this run's best runtime and timed there
    assert rec["deploy_paired_runtime"] == rec["best_artefact_runtime"]
    assert rec["deploy_paired_speedup"] > 0 and len(rec["deploy_paired_speedup_range"]) == 2
    assert rec["start_x_fewer_macs"] == pytest.approx(tiny_base["macs"] / rec["macs"])
    assert rec["speedup_per_mac_cut"] == pytest.approx(rec["deploy_paired_speedup"] / rec["start_x_fewer_macs"])
    assert rec["paired_threads"] >= 1 and isinstance(rec["paired_loaded"], bool)
    assert rec["energy_source"]   # a counter's name, or "not available: why"
    # thread and batch sweeps of the finished run: engine function, then the CLI and its bad input
    store = Store(session_home)
    out = sweeps.sweep_run(store, rec["run_id"], "onnxruntime", threads=[1], batches=[1, 4], runs=3)
    assert [p["threads"] for p in out["by_threads"]] == [1] and out["by_threads"][0]["latency_ms"] > 0
    assert [p["batch"] for p in out["by_batch"]] == [1, 4] and all(p["throughput"] > 0 for p in out["by_batch"])
    assert sweeps.load(store, rec["run_id"]) == json.loads(json.dumps(out))
    with pytest.raises(SpecError, match="threads"):
        sweeps.sweep_run(store, rec["run_id"], threads=[0])
    assert engine_cli.main(["sweep", rec["run_id"], "--runtime", "tensorrt"]) == engine_cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "runtime" in err and "eager, onnxruntime, openvino" in err
    # Compare: ranks by latency in the best runtime, shows every runtime, offers its artefact, draws the sweep
    at = compare_page(session_home, monkeypatch, lambda home: None)
    at.selectbox(key="detail_run").set_value(rec["run_id"])
    at.selectbox(key="w_best").set_value("best_latency")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    table = next(d.value for d in at.dataframe if "runtime" in d.value.columns and "verified" in d.value.columns)
    assert set(table["runtime"]) >= {"eager", "onnxruntime", "openvino", "compile"}
    assert table.set_index("runtime").loc["compile", "note"].startswith("not run: measure.compile is off")
    charts = " ".join(str(c.proto.spec) for c in at.get("plotly_chart"))
    assert "Batch-1 latency by threads (onnxruntime)" in charts and "Throughput by batch" in charts
    assert at.button(key="sweep_run").label == "Sweep threads and batch sizes"
    labels = [b.proto.label for b in at.get("download_button")]
    assert any(lb.startswith(f"Download for {rec['best_artefact_runtime']}: ") for lb in labels), labels


@pytest.mark.fast
def test_default_sweep_threads_reach_the_cpu_count():
    assert sweeps.default_threads(1) == [1]
    assert sweeps.default_threads(6) == [1, 2, 4, 6]
    assert sweeps.default_threads(8) == [1, 2, 4, 8]


@pytest.mark.fast
def test_runtime_bench_credits_each_runtime_its_own_base_and_marks_the_targets(tmp_path, monkeypatch):
    from bench import runtimes as bench_rt
    from engine import settings
    # its data: CIFAR-10's small zip when the limits fit in it, the full one when not, else Fashion-MNIST at 32 px
    monkeypatch.setattr(bench_rt, "SHARED", tmp_path)
    monkeypatch.setattr(settings, "cifar10", lambda: None)
    monkeypatch.setattr(settings, "cifar10_small", lambda: None)
    spec, where = bench_rt.dataset(32, 4000, 1000)
    assert spec["name"] == "fashion-mnist" and spec["image_size"] == 32 and "CIFAR-10 was not found" in where
    for name in ("cifar10.zip", "cifar10-small.zip"):
        (tmp_path / name).write_bytes(b"")
    assert bench_rt.dataset(32, 4000, 1000)[0]["path"] == str(tmp_path / "cifar10-small.zip")
    spec, _ = bench_rt.dataset(32, 20000, 1000)
    assert spec["path"] == str(tmp_path / "cifar10.zip") and spec["limit"] == 20000 and spec["test_limit"] == 1000
    ms = lambda *v: [x / 1e3 for x in v]   # noqa: E731  (per-round latencies in seconds)

    def t(*v):
        return {"latency_ms": sorted(v)[len(v) // 2], "throughput": 100.0 / v[0], "latency_rounds": ms(*v)}
    timed = {("base", "eager"): t(4, 4, 4), ("pruned", "eager"): t(2, 2, 2),
             ("base", "onnxruntime"): t(2, 2, 2), ("pruned", "onnxruntime"): t(0.5, 0.55, 1),
             ("int8", "onnxruntime"): t(1, 1, 1), ("pruned_int8", "onnxruntime"): t(0.4, 0.4, 0.4)}
    macs = {"base": 4_000_000, "pruned": 1_000_000, "int8": 4_000_000, "pruned_int8": 1_000_000}
    agree = {("int8", "onnxruntime"): {"agreement": 0.99, "images": 1000},
             ("pruned_int8", "onnxruntime"): {"agreement": 0.9, "images": 1000}}
    rows = bench_rt.rows(timed, macs, 10.0, ["eager", "onnxruntime", "openvino"],
                         {"openvino": "not available on this machine: the openvino package is not installed"}, agree)
    by = {(r["runtime"], r["model"]): r for r in rows}
    assert by[("eager", "structured 50 %")]["speedup"] == 2.0 and by[("eager", "structured 50 %")]["realised"] == 0.5
    # against its own base in ONNX Runtime (2 ms), not the eager one: 2 / 0.55 = 3.64x
    assert by[("onnxruntime", "structured 50 %")]["speedup"] == pytest.approx(2 / 0.55)
    assert by[("onnxruntime", "base")]["peak_share"] == pytest.approx(50 * 2 * 4e6 / 1e9 / 10)
    assert by[("openvino", "all")]["note"].startswith("not available on this machine")
    # INT8 against its own FP32 model in the same runtime: the base's INT8 vs the base, the pruned one's vs pruned
    assert by[("onnxruntime", "INT8 (auto)")]["speedup"] == 2.0 and by[("onnxruntime", "INT8 (auto)")]["speedup_vs"] == "base"
    assert by[("onnxruntime", "structured 50 % → INT8")]["speedup"] == pytest.approx(0.55 / 0.4)
    assert "realised" not in by[("onnxruntime", "structured 50 % → INT8")]
    assert by[("eager", "INT8 (both)")]["note"] == "INT8 ONNX runs in ONNX Runtime and OpenVINO, not in eager"
    text = bench_rt.section({"rows": rows, "macs": macs, "macs_cut": 4.0, "peak_gflops": 10.0, "rounds": 3,
                             "threads": 1, "load": {"load_avg": 5.0, "loaded": True}, "about": "Base: test",
                             "int8_format": "qdq", "int8_level": "amx", "int8_runtime": "onnxruntime",
                             "agreement_images": 1000, "seconds": 1.0})
    assert "**0.91** in onnxruntime" in text and "target ≥ 0.9 — met)" in text and "timed under load: suspect" in text
    assert "INT8 (auto) (format `qdq`, in onnxruntime" in text and "**2.00x** its own FP32" in text
    assert "(target ≥ 2.0x — met)" in text and "**99.0 %** on 1,000 test images (target ≥ 97% — met)" in text
    assert "**1.38x** its own FP32 at batch 1 (target ≥ 2.0x — missed by 0.62x)" in text
    assert "**90.0 %** on 1,000 test images (target ≥ 97% — missed by 7.0 pt)" in text
    assert "kept FP32" not in text   # every layer but the first and last is INT8
    # format auto kept layers FP32 for the pruned model: the section and its verdict name them
    text = bench_rt.section({"rows": rows, "macs": macs, "macs_cut": 4.0, "peak_gflops": 10.0, "rounds": 3,
                             "threads": 1, "load": {"load_avg": 0.5}, "about": "Base: test", "int8_format": "qdq",
                             "int8_level": "amx", "int8_runtime": "onnxruntime", "agreement_images": 1000,
                             "seconds": 1.0, "pruned_int8_format": "qdq_s8s8", "pruned_int8_reason": "why",
                             "pruned_int8_fp32_layers": ["/layer4/layer4.0/conv2/Conv", "/2/Conv"],
                             "pruned_int8_fp32_mac_share": 0.25})
    assert ("`qdq_s8s8` for the pruned model with 2 layer(s) kept FP32 to reach the 97 % agreement floor at 95 % "
            "confidence on the validation split (25% of its MACs): `layer4.0.conv2`, `2` (why)") in text
    assert "in onnxruntime, the runtime that format ships in, 2 layer(s) kept FP32 besides the first and last" in text
    text = bench_rt.section({"rows": rows, "macs": macs, "macs_cut": 4.0, "peak_gflops": 10.0, "rounds": 3,
                             "threads": 1, "load": {"load_avg": 0.5}, "about": "Base: test", "int8_format": "qdq",
                             "int8_level": "amx", "int8_runtime": "onnxruntime", "agreement_images": 1000,
                             "seconds": 1.0, "pruned_int8_format": "qdq_s8s8", "pruned_int8_reason": "why",
                             "pruned_int8_fp32_layers": ["/2/Conv"], "pruned_int8_fp32_mac_share": 0.25,
                             "pruned_int8_floor_met": False})
    assert "with 1 layer(s) kept FP32 trying for, and **not reaching**, the 97 % agreement floor" in text


@pytest.mark.fast
def test_experiments_queues_torch_compile_as_a_runtime_only_when_ticked(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from conftest import ROOT
    monkeypatch.setenv("SLIMBENCH_HOME", str(tmp_path / "ws"))
    monkeypatch.setenv("SLIMBENCH_NO_AUTOSTART", "1")   # queued, never run
    at = AppTest.from_file(str(ROOT / "dashboard.py"), default_timeout=120)
    at.run()
    at.radio(key="data_source").set_value("Built-in")
    at.selectbox(key="dataset").set_value("digits")
    at.run()
    at.selectbox(key="arch").set_value("resnet18")
    assert at.checkbox(key="compile_rt").value is False
    at.checkbox(key="compile_rt").check()
    at.button(key="launch_custom").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    queued = Store(tmp_path / "ws").list("queued")
    assert queued and all(r["spec"]["measure"]["compile"] is True for r in queued), [r["spec"] for r in queued]


@pytest.mark.fast
def test_the_best_runtime_is_the_fastest_that_agrees_with_pytorch():
    entries = {"eager": {"latency_ms": 5.0, "verified": True},
               "onnxruntime": {"latency_ms": 1.0, "verified": False, "artefact": "m.onnx"},   # fast but wrong
               "openvino": {"latency_ms": 2.0, "verified": True, "artefact": "m.xml"},
               "compile": {"latency_ms": 1.5, "verified": True},                             # nothing to ship
               "eager_cuda": {"latency_ms": 0.1, "verified": True},
               "onnxruntime_cuda": {"not_available": "not available on this machine: no CUDA device"}}
    assert deploy.best(entries) == "compile"
    assert deploy.best(entries, shippable=True) == "openvino"
    assert deploy.best(entries, device="cuda") == "eager_cuda"
    assert deploy.best({"openvino": {"not_available": "x"}}) is None


def test_a_runtime_not_installed_is_not_available_in_the_record_and_on_compare(tiny_base, session_home, tmp_path,
                                                                                monkeypatch):
    # the job's process finds an `openvino` that fails to import, as on a machine without the package
    fake = tmp_path / "no-openvino" / "openvino"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'openvino'\")\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(fake.parent), os.environ.get("PYTHONPATH")])))
    m = {"onnx": True, "latency_runs": 3, "warmup_runs": 1, "verify_images": 100, "paired_rounds": 0, "threads": 1}
    rec = run_spec({"data": {"name": "digits"}, "model": {"from_run": tiny_base["run_id"]},
                    "method": {"name": "prune_structured", "params": {"ratio": 0.3, "finetune_epochs": 0}},
                    "measure": m}, session_home, tmp_path)
    why = "not available on this machine: the openvino package is not installed"
    assert rec["deploy"]["openvino"] == {"not_available": why}
    assert rec["deploy"]["onnxruntime"]["verified"] and rec["best_runtime"] != "openvino"
    monkeypatch.delenv("PYTHONPATH")
    at = compare_page(session_home, monkeypatch, lambda home: None)
    at.selectbox(key="detail_run").set_value(rec["run_id"])
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    table = next(d.value for d in at.dataframe if "runtime" in d.value.columns and "verified" in d.value.columns)
    row = table.set_index("runtime").loc["openvino"]
    assert row["note"] == why and row.isna()["latency (ms)"]
