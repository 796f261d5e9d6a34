"""Bring your own weights: plain state dicts become bundles exactly, and jobs honour the declared normalisation."""
from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path

import pytest
import torch

from engine import data as data_mod, export, import_weights, models, presets, runner, training
from engine.spec import DataSpec, JobSpec
from engine.store import Store
from tests.conftest import cli, cli_here

QUICK_MEASURE = {"onnx": False, "latency_runs": 5, "warmup_runs": 1, "paired_rounds": 1}


def saved(tmp_path: Path, model: torch.nn.Module, name: str = "weights.pth", wrap: bool = False,
          prefix: str = "") -> Path:
    sd = {prefix + k: v for k, v in model.state_dict().items()}
    torch.save({"epoch": 7, "state_dict": sd} if wrap else sd, tmp_path / name)
    return tmp_path / name


def test_a_wrapped_prefixed_state_dict_is_identified_and_imported_exactly(tmp_path):
    torch.manual_seed(0)
    net = models.build("resnet18", 10, small_input=True).eval()
    path = saved(tmp_path, net, wrap=True, prefix="module.")  # as a DDP training script saves it
    sd = import_weights.read_state_dict(path)
    assert import_weights.identify(sd) == [import_weights.Match("resnet18", True, 10)]
    bundle = import_weights.to_bundle(path, norm="imagenet", class_names=[str(i) for i in range(10)])
    assert bundle["arch"] == "resnet18" and bundle["arch_kwargs"]["small_input"] is True
    assert bundle["meta"]["mean"] == import_weights.IMAGENET["mean"]
    assert bundle["extra"]["imported_from"] == "weights.pth"
    rebuilt = export.model_from_bundle(bundle)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), net(x))


def test_stride_only_stems_must_be_stated_and_the_class_count_is_read_from_the_head(tmp_path):
    path = saved(tmp_path, models.build("mobilenet_v3_small", 4, small_input=False))
    found = import_weights.identify(import_weights.read_state_dict(path))
    assert {(m.arch, m.small_input, m.num_classes) for m in found} == {("mobilenet_v3_small", False, 4),
                                                                       ("mobilenet_v3_small", True, 4)}
    with pytest.raises(import_weights.ImportWeightsError, match="small-input stem"):
        import_weights.to_bundle(path)
    b = import_weights.to_bundle(path, small_input=True)
    assert b["arch_kwargs"] == {"num_classes": 4, "small_input": True, "width": 1.0}


def test_weights_of_another_architecture_name_what_differs(tmp_path):
    path = saved(tmp_path, models.build("resnet18", 10, small_input=True))
    with pytest.raises(import_weights.ImportWeightsError, match=r"not resnet34: .*missing layer1\.2"):
        import_weights.to_bundle(path, arch="resnet34", small_input=True)
    torch.save({"conv.weight": torch.zeros(8, 3, 3, 3), "fc.weight": torch.zeros(10, 8)}, tmp_path / "custom.pt")
    with pytest.raises(import_weights.ImportWeightsError, match="fit no registered architecture"):
        import_weights.to_bundle(tmp_path / "custom.pt")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch notes the raw pickle it refuses
def test_files_that_are_not_plain_weights_are_refused(tmp_path, digits_base):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))
    torch.save({"state_dict": {"fc.weight": Evil()}}, tmp_path / "evil.pt")
    with pytest.raises(export.BundleError, match="refused"):
        import_weights.to_bundle(tmp_path / "evil.pt")
    with open(tmp_path / "raw.pkl", "wb") as f:  # a plain pickle, not torch.save's format
        pickle.dump({"fc.weight": Evil()}, f)
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    for name in ("raw.pkl", "junk.pth"):
        with pytest.raises(export.BundleError, match="not a readable checkpoint"):
            import_weights.to_bundle(tmp_path / name)
    assert not marker.exists()
    torch.save([torch.zeros(3)], tmp_path / "list.pt")
    with pytest.raises(import_weights.ImportWeightsError, match="does not hold a state dict"):
        import_weights.to_bundle(tmp_path / "list.pt")
    with pytest.raises(import_weights.ImportWeightsError, match="already a Slimbench bundle"):
        import_weights.to_bundle(digits_base["checkpoint"])
    assert import_weights.inspect(digits_base["checkpoint"])[0] == "bundle"


@pytest.mark.parametrize("text, problem", [("0.5,0.5/0.2", "1 or 3 values"), ("0.5/-1", "positive"),
                                           ("imagenett", "expected dataset, imagenet"), ("a,b,c/1,1,1", "expected")])
def test_normalisation_text_is_parsed_or_refused(text, problem):
    assert import_weights.parse_normalisation("imagenet") == "imagenet"
    assert import_weights.parse_normalisation("0.5, 0.4, 0.3/0.2,0.2,0.2") == ([0.5, 0.4, 0.3], [0.2, 0.2, 0.2])
    with pytest.raises(import_weights.ImportWeightsError, match=problem):
        import_weights.parse_normalisation(text)


def test_an_imported_model_is_scored_as_given_with_the_normalisation_declared(home, tmp_path, digits_base):
    """The reference base, saved as a plain state dict and imported, scores what it scored when trained
    once its training normalisation is declared; declared ImageNet statistics (three values on grey
    digits) are what the job then feeds it, checked against an evaluation done here by hand."""
    model, bundle = export.load_model(digits_base["checkpoint"])
    weights = saved(tmp_path, model)
    meta = bundle["meta"]
    store = Store()
    records = {}
    for label, norm in (("own", (meta["mean"], meta["std"])), ("imagenet", "imagenet")):
        path = tmp_path / f"{label}.bundle.pt"
        export.save_bundle(import_weights.to_bundle(weights, norm=norm), path)
        plan = presets.custom_plan(data={"name": "digits"}, model={"checkpoint": str(path)}, steps=[],
                                   base_train={"epochs": 0}, train={}, measure=QUICK_MEASURE)
        assert [s["name"] for s in plan] == [f"{label}.bundle as given"]
        records[label] = runner.run_spec(JobSpec.from_dict(plan[0]), store)
    own = records["own"]
    assert own["accuracy"] == digits_base["accuracy"] and own["test_images"] == digits_base["test_images"]
    assert own["start_accuracy"] == own["accuracy"] and own["agreement"] == 1.0

    data = data_mod.load(DataSpec(name="digits"))
    assert data.channels == 1
    by_hand = dataclasses.replace(data, **import_weights.IMAGENET)
    logits, ys = training.predict(model, by_hand.loader("test"), torch.device("cpu"))
    expected = (logits.argmax(1) == ys).double().mean().item()
    rec = records["imagenet"]
    assert rec["accuracy"] == pytest.approx(expected, abs=1e-9)
    assert export.read_bundle(rec["checkpoint"])["meta"]["mean"] == import_weights.IMAGENET["mean"]


def test_cli_import_writes_a_bundle_and_refuses_bad_input(tmp_path):
    weights = saved(tmp_path, models.build("squeezenet1_1", 3, small_input=False))
    out = tmp_path / "sq.pt"
    p = cli("import", str(weights), "--small-input", "no", "--norm", "0.5,0.5,0.5/0.25,0.25,0.25",
            "--classes", "a,b,c", "-o", str(out), home=tmp_path / "ws")
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    assert summary["arch"] == "squeezenet1_1" and summary["num_classes"] == 3 and summary["size_bytes"] == out.stat().st_size
    model, b = export.load_model(out)
    assert b["meta"]["class_names"] == ["a", "b", "c"] and b["meta"]["std"] == [0.25] * 3
    bad = cli_here("import", str(weights), "--norm", "0.5/0", home=tmp_path / "ws")
    assert bad.returncode == 2 and "--norm" in bad.stderr and "positive" in bad.stderr
    ambiguous = cli_here("import", str(weights), home=tmp_path / "ws")
    assert ambiguous.returncode == 2 and "small-input stem" in ambiguous.stderr


def test_an_imported_bundle_is_timed_at_the_size_given_or_recorded(tmp_path):
    """An imported bundle records no input size unless told: `measure` asks for one instead of failing
    with nothing to do, and `import --input-size` records it (checked against the architecture)."""
    weights = saved(tmp_path, models.build("squeezenet1_1", 3, small_input=False))
    home = tmp_path / "ws"
    plain, sized = tmp_path / "plain.pt", tmp_path / "sized.pt"
    assert cli_here("import", str(weights), "--small-input", "no", "-o", str(plain), home=home).returncode == 0
    unknown = cli_here("measure", str(plain), "--runs", "2", "--batch-size", "2", home=home)
    assert unknown.returncode == 2 and "--input-size" in unknown.stderr and "does not record" in unknown.stderr
    timed = cli("measure", str(plain), "--input-size", "64", "--runs", "2", "--batch-size", "2", home=home)
    assert timed.returncode == 0, timed.stderr
    out = json.loads(timed.stdout)
    assert out["input_size"] == [3, 64, 64] and out["latency_ms"] > 0 and out["macs"] > 0

    too_small = cli_here("import", str(weights), "--small-input", "no", "--input-size", "8", "-o", str(sized), home=home)
    assert too_small.returncode == 2 and "cannot take 8x8" in too_small.stderr and not sized.exists()
    p = cli_here("import", str(weights), "--small-input", "no", "--input-size", "64", "-o", str(sized), home=home)
    assert p.returncode == 0, p.stderr
    assert export.read_bundle(sized)["meta"]["input_size"] == [3, 64, 64]
    recorded = cli("measure", str(sized), "--runs", "2", "--batch-size", "2", home=home)
    assert recorded.returncode == 0 and json.loads(recorded.stdout)["macs"] == out["macs"]


@pytest.mark.parametrize("classes", ["a,b,", "a,,b", "a,a,b", ""])
def test_import_refuses_empty_or_repeated_class_names(tmp_path, classes):
    weights = saved(tmp_path, models.build("squeezenet1_1", 3, small_input=False))
    p = cli_here("import", str(weights), "--small-input", "no", "--classes", classes, "-o", str(tmp_path / "x.pt"),
            home=tmp_path / "ws")
    assert p.returncode == 2 and "--classes" in p.stderr and "non-empty and distinct" in p.stderr
    assert not (tmp_path / "x.pt").exists()


def test_old_checkpoints_without_batchnorm_counters_import_and_near_misses_say_what_differs(tmp_path):
    """State dicts saved before PyTorch 0.4.1 lack BatchNorm's num_batches_tracked: still exact."""
    net = models.build("resnet18", 10, small_input=False).eval()
    sd = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(sd, tmp_path / "old.pth")
    model = export.model_from_bundle(import_weights.to_bundle(tmp_path / "old.pth", norm="imagenet")).eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), net(x))
    near = {k: v for k, v in sd.items() if k != "layer1.0.bn1.running_mean"}
    torch.save({**near, "extra.weight": torch.zeros(1)}, tmp_path / "near.pth")
    with pytest.raises(export.BundleError, match=r"closest is resnet18: missing layer1.0.bn1.running_mean \| "
                                                 r"unexpected extra.weight"):
        import_weights.to_bundle(tmp_path / "near.pth")
    broken = dict(sd, **{"fc.bias": torch.full((10,), float("nan"))})
    torch.save(broken, tmp_path / "nan.pth")
    with pytest.raises(export.BundleError, match="NaN or infinite values"):
        import_weights.to_bundle(tmp_path / "nan.pth")
    for text in ("nan/nan", "0.5/inf", "inf/0.5"):
        with pytest.raises(export.BundleError, match="finite"):
            import_weights.normalisation(import_weights.parse_normalisation(text))


@pytest.mark.fast
def test_cifar_resnets_of_each_depth_are_told_apart_and_need_no_stem_answer(tmp_path):
    # ResNet-20/32/56 differ only in blocks per stage; a native 32 px net has one stem, so nothing is asked.
    for depth in (20, 32, 56):
        net = models.build(f"resnet{depth}", 10, small_input=True).eval()
        path = saved(tmp_path, net, name=f"r{depth}.pth", wrap=True, prefix="module.")
        sd = import_weights.read_state_dict(path)
        assert import_weights.identify(sd) == [import_weights.Match(f"resnet{depth}", True, 10)]
        for said in (None, False):  # a stem stated for a net without one changes nothing
            b = import_weights.to_bundle(path, small_input=said)
            assert b["arch"] == f"resnet{depth}"
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            assert torch.equal(export.model_from_bundle(b)(x), net(x))
    with pytest.raises(import_weights.ImportWeightsError, match=r"not resnet32: .*missing layer1\.3"):
        import_weights.to_bundle(tmp_path / "r20.pth", arch="resnet32")
