"""autocompress's latency objective on the GPU (param ``device``): refused up front where this machine has no CUDA,
INT8 left out of the search there (each INT8 candidate searched as its FP32 cut, INT8 alone dropped, said why), and
every model and the start timed on that device in its CUDA runtimes, paired, labelled as the record names them
(``eager_cuda``, ``onnxruntime_cuda``). The judge's device plumbing is proven here on the CPU with CUDA faked at
the edges (the loaders and the paired timer); the ``gpu`` test runs it for real where CUDA is."""
from __future__ import annotations

import copy
import types

import pytest
import torch

from engine import deploy, measure, methods, models
from engine.methods import autocompress, search_latency, search_space
from engine.spec import SpecError


def _no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.fast
def test_device_cuda_without_cuda_is_refused_up_front_naming_the_field(monkeypatch):
    _no_cuda(monkeypatch)
    with pytest.raises(SpecError) as e:
        methods.validate("autocompress", {"objective": "latency", "runtime": "best", "device": "cuda"})
    assert e.value.field == "method.params.device"
    assert "no CUDA device" in str(e.value) and "cpu" in str(e.value)
    with pytest.raises(SpecError) as e:      # a device is a latency setting: not silently ignored elsewhere
        methods.validate("autocompress", {"objective": "size", "device": "cuda"})
    assert e.value.field == "method.params.device" and "latency objective only" in str(e.value)
    with pytest.raises(SpecError) as e:
        methods.validate("autocompress", {"objective": "latency", "device": "tpu"})
    assert e.value.field == "method.params.device"
    methods.validate("autocompress", {"objective": "latency", "device": "cpu"})


@pytest.mark.fast
def test_on_cuda_openvino_and_an_int8_only_space_are_refused_with_why(monkeypatch):
    """With CUDA (faked available): OpenVINO does not run there (deploy's reason), and a space of INT8 alone
    leaves nothing to search on cuda."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(SpecError) as e:
        methods.validate("autocompress", {"objective": "latency", "runtime": "openvino", "device": "cuda"})
    assert e.value.field == "method.params.runtime" and "on cuda" in str(e.value) and "OpenVINO" in str(e.value)
    with pytest.raises(SpecError) as e:
        methods.validate("autocompress", {"objective": "latency", "runtime": "eager", "device": "cuda",
                                          "space": ["quantize_int8"]})
    assert e.value.field == "method.params.space" and "nothing left to search on cuda" in str(e.value)
    assert "CUDA execution provider" in str(e.value)


@pytest.mark.fast
def test_on_cuda_int8_candidates_become_their_fp32_cuts_and_int8_alone_is_left_out():
    space, changed = search_space.for_device(list(search_space.DEFAULT_SPACE), "cuda")
    assert space == ["prune", "blocks", "lowrank", "unstructured", "distill"]
    assert "quantize_int8" not in space and changed["quantize_int8"].startswith("left out: INT8")
    assert changed["prune_int8"].startswith("searched as prune")
    assert search_space.for_device(["prune_int8", "prune"], "cuda")[0] == ["prune"]   # one candidate, not two
    assert search_space.for_device(list(search_space.DEFAULT_SPACE), "cpu") == (list(search_space.DEFAULT_SPACE), {})
    # The seeds keep their cuts and epochs, without INT8, and say so; on the CPU they are as measured.
    cpu = search_space.seeds_for("latency", list(search_space.DEFAULT_SPACE))
    gpu = search_space.seeds_for("latency", space)
    assert [s.params["candidate"] for s in gpu] == [search_space.FP32_OF[s.params["candidate"]] for s in cpu]
    assert [{**s.params, "candidate": 0} for s in gpu] == [{**s.params, "candidate": 0} for s in cpu]
    assert [s.epochs for s in gpu] == [s.epochs for s in cpu]
    assert all("without its INT8 step" in s.why for s in gpu) and not any("without" in s.why for s in cpu)


@pytest.mark.fast
def test_an_fp32_cut_candidate_runs_the_method_alone_with_the_same_knobs():
    import optuna
    trial = optuna.trial.FixedTrial({"prune.target_macs": 0.5, "prune.round_to": 8, "blocks.target_macs": 0.3,
                                     "lowrank.energy": 0.9})
    args = (2, 1e6, 1e5, 10, (3, 8, 8), True)
    for int8, fp32 in search_space.FP32_OF.items():
        a, b = search_space.draw(trial, fp32, *args), search_space.draw(trial, int8, *args)
        assert a.method["name"] != "pipeline" and b.method["name"] == "pipeline"
        assert b.method["params"]["steps"][0] == a.method      # the same step, then INT8
        assert b.method["params"]["steps"][1]["name"] == "quantize_int8"
        assert "no INT8" in a.recipe and a.recipe.replace(" (FP32, no INT8)", " -> INT8") == b.recipe
    assert set(search_space.FP32_OF.values()) <= set(search_space.TUNED)
    # the INT8 step's format and calibration batches, where the search sets them (the GPU bench: 1 batch of 512)
    step = search_space.draw(trial, "prune_int8", *args, int8_format="qdq", int8_batches=1).method["params"]["steps"][1]
    assert step == {"name": "quantize_int8", "params": {"format": "qdq", "calibration_batches": 1}}
    methods.validate("autocompress", {"int8_format": "qdq", "int8_calibration_batches": 1})
    with pytest.raises(SpecError) as e:
        methods.validate("autocompress", {"int8_calibration_batches": 0})
    assert e.value.field == "method.params.int8_calibration_batches"
    # every candidate the page may offer is valid in the spec, and the default space is unchanged
    methods.validate("autocompress", {"space": list(search_space.CANDIDATES)})
    default = next(p.default for p in methods.get("autocompress").params if p.name == "space")
    assert default == list(search_space.DEFAULT_SPACE) and "prune" not in default


def _ctx(model, tmp_path):
    images = torch.randn(32, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    cfg = types.SimpleNamespace(latency_runs=4, warmup_runs=1, threads=1, paired_rounds=1)
    data = types.SimpleNamespace(loader=lambda split, device, limit=None, batch_size=None: [(images, None)])
    return types.SimpleNamespace(spec=types.SimpleNamespace(measure=cfg), input_shape=(3, 8, 8), run_dir=tmp_path,
                                 log=types.SimpleNamespace(warning=lambda *a: None), data=data,
                                 base_copy=lambda: copy.deepcopy(model))


@pytest.mark.fast
def test_the_judge_times_every_model_on_the_chosen_device_and_labels_its_runtimes(tmp_path, monkeypatch):
    """device cuda, runtime best, CUDA faked at the edges: every runtime is loaded for cuda, every pair is timed on
    cuda (start and trial on the same device and runtime), the runtimes read eager_cuda / onnxruntime_cuda, the
    agreement reference is eager on the CPU, and an INT8 model is refused rather than timed on the CPU."""
    net = models.build("resnet20", 10, small_input=True, width=0.25).eval()
    loads, pairs = [], []
    real_predictor_for, real_paired = deploy.predictor_for, measure.paired_speedup

    def predictor_for(name, model, shape, folder, threads, device="cpu"):
        loads.append((name, device))
        return real_predictor_for(name, model, shape, folder, threads)      # the CPU predictor stands in

    def eager_load(self, artefact, model, device, threads):
        loads.append(("eager", device))
        return lambda x: model(x).float()                                 # on the CPU here

    def paired(ref, cand, shape, device, *a, **kw):
        pairs.append(device.type)
        return real_paired(ref, cand, shape, torch.device("cpu"), *a, **kw)
    monkeypatch.setattr(deploy, "predictor_for", predictor_for)
    monkeypatch.setattr(deploy.Eager, "load", eager_load)
    monkeypatch.setattr(measure, "paired_speedup", paired)
    monkeypatch.setattr(search_latency, "here", lambda device="cpu": ["eager", "onnxruntime"] if device == "cuda"
                        else ["eager"])
    judge = search_latency.LatencyJudge(_ctx(net, tmp_path), "best", 2, "cuda")
    try:
        assert judge.names == ["eager", "onnxruntime"]
        out = judge.time(copy.deepcopy(net))
        with pytest.raises(RuntimeError, match="INT8 model is not timed on cuda"):
            judge.time(types.SimpleNamespace(fmt="qdq", onnx_bytes=b""))
    finally:
        judge.close()
    assert loads and {d for _, d in loads} == {"cuda"}
    assert pairs and set(pairs) == {"cuda"}
    assert set(out["timed"]) == {"eager_cuda", "onnxruntime_cuda"} and out["device"] == "cuda"
    assert out["runtime"] in out["timed"] and out["start_runtime"].endswith("_cuda")
    assert out["vs_start_runtime"] == judge.label(judge.start_runtime) and out["vs_start_runtime"].endswith("_cuda")
    assert set(out["agreement"]) == {"eager_cuda", "onnxruntime_cuda"}   # each against eager on the CPU
    assert all(a == 1.0 for a in out["agreement"].values())


@pytest.mark.fast
def test_the_timing_note_and_the_pages_label_name_the_device(monkeypatch):
    from engine import searches
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    params = {"batch": 1, "runtime": "best", "device": "cuda"}
    changed = search_space.for_device(["prune_int8", "quantize_int8"], "cuda")[1]
    note = autocompress._timing_note("latency_ms", 1, "local", params, changed)
    assert note.startswith("each trial timed as it ended") and "on cuda, at batch 1 in best" in note
    assert "ONNX Runtime's CUDA provider" in note and "quantize_int8: left out" in note
    cpu = autocompress._timing_note("latency_ms", 1, "local", {**params, "device": "cpu"})
    assert "on cpu (" in cpu and "CUDA" not in cpu
    assert searches.cost_label({"objective": "latency", "runtime": "best", "batch": 4, "device": "cuda"}) == \
        "GPU (cuda) latency at batch 4 in each model's fastest runtime here"
    assert searches.cost_label({"objective": "latency", "runtime": "eager"}).startswith("CPU latency at batch 1")


@pytest.mark.gpu
def test_on_a_gpu_the_judge_pairs_eager_and_onnxruntime_cuda_for_real(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    net = models.build("resnet20", 10, small_input=True, width=0.5).eval()
    judge = search_latency.LatencyJudge(_ctx(net, tmp_path), "best", 8, "cuda")
    try:
        half = models.build("resnet20", 10, small_input=True, width=0.25).eval()
        same, small = judge.time(copy.deepcopy(net)), judge.time(half)
    finally:
        judge.close()
    assert same["device"] == "cuda" and same["runtime"] in ("eager_cuda", "onnxruntime_cuda")
    assert 0.5 < same["speedup_same_runtime"] < 2.0           # the start against itself: ~1x
    assert small["latency_ms"] > 0 and small["runtime"].endswith("_cuda")
    assert search_latency.device_name("cuda").startswith("cuda (")


@pytest.fixture(scope="module")
def ws(tmp_path_factory, small_base):
    """A workspace of the module's own, holding the session's small base (conftest's, trained on digits)."""
    from engine.store import Store

    from conftest import adopt_run
    store = Store(tmp_path_factory.mktemp("autocompress-gpu-ws"))
    return store, adopt_run(*small_base, store)


def test_a_search_with_device_cuda_times_on_cuda_searches_fp32_cuts_and_says_so(ws, monkeypatch):
    """The search's wiring, CUDA faked at the edges (as above): with device cuda and the default space, the start as
    INT8 is not tried, the INT8 seeds run as their FP32 cuts, every pair is timed on cuda, and the record names the
    device, the runtimes (eager_cuda) and why INT8 was left out."""
    from conftest import SMALL_DATA, SMALL_MEASURE
    from engine.runner import run_spec
    store, base = ws
    pairs = []
    real_paired = measure.paired_speedup

    def paired(ref, cand, shape, device, *a, **kw):
        pairs.append(device.type)
        return real_paired(ref, cand, shape, torch.device("cpu"), *a, **kw)
    monkeypatch.setattr(autocompress, "cuda_here", lambda: True)     # the search's check only: its runs stay CPU
    real_name = search_latency.device_name
    monkeypatch.setattr(search_latency, "device_name", lambda d: "cuda (Fake GPU)" if d == "cuda" else real_name(d))
    monkeypatch.setattr(deploy.Eager, "load", lambda self, artefact, model, device, threads: (lambda x: model(x)))
    monkeypatch.setattr(measure, "paired_speedup", paired)
    monkeypatch.setattr(search_latency, "here", lambda device="cpu": ["eager"])
    rec = run_spec({"data": SMALL_DATA, "model": {"from_run": base["run_id"]}, "train": {"epochs": 1, "device": "cpu"},
                    "measure": SMALL_MEASURE, "method": {"name": "autocompress", "params": {
                        "objective": "latency", "device": "cuda", "runtime": "best", "max_drop_pt": 100.0,
                        "trials": 1, "promote": 0, "full_epochs": 1}}}, store)
    ran = [t for t in rec["search_trial_list"] if t["state"] in ("complete", "pruned")]
    assert len(ran) == 1 and ran[0]["params"]["candidate"] == "prune"          # the first seed, its FP32 cut
    assert "without its INT8 step" in ran[0]["seeded"] and "no INT8" in ran[0]["recipe"]
    assert store.get(ran[0]["run_id"])["spec"]["method"]["name"] == "prune_structured"
    assert not any((t["params"] or {}).get("candidate") in ("quantize_int8", "prune_int8")
                   for t in rec["search_trial_list"])
    assert pairs and set(pairs) == {"cuda"}
    assert rec["search_latency_device"] == "cuda (Fake GPU)" and rec["search_start_runtime"] == "eager_cuda"
    assert ran[0]["runtime"] == "eager_cuda" and ran[0]["start_runtime"] == "eager_cuda"
    assert "on cuda (Fake GPU)" in rec["search_timing"] and "quantize_int8: left out" in rec["search_timing"]
