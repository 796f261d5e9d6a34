"""Transfer learning from Experiments, the small-data warning, and small UI faults (issue 25, items 4
and 6): the Jobs activity whole under Job details, Try an image's reference and far-from-training hint."""
from __future__ import annotations

import io
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from conftest import ROOT, plain
from engine import export, layout, models, predict, validation
from engine.spec import DataSpec
from engine.store import Store


def png(img: np.ndarray) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def tiny_folder(root: Path, classes: int = 3, per_class: int = 30, side: int = 16) -> Path:
    """``classes`` x ``per_class`` coloured squares, one folder per class (20 % are held out for testing)."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 60, (side, side, 3), dtype=np.uint8)
            img[4:12, 4:12, c % 3] = 220
            (root / f"class{c}" / f"{i}.png").write_bytes(png(img))
    return root


def imagenet_weights(path: Path, arch: str = "resnet18") -> Path:
    """A torchvision-shaped ImageNet state dict (1000-class head), as a user would have downloaded it."""
    torch.save(models.build(arch, 1000, False).state_dict(), path)
    return path


def experiments(monkeypatch, home: Path) -> AppTest:
    import streamlit as st
    monkeypatch.setenv("SLIMBENCH_HOME", str(home))
    monkeypatch.setenv("SLIMBENCH_NO_AUTOSTART", "1")
    st.cache_resource.clear()
    st.cache_data.clear()
    at = AppTest.from_file(str(ROOT / "dashboard.py"), default_timeout=120)
    at.run()
    return at


def texts(at: AppTest, kind: str) -> str:
    return "\n".join(plain(str(e.value)) for e in getattr(at, kind))


@pytest.mark.fast
def test_scratch_warning_counts_images_per_class(tmp_path):
    folder = tiny_folder(tmp_path / "imgs")
    why = validation.scratch_warning(DataSpec(name="imagefolder", path=str(folder)))
    # 90 images, 18 held out for testing, 7 of the rest for validation: 65 to train on, 22 a class
    assert why and why.startswith("about 22 training images per class (65 images, 3 classes)") and "ImageNet" in why
    assert validation.scratch_warning(DataSpec(name="digits")) is None                 # 1,294 images, 129 a class
    assert "about 50 training images per class" in validation.scratch_warning(DataSpec(name="digits", limit=500))
    assert validation.scratch_warning(DataSpec(name="imagefolder", path=str(tmp_path / "missing"))) is None
    # the case: 3 epochs at batch 64 are 6 steps over these 65 images
    assert "; 3 epoch(s) at batch 64 are only 6 optimisation steps" in validation.scratch_warning(
        DataSpec(name="imagefolder", path=str(folder)), 3, 64)
    assert validation.scratch_warning(DataSpec(name="digits"), 3, 64) is None             # 3 x 21 = 63 steps
    assert "only 21 optimisation steps" in validation.scratch_warning(DataSpec(name="digits"), 1, 64)


def test_experiments_transfer_learning_from_a_local_imagenet_state_dict(tmp_path, monkeypatch):
    folder = tiny_folder(tmp_path / "imgs")
    weights = imagenet_weights(tmp_path / "resnet18-imagenet.pth")
    wrong = imagenet_weights(tmp_path / "mobilenet.pth", "mobilenet_v2")
    at = experiments(monkeypatch, tmp_path / "ws")
    at.text_input(key="exp_experiment").input("transfer")
    at.radio(key="data_source").set_value("Path on this server")
    at.run()
    at.text_input(key="data_path").input(str(folder))
    at.number_input(key="base_epochs").set_value(1)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert "About 22 training images per class" in texts(at, "warning")      # too few to train from scratch
    assert "Start from ImageNet weights with a frozen backbone" in texts(at, "warning")

    at.radio(key="init_weights").set_value("ImageNet state dict (transfer learning)")
    at.run()
    at.text_input(key="pretrained_path").input(str(wrong))
    at.run()
    assert "does not match this architecture" in texts(at, "error")         # refused before anything is queued
    at.text_input(key="pretrained_path").input(str(weights))
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert "tensors of resnet18 come from ImageNet; a new head" in texts(at, "success")
    assert "training images per class" not in texts(at, "warning")            # the advice was taken
    assert at.checkbox(key="freeze_backbone").value                          # frozen by default
    at.button(key="launch_custom").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    [job] = Store(tmp_path / "ws").list()
    assert job["spec"]["model"] == {**job["spec"]["model"], "arch": "resnet18", "pretrained": str(weights),
                                    "freeze_backbone": True}
    assert job["spec"]["name"] == "baseline resnet18 from ImageNet weights" and job["spec"]["experiment"] == "transfer"


def test_experiments_takes_an_uploaded_imagenet_state_dict(tmp_path, monkeypatch):
    weights = imagenet_weights(tmp_path / "w.pth")
    at = experiments(monkeypatch, tmp_path / "ws")
    at.radio(key="init_weights").set_value("ImageNet state dict (transfer learning)")
    at.run()
    at.radio(key="pretrained_source").set_value("Upload")
    at.run()
    at.file_uploader(key="pretrained").set_value([("resnet18.pth", weights.read_bytes(), "application/octet-stream")])
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert re.search(r"resnet18\.pth: \d{3} tensors of resnet18 come from ImageNet; a new head for this dataset's "
                     r"classes starts fresh\.", texts(at, "success"))
    assert list((tmp_path / "ws" / "weights").glob("*/resnet18.pth"))    # kept in the workspace for the job


def test_jobs_details_show_the_whole_activity(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMBENCH_HOME", str(tmp_path))
    monkeypatch.setenv("SLIMBENCH_NO_AUTOSTART", "1")
    store = Store(tmp_path)
    job = store.create({"name": "long one"}, state="running")
    store.update(job, heartbeat=time.time())
    phase = "step 2/3 prune_structured: method"
    store.add_event(job, {"phase": phase, "epoch": 7, "epochs": 30, "step": 5, "steps": 10, "eta_s": 3725.0,
                          "images_per_s": 1234.0})
    at = experiments(monkeypatch, tmp_path)
    at.switch_page("views/jobs.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    # the whole activity on one line, nothing cut: the step, its phase in words, epoch, time left, speed
    line = next((t for t in texts(at, "markdown").splitlines() if t.startswith("**running** · ")), "")
    for part in ("step 2/3 prune_structured: starting the method", "epoch 7/30", "1h02m left", "1234 img/s"):
        assert part in line, (part, line)


def test_try_image_names_its_reference_and_flags_an_image_unlike_the_training_set(tmp_path, monkeypatch):
    store = Store(tmp_path / "ws")
    meta = {"class_names": ["a", "b", "c"], "mean": [0.2], "std": [0.3], "input_size": [1, 16, 16], "channels": 1}
    for i, name in enumerate(("the base", "pruned")):
        rid = store.create({"name": name, "data": {"name": "digits"}, "model": {"arch": "resnet20"},
                            "method": {"name": "baseline", "params": {}}}, state="done", created=1000.0 + i)
        store.update(rid, record={"run_id": rid, "name": name, "method": "baseline"}, finished=1000.0 + i)
        torch.manual_seed(i)
        model = models.build("resnet20", 3, True, 0.25).eval()
        store.run_dir(rid).mkdir(parents=True, exist_ok=True)
        export.save_bundle(export.make_bundle(model, arch="resnet20", num_classes=3, small_input=True, meta=meta),
                           store.run_dir(rid) / layout.CHECKPOINT)
    at = experiments(monkeypatch, tmp_path / "ws")
    at.switch_page("views/try_image.py")
    at.run()
    ids = [r["id"] for r in store.list("done")]
    at.multiselect(key="runs").set_value(ids)
    at.run()
    ref = ids[0]
    ref_name = store.get(ref)["name"]
    photo = np.full((16, 16, 3), 235, np.uint8)          # a bright photo in colour: unlike dark grey training data
    photo[:, :8] = [30, 160, 40]
    at.file_uploader(key="images").set_value([("photo.png", png(photo), "image/png")])
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert f"Reference: **{ref_name}** (`{ref}`), the first model chosen" in texts(at, "caption")
    marks = texts(at, "markdown")
    assert "agrees with the reference" in marks or "differs from the reference" in marks
    assert marks.count(ref_name) == 1  # over its own answers only: the others' marks no longer repeat its name
    hint = texts(at, "warning")
    assert f"Unlike the images {ref_name} was trained on" in hint and "in colour" in hint
    assert predict.far_from_training(png(np.full((16, 16), 60, np.uint8) + np.eye(16, dtype=np.uint8) * 150),
                                     meta) == []            # a dark image with some contrast is like them
