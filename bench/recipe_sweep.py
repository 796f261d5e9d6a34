"""``python -m bench.recipe_sweep``: the CPU measurement behind the training defaults (engine.training).

ResNet-20 from scratch, one recipe change at a time against the engine's defaults, a few seeds each;
prints one JSON line per run (test accuracy with its Wilson interval, validation curve, train time).
Short on purpose (about a minute a run on 2 cores): it ranks choices, it does not make a base.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from engine import data as data_mod
from engine import models, training
from engine.spec import DataSpec, TrainSpec

# Each variant changes the engine's defaults (batch 64, lr 0.1 per 256, no label smoothing, warm-up 0.5
# epoch, no zero-init) in one place.
VARIANTS = {
    "defaults": {},
    "label_smoothing_0.1": {"label_smoothing": 0.1},
    "zero_init_residual": {"zero_init_residual": True},
    "lr_x2": {"lr": 0.05},
    "batch128_lr0.1": {"batch_size": 128, "lr": 0.1},
    "warmup_0.2": {"warmup_epochs": 0.2},
    "warmup_1": {"warmup_epochs": 1.0},
}


def run(variant: str, seed: int, dataset: str, limit: int | None, image_size: int | None, epochs: int) -> dict:
    change = dict(VARIANTS[variant])
    batch = change.pop("batch_size", 64)
    zero = change.pop("zero_init_residual", False)
    data = data_mod.load(DataSpec(name=dataset, limit=limit, test_limit=2000, batch_size=batch,
                                  image_size=image_size))
    torch.manual_seed(seed)
    model = models.build("resnet20", data.num_classes)
    if zero:
        models.zero_init_residual(model)
    cfg = TrainSpec(epochs=epochs, device="cpu", seed=seed, **change)
    res = training.fit(model, data, cfg, device=torch.device("cpu"))
    test = training.evaluate(model, data, "test", torch.device("cpu"))
    return {"variant": variant, "seed": seed, "dataset": dataset, "image_size": data.image_size,
            "train_images": len(data.train), "epochs": epochs, "test_acc": round(test["accuracy"], 4),
            "ci95": [round(v, 3) for v in test["accuracy_ci95"]],
            "val": [round(h["val_acc"], 4) for h in res.history], "train_s": round(res.seconds, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--limit", type=int, default=2000)
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    for variant in a.variants.split(","):
        if variant not in VARIANTS:
            p.error(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
        for seed in (int(s) for s in a.seeds.split(",")):
            t0 = time.time()
            print(json.dumps({**run(variant, seed, a.dataset, a.limit, a.image_size, a.epochs),
                              "wall_s": round(time.time() - t0, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
