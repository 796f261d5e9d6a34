"""Bring your own ONNX model: read from its graph, measured as given, quantised to INT8, tried on an image;
odd inputs and methods that need PyTorch weights are refused with the reason."""
from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch
import torch.nn as nn

from engine import export, import_weights, jobs, onnx_models, predict, runner
from engine.errors import JobFailed, SpecError
from engine.store import Store

DATA = {"name": "digits", "limit": 300, "test_limit": 100, "image_size": 8}
QUICK = {"onnx": False, "latency_runs": 3, "warmup_runs": 1, "paired_rounds": 1}
REFUSED = (SpecError, JobFailed)


def net(num_classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes)).eval()


def onnx_file(tmp_path: Path, name: str = "mine.onnx", shape=(1, 3, 8, 8), dynamic=("batch",), model=None) -> Path:
    axes = {0: "batch"} if "batch" in dynamic else {}
    if "size" in dynamic:
        axes.update({2: "h", 3: "w"})
    path = tmp_path / name
    torch.onnx.export(model or net(), (torch.randn(*shape),), str(path), dynamo=False, input_names=["image"],
                      output_names=["logits"], dynamic_axes={"image": axes, "logits": {0: "batch"}} if axes else None,
                      opset_version=17)
    return path


def bundle_file(tmp_path: Path, path: Path, **kw) -> Path:
    out = tmp_path / f"{path.stem}.bundle.pt"
    export.save_bundle(onnx_models.to_bundle(path, norm=import_weights.normalisation("dataset"), **kw), out)
    return out


def spec(model: dict, method: str = "baseline", params: dict | None = None, epochs: int = 0) -> dict:
    return {"data": DATA, "model": model, "method": {"name": method, "params": params or {}},
            "train": {"epochs": epochs}, "measure": QUICK}


def test_an_onnx_model_is_measured_as_given_quantised_and_tried(home, tmp_path):
    path = onnx_file(tmp_path)
    info = onnx_models.read(path.read_bytes(), path.name)
    assert (info.input_name, info.batch, info.size, info.num_classes) == ("image", None, (8, 8), 10)
    store = Store()
    given = runner.run_spec(spec({"checkpoint": str(bundle_file(tmp_path, path))}), store)
    reference = net()
    assert given["arch"] == "mine.onnx" and given["runtime"] == "onnxruntime CPU (fp32)"
    assert given["params"] == sum(p.numel() for p in reference.parameters())
    assert given["macs"] == 64 * (8 * 3 * 9 + 8 * 8 * 9) + 8 * 10  # two convs at 8x8, the head
    assert given["latency_ms"] > 0 and given["start_accuracy"] == given["accuracy"]  # the same model twice
    int8 = runner.run_spec(spec({"from_run": given["run_id"]}, "quantize_int8", {"calibration_batches": 2}), store)
    assert int8["precision"] == "int8" and int8["macs"] == given["macs"] and int8["int8_speedup"] > 0
    timed = runner.run_spec(spec({"from_run": given["run_id"]}, "runtime", {"compile": False}), store)
    assert timed["runtimes"]["onnxruntime_cpu"]["latency_ms"] > 0
    assert "no PyTorch graph" in timed["runtimes"]["eager_cpu"]["skipped"]
    tried = predict.load_run(given["run_id"], store)
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(tried.model(x), reference(x), atol=1e-4)


def test_a_batch_of_one_and_a_dynamic_size_are_handled(tmp_path):
    fixed = onnx_file(tmp_path, "one.onnx", dynamic=())
    assert onnx_models.read(fixed.read_bytes(), fixed.name).batch == 1
    model, _ = export.load_predictor(bundle_file(tmp_path, fixed))
    assert model(torch.randn(5, 3, 8, 8)).shape == (5, 10)  # fed one image at a time
    free = onnx_file(tmp_path, "free.onnx", dynamic=("batch", "size"))
    b = onnx_models.to_bundle(free, norm={"normalisation": "dataset"})  # any size: the job's image size
    assert "input_size" not in b["meta"] and b["arch_kwargs"]["num_classes"] == 10
    assert onnx_models.to_bundle(free, norm={"normalisation": "dataset"}, input_size=16)["meta"]["input_size"] == \
        [3, 16, 16]


def test_odd_inputs_and_weight_methods_are_refused_with_the_reason(home, tmp_path):
    grey = onnx_file(tmp_path, "grey.onnx", shape=(1, 1, 8, 8), 
                     model=nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 10)).eval())
    with pytest.raises(export.BundleError, match="1 channels.*3-channel"):
        onnx_models.read(grey.read_bytes(), grey.name)
    two = onnx.load(str(onnx_file(tmp_path, "two.onnx", shape=(2, 3, 8, 8), dynamic=())))
    with pytest.raises(export.BundleError, match="batch fixed at 2"):
        onnx_models.read(two.SerializeToString(), "two.onnx")
    with pytest.raises(export.BundleError, match="not an ONNX model"):
        onnx_models.read(b"garbage", "garbage.onnx")
    ck = bundle_file(tmp_path, onnx_file(tmp_path))
    store = Store()
    with pytest.raises(REFUSED, match="prune_structured needs PyTorch weights"):
        runner.run_spec(spec({"checkpoint": str(ck)}, "prune_structured"), store)
    with pytest.raises(REFUSED, match="train.epochs: an ONNX model cannot be trained"):
        runner.run_spec(spec({"checkpoint": str(ck)}, epochs=1), store)
    given = jobs.submit(spec({"checkpoint": str(ck)}), store, autostart=False)  # refused when queued, too
    with pytest.raises(SpecError, match="method.name: distill needs PyTorch weights"):
        jobs.submit(spec({"from_run": given}, "distill"), store, autostart=False)


def test_an_onnx_model_uploaded_on_experiments_shows_up_measured_on_compare(tmp_path, monkeypatch):
    from tests.conftest import compare_page, uploader
    from tests.test_pages import page, texts
    home = tmp_path / "ws"
    monkeypatch.setenv("SLIMBENCH_HOME", str(home))
    monkeypatch.setenv("SLIMBENCH_NO_AUTOSTART", "1")
    store = Store(home)
    at = page("experiments")
    at.selectbox(key="dataset").set_value("digits")
    at.radio(key="base_kind").set_value("Upload a checkpoint")
    at.run()
    uploader(at, "ckpt").set_value(("mine.onnx", onnx_file(tmp_path).read_bytes(), "application/octet-stream"))
    at.run()
    assert not at.error, texts(at, "error")
    assert "ONNX model, input 'image': 3 x 8x8, dynamic batch" in texts(at, "info")
    assert "prune_structured" not in at.multiselect(key="methods").options  # said on the page, not failed later
    assert "Not available: " in texts(at, "info") and "needs PyTorch weights" in texts(at, "info")
    at.multiselect(key="methods").set_value(["quantize_int8"])
    at.number_input(key="limit").set_value(300)
    at.number_input(key="test_limit").set_value(100)
    at.checkbox(key="onnx").uncheck()
    at.button(key="launch_custom").click()
    at.run()
    assert not at.error, texts(at, "error")
    ids = at.session_state["launched"]
    for i in ids:  # what the worker would do, in this process
        row = store.get(i)
        assert row["spec"]["train"]["epochs"] == 0 or row["spec"]["method"]["name"] != "baseline"
        runner.run_spec({**row["spec"], "measure": {**row["spec"]["measure"], **QUICK}}, store, run_id=i)
    at = compare_page(home, monkeypatch, lambda _: None)
    assert not at.exception, [e.value for e in at.exception]
    table = at.dataframe[0].value.set_index("run_id")
    assert set(ids) <= set(table.index)
    given = store.get(ids[0])["record"]
    assert table.loc[ids[0], "macs"] == given["macs"] > 0 and table.loc[ids[0], "runtime"] == "onnxruntime CPU (fp32)"
    assert table.loc[ids[1], "runtime"] == "ONNX Runtime INT8"


def test_cli_imports_and_measures_an_onnx_model(tmp_path, capsys):
    from engine import cli  # in this process: three torch imports in subprocesses cost minutes on a loaded machine
    path = onnx_file(tmp_path, "free.onnx", dynamic=("batch", "size"))
    assert cli.main(["import", str(path), "--norm", "imagenet", "--input-size", "8", "-o", str(tmp_path / "f.pt")]) == 0
    assert cli.main(["measure", str(tmp_path / "f.pt"), "--runs", "3", "--batch-size", "4"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["kind"] == "onnx-fp32" and out["input_size"] == [3, 8, 8] and out["macs"] > 0 and out["latency_ms"] > 0
    assert cli.main(["import", str(path), "--arch", "resnet18"]) == 2
    assert "graph is its architecture" in capsys.readouterr().err
