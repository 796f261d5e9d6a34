"""Your own architecture: a Python file's builder (opt-in only) and a torch.export program go through
baseline -> structured pruning -> INT8 -> download -> reload; what cannot work is refused before training."""
from __future__ import annotations

import io
import json
import re
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch

from engine import export, predict, runner, user_models
from engine.errors import JobFailed, SpecError

REFUSED = (SpecError, JobFailed)  # refused by the spec check, or by the job before any training
from engine.store import Store
from tests.conftest import cli, compare_page, uploader

NET = textwrap.dedent('''
    import torch
    import torch.nn as nn


    class Block(nn.Module):  # a residual block of its own, not torchvision's
        def __init__(self, c):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
            self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

        def forward(self, x):
            return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


    class TinyResNet(nn.Module):
        def __init__(self, num_classes, width):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
            self.blocks = nn.Sequential(Block(width), Block(width))
            self.head = nn.Linear(width, num_classes)

        def forward(self, x):
            x = self.blocks(self.stem(x))
            return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


    def build(num_classes=10, width=16):
        return TinyResNet(num_classes, width)


    class Scaled(nn.Module):  # a parameter outside Conv2d / Linear / BatchNorm
        def __init__(self, c):
            super().__init__()
            self.gain = nn.Parameter(torch.ones(1, c, 1, 1))

        def forward(self, x):
            return x * self.gain


    class BatchOfOne(TinyResNet):  # reshapes to the batch size it saw: a static export bakes 1 in
        def forward(self, x):
            x = nn.functional.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1)
            return self.head(x.reshape(x.shape[0], -1))


    def build_batch_of_one(num_classes=10):
        return BatchOfOne(num_classes, 8)


    def build_scaled(num_classes=10):
        net = TinyResNet(num_classes, 8)
        net.stem.append(Scaled(8))
        return net
''')
DATA = {"name": "digits", "limit": 400, "test_limit": 120, "image_size": 8}
QUICK = {"onnx": False, "latency_runs": 3, "warmup_runs": 1, "paired_rounds": 1}


def spec(model: dict, method: str = "baseline", params: dict | None = None, epochs: int = 1) -> dict:
    return {"data": DATA, "model": model, "method": {"name": method, "params": params or {}},
            "train": {"epochs": epochs}, "measure": QUICK}


@pytest.fixture()
def net_file(tmp_path) -> Path:
    path = tmp_path / "tiny_resnet.py"
    path.write_text(NET)
    return path


def _chain(store: Store, start: dict) -> list[dict]:
    """baseline (or as given) -> structured pruning -> INT8, each from the one before."""
    base = runner.run_spec(spec(start), store)
    pruned = runner.run_spec(spec({"from_run": base["run_id"]}, "prune_structured",
                                  {"ratio": 0.5, "finetune_epochs": 1}), store)
    int8 = runner.run_spec(spec({"from_run": pruned["run_id"]}, "quantize_int8", {"calibration_batches": 2}), store)
    return [base, pruned, int8]


def _on_compare(store: Store, chain: list[dict], monkeypatch, tmp_path: Path) -> dict[str, Path]:
    """Compare lists each step of the chain with its numbers, measured against the base it started from;
    its Checkpoint button for each step serves the bundle, written to ``tmp_path`` as a user's download."""
    from streamlit.runtime.media_file_manager import MediaFileManager
    served: dict[str, object] = {}  # deferred file id -> the callable the button runs on click
    add = MediaFileManager.add_deferred

    def remember(self, data_callable, *args, **kwargs):
        file_id = add(self, data_callable, *args, **kwargs)
        served[file_id] = data_callable
        return file_id
    monkeypatch.setattr(MediaFileManager, "add_deferred", remember)
    at = compare_page(store.root, monkeypatch, lambda home: None)
    assert not at.exception, [e.value for e in at.exception]
    table = at.dataframe[0].value.set_index("run_id")
    base, pruned, int8 = (r["run_id"] for r in chain)
    for rec in chain:
        row = table.loc[rec["run_id"]]
        assert row["accuracy"] == pytest.approx(rec["accuracy"]) and row["macs"] == rec["macs"]
    assert set(table.loc[[pruned, int8], "base_id"]) == {base}
    assert table.loc[pruned, "x_fewer_macs"] > 2 and table.loc[int8, "runtime"] == "ONNX Runtime INT8"
    paths = {}
    for rec in chain[1:]:
        at.selectbox(key="detail_run").set_value(rec["run_id"])
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        button = next(b for b in at.get("download_button") if b.proto.label == "Checkpoint bundle (.pt)")
        paths[rec["run_id"]] = tmp_path / f"{rec['run_id']}-downloaded.pt"
        paths[rec["run_id"]].write_bytes(served[button.proto.deferred_file_id]())
    return paths


def _same_answers(a, b, shape=(3, 8, 8)) -> None:
    x = torch.randn(5, *shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(a(x), b(x), atol=1e-5)


def test_a_python_file_model_trains_prunes_quantises_and_reloads_only_while_its_file_is_unchanged(
        home, tmp_path, net_file, monkeypatch):
    store = Store()
    base, pruned, int8 = _chain(store, {"file": f"{net_file}:build", "builder_kwargs": {"width": 16},
                                        "trust_code": True})
    assert base["arch"] == pruned["arch"] == "tiny_resnet.py:build"
    assert pruned["params"] < 0.5 * base["params"] and pruned["macs"] < 0.5 * base["macs"]
    assert int8["precision"] == "int8" and int8["accuracy"] is not None
    downloads = _on_compare(store, [base, pruned, int8], monkeypatch, tmp_path)
    path = downloads[pruned["run_id"]]
    with pytest.raises(export.BundleError, match="runs that file's code"):  # no opt-in, no code run
        export.load_model(path)
    model, bundle = export.load_model(path, trust_code=True)
    assert bundle["source"]["sha256"] == user_models.sha256(net_file) and bundle["source"]["builder"] == "build"
    assert model.blocks[0].conv1.out_channels == 8  # half of 16: the pruned shape, rebuilt from the manifest
    _same_answers(model, predict.load_run(pruned["run_id"], store).model)
    int8_model = predict.load_path(str(downloads[int8["run_id"]]))
    assert int8_model.bundle["kind"] == export.ONNX_INT8
    _same_answers(int8_model.logits, predict.load_run(int8["run_id"], store).logits)

    net_file.write_text(NET + "\n# edited\n")
    with pytest.raises(export.BundleError, match="has changed since this model was made"):
        export.load_model(path, trust_code=True)
    with pytest.raises(REFUSED, match="has changed since"):
        runner.run_spec(spec({"from_run": pruned["run_id"]}, "prune_structured", {"ratio": 0.2}), store)


def _program(tmp_path: Path, net_file: Path, shape=(3, 8, 8), builder="build", dynamic=True,
             core_aten=False) -> Path:
    source = user_models.python_source(net_file, builder, {"width": 16} if builder == "build" else {})
    net = user_models.build_python(source, 10, trust_code=True).eval()
    x = torch.randn(2 if dynamic else 1, *shape)
    ep = torch.export.export(net, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},) if dynamic else None)
    if core_aten:
        ep = ep.run_decompositions()
    path = tmp_path / f"{builder}-{shape[-1]}-{dynamic}{'-core' if core_aten else ''}.pt2"
    torch.export.save(ep, path)
    return path


@pytest.mark.parametrize("core_aten", [False, True], ids=["training-ir", "core-aten"])
def test_a_torch_export_program_goes_through_the_chain_without_running_user_code(home, tmp_path, net_file, monkeypatch,
                                                                                  core_aten):
    """As exported (conv2d, linear, batch_norm) and after run_decompositions() (convolution, addmm of a
    transposed weight, _native_batch_norm_legit_no_training): both are lifted to real layers."""
    program = _program(tmp_path, net_file, core_aten=core_aten)
    net_file.unlink()  # the program needs no Python file
    lifted = user_models.load_program(program, program.name)
    assert user_models.unlifted_layers(lifted) == []
    assert isinstance(lifted.get_submodule("stem.1"), torch.nn.BatchNorm2d)  # trains with batch statistics
    store = Store()
    base, pruned, int8 = _chain(store, {"file": str(program), "normalisation": "dataset"})
    assert base["arch"] == program.name and base.get("start_accuracy") is not None  # a trained start: scored first
    assert pruned["macs"] < 0.5 * base["macs"]
    assert int8["precision"] == "int8"
    downloads = _on_compare(store, [base, pruned, int8], monkeypatch, tmp_path)
    model, bundle = export.load_model(downloads[pruned["run_id"]])  # no trust needed: a graph of ATen operators
    assert bundle["source"]["kind"] == "program"
    _same_answers(model, predict.load_run(pruned["run_id"], store).model)
    _same_answers(predict.load_path(str(downloads[int8["run_id"]])).logits,
                  predict.load_run(int8["run_id"], store).logits)
    # the bundle's program is its structure, weights zeroed (they are the state dict's, packed where sparse)
    structure = user_models.program_from_bundle(bundle["source"]["program"].numpy().tobytes(), program.name)
    assert all(not p.any() for p in structure.parameters())
    assert model.get_submodule("blocks.0.conv1").out_channels == 8


def test_refusals_name_the_field_before_training(home, tmp_path, net_file):
    store = Store()
    with pytest.raises(REFUSED, match="model.trust_code"):
        runner.run_spec(spec({"file": f"{net_file}:build"}), store)
    with pytest.raises(REFUSED, match="no function 'missing'"):
        runner.run_spec(spec({"file": f"{net_file}:missing", "trust_code": True}), store)
    with pytest.raises(REFUSED, match=r"layer stem\.3 is a Scaled"):
        runner.run_spec(spec({"file": f"{net_file}:build_scaled", "trust_code": True,
                              "weights": str(_state_dict(tmp_path, net_file))}, "prune_structured"), store)
    with pytest.raises(REFUSED, match=r"exported for inputs \[3, 16, 16\].*data.image_size to 16"):
        runner.run_spec(spec({"file": str(_program(tmp_path, net_file, shape=(3, 16, 16)))}), store)
    with pytest.raises(REFUSED, match="dynamic batch"):
        runner.run_spec(spec({"file": str(_program(tmp_path, net_file, builder="build_batch_of_one", dynamic=False))}),
                        store)
    garbage = tmp_path / "garbage.pt2"
    garbage.write_bytes(b"not a program")
    with pytest.raises(REFUSED, match="cannot be read as a torch.export program"):
        runner.run_spec(spec({"file": str(garbage)}), store)


def _state_dict(tmp_path: Path, net_file: Path) -> Path:
    source = user_models.python_source(net_file, "build_scaled", {})
    buf = io.BytesIO()
    torch.save(user_models.build_python(source, 10, trust_code=True).state_dict(), buf)
    path = tmp_path / "scaled.pth"
    path.write_bytes(buf.getvalue())
    return path


@pytest.mark.fast
def test_the_cli_refuses_a_python_model_file_without_the_opt_in(tmp_path, net_file):
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec({"arch": "resnet18"})))
    # submit reads the spec as run does (jobs_cli.read_spec), without importing torch: the refusal is structural
    p = cli("submit", str(spec_path), "--no-worker", "--model-file", f"{net_file}:build", "--model-kwargs",
            '{"width": 8}', home=tmp_path / "ws")
    assert p.returncode == 2 and "model.trust_code" in p.stderr and "--trust-model-code" in p.stderr
    assert not (tmp_path / "ws" / "runs").exists() or not any((tmp_path / "ws" / "runs").iterdir())


def test_experiments_queues_a_python_model_file_only_once_its_code_is_trusted(tmp_path, monkeypatch, net_file):
    from tests.test_pages import page, texts
    monkeypatch.setenv("SLIMBENCH_HOME", str(tmp_path / "ws"))
    monkeypatch.setenv("SLIMBENCH_NO_AUTOSTART", "1")
    store = Store(tmp_path / "ws")
    at = page("experiments")
    at.selectbox(key="dataset").set_value("digits")
    at.radio(key="base_kind").set_value("Your own architecture")
    at.run()
    uploader(at, "own_model").set_value(("tiny_resnet.py", net_file.read_bytes(), "text/x-python"))
    at.run()
    assert "runs this file's code" in texts(at, "warning")
    at.text_input(key="own_kwargs").set_value('{"width": 8}')
    at.button(key="launch_custom").click()
    at.run()
    assert "Run this Python file's code" in texts(at, "error") and store.list() == []
    at.checkbox(key="own_trust").check()
    at.button(key="launch_custom").click()
    at.run()
    assert not at.exception and not at.error, texts(at, "error")
    (row,) = [store.get(i) for i in at.session_state["launched"]]
    model = row["spec"]["model"]
    assert row["spec"]["name"] == "baseline tiny_resnet.py:build"
    assert model["file"].endswith("tiny_resnet.py:build") and model["trust_code"] is True
    assert model["builder_kwargs"] == {"width": 8}


def _rewritten(program: Path, out: Path, change) -> Path:
    """``program`` with each member's bytes passed through ``change(name, data)``."""
    with zipfile.ZipFile(program) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, change(info.filename, zin.read(info)))
    return out


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_program_carrying_pickled_code_is_refused_before_torch_would_run_it(tmp_path, net_file):
    program = _program(tmp_path, net_file)
    marker = tmp_path / "ran"

    def evil(name: str, data: bytes) -> bytes:
        if not name.endswith("sample_inputs/model.pt"):
            return data
        buf = io.BytesIO()
        torch.save(((_Payload(marker),), {}), buf)  # torch.export.load falls back to weights_only=False here
        return buf.getvalue()
    crafted = _rewritten(program, tmp_path / "crafted.pt2", evil)
    user_models.check_archive(program.read_bytes(), program.name)  # a plain program passes
    with pytest.raises(user_models.UserModelError, match="sample_inputs/model.pt holds pickled objects"):
        user_models.load_program(crafted, crafted.name)
    assert not marker.exists()


def test_a_program_from_another_torch_version_is_refused_with_what_to_do(tmp_path, net_file):
    def newer(name: str, data: bytes) -> bytes:
        if not name.endswith("models/model.json"):
            return data
        doc = json.loads(data)
        doc["schema_version"]["major"] += 90  # what a much newer torch.export writes
        doc["torch_version"] = "9.1.0"
        return json.dumps(doc).encode()
    program = _rewritten(_program(tmp_path, net_file), tmp_path / "newer.pt2", newer)
    with pytest.raises(user_models.UserModelError, match=rf"cannot be read .* torch {re.escape(torch.__version__)}: it "
                                                         r"was saved by torch 9\.1\.0 with program schema 9\d\.\d+ "
                                                         r".*export it again"):
        user_models.load_program(program, program.name)

    def older_ops(name: str, data: bytes) -> bytes:  # same schema, a graph this torch cannot rebuild
        if not name.endswith("models/model.json"):
            return data
        doc = json.loads(data)
        doc["torch_version"] = "2.99.0"
        for node in doc["graph_module"]["graph"]["nodes"]:
            node["target"] = node["target"].replace("aten.relu.default", "aten.relu_from_another_torch.default")
        return json.dumps(doc).encode()
    program = _rewritten(_program(tmp_path, net_file), tmp_path / "other-ops.pt2", older_ops)
    with pytest.raises(user_models.UserModelError, match=r"cannot be read as a torch.export program with torch "
                                                         r".* \(it was saved by torch 2\.99\.0\): .*export it again"):
        user_models.load_program(program, program.name)


def test_experiments_reads_an_uploaded_program_and_refuses_one_carrying_code(tmp_path, monkeypatch, net_file):
    from tests.test_pages import page, texts
    monkeypatch.setenv("SLIMBENCH_HOME", str(tmp_path / "ws"))
    monkeypatch.setenv("SLIMBENCH_NO_AUTOSTART", "1")
    program = _program(tmp_path, net_file)
    at = page("experiments")
    at.selectbox(key="dataset").set_value("digits")
    at.radio(key="base_kind").set_value("Your own architecture")
    at.run()
    uploader(at, "own_model").set_value(("net.pt2", _rewritten(program, tmp_path / "bad.pt2", _pickled).read_bytes(),
                                         "application/octet-stream"))
    at.run()
    assert "holds pickled objects" in texts(at, "error") and not list((tmp_path / "ws" / "models").rglob("*.pt2"))
    uploader(at, "own_model").set_value(("net.pt2", program.read_bytes(), "application/octet-stream"))
    at.run()
    assert "A torch.export program taking 3 x 8 x 8 images" in texts(at, "info")
    at.button(key="launch_custom").click()
    at.run()
    assert not at.error, texts(at, "error")
    (row,) = [Store(tmp_path / "ws").get(i) for i in at.session_state["launched"]]
    assert row["spec"]["model"]["file"].endswith("net.pt2") and row["spec"]["name"] == "net as given"


def _pickled(name: str, data: bytes) -> bytes:
    """Example inputs that are pickled code (touching a path that cannot exist: harmless even if it ran)."""
    if not name.endswith("sample_inputs/model.pt"):
        return data
    buf = io.BytesIO()
    torch.save(((_Payload(Path("/nonexistent/never")),), {}), buf)
    return buf.getvalue()
