"""How many images per class a net needs to learn from scratch: the evidence behind Experiments'
small-dataset warning (``engine.presets.SCRATCH_MIN_PER_CLASS``).

Trains the same architecture from random weights on Fashion-MNIST cut to N training images per
class, with the same number of optimisation steps (so a small set is not also a short run), and
prints each run's test accuracy against chance (1 / classes)::

    .venv/bin/python -m bench.small_data [--arch resnet20] [--per-class 10 30 100 300] [--steps 200]
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(arch: str, per_class: int, steps: int, classes: int = 10, batch: int = 32, home: Path | None = None) -> dict:
    n = per_class * classes
    epochs = max(1, math.ceil(steps / math.ceil(n / batch)))
    # data.limit caps the training split after validation is held out; a small validation split keeps
    # the many short epochs of the smallest sets from spending their time validating
    spec = {"data": {"name": "fashion-mnist", "limit": n, "val_fraction": 0.01, "test_limit": 2000,
                     "batch_size": batch},
            "model": {"arch": arch}, "method": {"name": "baseline"}, "train": {"epochs": epochs},
            "measure": {"onnx": False, "latency_runs": 3, "warmup_runs": 1, "paired_rounds": 0}}
    path = home / f"spec-{per_class}.json"
    path.write_text(json.dumps(spec))
    p = subprocess.run([sys.executable, "-m", "engine", "run", str(path)], cwd=ROOT, capture_output=True, text=True,
                       env={**__import__("os").environ, "SLIMBENCH_HOME": str(home)})
    if p.returncode:
        raise RuntimeError(p.stderr[-2000:])
    rec = json.loads(p.stdout.strip().splitlines()[-1])
    return {"per_class": per_class, "epochs": epochs, "accuracy": rec["accuracy"], "ci": rec.get("accuracy_ci95")}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet20")
    ap.add_argument("--per-class", type=int, nargs="+", default=[10, 30, 100, 300])
    ap.add_argument("--steps", type=int, default=200, help="optimisation steps of every run (batch 32)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        for k in args.per_class:
            r = run(args.arch, k, args.steps, home=Path(tmp))
            ci = r["ci"] or [math.nan, math.nan]
            print(f"{args.arch} from scratch, {k:4d} images/class, {args.steps} steps ({r['epochs']} epochs): accuracy "
                  f"{r['accuracy']:.3f} (95 % CI {ci[0]:.3f}-{ci[1]:.3f}); chance 0.100", flush=True)


if __name__ == "__main__":
    main()
