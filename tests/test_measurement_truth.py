"""What the record claims holds: inference memory that measures something, test sets known by their
content, keys that mean one thing, a model card that says where and on what, every artefact's size."""
from __future__ import annotations

import io
import json
import platform
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from engine import data as D
from engine import measure, record, results, runner
from engine.spec import DataSpec

CFG = SimpleNamespace(batch_size=8, latency_runs=3, warmup_runs=1, threads=1)


def _net(width: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10)).eval()


def rec(run_id, parent=None, **kw):
    return {"run_id": run_id, "parent": parent, "name": run_id, "method": "m", "arch": "resnet18",
            "dataset": "imagefolder", "num_classes": 2, "test_images": 8, **kw}


# -- 1. inference memory ---------------------------------------------------------------------------
@pytest.mark.fast
def test_inference_memory_of_a_4x_smaller_model_is_clearly_less():
    big, small = _net(64), _net(32)
    shape = (3, 32, 32)
    mb, ms = (measure.measure_model(m, shape, CFG, cuda=False) for m in (big, small))
    assert mb["params"] / ms["params"] > 3.7                                      # a ~4x smaller copy
    input_bytes = CFG.batch_size * 3 * 32 * 32 * 4
    largest = CFG.batch_size * 64 * 32 * 32 * 4                              # one 64-channel activation
    # the two convolutions' outputs are alive at once (ReLU is not in place), plus the input batch
    assert mb["activation_peak_bytes"] == input_bytes + 2 * largest
    assert ms["activation_peak_bytes"] == input_bytes + largest
    assert ms["activation_peak_bytes"] < 0.6 * mb["activation_peak_bytes"]
    assert mb["throughput_batch"] == CFG.batch_size and "peak_mem_bytes" not in mb   # no RSS growth figure
    # the weights are not counted, and a second measurement in the same process gives the same figure
    assert measure.activation_peak_bytes(big, torch.randn(8, *shape)) == mb["activation_peak_bytes"]


@pytest.mark.fast
def test_inference_memory_is_blank_for_a_model_another_runtime_runs():
    onnx_like = lambda x: torch.zeros(len(x), 10)  # noqa: E731 - a callable, not a PyTorch module
    out = measure.measure_speed(onnx_like, (3, 8, 8), torch.device("cpu"), 4, runs=3, warmup=1)
    assert "activation_peak_bytes" not in out and "peak_mem_bytes" not in out and out["latency_device"] == "cpu"


# -- 2. test sets known by their content -----------------------------------------------------------
def _png(color) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, "PNG")
    return buf.getvalue()


def _folder(root: Path, shade: int) -> Path:
    for split, n in (("train", 6), ("test", 4)):
        for cls, col in (("a", (shade, 0, 0)), ("b", (0, 0, shade))):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                (root / split / cls / f"{i}.png").write_bytes(_png(col))
    return root


@pytest.mark.fast
def test_two_image_folders_with_equal_counts_are_different_test_sets(home, tmp_path):
    one, other = _folder(tmp_path / "one", 250), _folder(tmp_path / "other", 120)
    same = shutil.copytree(one, tmp_path / "copy of one")
    hashes = [runner.test_set_hash(D.load(DataSpec(name="imagefolder", path=str(p))).test) for p in (one, other, same)]
    assert hashes[0] != hashes[1] and hashes[0] == hashes[2]      # by content, not by name, count or path
    # accuracies well above chance on 1,000 images: chance-level runs are kept off the front by design
    recs = [rec("base_one", accuracy=0.95, size_bytes=100, test_set_hash=hashes[0], finished=1.0, test_images=1000),
            rec("base_other", accuracy=0.85, size_bytes=200, test_set_hash=hashes[1], finished=2.0, test_images=1000),
            rec("small_other", "base_other", accuracy=0.8, size_bytes=50, test_set_hash=hashes[1], finished=3.0,
                test_images=1000)]
    df = results.table(recs)
    assert results.test_sets(df) == 2
    # base_one is smaller and more accurate than base_other, but on other images: it beats neither
    assert results.pareto_mask(df, "size_bytes").tolist() == [True, True, True]
    newest, n = results.on_newest_test_set(df)
    assert n == 2 and sorted(newest["run_id"]) == ["base_other", "small_other"]
    # Δ accuracy between records without an in-job comparison: only on the same images
    cross = results.table([rec("b", accuracy=0.9, test_set_hash=hashes[0]),
                           rec("c", "b", accuracy=0.7, test_set_hash=hashes[1])]).set_index("run_id")
    assert cross["delta_accuracy"].isna()["c"]
    # records from before the hash keep the old grouping among themselves
    old = results.table([rec("x", accuracy=0.9, finished=1.0), rec("y", accuracy=0.8, finished=2.0)])
    assert results.test_sets(old) == 1


# -- 3. one meaning per key ------------------------------------------------------------------------
@pytest.mark.fast
def test_the_cli_legend_says_what_an_int8_rows_speedup_is_against(home, capsys):
    from engine import cli
    from engine.store import Store
    store = Store(home)
    ids = {}
    for name, parent, extra in (("base", None, {}),
                                ("int8", "base", {"paired_speedup": 1.6, "paired_speedup_range": [1.5, 1.7],
                                                  "int8_speedup": 1.6, "int8_speedup_range": [1.5, 1.7],
                                                  "speedup_vs_eager_start": 40.0})):
        rid = store.create({"name": name}, state="running", parent=ids.get(parent))
        r = rec(rid, ids.get(parent), name=name, accuracy=0.9, size_bytes=100, latency_ms=1.0, finished=1.0,
                paired_ref=ids.get(parent), **extra)
        store.update(rid, state="done", record=r, finished=1.0)
        ids[name] = rid
    assert cli.main(["compare"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ids["int8"] in ln)
    assert "1.60p" in line and "40.00" not in line            # quantisation's gain, not the runtime's
    assert "in the same runtime" in out and "fp32 under ONNX Runtime" in out
    paired = record.get("x_faster_paired").help
    assert "same runtime" in paired and "INT8" in paired


# -- 4. the model card -----------------------------------------------------------------------------
@pytest.mark.fast
def test_the_card_names_data_source_hardware_and_the_device_of_every_timing():
    keys = set(record.card_keys())
    assert {"test_images", "accuracy_ci95", "dataset", "data_path", "test_set_hash", "threads", "cpu_model",
            "latency_device", "gpu_name", "activation_peak_bytes", "throughput_batch", "onnx_bytes",
            "compressed_bytes"} <= keys
    assert record.get("device").label == "trained on" and "latency_device" in record.get("device").help
    if Path("/proc/cpuinfo").is_file() and "model name" in Path("/proc/cpuinfo").read_text():
        assert measure.cpu_model() not in (platform.machine(), platform.processor(), "")
    assert runner._data_path(DataSpec(name="imagefolder", path="~/x/../pets")) == str(Path.home() / "pets")
    assert runner._data_path(DataSpec(name="digits")) is None


def test_a_runs_card_and_record_carry_what_was_measured_where(digits_base):
    r = digits_base
    card = json.loads((Path(r["checkpoint"]).parent / "card.json").read_text())
    for k in record.card_keys():
        assert card[k] == r.get(k), k
    assert card["test_images"] > 0 and card["accuracy_ci95"][0] <= card["accuracy"] <= card["accuracy_ci95"][1]
    assert card["dataset"] == "digits" and len(card["test_set_hash"]) == 64
    assert card["latency_device"] == "cpu" and card["threads"] >= 1 and card["cpu_model"]
    assert card["device"] == "cpu"
    # inference memory at the record's batch: at least its input batch and the stem's output
    side = r["input_size"][-1]
    assert r["activation_peak_bytes"] >= r["throughput_batch"] * 4 * side * side * (3 + 64)
    assert 0 < r["compressed_bytes"] < r["size_bytes"] and r["onnx_bytes"] > 0


# -- 5. every artefact's size ----------------------------------------------------------------------
@pytest.mark.fast
def test_sparsity_shows_in_the_deflated_size_and_x_smaller_names_its_artefact(tmp_path):
    torch.manual_seed(0)
    dense = nn.Linear(256, 256)
    sparse = nn.Linear(256, 256)
    with torch.no_grad():
        sparse.weight.copy_(dense.weight * (torch.rand_like(dense.weight) < 0.1))   # 90 % zeros, stored dense
    sizes = {}
    for name, m in (("dense", dense), ("sparse", sparse)):
        path = tmp_path / f"{name}.pt"
        torch.save(m.state_dict(), path)
        sizes[name] = (path.stat().st_size, measure.deflated_bytes(path))
    assert sizes["sparse"][0] == pytest.approx(sizes["dense"][0], rel=1e-3)   # the file keeps every zero
    assert sizes["sparse"][1] < 0.4 * sizes["dense"][1]               # deflated, they go
    df = results.table([rec("base", size_bytes=1000, onnx_bytes=900, compressed_bytes=800),
                        rec("unstructured", "base", size_bytes=1000, onnx_bytes=900, compressed_bytes=200),
                        rec("int8", "unstructured", size_bytes=300, onnx_bytes=250, compressed_bytes=220)])
    df = df.set_index("run_id")
    assert df.loc["unstructured", ["x_smaller", "x_smaller_onnx", "x_smaller_compressed"]].tolist() == [1.0, 1.0, 4.0]
    assert df.loc["int8", "x_smaller_onnx"] == pytest.approx(3.6)
    assert record.get("x_smaller").label == "x smaller (.pt)"
    assert {"onnx_bytes", "compressed_bytes", "x_smaller_onnx", "x_smaller_compressed"} <= set(record.compare_defaults())
