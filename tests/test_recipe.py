"""The training recipe: its choices resolved and recorded on the run and its model card, zero-init of
residual blocks, and GPU-only options refused on the CPU before any training, naming the field."""
from __future__ import annotations

import json

import pytest
import torch

from engine import data as data_mod
from engine import layout, models, runner, training, validation
from engine.spec import DataSpec, JobSpec, SpecError, TrainSpec
from engine.store import Store

BASE = {"data": {"name": "digits", "limit": 100}, "model": {"arch": "resnet20"}, "method": {"name": "baseline"},
        "train": {"epochs": 1, "device": "cpu"},
        "measure": {"onnx": False, "deploy": False, "latency_runs": 3, "batch_size": 8, "paired_rounds": 0}}


def _with(section: str, **values) -> dict:
    return {**BASE, section: {**BASE.get(section, {}), **values}}


@pytest.mark.fast
@pytest.mark.parametrize("spec, field, words", [
    (_with("train", amp="fp16"), "train.amp", "CUDA-only"),
    (_with("train", sync_bn=True), "train.sync_bn", "train.devices is 1"),
    ({**_with("train", zero_init_residual=True), "model": {"from_run": "20990101-000000-000000"}},
     "train.zero_init_residual", "trained weights"),
    (_with("data", batch_size=3) | {"train": {**BASE["train"], "devices": 2}}, "data.batch_size", "at least 4"),
])
def test_options_that_cannot_work_here_are_refused_naming_the_field(spec, field, words):
    with pytest.raises(SpecError) as e:
        JobSpec.from_dict(spec)
    assert e.value.field == field and words in str(e.value)


@pytest.mark.fast
def test_gpu_autocast_is_refused_where_auto_would_train_on_the_cpu(monkeypatch):
    monkeypatch.setattr(validation, "gpu_count", lambda: 0)
    spec = _with("train", device="auto", amp="fp16")
    with pytest.raises(SpecError) as e:
        validation.check_spec(spec)
    assert e.value.field == "train.amp" and "no CUDA device" in str(e.value)
    validation.check_spec(_with("train", device="auto", amp="auto"))  # auto: bf16 or fp32 on the CPU, accepted
    validation.check_spec(_with("train", device="auto", amp="bf16"))  # CPU autocast has bf16
    monkeypatch.setattr(validation, "gpu_count", lambda: 1)
    validation.check_spec(spec)  # a GPU to train on: accepted


@pytest.mark.fast
def test_the_recipe_resolves_every_choice_for_the_device():
    data = data_mod.load(DataSpec(name="digits", limit=100))
    assert data.batch_size == 64 and data_mod.load(DataSpec(name="digits", limit=100), "cuda").batch_size == 512
    r = training.recipe(TrainSpec(devices=2), data, torch.device("cpu"), epochs=4)
    assert r["lr"] == pytest.approx(0.1 * 64 / 256) and r["epochs"] == 4
    assert r["batch_size"] == 64 and r["batch_per_device"] == 32 and r["sync_bn"] is True
    assert r["amp"] == "off (fp32)"  # auto on a CPU: float32
    assert r["channels_last"] is False and r["compile"] is False
    assert r["optimizer"] == "sgd nesterov" and r["label_smoothing"] == 0.0
    assert r["augmentation"] == "random crop (zero pad 1 px)"  # digits: no flip (it would change the digit)
    one = training.recipe(TrainSpec(lr=0.3, sync_bn=None), data, torch.device("cpu"))
    assert one["lr"] == 0.3 and one["sync_bn"] is None and one["devices"] == 1
    asked = training.recipe(TrainSpec(amp="bf16"), data, torch.device("cpu"))
    assert asked["amp"] == "bfloat16" and asked["channels_last"] is True


def small_convnet(groups: int = 1) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(8, 8, 3, padding=1, groups=groups), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10))


@pytest.mark.fast
def test_cpu_autocast_is_float32_unless_bf16_is_asked_for():
    """auto stays float32 on a CPU (bfloat16 cost the Quick tour's base 0.29 pt); bf16 is the opt-in, with
    channels_last, and float16 (CUDA-only) never autocasts on a CPU."""
    cpu = torch.device("cpu")
    assert training.amp_dtype(cpu, "auto") is None and training.amp_dtype(cpu, "off") is None
    assert training.amp_dtype(cpu, "bf16") is torch.bfloat16
    assert training.channels_last_for(TrainSpec(amp="bf16"), cpu) is True
    assert training.channels_last_for(TrainSpec(amp="bf16", channels_last=False), cpu) is False
    assert training.channels_last_for(TrainSpec(), cpu) is False
    ctx, scaler = training.autocast_for(cpu, torch.bfloat16)
    assert scaler is None  # bfloat16 has float32's range: no loss scaling
    with ctx:
        out = small_convnet()(torch.randn(2, 3, 8, 8))
    assert out.dtype == torch.bfloat16


@pytest.mark.fast
def test_a_regulariser_and_the_amp_override_train_in_float32():
    """The regulariser sees float32 weights outside autocast, and ``amp='off'`` (QAT's) trains in float32
    even where the spec asks for bfloat16; the trained model is handed back in the default memory format."""
    data = data_mod.load(DataSpec(name="digits", limit=100, image_size=8))
    seen = []

    def reg(model):
        w = next(model.parameters()).flatten(1)
        seen.append((torch.is_autocast_enabled("cpu"), (w @ w.T).dtype))
        return w.pow(2).sum() * 0

    model = small_convnet()
    res = training.fit(model, data, TrainSpec(epochs=1, amp="bf16"), device=torch.device("cpu"), regularizer=reg)
    assert res.recipe["amp"] == "bfloat16" and res.recipe["channels_last"] is True
    assert seen and all(s == (False, torch.float32) for s in seen)
    assert all(p.dtype == torch.float32 for p in model.parameters()) and model[0].weight.is_contiguous()
    off = training.fit(small_convnet(), data, TrainSpec(epochs=1, amp="bf16"), device=torch.device("cpu"), amp="off")
    assert off.recipe["amp"] == "off (fp32)" and off.recipe["channels_last"] is False


@pytest.mark.fast
def test_zero_init_zeroes_the_last_batchnorm_of_each_residual_block():
    counts = {}
    for arch, last in (("resnet20", "bn2"), ("resnet18", "bn2"), ("resnet50", "bn3")):
        model = models.build(arch, 10, small_input=True)
        counts[arch] = models.zero_init_residual(model)
        blocks = [m for m in model.modules() if hasattr(m, last) and hasattr(m, "conv1")]
        assert blocks and all(getattr(b, last).weight.abs().sum() == 0 for b in blocks)
        assert all(b.bn1.weight.abs().sum() > 0 for b in blocks)  # only the last one
    assert counts == {"resnet20": 9, "resnet18": 8, "resnet50": 16}
    assert models.zero_init_residual(models.build("mobilenet_v2_cifar", 10)) == 0


def test_the_run_records_its_recipe_and_the_model_card_shows_it(tmp_path):
    spec = {**BASE, "train": {**BASE["train"], "zero_init_residual": True, "label_smoothing": 0.05}}
    store = Store(tmp_path / "ws")
    record = runner.run_spec(spec, store)
    recipe = record["recipe"]
    assert recipe["zero_init_residual"] is True and recipe["label_smoothing"] == 0.05
    assert recipe["optimizer"] == "sgd nesterov" and recipe["defaults"] == "default recipe (training.RECIPES)"
    assert recipe["phases"] == [{"phase": "train", "epochs": 1, "lr": pytest.approx(0.025)}]
    assert recipe["batch_size"] == 64 and recipe["devices"] == 1 and recipe["device"] == "cpu"
    card = json.loads((store.run_dir(record["run_id"]) / layout.CARD).read_text())
    assert card["recipe"] == recipe
