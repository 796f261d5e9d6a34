"""``python -m bench rewind-ab --workspace W --base RUN``: the evidence behind the recovery fine-tune's
default learning rate (issue 19, ``engine.recovery_lr.DEFAULT_POLICY``). Each case runs twice
from the same finished base, with everything equal but ``finetune_lr``: the base's own recorded training
rate (learning-rate rewinding, Renda et al. 2020; Le & Hua 2021) against a tenth of it (the former
default). Every run is scored on the base's test images (all 10,000 for the Quick tour's base), and
Δ vs base is paired over them.

Cases: the recipes-cpu rows ``unstructured`` (90 % gradual) and ``sfp`` (30 %, its soft phase at the
same rate), exactly as ``bench recipes-cpu`` builds them, so its ``--resume`` reuses the rewinding
arm; and ``trial``, auto-compress's typical structured trial (keep 35 % of the MACs, one fine-tune epoch,
then INT8). Accuracy only: nothing here is timed.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from engine import data as data_mod
from engine import export, layout, recovery_lr, stats
from engine.spec import DataSpec
from engine.store import Store

from . import recipes_cpu

CASES = ("unstructured", "sfp", "trial")
TRIAL_MACS_KEPT = 0.35     # a typical prune_int8 draw of the auto-compress search (engine/methods/search_space.py)


def case_params(key: str, epochs: int, lr: float, data_limit: int | None) -> tuple[str, str, dict]:
    """(label, method, params) of ``key`` fine-tuning at ``lr``."""
    if key == "trial":
        step = {"name": "prune_structured", "params": {"target_macs": TRIAL_MACS_KEPT, "finetune_epochs": 1,
                                                       "finetune_lr": lr}}
        return (f"structured keeping {TRIAL_MACS_KEPT:.0%} of MACs, 1 fine-tune epoch -> INT8", "pipeline",
                {"steps": [step, {"name": "quantize_int8", "params": {}}]})
    r = next(r for r in recipes_cpu.recipes(epochs, 1, data_limit, lr) if r.key == key)
    return r.label, r.method, {**r.params, "finetune_lr": lr}


def right_answers(store: Store, row: dict, data) -> torch.Tensor:
    """Which test images run ``row``'s saved model gets right (any bundle kind: INT8 runs in ONNX Runtime)."""
    predict, _ = export.load_predictor(store.run_dir(row["id"]) / layout.CHECKPOINT, threads=1)
    right = []
    with torch.no_grad():
        for x, y in data.loader("test", torch.device("cpu")):
            right.append(predict(x).argmax(1) == y)
    return torch.cat(right)


def rewound_minus_tenth(store: Store, rewound: dict, tenth: dict) -> dict:
    """Rewound minus tenth top-1, paired over the same test images (each run scored itself only against
    the base)."""
    data = data_mod.load(DataSpec(**rewound["spec"]["data"]))
    a, b = right_answers(store, rewound, data), right_answers(store, tenth, data)
    for row, r in ((rewound, a), (tenth, b)):   # re-scored as the job scored itself, or the pairing is off
        if abs(float(r.float().mean()) - row["record"]["accuracy"]) > 1e-4:
            raise RuntimeError(f"run {row['id']} re-scored {float(r.float().mean()):.4f}, its record says "
                               f"{row['record']['accuracy']:.4f}")
    paired = stats.paired_difference(int((a & ~b).sum()), int((~a & b).sum()), len(a))
    return {"delta": float(a.float().mean() - b.float().mean()), "ci95": paired["ci95"], "p": paired["p"]}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench rewind-ab", description=__doc__.split("\n\n")[0])
    p.add_argument("--workspace", required=True, help="store holding the base (runs are added to it)")
    p.add_argument("--base", required=True, help="id of the finished base run")
    p.add_argument("--epochs", type=int, default=3, help="the recipes-cpu rows' epochs (default 3)")
    p.add_argument("--only", default=",".join(CASES), help="comma list of: " + ",".join(CASES))
    a = p.parse_args(argv)
    os.environ["SLIMBENCH_HOME"] = a.workspace
    store = Store(Path(a.workspace))
    base_row = store.get(a.base)
    if base_row is None or base_row["state"] != "done":
        raise SystemExit(f"--base {a.base}: no finished run of that id in {a.workspace}")
    base = base_row["record"]
    rewind = recovery_lr.recorded_training_lr(base)
    if rewind is None:
        raise SystemExit(f"--base {a.base}: its record names no training learning rate to rewind to")
    data = dict(base_row["spec"]["data"])
    arms = (("rewind", rewind), ("tenth", rewind / 10))
    print(f"base {a.base}: top-1 {base['accuracy']:.4f}, training lr {rewind:g}")
    print("| case | arm | finetune_lr | run | top-1 | Δ vs base (pt) | Δ 95% CI (pt) | x fewer MACs | "
          "rewind − tenth (pt, 95% CI, p) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for key in filter(None, a.only.split(",")):
        if key not in CASES:
            raise SystemExit(f"--only: unknown case {key!r} (one of {', '.join(CASES)})")
        done = {}
        for arm, lr in arms:
            label, method, params = case_params(key, a.epochs, lr, data.get("limit"))
            job = recipes_cpu.spec(f"rewind-ab: {label} at lr {lr:g} ({arm})", data, {"from_run": a.base},
                                   method, params)
            t = time.perf_counter()
            rec, done[arm], note = recipes_cpu.run_job(job, store, resume=True)
            print(f"[rewind-ab] {key}/{arm}: {note or f'{time.perf_counter() - t:.0f} s'}", file=sys.stderr, flush=True)
        d = rewound_minus_tenth(store, done["rewind"], done["tenth"])
        for arm, lr in arms:
            rec = done[arm]["record"]
            ci = rec.get("delta_accuracy_ci95")
            vs = (f"{100 * d['delta']:+.2f} ({recipes_cpu.ci_text(d['ci95'])}, p {d['p']:.1g})" if arm == "rewind"
                  else "")
            print(f"| {key} | {arm} | {lr:g} | {done[arm]['id']} | {rec['accuracy']:.4f} | "
                  f"{100 * (rec['accuracy'] - base['accuracy']):+.2f} | {recipes_cpu.ci_text(ci)} | "
                  f"{base['macs'] / rec['macs']:.2f} | {vs} |", flush=True)
    return 0

