"""``python -m bench runtimes``: a compute-bound CPU base, its structured-50 % result, and both as INT8 (the
``format: auto`` that ``quantize_int8`` picks on this CPU), in every deployment runtime, timed in one
interleaved run; writes the "Runtimes" block of docs/BENCHMARKS.md's CPU section.

The base is a literature net at 32 px: CIFAR ResNet-18 (small-input stem, 556 MMACs) by default. A net of
10 MMACs (the Quick tour's ResNet-20 at 16 px) spends most of a batch-1 call on per-call overhead, which
no MAC cut removes (0.46 of its MAC cut became speed); the issue's 0.96 was measured on ResNet-18 at 32 px.
Speed does not depend on how well a net is trained, so the base trains briefly; INT8 agreement is measured
on the test images all the same.

Every (model, runtime) contender is timed in each round, in an order that reverses every other round
(ABBA over all of them), so drift of a shared machine hits all alike. Per runtime: batch-1 latency
and batch-64 throughput (medians over the rounds), the throughput's share of this CPU's measured
dense-matmul peak at the same thread count, the pruned model's speed-up over the base in that runtime
(median of the per-round ratios) divided by its MAC reduction (target ≥ 0.9 in the best runtime), and
each INT8 model's speed-up over its own FP32 model in that runtime (target ≥ 2.0x) with its top-1
agreement with that FP32 model on the test images (target ≥ 97 %).
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

from engine import conditions, deploy, export, measure, settings
from engine.accuracy_text import target_mark, target_value
from engine import data as data_mod
from engine.methods import int8_formats
from engine.runner import run_spec
from engine.spec import DataSpec
from engine.store import Store

from . import efficiency, report

TARGET = 0.9                  # realised speed-up ÷ MAC cut, pruned FP32, best batch-1 runtime
INT8_SPEEDUP_TARGET = 2.0     # INT8 ÷ its own FP32, same runtime, batch 1
AGREEMENT_TARGET = 0.97       # INT8 top-1 equal to its FP32 model's
FP32 = ("base", "pruned")
INT8 = {"int8": "base", "pruned_int8": "pruned"}      # INT8 model -> the FP32 model it was made from
INT8_RUNTIMES = int8_formats.INT8_RUNTIMES           # the runtimes an INT8 ONNX file runs in
SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
WHY = {"resnet18": "Why this net: CIFAR ResNet-18 at 32 px (556 MMACs) is compute-bound on a CPU, as deployed "
                   "nets are, and is the net the issue measured 0.96 on by hand; the Quick tour's ResNet-20 at 16 px "
                   "(10 MMACs) spends a batch-1 call mostly on per-call overhead, which no MAC cut removes (it "
                   "realised 0.46 of its MAC cut). CIFAR ResNet-56 (126 MMACs) trains about 3x faster per image, but its "
                   "56 layers of 16-64 channels are less compute-bound at batch 1 (`--arch resnet56` to see it)",
       "resnet56": "Why this net: CIFAR ResNet-56 at 32 px (126 MMACs), the DepGraph paper's CIFAR pruning net; "
                   "cheaper to train than ResNet-18 (556 MMACs, the default), but its 16-64-channel layers are "
                   "less compute-bound"}
LABELS = {"base": "base", "pruned": "structured 50 %", "int8": "INT8 (auto)", "pruned_int8": "structured 50 % → INT8"}


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


def int8_contenders(onnx: dict[str, bytes], threads: int, missing: dict[str, str]) -> dict[tuple[str, str], Callable]:
    """Each INT8 ONNX file in each runtime that runs INT8 ONNX here ({(model, runtime): predictor});
    a runtime that cannot take one is noted in ``missing`` under "<runtime>/<model>"."""
    out: dict[tuple[str, str], Callable] = {}
    for rt in INT8_RUNTIMES:
        if rt in missing:
            continue
        for name, raw in onnx.items():
            try:
                out[(name, rt)] = int8_formats.runner_in(rt, raw, threads)
            except Exception as e:   # said in the table, the others still timed
                missing[f"{rt}/{name}"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    return out


@torch.no_grad()
def agreement(fns: dict[tuple[str, str], Callable], models: dict[str, torch.nn.Module], data) -> dict:
    """Per INT8 contender: the share of test images whose top-1 equals its FP32 PyTorch model's."""
    same = {k: 0 for k in fns if k[0] in INT8}
    total = 0
    for x, _ in data.loader("test", "cpu", train=False):
        ref = {name: models[name](x).argmax(1) for name in FP32}
        for k in same:
            same[k] += int((fns[k](x).argmax(1) == ref[INT8[k[0]]]).sum())
        total += len(x)
    return {k: {"agreement": v / total, "images": total} for k, v in same.items()}


def _ratios(timed: dict, ref: tuple[str, str], k: tuple[str, str]) -> list[float]:
    return [b / p for b, p in zip(timed[ref]["latency_rounds"], timed[k]["latency_rounds"])]


def rows(timed: dict[Any, dict[str, Any]], macs: dict[str, int], peak_gflops: float, runtimes: list[str],
         missing: dict[str, str], agree: dict | None = None) -> list[dict[str, Any]]:
    """The table's rows: one per runtime and model. The pruned model: x faster than the base in the same
    runtime and that ÷ its MAC reduction; an INT8 model: x faster than its own FP32 model in the same
    runtime, and its top-1 agreement with it."""
    cut = macs["base"] / macs["pruned"]
    agree = agree or {}
    out = []
    for rt in runtimes:
        if rt in missing:
            out.append({"runtime": rt, "model": "all", "note": missing[rt]})
            continue
        for name in (*FP32, *INT8):
            k = (name, rt)
            if name in INT8 and k not in timed:
                if rt not in INT8_RUNTIMES and name == "int8":   # said once for both INT8 models
                    out.append({"runtime": rt, "model": "INT8 (both)",
                                "note": f"INT8 ONNX runs in ONNX Runtime and OpenVINO, not in {rt}"})
                elif f"{rt}/{name}" in missing:
                    out.append({"runtime": rt, "model": LABELS[name], "note": missing[f"{rt}/{name}"]})
                continue
            if k not in timed:
                continue
            t = timed[k]
            row = {"runtime": rt, "model": LABELS[name], "key": name, "latency_ms": t["latency_ms"],
                   "throughput": t["throughput"], "peak_share": t["throughput"] * 2 * macs[name] / 1e9 / peak_gflops}
            ref = ("base", rt) if name == "pruned" else (INT8[name], rt) if name in INT8 else None
            if ref is not None and ref in timed:
                ratios = _ratios(timed, ref, k)
                row["speedup"] = statistics.median(ratios)
                row["speedup_range"] = f"{min(ratios):.2f}-{max(ratios):.2f}"
                row["speedup_vs"] = LABELS[ref[0]]
                if name == "pruned":
                    row["realised"] = row["speedup"] / cut
            if k in agree:
                row["agreement"] = agree[k]["agreement"]
            out.append(row)
    return out


COLUMNS = [("runtime", "runtime"), ("model", "model"), ("latency_ms", "latency b=1 (ms)"),
           ("throughput", "img/s b=64"), ("peak_share", "share of matmul peak"),
           ("speedup", "x faster (same runtime)"), ("speedup_vs", "than"), ("speedup_range", "rounds"),
           ("realised", "speed-up ÷ MAC cut"), ("agreement", "INT8 agrees with its FP32"), ("note", "note")]


def verdicts(res: dict[str, Any]) -> list[str]:
    """The three targets, each met or missed by how much: the pruned model's realised share of its MAC cut in
    its fastest batch-1 runtime; each INT8 model's speed-up and agreement in its format's own runtime."""
    table = res["rows"]
    pruned = [r for r in table if r.get("realised") is not None]
    best = min(pruned, key=lambda r: r["latency_ms"]) if pruned else None
    lines = ["- Realised speed-up ÷ MAC reduction at batch 1, structured 50 %, in its fastest runtime: " + (
        f"**{target_value(best['realised'], TARGET)}** in {best['runtime']} ({best['speedup']:.2f}x at "
        f"{res['macs_cut']:.2f}x fewer MACs; target ≥ {TARGET} — {target_mark(best['realised'], TARGET)})" if best else
        "not measured: no runtime ran the pruned model")]
    for key in INT8:
        fmt = res["int8_format"] if key == "int8" else res.get("pruned_int8_format") or res["int8_format"]
        home = "openvino" if fmt == "openvino" else "onnxruntime"
        r = next((r for r in table if r.get("key") == key and r["runtime"] == home), None)
        if r is None or "speedup" not in r or "agreement" not in r:
            lines.append(f"- {LABELS[key]}: not measured in {home or 'any runtime'} (see its row's note)")
            continue
        kept = res.get(f"{key}_fp32_layers") or []
        lines.append(f"- {LABELS[key]} (format `{fmt}`, in {home}, the runtime that format ships in"
                     + (f", {len(kept)} layer(s) kept FP32 besides the first and last: {_layers(kept)}" if kept else "")
                     + "): "
                     f"**{target_value(r['speedup'], INT8_SPEEDUP_TARGET)}x** its own FP32 at batch 1 (target ≥ "
                     f"{INT8_SPEEDUP_TARGET:.1f}x — {target_mark(r.get('speedup'), INT8_SPEEDUP_TARGET, unit='x')}); "
                     f"top-1 agreement with its FP32 model "
                     f"**{target_value(100 * r['agreement'], 100 * AGREEMENT_TARGET, 1)} %** on "
                     f"{res['agreement_images']:,} test images (target ≥ {AGREEMENT_TARGET:.0%} — "
                     f"{target_mark(100 * r['agreement'], 100 * AGREEMENT_TARGET, 1, ' pt')})")
    return lines


def _module(node: str) -> str:
    """An exported ONNX node's name as its PyTorch module's: ``/layer4/layer4.0/downsample/downsample.0/Conv``
    -> ``layer4.0.downsample.0`` (each scope repeats its parent's last name for a Sequential's child)."""
    scopes = node.strip("/").split("/")[:-1]
    if not scopes:
        return node
    path: list[str] = []
    for scope in scopes:
        if path and scope.startswith(path[-1] + "."):
            path[-1] = scope
        else:
            path.append(scope)
    return ".".join(path)


def _layers(names: list[str]) -> str:
    return ", ".join(f"`{_module(n)}`" for n in names)


def _fp32_kept(res: dict[str, Any], key: str) -> str:
    kept = res.get(f"{key}_fp32_layers") or []
    if not kept:
        return ""
    share = res.get(f"{key}_fp32_mac_share")
    met = res.get(f"{key}_floor_met", True)
    return (f" with {len(kept)} layer(s) kept FP32 " + ("to reach" if met else "trying for, and **not reaching**,")
            + " the 97 % agreement floor at 95 % confidence on the validation split"
            + (f" ({share:.0%} of its MACs)" if share is not None else "") + f": {_layers(kept)}")


def section(res: dict[str, Any]) -> str:
    load = res["load"]
    return "\n".join([
        "### Runtimes",
        "",
        f"{res['about']}. Structured pruning: `prune_structured` ratio 0.5, {res['macs_cut']:.2f}x fewer MACs "
        f"({res['macs']['base']:,} → {res['macs']['pruned']:,}). INT8: `quantize_int8` with `format: auto`, which chose "
        f"`{res['int8_format']}` on this CPU ({res['int8_level']}) for the base ({res.get('int8_reason') or 'no reason recorded'}), "
        f"and `{res.get('pruned_int8_format') or res['int8_format']}` for the pruned model"
        f"{_fp32_kept(res, 'pruned_int8')} ({res.get('pruned_int8_reason') or 'no reason recorded'}). Every model × "
        f"runtime pair was timed in one interleaved run ({res['rounds']} rounds, order reversed every other round) on "
        f"{res['threads']} thread(s); x faster: median of the per-round ratios against the model named, in the same "
        f"runtime. Share of matmul peak: throughput × 2 × MACs ÷ the measured {res['peak_gflops']:.0f} GFLOP/s of a "
        f"2048² fp32 matmul on the same threads (INT8 rows too: their MACs against the FP32 peak). Load average while "
        f"timed: {load.get('load_avg') or 0:.2f} on {os.cpu_count()} CPUs, CPU share {load.get('cpu_share') or 0:.2f}, "
        f"other processes {load.get('others_cpu') or 0:.2f} cores"
        + (" — **timed under load: suspect**" if load.get("loaded") else "") + ".",
        "",
        report.table(res["rows"], COLUMNS),
        "",
        *verdicts(res),
        f"- Bench time: {res['seconds']:.0f} s.",
    ])


def dataset(size: int, limit: int, test_images: int) -> tuple[dict[str, Any], str]:
    """CIFAR-10 at 32 px: the small zip (5,000 + 2,000 images, decoded in seconds) when the limits fit in it,
    else the full one; Fashion-MNIST resized to 32 px where neither is here, said in the section."""
    small = [settings.cifar10_small(), SHARED / "cifar10-small.zip"] if limit <= 5000 and test_images <= 2000 else []
    for path in (*small, settings.cifar10(), SHARED / "cifar10.zip", settings.cifar10_small(),
                 SHARED / "cifar10-small.zip"):
        if path and Path(path).is_file():
            return ({"name": "cifar10", "path": str(path), "limit": limit, "val_limit": 500,
                     "test_limit": test_images}, f"CIFAR-10 ({Path(path).name}) at 32 px")
    return ({"name": "fashion-mnist", "image_size": size, "limit": limit, "val_limit": 500,
             "test_limit": test_images},
            "Fashion-MNIST resized to 32 px (**CIFAR-10 was not found**: set SLIMBENCH_CIFAR10 for the intended base)")


QUIET = {"deploy": False, "paired_rounds": 0, "onnx": False, "latency_runs": 5}


def run(base_run: str | None, arch: str, epochs: int, limit: int, test_images: int, rounds: int, runs: int,
        batch_runs: int, threads: int, compile_too: bool, store: Store) -> dict[str, Any]:
    t0 = time.perf_counter()
    data, where = dataset(32, limit, test_images)
    if base_run:
        base = store.get(base_run)["record"]
        about = f"Base: run {base_run} ({base['arch']} on {base['dataset']}, top-1 {base['accuracy']:.3f})"
        data = {**((base.get("spec") or {}).get("data") or data), "test_limit": test_images}
    else:
        log(f"training the {arch} base ({epochs} epoch(s) on {limit:,} images of {where})")
        base = run_spec({"data": data, "model": {"arch": arch}, "method": {"name": "baseline"},
                         "train": {"epochs": epochs, "device": "cpu"}, "measure": QUIET}, store)
        about = (f"Base: {arch} on {where}, {epochs} epoch(s) on {limit:,} training images (top-1 "
                 f"{base['accuracy']:.3f}; speed does not depend on how long it trained, and a briefly trained net's "
                 f"narrow top-1 margins make INT8 agreement harder to keep, not easier). {WHY.get(arch, '')}")

    def job(start: str, method: str, params: dict) -> dict:
        return run_spec({"data": data, "model": {"from_run": start}, "method": {"name": method, "params": params},
                         "train": {"device": "cpu"}, "measure": QUIET}, store)
    log("pruning 50 %")
    pruned = job(base["run_id"], "prune_structured", {"ratio": 0.5, "finetune_epochs": 1})
    log("INT8 (format auto) of the base and of the pruned model")
    int8 = {"int8": job(base["run_id"], "quantize_int8", {"format": "auto"}),
            "pruned_int8": job(pruned["run_id"], "quantize_int8", {"format": "auto"})}
    models = {"base": export.load_model(store.run_dir(base["run_id"]) / "model.pt")[0].eval(),
              "pruned": export.load_model(store.run_dir(pruned["run_id"]) / "model.pt")[0].eval()}
    shape = tuple(pruned["input_size"])
    macs = {k: measure.count_macs(m, shape)["macs"] for k, m in models.items()}
    macs.update({k: macs[src] for k, src in INT8.items()})
    fmt = int8["int8"]["int8_format"]
    names = [n for n, d in deploy.DEPLOYMENTS.items() if not d.in_child]
    with tempfile.TemporaryDirectory() as tmp:
        fns, missing = contenders(models, shape, Path(tmp), threads, names)
        fns.update(int8_contenders({k: Path(r["onnx"]).read_bytes() for k, r in int8.items()}, threads, missing))
        if compile_too:
            names.append("compile")
            fns.update(compiled(models, shape, threads, missing))
        test = data_mod.load(DataSpec(**data))
        log(f"INT8 agreement with FP32 on {test_images} test images")
        with measure.cpu_threads(torch.device("cpu"), threads):
            agree = agreement(fns, models, test)
        log(f"timing {len(fns)} contenders, {rounds} rounds")
        timed = interleaved(fns, shape, threads, rounds, runs, batch_runs=batch_runs)
    with measure.cpu_threads(torch.device("cpu"), threads):
        peak = efficiency.matmul_peak_gflops(torch.device("cpu"))
    return {"rows": rows(timed, macs, peak, names, missing, agree), "macs": macs,
            "macs_cut": macs["base"] / macs["pruned"], "peak_gflops": peak, "rounds": rounds, "threads": threads,
            "load": timed["_load"], "about": about, "int8_format": fmt, "int8_level": int8["int8"].get("int8_cpu"),
            "int8_reason": int8["int8"].get("int8_format_reason"),
            "pruned_int8_format": int8["pruned_int8"].get("int8_format"),
            "pruned_int8_reason": int8["pruned_int8"].get("int8_format_reason"),
            **{f"{k}_fp32_layers": r.get("int8_fp32_layers") or [] for k, r in int8.items()},
            **{f"{k}_fp32_mac_share": ((r.get("quantization") or {}).get("auto") or {}).get("fp32_mac_share")
               for k, r in int8.items()},
            **{f"{k}_floor_met": ((r.get("quantization") or {}).get("auto") or {}).get("met", True)
               for k, r in int8.items()},
            "int8_runtime": "openvino" if fmt == "openvino" else "onnxruntime",
            "agreement_images": next(iter(agree.values()))["images"] if agree else 0,
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
    p.add_argument("--arch", default="resnet18", choices=["resnet18", "resnet56"],
                   help="the base trained when --base-run is not given (32 px; resnet18: 556 MMACs, resnet56: 126)")
    p.add_argument("--epochs", type=int, default=1, help="epochs of the base trained when --base-run is not given")
    p.add_argument("--limit", type=int, default=4000, help="training images (the base, the pruned fine-tune)")
    p.add_argument("--test-images", type=int, default=1000, help="test images INT8 agreement is measured on")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--runs", type=int, default=60, help="timed batch-1 calls per contender over all rounds")
    p.add_argument("--batch-runs", type=int, default=2, help="timed batch-64 calls per contender per round")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (1: fair on a shared machine)")
    p.add_argument("--no-compile", action="store_true",
                   help="leave out torch.compile (with freezing it compiles each model twice, ~30 s each for ResNet-18)")
    p.add_argument("--no-write", action="store_true", help="print the block instead of writing BENCHMARKS.md")
    a = p.parse_args(argv)
    bad = report.out_of_range((("--epochs", a.epochs, 1, 1000), ("--rounds", a.rounds, 1, 1000),
                               ("--runs", a.runs, 1, 100000), ("--batch-runs", a.batch_runs, 1, 1000),
                               ("--threads", a.threads, 1, 512), ("--limit", a.limit, 64, 10_000_000),
                               ("--test-images", a.test_images, 10, 10_000_000)))
    if bad:
        print(f"error: {bad}", file=sys.stderr)
        return 2
    home = os.environ.get("SLIMBENCH_HOME") if a.base_run else None
    store = Store(Path(home)) if home else Store(Path(tempfile.mkdtemp(prefix="slimbench-runtimes-")))
    if a.base_run and (store.get(a.base_run) or {}).get("state") != "done":
        print(f"error: --base-run: no finished run {a.base_run!r} in {store.root}", file=sys.stderr)
        return 2
    res = run(a.base_run, a.arch, a.epochs, a.limit, a.test_images, a.rounds, a.runs, a.batch_runs, a.threads,
              not a.no_compile, store)
    body = section(res)
    if a.no_write:
        print(body)
    else:
        log(f"wrote {report.write_block('cpu', 'runtimes', body, 'python -m bench ' + ' '.join(argv or sys.argv[1:]))}")
    return 0
