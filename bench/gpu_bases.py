"""``python -m bench gpu-bases``: the "CIFAR-10, literature setting" preset's bases, trained and measured
one after another in this process, written as the ``### Literature bases`` block of the GPU section."""
from __future__ import annotations

import time
from typing import Any, Callable

from engine import data as data_mod
from engine import presets, runner
from engine.accuracy_text import target_mark
from engine.spec import DataSpec
from engine.store import Store
from engine.validation import check_spec

BUDGET_S = 540  # one device call: a session's 15 GPU minutes include the machine's start


def run(plan: list[dict[str, Any]], store: Store, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train and measure each base of ``plan``; a row per base with its target and training speed."""
    t0 = time.perf_counter()
    train_images = len(data_mod.load(DataSpec(**plan[0]["data"])).train.y)  # same data for every base
    rows = []
    for spec in plan:
        t = time.perf_counter()
        rec = runner.run_spec(check_spec(spec), store)
        arch, epochs = spec["model"]["arch"], spec["train"]["epochs"]
        target = presets.LITERATURE_TARGETS.get(arch)
        secs = rec.get("train_seconds") or float("nan")
        rows.append({"arch": arch, "epochs": epochs, "accuracy": rec["accuracy"], "target": target,
                     "met": None if target is None else rec["accuracy"] >= target, "train_s": secs,
                     "train_ips": epochs * train_images / secs if secs == secs and secs > 0 else None,
                     "wall_s": time.perf_counter() - t, "device": rec.get("device"), "run_id": rec["run_id"],
                     "gpu": rec.get("gpu_name")})
        log(f"{arch}: {rec['accuracy']:.4f} after {epochs} epochs, trained in {secs:.0f} s")
    return {"rows": rows, "train_images": train_images, "wall_s": time.perf_counter() - t0}


def section(res: dict[str, Any], data: dict[str, Any]) -> str:
    """The ``### Literature bases`` block: accuracy beside each target, training time and speed."""
    lines = ["### Literature bases", "",
             f"The \"CIFAR-10, literature setting\" preset (`engine.presets.cifar10_literature`): each base trained "
             f"with the engine's default recipe on {res['train_images']:,} training images "
             f"(batch {data.get('batch_size', 64)}), then measured as every run is (test accuracy, ONNX export, "
             "latency). \"train img/s\" = epochs × training images ÷ the job's training time.", "",
             "| base | epochs | top-1 | target | verdict | train (s) | train img/s | job wall (s) | trained on |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        verdict = "–" if r["met"] is None else target_mark(100 * r["accuracy"], 100 * r["target"], unit=" pt")
        target = f"{100 * r['target']:.1f} %" if r["target"] is not None else "–"
        ips = f"{r['train_ips']:,.0f}" if r["train_ips"] else "–"
        lines.append(f"| {r['arch']} | {r['epochs']} | {100 * r['accuracy']:.2f} % | {target} | {verdict} | "
                     f"{r['train_s']:.0f} | {ips} | {r['wall_s']:.0f} | {r['gpu'] or r['device'] or '–'} |")
    verdict = "met" if res["wall_s"] <= BUDGET_S else f"missed by {res['wall_s'] - BUDGET_S:.0f} s"
    lines += ["", f"_All bases, data load and measurement: {res['wall_s']:.0f} s (one device call's budget "
                  f"{BUDGET_S} s — {verdict})._"]
    return "\n".join(lines)
