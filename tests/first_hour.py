"""A preset sized for a test: the first-hour browser walk (tests/test_browser_walk.py) launches it.

Two jobs on scikit-learn's digits: a CIFAR ResNet-32 trained 3 epochs (0.89 on the 300 test images), and
an untrained CIFAR ResNet-20 (0 epochs: its answers are a guess). The untrained one is the smaller, so it would win
"size (smallest)" if Compare let chance-level runs win. ``tests/first_hour_serve.py`` adds it to the
dashboard's presets; the test seeds this machine's history from the same plan.
"""
from __future__ import annotations

from typing import Any

from engine import presets

NAME = "First hour (test)"
LABEL = "First hour"
DATA = {"name": "digits", "test_limit": 300}
MEASURE = {"onnx": False, "latency_runs": 5, "warmup_runs": 1}


def plan() -> list[dict[str, Any]]:
    job = {"data": DATA, "method": {"name": "baseline", "params": {}}, "measure": MEASURE}
    return [{**job, "name": f"{LABEL}: baseline", "model": {"arch": "resnet32"}, "train": {"epochs": 3, "device": "cpu"}},
            {**job, "name": f"{LABEL}: untrained resnet20", "model": {"arch": "resnet20"},
             "train": {"epochs": 0, "device": "cpu"}}]


PRESET = presets.Preset(LABEL, plan, "Digits (8x8, scikit-learn), 300 test images; a CIFAR ResNet-32 trained 3 "
                        "epochs and an untrained CIFAR ResNet-20 on CPU.", "cpu", 60,
                        "a test's preset: sized to finish in about a minute on 2 CPU cores")


def register() -> None:
    presets.PRESETS.setdefault(NAME, PRESET)
