"""Downloads that load without Slimbench (issue 25, item 5): the portable PyTorch program, the
readable model card, and files not smaller than their base's marked on the card and the button."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import compare_page, plain
from engine import data as data_mod, export, layout, model_card, models, portable
from engine.spec import DataSpec
from engine.store import Store

# Runs in a fresh interpreter that imports torch and nothing else: the file must need no Slimbench code.
PLAIN_TORCH = """
import json, sys
import torch
path, inputs, labels = sys.argv[1:4]
extra = {"slimbench.json": ""}
model = torch.export.load(path, extra_files=extra).module()
x, y = torch.load(inputs), torch.load(labels)
with torch.no_grad():
    top1 = torch.cat([model(x[i:i + 64]).argmax(1) for i in range(0, len(x), 64)])
print(json.dumps({"accuracy": (top1 == y).float().mean().item(), "meta": json.loads(extra["slimbench.json"]),
                  "slimbench_loaded": any(m.split(".")[0] in ("engine", "views", "bench") for m in sys.modules)}))
"""


def test_pt2_loads_in_plain_torch_with_the_bundles_top1(tiny_base, tmp_path):
    run_dir = Path(tiny_base["checkpoint"]).parent
    made = portable.ensure(run_dir)
    assert made.kind == "torch.export" and made.file == layout.PT2 and (run_dir / layout.PT2).is_file()
    assert portable.ensure(run_dir) == made                       # made once, read back after

    spec = DataSpec(**{k: v for k, v in tiny_base["spec"]["data"].items() if k in DataSpec.__dataclass_fields__})
    data = data_mod.load(spec)
    xs, ys = zip(*data.loader("test", "cpu"))
    torch.save(torch.cat(xs), tmp_path / "x.pt")
    torch.save(torch.cat(ys), tmp_path / "y.pt")
    p = subprocess.run([sys.executable, "-c", PLAIN_TORCH, str(run_dir / layout.PT2), str(tmp_path / "x.pt"),
                        str(tmp_path / "y.pt")], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert not out["slimbench_loaded"]
    assert out["accuracy"] == pytest.approx(tiny_base["accuracy"], abs=1e-6)   # float32 mean; one image is 3e-3
    assert out["meta"]["class_names"] == [str(c) for c in range(10)] and len(out["meta"]["mean"]) >= 1


def small_bundle(path: Path, arch: str = "resnet20", sparse: bool = False) -> None:
    model = models.build(arch, 3, True, 0.25).eval()
    if sparse:
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.Conv2d):
                    m.weight[m.weight.abs() < m.weight.abs().median()] = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    export.save_bundle(export.make_bundle(model, arch=arch, num_classes=3, small_input=True,
                                          meta={"class_names": ["cat", "dog", "<b>fox</b>"], "mean": [0.5],
                                                "std": [0.25], "input_size": [3, 16, 16], "channels": 3}), path)


@pytest.mark.fast
def test_torchscript_where_torch_export_fails_saying_why(tmp_path, monkeypatch):
    small_bundle(tmp_path / layout.CHECKPOINT)

    def refuse(*a, **k):
        raise RuntimeError("data-dependent control flow")
    monkeypatch.setattr(torch.export, "export", refuse)
    made = portable.ensure(tmp_path)
    assert made.kind == "TorchScript" and made.file == layout.TORCHSCRIPT
    assert "torch.export failed (RuntimeError: data-dependent control flow)" in made.note
    want = export.load_model(tmp_path / layout.CHECKPOINT)[0](torch.ones(2, 3, 16, 16))
    got = torch.jit.load(str(tmp_path / layout.TORCHSCRIPT))(torch.ones(2, 3, 16, 16))
    assert torch.allclose(got, want, atol=1e-5)
    assert "torch.jit.load" in made.load_code("x.pt")
    assert not (tmp_path / layout.PT2).exists()


def card_records() -> dict[str, dict]:
    """A base still learning and an unstructured-pruned child at chance level whose ONNX is as big as the base's."""
    history = [{"phase": "train", "val_acc": 0.5}, {"phase": "train", "val_acc": 0.7}]
    base = {"run_id": "base", "name": "base", "method": "baseline", "arch": "resnet18", "dataset": "digits",
            "num_classes": 3, "test_images": 300, "accuracy": 0.9, "accuracy_ci95": [0.862, 0.928],
            "size_bytes": 44_700_000, "onnx_bytes": 44_700_000, "compressed_bytes": 41_000_000, "history": history,
            "recipe": {"optimizer": "sgd", "lr": 0.1}, "device": "cpu", "cpu_model": "Test CPU", "threads": 2,
            "torch": "2.x", "input_size": [3, 8, 8],
            "spec": {"model": {"arch": "resnet18", "pretrained": "/w/r18.pth", "freeze_backbone": True}}}
    child = {**base, "run_id": "child", "name": "<script>x</script> | pruned", "method": "prune_unstructured",
             "parent": "base", "method_params": {"amount": 0.9, "target_macs": None}, "accuracy": 0.34,
             "accuracy_ci95": [0.29, 0.39],
             "start_accuracy": 0.9, "delta_accuracy_ci95": [-0.6, -0.5], "mcnemar_p": 1e-9, "agreement": 0.3,
             "flips_to_wrong": 0.6, "flips_to_right": 0.04,
             "sparsity": 0.9, "size_bytes": 9_000_000, "compressed_bytes": 8_000_000, "history": [],
             "experiment": "shoes May", "group": "pruning"}
    return {"base": base, "child": child}


@pytest.mark.fast
def test_model_card_says_what_was_done_with_intervals_flags_and_sizes():
    by_id = card_records()
    rec = by_id["child"]
    sizes = model_card.file_sizes(rec, by_id["base"], ("model.pt2", 44_800_000, 44_800_000))
    onnx = next(f for f in sizes if f.label == "model.onnx")
    assert onnx.not_smaller and "zeros included" in onnx.why
    assert not next(f for f in sizes if f.label == "model.pt").not_smaller     # packed sparse: 4.97x smaller
    made = portable.Portable("model.pt2", "torch.export")
    blocks = model_card.blocks(rec, by_id, {"class_names": ["a", "b", "c"], "normalisation": {"mean": [0.5] * 3,
                                                                                             "std": [0.25] * 3}},
                               made, sizes)
    md = model_card.to_markdown(blocks)
    assert "classes of digits. Experiment shoes May, group pruning." in md         # its labels, a sentence
    assert "prune\\_unstructured (amount=0.9) → run child" in md                 # what was done, along the chain
    assert "None" not in md and "against the base, run base." in md   # unset options left out; one start named
    assert "baseline (defaults) → run base (resnet18 from the ImageNet weights in /w/r18.pth" in md
    assert "29.00 to 39.00 %" in md and "-56.00 pt" in md and "-60.00 to -50.00 pt" in md   # metrics with CIs
    assert "At chance level" in md and "Its base base may be under-trained" in md
    assert "model.onnx is not smaller than its base's (1.00x)" in md
    assert "model.pt2 is not smaller than its base's" in md
    assert "torch.export.load('child-model.pt2').module()" in md and "Test CPU" in md and "lr | 0.1" in md
    assert "\\<script\\>x\\</script\\> \\| pruned" in md                           # a name is text, not markup
    page = model_card.to_html(blocks, "card")
    assert "<script>" not in page and "&lt;script&gt;x&lt;/script&gt;" in page and "<table>" in page


@pytest.mark.fast
def test_the_cards_machine_table_says_the_load_its_latency_was_timed_under():
    """The card gave a latency with the CPU and threads but not the load it was timed under (129 ms for a
    ResNet-20 on 8 px digits on a shared 2-core box), and its table opened with a blank header row."""
    by_id = card_records()
    quiet = model_card.to_markdown(model_card.blocks({**by_id["base"], "load_avg": 0.78, "loaded": False,
                                                      "cpu_share": 0.61}, by_id))
    machine = quiet.split("Machine", 1)[1]
    assert machine.split("\n")[2].startswith("| machine | value |")
    assert "| load while timed | 0.78 (1-minute load average) |" in machine and "suspect" not in machine
    assert "| CPU share while timed | 0.61 of the timing threads' time |" in machine
    busy = model_card.to_markdown(model_card.blocks({**by_id["base"], "load_avg": 0.78, "loaded": True,
                                                     "others_cpu": 1.4}, by_id))
    assert "0.78 (1-minute load average); the cores were not free, the timings are suspect" in busy
    assert "| other processes while timed | 1.40 cores' worth of CPU |" in busy
    assert "load while timed" not in model_card.to_markdown(model_card.blocks(by_id["base"], by_id))  # none recorded


def insert_downloads_study(home: Path) -> None:
    """A base and its sparse child, each with a real bundle; a 2-step pipeline; a sensitivity analysis."""
    store = Store(home)
    recs = card_records()
    recs["child"]["name"] = "pruned"
    recs["child"]["accuracy"], recs["child"]["accuracy_ci95"] = 0.88, [0.84, 0.91]
    steps = [{**recs["base"], "run_id": f"step{i}", "name": f"pipe · step {i}", "method": m, "parent": parent,
              "history": []} for i, (m, parent) in enumerate((("prune_structured", "base"), ("lowrank_svd", "step0")))]
    pipe = {**recs["base"], "run_id": "pipe", "name": "pipe", "method": "pipeline", "parent": "base", "history": [],
            "pipeline_runs": ["step0", "step1"], "pipeline_steps": [{"method": "prune_structured"},
                                                                    {"method": "lowrank_svd"}]}
    sens = {**recs["base"], "run_id": "sens", "name": "sens", "method": "sensitivity", "parent": "base", "history": []}
    for i, r in enumerate([recs["base"], recs["child"], *steps, pipe, sens]):
        r = {**r, "test_set_hash": "h", "confusion": [[90, 5, 5], [5, 90, 5], [5, 5, 90]], "finished": 1000.0 + i}
        store.create({"name": r["name"], "data": {"name": "digits"}, "model": {"arch": "resnet18"},
                      "method": {"name": r["method"], "params": {}}}, state="done", run_id=r["run_id"],
                     parent=r.get("parent"), created=1000.0 + i)
        store.update(r["run_id"], record=r, finished=1000.0 + i)
    small_bundle(store.run_dir("base") / layout.CHECKPOINT)
    small_bundle(store.run_dir("child") / layout.CHECKPOINT, sparse=True)
    (store.run_dir("child") / layout.ONNX).write_bytes(b"onnx")


def test_compare_offers_the_program_and_card_and_marks_files_not_smaller(tmp_path, monkeypatch):
    at = compare_page(tmp_path / "ws", monkeypatch, insert_downloads_study)
    assert not at.exception, [e.value for e in at.exception]
    table = at.dataframe[0].value
    assert set(table["run_id"]) == {"base", "child", "pipe"}              # one row per pipeline, no analysis
    assert table.set_index("run_id").loc["pipe", "steps"] == "2 steps: prune_structured → lowrank_svd"
    assert "Pipeline pipe: 2 steps: prune_structured → lowrank_svd" in [plain(e.label) for e in at.expander]
    analyses = next(d.value for d in at.dataframe if "analysed" in d.value.columns)
    assert list(analyses["run_id"]) == ["sens"] and list(analyses["analysed"]) == ["base"]

    at.selectbox(key="detail_run").set_value("child")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    labels = {b.label for b in at.get("download_button")}
    assert {"PyTorch program (.pt2) · not smaller than base", "ONNX model (.onnx) · not smaller than base",
            "Model card (Markdown)",
            "Model card (HTML)"} <= labels, labels
    assert (Path(tmp_path / "ws") / "runs" / "child" / layout.PT2).is_file()
    card_text = plain(next(m.value for m in at.markdown if "Model card: pruned" in plain(m.value)))
    assert "model.onnx is not smaller than its base's" in card_text and "torch.export.load" in card_text


@pytest.mark.fast
def test_programs_made_from_several_threads_at_once_are_all_torch_export(tmp_path):
    """The dashboard renders in threads: exports at once broke each other and fell back to TorchScript."""
    from concurrent.futures import ThreadPoolExecutor
    dirs = [tmp_path / f"run{i}" for i in range(3)]
    for d in dirs:
        small_bundle(d / layout.CHECKPOINT)
    with ThreadPoolExecutor(len(dirs)) as pool:
        made = list(pool.map(portable.ensure, dirs))
    assert [m.kind for m in made] == ["torch.export"] * len(dirs), [m.note for m in made]
