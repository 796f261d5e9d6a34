"""SYNTHETIC finished runs for render-time tests and benchmarks only: made-up metrics, never results.

Each is named "synthetic #i" and its record carries ``"synthetic": true`` so nobody mistakes it for one.
"""
from __future__ import annotations

import random
import time

from engine.store import Store


def insert_synthetic_runs(store: Store, n: int, seed: int = 0) -> list[str]:
    """``n`` done runs of a made-up compression study: the first is the base, every other one its child."""
    rnd = random.Random(seed)
    ids = []
    base_id = first_accuracy = None
    now = time.time()
    for i in range(n):
        run_id = f"synthetic-{seed}-{i:05d}"
        size = rnd.uniform(0.5e6, 45e6)
        rec = {"run_id": run_id, "name": f"synthetic #{i}", "synthetic": True,
               "method": "baseline" if i == 0 else rnd.choice(["prune_structured", "lowrank_svd", "quantize_int8"]),
               "method_params": {}, "arch": "resnet18", "dataset": "digits", "parent": base_id,
               "accuracy": rnd.uniform(0.5, 0.99), "top5": 1.0, "roc_auc": 0.99, "params": int(size / 4),
               "size_bytes": int(size), "macs": int(size * 12), "flops": int(size * 24),
               "sparsity": rnd.random(), "latency_ms": rnd.uniform(0.5, 20), "throughput": rnd.uniform(100, 5000),
               "per_class_accuracy": [rnd.random() for _ in range(10)],
               "confusion": [[rnd.randint(0, 50) for _ in range(10)] for _ in range(10)],
               "history": [{"epoch": e, "loss": 1 / (e + 1), "val_acc": 0.5 + e / 10} for e in range(3)],
               "finished": now - i}
        if base_id:   # as if each job had scored its start (the first run) on the same images
            d = rec["accuracy"] - first_accuracy
            rec.update(start_accuracy=first_accuracy, agreement=rnd.uniform(0.85, 1.0),
                       delta_accuracy_ci95=[d - 0.02, d + 0.02], mcnemar_p=rnd.random())
        first_accuracy = first_accuracy or rec["accuracy"]
        spec = {"name": rec["name"], "data": {"name": "digits"}, "model": {"arch": "resnet18"},
                "method": {"name": rec["method"], "params": {}}}
        store.create(spec, state="done", run_id=run_id, parent=base_id, created=now - i)
        store.update(run_id, record=rec, finished=now - i)
        ids.append(run_id)
        base_id = base_id or run_id
    return ids
