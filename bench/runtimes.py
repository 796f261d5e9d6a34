"""``python -m bench runtimes``: the CPU base and its structured-50 % result in every deployment runtime,
timed in one interleaved run; writes the "Runtimes" block of docs/BENCHMARKS.md's CPU section.

Every (model, runtime) contender is timed in each round, in an order that reverses every other round
(ABBA over all of them), so drift of a shared machine hits all alike. Per runtime: batch-1 latency
and batch-64 throughput (medians over the rounds), the throughput's share of this CPU's measured
dense-matmul peak at the same thread count, and the pruned model's speed-up over the base in that
runtime (median of the per-round ratios) divided by its MAC reduction: the share of the MAC cut that
became speed. Target: ≥ 0.9 in the best runtime.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from engine import conditions, deploy, export, measure, presets
from engine.runner import run_spec
from engine.store import Store

from . import efficiency, report

TARGET = 0.9


def log(msg: str) -> None:
    print(f"[bench runtimes {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def contenders(models: dict[str, torch.nn.Module], shape: tuple[int, ...], folder: Path, threads: int,
               runtimes: list[str]) -> tuple[dict[tuple[str, str], Callable], dict[str, str]]:
    """Every model loaded in every runtime that runs here: {(model, runtime): predictor}, and why the
    others did not run."""
    out, missing = {}, {}
    for rt in runtimes:
        why = deploy.DEPLOYMENTS[rt].available("cpu")
        if why:
            missing[rt] = why
            continue
        for name, model in models.items():
            sub = folder / f"{name}-{rt}"
            sub.mkdir(parents=True, exist_ok=True)
            try:
                out[(name, rt)] = deploy.predictor_for(rt, model, shape, sub, threads)
            except Exception as e:   # a graph this runtime cannot take: said in the table
                missing[rt] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    for name, rt in [k for k in out if k[1] in missing]:
        del out[(name, rt)]
    return out, missing


@torch.no_grad()
def interleaved(fns: dict[Any, Callable], shape: tuple[int, ...], threads: int, rounds: int = 5, runs: int = 30,
                batch: int = 64, batch_runs: int = 5) -> dict[Any, dict[str, Any]]:
    """Per contender: per-round median latency (batch 1) and throughput (``batch``), timed in rounds
    that visit every contender, in reversed order every other round."""
    cpu = torch.device("cpu")
    keys = list(fns)
    x1, xb = torch.randn((1, *shape)), torch.randn((batch, *shape))
    out: dict[Any, dict[str, Any]] = {k: {"latency_rounds": [], "throughput_rounds": []} for k in keys}
    load: dict[str, Any] = {}
    with measure.cpu_threads(cpu, threads), conditions.probe(threads, load):
        for k in keys:   # warm-up: first calls allocate and plan
            measure.time_runs(lambda: fns[k](x1), 0, 3, cpu)
            measure.time_runs(lambda: fns[k](xb), 0, 1, cpu)
        for r in range(rounds):
            for k in keys if r % 2 == 0 else keys[::-1]:
                lat = measure.time_runs(lambda: fns[k](x1), max(2, runs // rounds), 0, cpu)
                tb = measure.time_runs(lambda: fns[k](xb), batch_runs, 0, cpu)
                out[k]["latency_rounds"].append(statistics.median(lat))
                out[k]["throughput_rounds"].append(batch / statistics.median(tb))
    for k in keys:
        out[k]["latency_ms"] = statistics.median(out[k]["latency_rounds"]) * 1e3
        out[k]["throughput"] = statistics.median(out[k]["throughput_rounds"])
    out["_load"] = load
    return out


def rows(timed: dict[Any, dict[str, Any]], macs: dict[str, int], peak_gflops: float, runtimes: list[str],
         missing: dict[str, str]) -> list[dict[str, Any]]:
    """The table's rows: one per runtime and model, the pruned one with its speed-up ÷ MAC reduction."""
    cut = macs["base"] / macs["pruned"]
    out = []
    for rt in runtimes:
        if rt in missing:
            out.append({"runtime": rt, "model": "both", "note": missing[rt]})
            continue
        for name in ("base", "pruned"):
            t = timed[(name, rt)]
            row = {"runtime": rt, "model": name, "latency_ms": t["latency_ms"], "throughput": t["throughput"],
                   "peak_share": t["throughput"] * 2 * macs[name] / 1e9 / peak_gflops}
            if name == "pruned":
                ratios = [b / p for b, p in zip(timed[("base", rt)]["latency_rounds"], t["latency_rounds"])]
                row["speedup"] = statistics.median(ratios)
                row["speedup_range"] = f"{min(ratios):.2f}-{max(ratios):.2f}"
                row["realised"] = row["speedup"] / cut
            out.append(row)
    return out


COLUMNS = [("runtime", "runtime"), ("model", "model"), ("latency_ms", "latency b=1 (ms)"),
           ("throughput", "img/s b=64"), ("peak_share", "share of matmul peak"), ("speedup", "x faster (same runtime)"),
           ("speedup_range", "rounds"), ("realised", "speed-up ÷ MAC cut"), ("note", "note")]


def section(res: dict[str, Any]) -> str:
    pruned = [r for r in res["rows"] if r.get("realised") is not None]
    best = min(pruned, key=lambda r: r["latency_ms"]) if pruned else None
    verdict = ("not measured: no runtime ran the pruned model" if best is None else
               f"**{best['realised']:.2f}** in {best['runtime']}, the pruned model's fastest runtime (target ≥ "
               f"{TARGET} — " + ("met" if best["realised"] >= TARGET else f"missed by {TARGET - best['realised']:.2f}")
               + ")")
    load = res["load"]
    return "\n".join([
        "### Runtimes",
        "",
        f"{res['about']}. Structured pruning: `prune_structured` ratio 0.5, {res['macs_cut']:.2f}x fewer MACs "
        f"({res['macs']['base']:,} → {res['macs']['pruned']:,}). Every model × runtime pair was timed in one "
        f"interleaved run ({res['rounds']} rounds, order reversed every other round) on {res['threads']} thread(s); "
        f"share of matmul peak: throughput × 2 × MACs ÷ the measured {res['peak_gflops']:.0f} GFLOP/s of a 2048² "
        f"fp32 matmul on the same threads. Load average while timed: {load.get('load_avg') or 0:.2f} on "
        f"{os.cpu_count()} CPUs, CPU share {load.get('cpu_share') or 0:.2f}"
        + (" — **timed under load: suspect**" if load.get("loaded") else "") + ".",
        "",
        report.table(res["rows"], COLUMNS),
        "",
        f"- Realised speed-up ÷ MAC reduction at batch 1 in the best runtime: {verdict}.",
        f"- Bench time: {res['seconds']:.0f} s.",
    ])


def run(base_run: str | None, epochs: int, limit: int | None, rounds: int, runs: int, threads: int,
        compile_too: bool, store: Store) -> dict[str, Any]:
    t0 = time.perf_counter()
    data = dict(presets.QUICK_DATA)
    if limit:
        data["limit"] = limit
    quiet = {"deploy": False, "paired_rounds": 0, "onnx": False, "latency_runs": 5}
    if base_run:
        base = store.get(base_run)["record"]
        about = f"Base: run {base_run} ({base['arch']} on {base['dataset']}, top-1 {base['accuracy']:.3f})"
        data = (base.get("spec") or {}).get("data") or data
    else:
        log(f"training the base ({epochs} epoch(s))")
        base = run_spec({"data": data, "model": {"arch": presets.QUICK_ARCH}, "method": {"name": "baseline"},
                         "train": {"epochs": epochs, "device": "cpu"}, "measure": quiet}, store)
        about = (f"Base: {presets.QUICK_ARCH} on {data['name']} at {data.get('image_size')} px, {epochs} epoch(s) "
                 f"(top-1 {base['accuracy']:.3f}; speed does not depend on how long it trained)")
    log("pruning 50 %")
    pruned = run_spec({"data": data, "model": {"from_run": base["run_id"]},
                       "method": {"name": "prune_structured", "params": {"ratio": 0.5, "finetune_epochs": 1}},
                       "train": {"device": "cpu"}, "measure": quiet}, store)
    models = {"base": export.load_model(store.run_dir(base["run_id"]) / "model.pt")[0],
              "pruned": export.load_model(store.run_dir(pruned["run_id"]) / "model.pt")[0]}
    shape = tuple(pruned["input_size"])
    macs = {k: measure.count_macs(m, shape)["macs"] for k, m in models.items()}
    names = [n for n, d in deploy.DEPLOYMENTS.items() if not d.in_child]
    with tempfile.TemporaryDirectory() as tmp:
        fns, missing = contenders(models, shape, Path(tmp), threads, names)
        if compile_too:
            names.append("compile")
            fns.update(compiled(models, shape, threads, missing))
        log(f"timing {len(fns)} contenders, {rounds} rounds")
        timed = interleaved(fns, shape, threads, rounds, runs)
    with measure.cpu_threads(torch.device("cpu"), threads):
        peak = efficiency.matmul_peak_gflops(torch.device("cpu"))
    return {"rows": rows(timed, macs, peak, names, missing), "macs": macs, "macs_cut": macs["base"] / macs["pruned"],
            "peak_gflops": peak, "rounds": rounds, "threads": threads, "load": timed["_load"], "about": about,
            "seconds": time.perf_counter() - t0}


def compiled(models: dict[str, torch.nn.Module], shape, threads: int, missing: dict[str, str]) -> dict:
    """``torch.compile`` with freezing, in this process (the bench is a one-off; runs compile in a child)."""
    import torch._inductor.config as inductor
    inductor.freezing = True
    out = {}
    torch.set_num_threads(threads)
    try:
        for name, m in models.items():
            c = torch.compile(m.eval())
            with torch.no_grad():
                c(torch.randn((1, *shape)))
                c(torch.randn((64, *shape)))
            out[(name, "compile")] = c
    except Exception as e:
        missing["compile"] = f"torch.compile failed: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}"
        return {}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench runtimes")
    p.add_argument("--base-run", default=None, help="a finished base run in $SLIMBENCH_HOME (default: train one)")
    p.add_argument("--epochs", type=int, default=2, help="epochs of the base trained when --base-run is not given")
    p.add_argument("--limit", type=int, default=None, help="cap on training images (tiny settings for tests)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--runs", type=int, default=60, help="timed batch-1 calls per contender over all rounds")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (1: fair on a shared machine)")
    p.add_argument("--compile", action="store_true", help="also torch.compile with freezing (minutes)")
    p.add_argument("--no-write", action="store_true", help="print the block instead of writing BENCHMARKS.md")
    a = p.parse_args(argv)
    for name, v, lo, hi in (("--epochs", a.epochs, 1, 1000), ("--rounds", a.rounds, 1, 1000),
                            ("--runs", a.runs, 1, 100000), ("--threads", a.threads, 1, 512)):
        if not lo <= v <= hi:
            print(f"error: {name}: must be between {lo} and {hi}, got {v}", file=sys.stderr)
            return 2
    home = os.environ.get("SLIMBENCH_HOME") if a.base_run else None
    store = Store(Path(home)) if home else Store(Path(tempfile.mkdtemp(prefix="slimbench-runtimes-")))
    if a.base_run and (store.get(a.base_run) or {}).get("state") != "done":
        print(f"error: --base-run: no finished run {a.base_run!r} in {store.root}", file=sys.stderr)
        return 2
    res = run(a.base_run, a.epochs, a.limit, a.rounds, a.runs, a.threads, a.compile, store)
    body = section(res)
    if a.no_write:
        print(body)
    else:
        log(f"wrote {report.write_block('cpu', 'runtimes', body, 'python -m bench ' + ' '.join(argv or sys.argv[1:]))}")
    return 0
