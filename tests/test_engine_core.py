"""Engine core: CLI end to end, honest records, reloadable bundles, clear errors."""
from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn as nn

from bench.synthetic import insert_synthetic_runs
from conftest import CIFAR_SMALL, ROOT, cli, cli_here, run_here, run_spec
from engine import data as D
from engine.data import assembly
from engine import export, measure, models, settings
from engine.spec import DataSpec, JobSpec, SpecError
from engine.store import Store

REQUIRED = ("run_id", "status", "accuracy", "top5", "roc_auc", "params", "size_bytes", "macs", "flops",
            "sparsity", "latency_ms", "throughput", "device", "train_seconds", "checkpoint", "onnx", "spec")


# -- the reference run -------------------------------------------------------------------------
@pytest.mark.fast
def test_top5_counts_hits_in_the_five_best_and_is_none_with_five_classes_or_fewer():
    from engine.training import classification_metrics
    logits = torch.arange(7.0).repeat(4, 1)  # every row ranks class 6 first, class 0 last
    y = torch.tensor([6, 2, 1, 0])           # ranks 1, 5, 6, 7
    m = classification_metrics(logits, y, 7, full=False)
    assert m["accuracy"] == 0.25 and m["top5"] == 0.5
    assert classification_metrics(logits[:, :5], torch.tensor([4, 0, 1, 2]), 5, full=False)["top5"] is None


@pytest.mark.parametrize("epochs", [0, 1])
def test_fit_returns_the_model_in_the_memory_format_it_got(epochs):
    """channels_last is for training speed only: a model left in it (a zero-epoch fine-tune did) is
    timed in another memory format than its base, which alone moved CPU latency by 14 %."""
    from engine import data as data_mod, training
    from engine.spec import DataSpec, TrainSpec
    data = data_mod.load(DataSpec(name="digits", limit=64, test_limit=16, batch_size=32))
    model = models.build("resnet18", 10, small_input=True)
    training.fit(model, data, TrainSpec(epochs=epochs, channels_last=True), device=torch.device("cpu"))
    assert all(m.weight.is_contiguous() for m in model.modules() if isinstance(m, nn.Conv2d))


def test_digits_resnet18_three_epochs_meets_the_bar(digits_base):
    r = digits_base
    assert all(k in r for k in REQUIRED), sorted(set(REQUIRED) - set(r))
    assert r["status"] == "done" and r["device"] == "cpu"
    assert r["accuracy"] >= 0.9, r["accuracy"]
    assert r["top5"] >= r["accuracy"] and 0.5 < r["roc_auc"] <= 1.0
    assert r["params"] == 11_173_962  # ResNet-18 with a 10-class head
    assert r["macs"] * 2 == r["flops"] and r["macs"] > 0
    assert r["size_bytes"] == Path(r["checkpoint"]).stat().st_size
    assert r["latency_ms"] > 0 and r["throughput"] > 0 and r["threads"] >= 1
    assert len(r["confusion"]) == 10 and sum(map(sum, r["confusion"])) == r["test_images"]
    assert r["onnx"] and r["onnx_top1_agreement"] == 1.0
    card = json.loads((Path(r["checkpoint"]).parent / "card.json").read_text())
    assert len(card["normalisation"]["mean"]) == len(card["normalisation"]["std"]) == r["input_size"][0]  # per channel


def test_bundle_reevaluated_in_a_fresh_process_gives_the_same_accuracy(digits_base, session_home):
    code = f"""
import json, torch
from engine import export, data, training
from engine.spec import DataSpec
model, bundle = export.load_model({digits_base['checkpoint']!r})
spec = json.load(open({str(Path(digits_base['checkpoint']).parent / 'spec.json')!r}))
d = data.load(DataSpec(**spec['data']))
print(json.dumps(training.evaluate(model, d, 'test')))
"""
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       env={"SLIMBENCH_HOME": str(session_home), "PATH": "/usr/bin:/bin"})
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout.strip().splitlines()[-1])
    assert got["accuracy"] == pytest.approx(digits_base["accuracy"], abs=1e-6)


def test_onnx_runner_threads_do_not_spin_between_runs(digits_base):
    """Spinning ORT threads slow whatever PyTorch runs next, biasing interleaved timings."""
    runner = export.OnnxRunner(Path(digits_base["onnx"]).read_bytes())
    assert runner.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_onnx_export_agrees_with_torch_on_test_inputs(digits_base):
    model, bundle = export.load_model(digits_base["checkpoint"])
    spec = JobSpec.from_dict(digits_base["spec"])
    d = D.load(spec.data)
    x, _ = next(iter(d.loader("test", batch_size=200)))
    check = export.verify_onnx(model, Path(digits_base["onnx"]), x)
    assert check["onnx_top1_agreement"] == 1.0
    assert check["onnx_max_abs_diff"] < 1e-3


def test_bundle_carries_its_metadata(digits_base):
    b = export.read_bundle(digits_base["checkpoint"])
    assert b["arch"] == "resnet18" and b["arch_kwargs"] == {"num_classes": 10, "small_input": True, "width": 1.0}
    assert b["meta"]["input_size"] == [3, 8, 8] and len(b["meta"]["class_names"]) == 10
    assert len(b["meta"]["mean"]) == 1 and b["metrics"]["accuracy"] == pytest.approx(digits_base["accuracy"])


def test_runs_lists_the_run(digits_base, session_home):
    p = cli_here("runs", "--json", home=session_home)
    assert p.returncode == 0
    ids = [r["id"] for r in json.loads(p.stdout)]
    assert digits_base["run_id"] in ids
    p = cli_here("runs", home=session_home)
    assert digits_base["run_id"] in p.stdout


def test_compare_prints_the_base_relative_table_and_pareto_front(home, tmp_path):
    from engine import results
    insert_synthetic_runs(Store(home), 30)                         # SYNTHETIC rows: table logic only
    expected = results.table(results.records(Store(home)))
    p = cli_here("compare", "--axis", "macs", "--csv", str(tmp_path / "t.csv"), home=home)
    assert p.returncode == 0, p.stderr
    got = pd.read_csv(tmp_path / "t.csv").set_index("run_id")
    front = set(got.index[got["pareto"]])
    assert front == set(expected["run_id"][results.pareto_mask(expected, "macs")])
    starred = {line.split()[1] for line in p.stdout.splitlines() if line.startswith("* ")}
    assert starred == front and len(p.stdout.splitlines()) == len(expected) + 2
    e = expected.set_index("run_id")
    assert got["x_fewer_macs"].to_dict() == pytest.approx(e.loc[got.index, "x_fewer_macs"].to_dict())
    lines = {line[2:].split()[0]: line for line in p.stdout.splitlines()[1:-1]}
    derived = e[e["delta_ci_low"].notna()]
    assert len(derived) == len(e) - 1                               # all but the base carry an interval
    for run_id, r in derived.iterrows():
        assert f"{100 * r.delta_ci_low:+.1f}..{100 * r.delta_ci_high:+.1f}" in lines[run_id]
    one = e["method"].iloc[0]
    p = cli_here("compare", "--json", "--method", one, home=home)
    assert {r["method"] for r in json.loads(p.stdout)} == {one}
    assert cli_here("compare", "--axis", "speed", home=home).returncode == 2


def test_winners_meet_every_limit_and_rank_by_the_objective():
    from engine import results
    def rec(i, acc, size, lat, macs=100, parent=None):
        return {"run_id": f"r{i}", "method": "m", "accuracy": acc, "size_bytes": size, "latency_ms": lat,
                "macs": macs, "parent": parent}
    df = results.table([rec(0, 0.90, 40e6, 10.0), rec(1, 0.89, 10e6, 4.0, parent="r0"),
                        rec(2, 0.85, 5e6, 2.0, parent="r0"), rec(3, 0.89, 8e6, 5.0, parent="r0"),
                        rec(4, 0.95, 3e6, None, parent="r0")])          # no latency: cannot prove a latency limit
    ids = lambda d: list(d["run_id"])
    assert ids(results.winners(df)) == ["r4", "r0", "r3", "r1", "r2"]    # accuracy; tie 0.89 -> smaller first
    assert ids(results.winners(df, max_latency_ms=5)) == ["r3", "r1", "r2"]
    assert ids(results.winners(df, "latency", max_drop=0.02)) == ["r1", "r3", "r0"]  # r2 lost 5 pt; r4 unmeasured
    assert ids(results.winners(df, "size", max_size_bytes=9e6, min_accuracy=0.86)) == ["r4", "r3"]
    assert results.winners(df, max_size_bytes=1e6).empty
    with pytest.raises(ValueError, match="objective or limit"):
        results.winners(df, "speed")


def test_compare_names_the_winner_within_deployment_limits(home):
    from engine import results
    insert_synthetic_runs(Store(home), 40)                         # SYNTHETIC rows: ranking logic only
    t = results.table(results.records(Store(home)))
    ok = t[(t["size_bytes"] <= 20e6) & (t["latency_ms"] <= 10) & (t["delta_accuracy"] >= -0.1)]
    best = ok.sort_values(["macs", "accuracy"], ascending=[True, False]).iloc[0]
    p = cli_here("compare", "--best", "macs", "--max-size-mb", "20", "--max-latency-ms", "10", "--max-drop-pt", "10",
            home=home)
    assert p.returncode == 0, p.stderr
    last = p.stdout.strip().splitlines()[-1]
    assert last.startswith(f"winner by macs ({len(ok)} run(s) meet the limits): {best.run_id} ")
    assert cli_here("compare", "--max-size-mb", "0.001", home=home).returncode == 1      # nothing that small
    assert cli_here("compare", "--best", "speed", home=home).returncode == 2


# -- profile -----------------------------------------------------------------------------------
@pytest.mark.parametrize("arch,params_m,gmacs", [("resnet18", 11.69, 1.81), ("mobilenet_v2", 3.50, 0.30)])
def test_profile_matches_torchvision_published_figures(arch, params_m, gmacs, home):
    p = cli_here("profile", arch, "--input-size", "224", "--num-classes", "1000", home=home)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["params"] / 1e6 == pytest.approx(params_m, rel=0.01)
    assert r["macs"] / 1e9 == pytest.approx(gmacs, rel=0.01)
    assert r["flops"] == 2 * r["macs"]


def test_small_input_stem_is_automatic_for_small_images():
    assert models.auto_small_input(32) and not models.auto_small_input(224)
    m = models.build("resnet18", 10, small_input=True)
    assert m.conv1.kernel_size == (3, 3) and m.conv1.stride == (1, 1) and isinstance(m.maxpool, nn.Identity)


@pytest.mark.parametrize("arch", [a for a, spec in models.ARCHS.items() if True in spec.stems])
def test_every_arch_builds_and_runs_on_32px(arch):
    m = models.build(arch, 10, small_input=True).eval()
    with torch.no_grad():
        assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)


# -- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("spec,field,hint", [
    ({"data": {"name": "mnist-ish"}, "model": {"arch": "resnet18"}}, "data.name", "digits"),
    ({"data": {"name": "digits"}, "model": {"arch": "resnet19"}}, "model.arch", "resnet18"),
    ({"data": {"name": "digits"}, "model": {"arch": "resnet18"}, "method": {"name": "zip"}}, "method.name", "baseline"),
    ({"data": {"name": "digits"}, "model": {"arch": "resnet18"}, "train": {"epochs": -1}}, "train.epochs", ""),
    ({"data": {"name": "digits", "image_size": 0}, "model": {"arch": "resnet18"}}, "data.image_size", ""),
    ({"data": {"name": "digits", "path": "/nope/x.zip"}, "model": {"arch": "resnet18"}}, "data.path", "not found"),
    ({"data": {"name": "digits"}, "model": {"arch": "resnet18"}, "train": {"epochs": "3"}}, "train.epochs", "int"),
    ({"data": {"name": "digits"}, "model": {"arch": "resnet18"}, "train": {"epoch": 3}}, "train.epoch", "epochs"),
    ({"data": {"name": "digits"}, "model": {}}, "model", "exactly one"),
    ({"data": {"name": "digits"}, "model": {"checkpoint": "/nope.pt"}}, "model.checkpoint", "not found"),
])
def test_bad_specs_exit_2_naming_the_field(spec, field, hint, home, tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    p = cli_here("run", str(path), home=home)   # refused before any work (a fresh process: the test below)
    assert p.returncode == 2, p.stderr
    assert field in p.stderr and hint in p.stderr
    assert not (home / "runs").exists() or not any((home / "runs").iterdir()), "no work may start"


@pytest.mark.fast
def test_malformed_json_exits_2(home, tmp_path):
    path = tmp_path / "spec.json"
    path.write_text('{"data": {"name": "digits",}')
    p = cli("run", str(path), home=home)
    assert p.returncode == 2 and "malformed JSON" in p.stderr


def test_measure_reports_a_bundle_and_its_paired_speedup_over_another(digits_base, home, tmp_path):
    meta = D.load(DataSpec(name="digits", limit=50)).meta()
    small = models.build("mobilenet_v3_small", 10, small_input=True)
    path = tmp_path / "small.pt"
    export.save_bundle(export.make_bundle(small, arch="mobilenet_v3_small", num_classes=10, small_input=True,
                                          meta=meta), path)
    p = cli("measure", str(path), "--against", digits_base["checkpoint"], "--runs", "10", "--rounds", "2",
            "--batch-size", "4", "--threads", "1", home=home)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["params"] == measure.count_params(small) and r["macs"] == measure.count_macs(small, (3, 8, 8))["macs"]
    assert r["size_bytes"] == path.stat().st_size and r["threads"] == 1 and r["latency_ms"] > 0
    lo, hi = r["paired_speedup_range"]
    assert 0 < lo <= r["paired_speedup"] <= hi and r["against_latency_ms"] > 0
    missing = cli_here("measure", str(tmp_path / "nope.pt"), home=home)
    assert missing.returncode == 2 and "checkpoint not found" in missing.stderr
    other = tmp_path / "other.pt"
    export.save_bundle(export.make_bundle(small, arch="mobilenet_v3_small", num_classes=10, small_input=True,
                                          meta={**meta, "input_size": [3, 16, 16]}), other)
    mismatch = cli_here("measure", str(path), "--against", str(other), home=home)
    assert mismatch.returncode == 2 and "--against" in mismatch.stderr


def test_profile_rejects_unknown_arch(home):
    p = cli_here("profile", "resnet9000", home=home)
    assert p.returncode == 2 and "resnet18" in p.stderr


@pytest.mark.fast
def test_spec_round_trips_through_json():
    s = JobSpec.from_dict({"data": {"name": "digits", "limit": 100}, "model": {"arch": "resnet18"},
                           "train": {"epochs": 1, "lr": 0.01}})
    assert JobSpec.from_json(s.to_json()) == s


# -- data ----------------------------------------------------------------------------------------
@pytest.mark.fast
def test_digits_splits_are_fixed_and_disjoint():
    spec = JobSpec.from_dict({"data": {"name": "digits"}, "model": {"arch": "resnet18"}}).data
    a = D.load(spec)
    assembly._MEMO.clear()
    b = D.load(spec)
    assert torch.equal(a.val.y, b.val.y) and torch.equal(a.test.x, b.test.x)
    assert len(a.train) + len(a.val) + len(a.test) == 1797
    assert a.channels == 1 and a.input_shape == (3, 8, 8)


@pytest.mark.fast
def test_batches_are_normalised_rgb_and_augmented():
    spec = JobSpec.from_dict({"data": {"name": "digits", "batch_size": 32}, "model": {"arch": "resnet18"}}).data
    d = D.load(spec)
    x, y = next(iter(d.loader("train", train=True)))
    assert x.shape == (32, 3, 8, 8) and torch.equal(x[:, 0], x[:, 1])
    xt, _ = next(iter(d.loader("test", batch_size=len(d.test))))
    assert abs(xt.mean().item()) < 0.2  # normalised with train statistics
    loader = d.loader("train", train=True)
    a, b = next(iter(loader))[0], next(iter(loader))[0]
    assert not torch.equal(a, b)  # reshuffled / re-augmented every pass
    assert torch.equal(next(iter(d.loader("train", train=True)))[0], x)  # ...and reproducible from the seed


@pytest.mark.fast
def test_random_crop_keeps_content_shifted():
    x = torch.arange(16.0).view(1, 1, 4, 4).repeat(8, 1, 1, 1)
    oy, ox = torch.randint(0, 3, (2, 8), generator=torch.Generator().manual_seed(0))
    out = D.random_crop(x, 1, oy, ox)
    assert out.shape == x.shape
    for o in out:  # each output is the input shifted by at most one pixel
        assert any(torch.equal(o[0, 1:3, 1:3], x[0, 0, 1 + dy:3 + dy, 1 + dx:3 + dx])
                   for dy in (-1, 0, 1) for dx in (-1, 0, 1))


def _png(color, size=(12, 12), mode="RGB") -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, "PNG")
    return buf.getvalue()


def _make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


@pytest.mark.fast
def test_imagefolder_zip_with_train_and_test(home, tmp_path):
    members = {}
    for split, n in (("train", 12), ("test", 4)):
        for cls, col in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
            for i in range(n):
                members[f"pets/{split}/{cls}/{i}.png"] = _png(col)
    members["pets/train/red/broken.png"] = b"not an image at all"
    z = _make_zip(tmp_path / "pets.zip", members)
    d = D.load(JobSpec.from_dict({"data": {"name": "imagefolder", "path": str(z), "val_fraction": 0.25},
                                  "model": {"arch": "resnet18"}}).data)
    assert d.class_names == ["blue", "red"] and len(d.test) == 8 and len(d.train) + len(d.val) == 24
    assert d.image_size == 12 and d.channels == 3
    assert any("skipped 1 unreadable" in n for n in d.notes)


@pytest.mark.fast
def test_imagefolder_single_folder_is_split_with_a_fixed_seed(home, tmp_path):
    root = tmp_path / "flat"
    for cls, col in (("a", 10), ("b", 200)):
        (root / cls).mkdir(parents=True)
        for i in range(10):
            (root / cls / f"{i}.png").write_bytes(_png((col, col, col), mode="RGB"))
    spec = JobSpec.from_dict({"data": {"name": "imagefolder", "path": str(root), "image_size": 8},
                              "model": {"arch": "resnet18"}}).data
    d = D.load(spec)
    assert len(d.test) == 4 and d.image_size == 8


def test_imagefolder_without_class_folders_is_refused(home, tmp_path):
    z = _make_zip(tmp_path / "flat.zip", {"a.png": _png((1, 2, 3)), "b.png": _png((1, 2, 3))})
    with pytest.raises(SpecError, match="ImageFolder layout"):
        D.load(JobSpec.from_dict({"data": {"name": "imagefolder", "path": str(z)}, "model": {"arch": "resnet18"}}).data)


@pytest.mark.fast
def test_zip_slip_archive_is_refused(home, tmp_path):
    z = _make_zip(tmp_path / "evil.zip", {"train/a/../../../etc/x.png": _png((1, 1, 1)), "test/a/1.png": _png((1, 1, 1))})
    with pytest.raises(SpecError, match="unsafe path"):
        D.load(JobSpec.from_dict({"data": {"name": "imagefolder", "path": str(z)}, "model": {"arch": "resnet18"}}).data)


def test_fashion_mnist_baseline_runs_through_the_same_code(home):
    if not Path(settings.FASHION_MNIST.default, "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("dataset-fashion-mnist is not installed (make test installs it as root)")
    # ResNet-20 on 2,000 images: a seventh of ResNet-18's training time on 1,000, and 0.62 accuracy (seeded)
    r = run_here({"data": {"name": "fashion-mnist", "limit": 2000, "test_limit": 500, "image_size": 16},
                  "model": {"arch": "resnet20"}, "train": {"epochs": 2},
                  "measure": {"latency_runs": 3, "warmup_runs": 1, "batch_size": 8, "onnx": False,
                              "deploy": False}}, home)
    assert r["dataset"] == "fashion-mnist" and r["input_size"] == [3, 16, 16] and r["test_images"] == 500
    assert r["accuracy"] > 0.4  # far above chance (0.1) after two short epochs


def test_cifar10_zip_baseline_runs_through_the_same_code(home):
    if not CIFAR_SMALL.is_file():
        pytest.skip(f"{CIFAR_SMALL} not present")
    # ResNet-20 (a thirteenth of ResNet-18's MACs at 32 px): the zip's loading and the 32-px input are checked here,
    # and small_input follows the data's image size, not the arch
    r = run_here({"data": {"name": "cifar10", "path": str(CIFAR_SMALL), "limit": 200, "test_limit": 100},
                  "model": {"arch": "resnet20"}, "train": {"epochs": 1},
                  "measure": {"latency_runs": 3, "warmup_runs": 1, "batch_size": 8, "onnx": False,
                              "deploy": False}}, home)
    assert r["input_size"] == [3, 32, 32] and r["num_classes"] == 10 and r["small_input"] is True
    assert 0.0 < r["accuracy"] <= 1.0 and r["size_bytes"] > 0


# -- export / measure ----------------------------------------------------------------------------
def test_manifest_rebuilds_a_rewritten_model(tmp_path):
    m = models.build("resnet18", 10, small_input=True)
    # A low-rank style rewrite and a pruned width: the bundle must rebuild both shapes.
    old = m.layer1[0].conv1
    m.layer1[0].conv1 = nn.Sequential(nn.Conv2d(64, 16, 3, 1, 1, bias=False), nn.Conv2d(16, 64, 1, bias=False))
    m.fc = nn.Linear(512, 10)
    del old
    b = export.make_bundle(m, arch="resnet18", num_classes=10, small_input=True,
                           meta={"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.25] * 3, "class_names": []})
    export.save_bundle(b, tmp_path / "m.pt")
    m2, _ = export.load_model(tmp_path / "m.pt")
    x = torch.randn(2, 3, 32, 32)
    m.eval()
    assert torch.allclose(m(x), m2(x), atol=1e-5)
    assert isinstance(m2.layer1[0].conv1, nn.Sequential)


def test_sparse_weights_are_stored_packed_and_shrink_the_file(tmp_path):
    m = models.build("resnet18", 10, small_input=True)
    meta = {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.25] * 3, "class_names": []}
    dense = export.save_bundle(export.make_bundle(m, arch="resnet18", num_classes=10, small_input=True, meta=meta),
                               tmp_path / "dense.pt")
    with torch.no_grad():
        for _, w in measure.prunable_weights(m):
            w.mul_((torch.rand_like(w) > 0.9).float())
    assert measure.sparsity(m) == pytest.approx(0.9, abs=0.01)
    sparse = export.save_bundle(export.make_bundle(m, arch="resnet18", num_classes=10, small_input=True, meta=meta),
                                tmp_path / "sparse.pt")
    assert sparse < 0.2 * dense
    m2, _ = export.load_model(tmp_path / "sparse.pt")
    for (n, a), (_, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), n
    c = measure.count_macs(m, (3, 32, 32))
    assert c["sparse_macs"] == pytest.approx(0.1 * c["macs"], rel=0.1)


def test_pickle_with_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))
    torch.save({"format": "slimbench-bundle", "version": 1, "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(export.BundleError, match="refused"):
        export.read_bundle(tmp_path / "evil.pt")
    assert not marker.exists()


def test_state_dict_for_another_class_count_names_the_mismatch(tmp_path, digits_base):
    b = export.read_bundle(digits_base["checkpoint"])
    b["arch_kwargs"]["num_classes"] = 7
    export.save_bundle(b, tmp_path / "wrong.pt")
    with pytest.raises(export.BundleError, match="fc.weight"):
        export.load_model(tmp_path / "wrong.pt")


def test_truncated_checkpoint_is_refused(tmp_path, digits_base):
    raw = Path(digits_base["checkpoint"]).read_bytes()
    (tmp_path / "cut.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(export.BundleError, match="not a readable checkpoint"):
        export.read_bundle(tmp_path / "cut.pt")


def test_latency_measurement_records_its_conditions():
    m = models.build("squeezenet1_1", 10, small_input=True)
    r = measure.measure_speed(m, (3, 32, 32), torch.device("cpu"), batch_size=8, runs=5, warmup=1, threads=1)
    assert r["threads"] == 1 and r["latency_runs"] >= 5 and r["throughput_batch"] == 8
    assert r["latency_p90_ms"] >= r["latency_ms"] > 0


class DriftingClock:
    """A fake perf_counter under which every call runs 1 % slower than the one before: a machine
    slowing down during the measurement, as shared CPUs do."""

    def __init__(self):
        self.now, self.slowdown = 0.0, 1.0

    def model(self, cost):
        def run(x):
            self.now += cost * self.slowdown
            self.slowdown *= 1.01
            return x
        return run


def test_paired_speedup_cancels_drift_that_fools_separate_measurements(monkeypatch):
    clock = DriftingClock()
    monkeypatch.setattr(measure.time, "perf_counter", lambda: clock.now)
    slow, fast = clock.model(2.0), clock.model(1.0)   # truly 2x apart
    cpu = torch.device("cpu")
    separate = (measure.measure_speed(slow, (3, 4, 4), cpu, 2, runs=30, warmup=5)["latency_ms"]
                / measure.measure_speed(fast, (3, 4, 4), cpu, 2, runs=30, warmup=5)["latency_ms"])
    assert abs(separate - 2.0) > 0.3                  # the drift shows up as a wrong ratio...
    p = measure.paired_speedup(slow, fast, (3, 4, 4), cpu, runs=30, warmup=5, rounds=5)
    assert p["speedup"] == pytest.approx(2.0, rel=0.03)   # ...and cancels when interleaved
    assert p["speedup_min"] <= p["speedup"] <= p["speedup_max"] and p["runs"] >= 30
    assert p["ref_latency_ms"] > p["latency_ms"] > 0


def test_a_job_from_a_run_records_its_paired_speedup_over_it(digits_base, session_home):
    from engine import runner
    spec = JobSpec.from_dict({"data": {"name": "digits"}, "model": {"from_run": digits_base["run_id"]},
                              "method": {"name": "prune_structured", "params": {"ratio": 0.5, "finetune_epochs": 0}},
                              "measure": {"onnx": False, "deploy": False, "batch_size": 8, "latency_runs": 10,
                                          "warmup_runs": 1, "paired_rounds": 2}})
    r = runner.run_spec(spec, Store())
    assert r["paired_ref"] == digits_base["run_id"] and r["paired_speedup"] > 0
    lo, hi = r["paired_speedup_range"]
    assert lo <= r["paired_speedup"] <= hi
    off = runner.run_spec(spec.replace(measure={"onnx": False, "deploy": False, "batch_size": 8, "latency_runs": 3,
                                                "paired_rounds": 0}), Store())
    assert "paired_speedup" not in off


def test_gpu_measurement_runs_where_cuda_exists():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    m = models.build("resnet18", 10, small_input=True)
    r = measure.measure_speed(m.cuda(), (3, 32, 32), torch.device("cuda"), batch_size=64, runs=10, warmup=3,
                              prefix="gpu_")
    assert r["gpu_latency_ms"] > 0 and r["gpu_peak_mem_bytes"] > 0


def test_the_same_spec_trains_the_same_model_in_two_processes(tmp_path):
    """train.seed fixes the fresh architecture's initial weights too: two processes, one model."""
    spec = {"data": {"name": "digits", "limit": 96, "test_limit": 32, "batch_size": 32}, "model": {"arch": "resnet18"},
            "method": {"name": "baseline"}, "train": {"epochs": 1, "device": "cpu"},
            "measure": {"onnx": False, "deploy": False, "latency_runs": 3, "warmup_runs": 1}}
    a, b = (run_spec(spec, tmp_path / f"ws{i}", tmp_path) for i in (1, 2))
    untimed = lambda r: [{k: v for k, v in h.items() if k != "seconds"} for h in r["history"]]  # noqa: E731
    assert a["accuracy"] == b["accuracy"] and untimed(a) == untimed(b)
    wa, wb = (export.load_model(r["checkpoint"])[0].state_dict() for r in (a, b))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
