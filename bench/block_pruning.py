"""Block (layer) pruning against its base: accuracy paired on the same test images, speed in one interleaved run.

``python -m bench.block_pruning --base BASE.pt --run LABEL=RUN_DIR_OR_CHECKPOINT ...`` (data: the Quick tour's,
``engine.presets.QUICK_DATA``). For each FP32 model, its test top-1 minus the base's on the same images with the
paired 95 % interval (Bonett & Price; McNemar's p), as ``bench.quick_tour.kd_vs_plain`` pairs two students (and
``--pair A:B`` any two FP32 models, e.g. a block-pruned net against its from-scratch control); an
INT8 model (an ONNX Runtime bundle) is paired by its own job, so its record's interval is reported. Then the base
and every model in every CPU runtime here, at batch 1, in one interleaved run (``bench.autocompress_retime``):
its fastest runtime and x faster than the base's fastest. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from engine import data as data_mod, export, measure, presets, stats, training
from engine.methods import search_latency
from engine.spec import DataSpec

from . import autocompress_retime


def checkpoint_of(where: str) -> Path:
    p = Path(where)
    return p / "model.pt" if p.is_dir() else p


def paired(base: torch.Tensor, other: torch.Tensor) -> dict[str, Any]:
    """``base``/``other``: per-image correctness on the same test images."""
    n = len(base)
    flips = stats.paired_difference(int((other & ~base).sum()), int((~other & base).sum()), n)
    return {"accuracy": int(other.sum()) / n, "delta": (int(other.sum()) - int(base.sum())) / n,
            "ci95": flips["ci95"], "p": flips["p"], "n": n}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.block_pruning")
    p.add_argument("--base", required=True, help="the starting checkpoint bundle")
    p.add_argument("--run", action="append", default=[], help="LABEL=run folder or checkpoint (repeatable)")
    p.add_argument("--pair", action="append", default=[], help="A:B, two FP32 labels: A minus B, paired (e.g. a "
                   "block-pruned model against its from-scratch control)")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--runs", type=int, default=40, help="timed calls per contender and round")
    args = p.parse_args(argv)
    runs = dict(r.split("=", 1) for r in args.run)
    checkpoints = {"base": str(checkpoint_of(args.base)), **{k: str(checkpoint_of(v)) for k, v in runs.items()}}
    data = data_mod.load(DataSpec(**presets.QUICK_DATA))
    cpu = torch.device("cpu")
    right: dict[str, torch.Tensor] = {}
    out: dict[str, Any] = {"accuracy": {}, "structure": {}}
    for label, path in checkpoints.items():
        if autocompress_retime.is_int8(path):
            rec = export.read_bundle(path).get("metrics") or {}
            out["accuracy"][label] = {"accuracy": rec.get("accuracy"), "note": "INT8: its own job's paired interval "
                                      "against its start is in its record (delta_accuracy_ci95)"}
            continue
        model, _ = export.load_model(path)
        logits, ys = training.predict(model.eval(), data.loader("test", cpu), cpu)
        right[label] = logits.argmax(1) == ys
        out["structure"][label] = {"macs": measure.count_macs(model, data.input_shape)["macs"],
                                   "params": measure.count_params(model), "bytes": Path(path).stat().st_size}
        out["accuracy"][label] = paired(right["base"], right[label]) if label != "base" else {
            "accuracy": float(right[label].float().mean())}
    out["pairs"] = {pair: paired(right[pair.split(":")[1]], right[pair.split(":")[0]]) for pair in args.pair}
    n = search_latency.AGREEMENT_IMAGES
    images = next(iter(data.loader("test", "cpu", limit=n, batch_size=n)))[0]
    out["retimed"] = autocompress_retime.retime(checkpoints, "base", tuple(data.input_shape), images,
                                                measure.timing_threads(presets.QUICK_MEASURE.get("threads")),
                                                rounds=args.rounds, runs=args.runs)
    print(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
