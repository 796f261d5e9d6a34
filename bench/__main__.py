"""``python -m bench cpu|gpu``: regenerate that machine's section of docs/BENCHMARKS.md from scratch.
``python -m bench gpu-bases``: train the literature's CIFAR-10 bases and write their block of the GPU section.
``python -m bench runtimes``: a CIFAR ResNet-18 base, its structured-50 % result and both as INT8 in every runtime
(bench/runtimes.py).
``python -m bench int8``: the "INT8 formats" block of the CPU section (bench.int8_formats).
``python -m bench autocompress [--minutes 20]``: the auto-compress block of the CPU section (bench/autocompress.py).
``python -m bench autocompress --gpu``: the auto-compress block of the GPU section (bench/autocompress_gpu.py).
``python -m bench recipes-cpu``: every method's recipe with its control on the CPU base (bench/recipes_cpu.py).
``python -m bench literature --part resnet56|resnet18|resnet20``: issue 19's GPU literature table, one net per
device call (bench/literature.py).
``python -m bench take FILE``: land the GPU section a device call sent back (scripts/gpu_session.sh) in docs/BENCHMARKS.md.
``python -m bench rewind-ab``: recovery at the start's training rate vs a tenth of it (bench/rewind_ab.py)."""
from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from engine import data as data_mod
from engine import export, presets, settings
from engine.accuracy_text import target_mark, target_value
from engine.spec import DataSpec
from engine.store import Store

from . import efficiency, gpu_bases, int8_formats, methods_table, report

ROOT = Path(__file__).resolve().parent.parent
BUDGET_S = 3900  # `make bench` on 2 CPU cores, all sections (was 1800 with 1-epoch fine-tunes; methods alone took 39 min at 3)
SHARED = ROOT.parent / "shared" / "datasets"
# The parts of a machine's section, in order, each between its own markers (report.part): `--skip` keeps a
# part's previous text instead of dropping it.
PARTS = ("efficiency", "methods", "queue", "pages", "tour", "photos")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def efficiency_section(device: torch.device, data, gpu: bool | None = None, tiny: bool = False) -> str:
    """``gpu``: write the GPU section's lines (default: ``device`` is CUDA); a rehearsal (``tiny``) runs them on the
    CPU with every loop and matrix cut to a few steps, to prove the code path, not to measure."""
    gpu = device.type == "cuda" if gpu is None else gpu
    lines = ["### Engine efficiency and measurement trust", ""]
    ev = efficiency.eval_throughput_ratio(data, device, repeats=1 if tiny else None)
    lines.append(f"- Evaluation throughput, engine path ÷ bare `no_grad` loop (ResNet-18, CIFAR test set, batch 256, "
                 f"{device.type}; interleaved rounds): **{target_value(ev['ratio'], 0.9, 3)}** (rounds {ev['ratio_range'][0]:.3f}-"
                 f"{ev['ratio_range'][1]:.3f}; {ev['engine_ips']:.0f} vs {ev['bare_ips']:.0f} img/s; target ≥ 0.9"
                 f" — {target_mark(ev['ratio'], 0.9, 3)})")
    tr = efficiency.train_throughput_ratio(data, device, **({"steps": 2, "warmup": 1} if tiny else {}))
    note = (f" (target ≥ 2x on GPU — {target_mark(tr['ratio'], 2, unit='x')})"
            if gpu else " (on CPU the engine's defaults are FP32 eager too: `train.amp` auto is FP32 there (bf16 is an opt-in, README), so ~1.0 is expected; the ≥ 2x target applies to GPU)")
    lines.append(f"- Training images/s, the engine's fit loop with its defaults ÷ plain FP32 eager loop: **{tr['ratio']:.2f}** "
                 f"({tr['engine_train_ips']:.0f} vs {tr['plain_fp32_ips']:.0f} img/s, batch {data.batch_size}){note}")
    if tr["engine_compiled_ips"] is not None:
        lines.append(f"- `train.compile` (torch.compile of the training model): eager {tr['ratio_eager']:.2f}x "
                     f"({tr['engine_eager_ips']:.0f} img/s), compiled {tr['ratio_compiled']:.2f}x "
                     f"({tr['engine_compiled_ips']:.0f} img/s, compile time excluded): "
                     f"{'pays' if tr['compile_pays'] else 'does not pay'} once compiled; it is off by default "
                     "because every fit (each fine-tune of a pruned model) compiles again")
    if gpu:
        tsh = efficiency.train_share_of_peak(tr["engine_train_ips"], device, n=256 if tiny else 8192)
        lines.append(f"- Training with engine defaults: {tsh['gflops_achieved']:.0f} GFLOP/s (3x forward FLOPs per image), "
                     f"**{100 * tsh['share']:.1f}%** of the measured bf16 dense-matmul peak ({tsh['peak_gflops']:.0f} "
                     "GFLOP/s, 8192² bf16 matmul); small 32x32 convolutions cannot fill a GPU built for large matrices")
        cpu_ips = efficiency.train_ips(data, torch.device("cpu"), steps=1 if tiny else 5, warmup=1)
        epoch = len(data.train.y)
        lines.append(f"- GPU vs CPU training, same model, batch and loader: GPU (engine defaults) {tr['engine_train_ips']:.0f} "
                     f"img/s vs this machine's {os.cpu_count()}-core CPU (FP32) {cpu_ips:.0f} img/s: **{tr['engine_train_ips'] / cpu_ips:.0f}x**"
                     f"; one epoch of {epoch} images: {epoch / tr['engine_train_ips']:.1f} s vs {epoch / cpu_ips:.0f} s "
                     "(research's claim: GPU training much faster)")
    sh = efficiency.inference_share_of_peak(device, **({"rounds": 1, "n": 256, "batch": 8} if tiny else {}))
    lines.append(f"- Inference, CIFAR ResNet-18 batch {8 if tiny else 64}: {sh['images_per_s']:.0f} img/s = {sh['gflops_achieved']:.1f} "
                 f"GFLOP/s, **{100 * sh['share']:.0f}%** of this device's measured dense-matmul peak "
                 f"({sh['peak_gflops']:.0f} GFLOP/s, 2048² fp32 matmul; the two timed in {sh['rounds']} alternating "
                 f"rounds, median of the per-round shares, {100 * sh['share_range'][0]:.0f}-"
                 f"{100 * sh['share_range'][1]:.0f}%)" + (
                     "; above 100 %: this matmul is no ceiling here (the network's convolutions outrun it)"
                     if sh["share"] > 1 else ""))
    ref = efficiency.reference_run(device, **({"epochs": 1, "measure": REHEARSAL_MEASURE} if tiny else {}))
    lines.append(f"- Reference job, `python -m engine run` end to end (ResNet-18 on digits, {1 if tiny else efficiency.REFERENCE_SPEC['train']['epochs']} epochs, {device.type}; "
                 f"process start, training, measurement, ONNX export, store): **{ref['wall_s']:.0f} s** wall, of which "
                 f"training {ref['train_s']:.0f} s; top-1 {ref['accuracy']:.3f} (targets: under 120 s, ≥ 0.9 — "
                 f"{'met' if ref['wall_s'] < 120 and ref['accuracy'] >= 0.9 else 'missed'})")
    rep = efficiency.latency_repeatability(device, **({"repeats": 2, "runs": 3} if tiny else {}))
    target = 0.05 if gpu else 0.10
    lines.append(f"- Latency repeatability (batch 1, 5 repeats of a 30-run median): CV **{100 * rep['cv']:.1f}%** "
                 f"(medians {', '.join(f'{m:.2f}' for m in rep['medians_ms'])} ms; target ≤ {100 * target:.0f}% — "
                 f"{'met' if rep['cv'] <= target else 'missed by %.1f pt' % (100 * (rep['cv'] - target))})")
    return "\n".join(lines)


# A rehearsal (--rehearse) is marked so in its command line and at the top of its section; its jobs measure
# with loops cut to a few runs (the code paths of a measurement, not one).
REHEARSAL = "REHEARSAL on CPU, tiny settings, not a measurement: "
REHEARSAL_MEASURE = {"latency_runs": 3, "warmup_runs": 1, "paired_rounds": 1, "batch_size": 8, "gpu_batch_size": 8,
                     "verify_images": 50}


DATASET_LABELS = {"cifar10": "CIFAR-10", "fashion-mnist": "Fashion-MNIST"}
ARCH_LABELS = {"resnet18": "ResNet-18 small-input", "resnet20": "CIFAR ResNet-20"}


def methods_section(res: dict, data_spec: dict, arch: str, base_epochs: int, ft: int, student_epochs: int,
                    gpu: bool) -> str:
    cols = methods_table.GPU_COLUMNS if gpu else methods_table.COLUMNS
    about = [data_spec["path"].split("/")[-1]] if data_spec.get("path") else []
    about += [f"{k.replace('_', ' ')} {data_spec[k]}" for k in ("limit", "test_limit", "image_size") if data_spec.get(k)]
    lines = [f"### Methods on {DATASET_LABELS.get(data_spec['name'], data_spec['name'])} ({', '.join(about) or 'full'}), "
             f"{ARCH_LABELS.get(arch, arch)} base (top-1 {res['base']['accuracy']:.3f})",
             "", *(["Published anchors are CIFAR-10 or ImageNet figures: set Δ and MAC ratios beside them, not "
                    "top-1.", ""] if data_spec["name"] != "cifar10" else []),
             f"Base trained {base_epochs} epochs (batch {data_spec.get('batch_size', 64)}); compression methods "
             f"fine-tune {ft} epoch(s) at the base's training rate (learning-rate rewinding, the engine's default), soft "
             f"filter pruning trains {ft + 1} soft epochs with the hard cut at the end (He et al. 2018), gradual "
             f"unstructured prunes over {2 * ft}; students train {student_epochs} epochs. Size = bytes of the saved bundle "
             "(INT8: ONNX bytes inside it). Latency: median of ≥30 timed batch-1 runs after warm-up. \"x faster\": "
             "each row's job times its model and the base in alternating blocks (5 rounds, ABBA) and reports the "
             "median of the per-round ratios with their min-max, so machine drift between rows cancels. \"ships in\": "
             "the fastest runtime with a download that gives PyTorch's top-1 (FP32 rows; an INT8 row runs in ONNX "
             "Runtime already), timed there against the base exported to the same runtime, so the runtime's own gain "
             "is not credited to the method. "
             "\"agrees w/ start\": share of test images whose top-1 answer equals that of the model the row started "
             "from (the base, or the previous step of a chain), both run in the row's job; \"Δ vs start, 95% CI\": "
             "where that accuracy difference would lie with another draw of test images, paired over the answers "
             "that flipped (an interval spanning 0 is within test-set noise).", "",
             report.table(res["rows"], cols), ""]
    if res["skipped"]:
        lines += ["Not in the table:", *[f"- {s}" for s in res["skipped"]], ""]
    if res.get("pending"):
        lines += [f"**Partial: the command stopped before these settings ran:** {', '.join(res['pending'])}", ""]
    lines += ["#### The research's claims, checked in this run", "",
              "| claim | our figure | verdict |", "|---|---|---|"]
    lines += [f"| {c} | {f} | {v} |" for c, f, v in methods_table.claims(res)]
    return "\n".join(lines)


def optional_section(module: str, title: str) -> str:
    """Sections contributed by other parts (queue load, page render); absent modules are stated, not hidden."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError:
        return f"### {title}\n\nnot measured: `{module}` is not present in this version"
    return mod.section()


def literature_bases(cifar: str, cmd: str, a: argparse.Namespace | None = None) -> int:
    """The "CIFAR-10, literature setting" preset's bases, in a store of their own; their block of the GPU section.
    ``a``: --base-epochs (every base), --limit / --test-limit and --rehearse (on the CPU) shrink it."""
    store_root = Path(tempfile.mkdtemp(prefix="slimbench-bases-"))
    os.environ["SLIMBENCH_HOME"] = str(store_root)
    plan = presets.cifar10_literature(cifar)
    for spec in plan:
        if a and a.base_epochs:
            spec["train"]["epochs"] = a.base_epochs
        if a and a.rehearse:
            spec["train"]["device"] = "cpu"
            spec["measure"] = dict(REHEARSAL_MEASURE)
        spec["data"].update({k: v for k, v in (("limit", a and a.limit), ("test_limit", a and a.test_limit),
                                               ("image_size", a and a.image_size)) if v})
    res = gpu_bases.run(plan, Store(store_root), log=log)
    body = gpu_bases.section(res, plan[0]["data"])
    if a and a.rehearse:
        body = f"**{REHEARSAL.strip(': ')}.**\n\n{body}"
    log(f"wrote {report.write_block('gpu', 'literature-bases', body, cmd)}")
    return 0


def int8_block(a: argparse.Namespace, cifar: str, cmd: str) -> int:
    """Train a CIFAR-10 base (or take --from-checkpoint), then write the "INT8 formats" block of the CPU section."""
    from engine.runner import run_spec
    # ResNet-20 (41 MMACs): 4 epochs on 10,000 images train in a few minutes on 2 cores; ResNet-18 (556 MMACs,
    # the model) took over 10 minutes for 2 epochs on 5,000 on a loaded machine: pass --arch resnet18.
    data_spec = {"name": "cifar10", "path": cifar, "limit": a.limit or 10000, "val_limit": 1000,
                 "test_limit": a.test_limit or 1000}
    if a.from_checkpoint:
        model, _ = export.load_model(a.from_checkpoint)
        about = f"{Path(a.from_checkpoint).name} on CIFAR-10, {data_spec['test_limit']} test images"
    else:
        store_root = Path(tempfile.mkdtemp(prefix="slimbench-int8-"))
        os.environ["SLIMBENCH_HOME"] = str(store_root)
        arch, epochs = a.arch or "resnet20", a.base_epochs or 4
        log(f"int8: training the {arch} base ({epochs} epochs on {data_spec['limit']} images)")
        base = run_spec({"data": data_spec, "model": {"arch": arch}, "train": {"epochs": epochs},
                         "measure": {"onnx": False, "latency_runs": 3, "warmup_runs": 1, "paired_rounds": 0}},
                        Store(store_root))
        model, _ = export.load_model(base["checkpoint"])
        about = (f"CIFAR-10 {arch} base, {epochs} epochs on {data_spec['limit']:,} images, top-1 "
                 f"{base['accuracy']:.3f}")
    data = data_mod.load(DataSpec(**data_spec))
    res = int8_formats.run(model, data, rounds=a.rounds or 7, runs=a.runs or 40, log=log)
    log(f"wrote {report.write_block('cpu', 'int8-formats', int8_formats.section(res, about), cmd)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["runtimes"]:   # its own options (python -m bench runtimes --help)
        from . import runtimes
        return runtimes.main(argv[1:])
    if argv[:1] == ["autocompress"]:   # its own options (python -m bench autocompress --help)
        from . import autocompress
        return autocompress.main(argv[1:])
    if argv[:1] == ["rewind-ab"]:
        from . import rewind_ab
        return rewind_ab.main(argv[1:])
    if argv[:1] == ["recipes-cpu"]:
        from . import recipes_cpu
        return recipes_cpu.main(argv[1:])
    if argv[:1] == ["take"]:   # land the GPU section a device call sent back (scripts/gpu_session.sh)
        if len(argv) != 2:
            print("usage: python -m bench take FILES_AT/BENCHMARKS.md", file=sys.stderr)
            return 2
        why = report.take_section(Path(argv[1]))
        if why:
            print(f"error: take: {why}", file=sys.stderr)
            return 2
        log(f"wrote the GPU section of {argv[1]} into {report.DOC}")
        return 0
    if argv[:1] == ["literature"]:   # its own options (python -m bench literature --help)
        from . import literature
        return literature.main(argv[1:])
    p = argparse.ArgumentParser(prog="python -m bench")
    p.add_argument("machine", choices=["cpu", "gpu", "gpu-bases", "runtimes", "int8"])
    p.add_argument("--cifar", default=None, help="CIFAR-10 zip (default: ../shared/datasets/cifar10-small.zip "
                                                 "for cpu, cifar10.zip for gpu)")
    p.add_argument("--limit", type=int, default=None, help="cap on training images")
    p.add_argument("--test-limit", type=int, default=None, help="cap on test images")
    p.add_argument("--base-epochs", type=int, default=None)
    p.add_argument("--finetune-epochs", type=int, default=None)
    p.add_argument("--student-epochs", type=int, default=None)
    p.add_argument("--arch", default=None, help="int8: the base's architecture (default resnet20)")
    p.add_argument("--from-checkpoint", default=None, help="int8: a CIFAR-10 model.pt to quantise instead of training one")
    p.add_argument("--rounds", type=int, default=None, help="int8: interleaved timing rounds (default 7)")
    p.add_argument("--runs", type=int, default=None, help="int8: timed calls per contender per round (default 40)")
    p.add_argument("--rehearse", action="store_true",
                   help="gpu, gpu-bases: a REHEARSAL of the GPU command on this CPU (its GPU columns and lines, its "
                        "imports, its report), measurement loops cut to a few steps; pass tiny --limit/--epochs too "
                        "(scripts/gpu_session.sh --rehearse PART does). Writes --doc, never docs/BENCHMARKS.md")
    p.add_argument("--image-size", type=int, default=None, help="gpu, gpu-bases: resize the images (a faster rehearsal)")
    p.add_argument("--only", default=None, help="with --rehearse, gpu: only the methods-table settings whose label "
                                                "contains one of these comma-separated words (a test's short rehearsal)")
    p.add_argument("--doc", default=None, help="write this file instead of docs/BENCHMARKS.md (with --rehearse: "
                                               "a scratch copy of it, by default in a new temporary folder)")
    p.add_argument("--skip", default="", help="comma list of sections to skip (their previous text is kept): " + ",".join(PARTS))
    a = p.parse_args(argv)
    gpu = a.machine in ("gpu", "gpu-bases")
    if a.rehearse and not gpu:
        print("error: --rehearse is for the GPU commands (gpu, gpu-bases)", file=sys.stderr)
        return 2
    if a.only and not a.rehearse:   # the table's part would lose every other row
        print("error: --only is for a rehearsal (--rehearse)", file=sys.stderr)
        return 2
    if gpu and not a.rehearse and not torch.cuda.is_available():
        print(f"error: `bench {a.machine}` needs a CUDA device (or --rehearse, a CPU rehearsal)", file=sys.stderr)
        return 2
    if a.rehearse or a.doc:
        doc = Path(a.doc) if a.doc else Path(tempfile.mkdtemp(prefix="slimbench-rehearsal-")) / "BENCHMARKS.md"
        if a.rehearse and report.DOC.is_file() and doc.resolve() != report.DOC.resolve():
            doc.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(report.DOC, doc)   # the real document's other sections and blocks, kept as a run keeps them
        elif a.rehearse and doc.resolve() == report.DOC.resolve():
            print("error: --rehearse never writes docs/BENCHMARKS.md: pass another --doc", file=sys.stderr)
            return 2
        if a.rehearse:
            log(f"REHEARSAL on the CPU (GPU code paths, tiny settings, no measurement): writing {doc}")
        real, report.DOC = report.DOC, doc
        try:
            return _run(a, argv, gpu)
        finally:   # a caller in this process (a test) writes the real document again
            report.DOC = real
    return _run(a, argv, gpu)


def _run(a: argparse.Namespace, argv: list[str], gpu: bool) -> int:
    full = gpu or (a.machine == "int8" and (SHARED / "cifar10.zip").is_file())
    cifar = a.cifar or settings.cifar10() or str(SHARED / ("cifar10.zip" if full else "cifar10-small.zip"))
    if not Path(cifar).is_file():
        print(f"error: CIFAR-10 zip not found: {cifar} (pass --cifar)", file=sys.stderr)
        return 2
    if a.machine == "int8":
        return int8_block(a, cifar, f"python -m bench {' '.join(argv or sys.argv[1:])}")
    cmd_line = (REHEARSAL if a.rehearse else "") + f"python -m bench {' '.join(argv or sys.argv[1:])}"
    if a.machine == "gpu-bases":
        return literature_bases(cifar, cmd_line, a)
    # CPU: the methods table starts from the Quick tour's base (Fashion-MNIST at 16 px, ResNet-20, >= 0.85;
    # CIFAR ResNet-18 at 32 px made the table ~1,000 s of `make bench`'s 30 minutes and a 0.33 base).
    # CPU: recipes-cpu's 3 epochs at the rewound rate (the engine's default), which reached the published Δ
    # there; 1 epoch left structured pruning ~2-3 pt short and judged the methods by a toy schedule.
    ft = a.finetune_epochs or (5 if gpu else 3)
    student_epochs = a.student_epochs or (30 if gpu else presets.QUICK_STUDENT["epochs"])
    base_epochs = a.base_epochs or (30 if gpu else presets.QUICK_BASE_EPOCHS)
    arch = "resnet18" if gpu else presets.QUICK_ARCH
    skip = set(filter(None, a.skip.split(",")))
    if skip - set(PARTS):
        print(f"error: --skip: unknown section(s) {', '.join(sorted(skip - set(PARTS)))}; choose from "
              f"{','.join(PARTS)}", file=sys.stderr)
        return 2
    # Batch 256 on CUDA: at 64 a CIFAR ResNet-18 step is kernel-launch bound (the lr follows the batch).
    cifar_spec = {"name": "cifar10", "path": cifar, **({"batch_size": 256} if gpu else {"limit": 1000, "test_limit": 500})}
    data_spec = dict(cifar_spec) if gpu else dict(presets.QUICK_DATA)
    data_spec.update({k: v for k, v in (("limit", a.limit), ("test_limit", a.test_limit), ("image_size", a.image_size))
                      if v})
    device = torch.device("cuda" if gpu and not a.rehearse else "cpu")
    t0 = time.perf_counter()
    cmd = (cmd_line if a.rehearse else
           f"make bench{'-gpu' if gpu else ''}" + (f" (python -m bench {' '.join(argv or sys.argv[1:])})"))
    parts: dict[str, str] = {}      # part key -> its text, in PARTS order once written
    old = report.previous_text()    # a skipped part keeps its text from here

    def write(extra: tuple[str, str] | None = None, done: bool = False) -> Path:
        """Rewrite this machine's section with everything measured so far (``extra``: a part still running,
        (key, text)); a skipped part keeps its previous text, and so does, until the run reaches it, a part
        not measured yet (a run killed mid-way loses no earlier result); a run stopped by a time limit keeps
        its finished parts and says it stopped early."""
        spent = time.perf_counter() - t0
        fresh = {**parts, **dict([extra] if extra else [])}
        body, kept, waiting = report.progress_body(a.machine, list(PARTS), fresh, skip, old, done)
        if a.rehearse:
            body = f"**{REHEARSAL.strip(': ')}.**\n\n{body}"
        budget = "" if gpu or skip else (f" (budget {BUDGET_S} s — " + (
            "met" if spent <= BUDGET_S else f"missed by {spent - BUDGET_S:.0f} s") + ")")
        tail = (f"_Whole command: {spent:.0f} s{budget}._" if done else
                f"_Incomplete: written {time.perf_counter() - t0:.0f} s into the command, which did not finish._")
        if kept:
            tail += f" _Skipped this time, kept from an earlier run: {', '.join(kept)}._"
        if waiting:
            tail += f" _Not re-measured yet, shown from an earlier run: {', '.join(waiting)}._"
        return report.write_section(a.machine, "\n\n".join(filter(None, [body, tail])), cmd, PARTS)

    if "efficiency" not in skip:
        log("efficiency")
        # The engine's own batch for this device (data.batch_size unset): its defaults, as a user gets them.
        eff_spec = {k: v for k, v in (data_spec if a.rehearse else cifar_spec).items() if k != "batch_size"}
        if a.rehearse:   # its timing loops need a few batches of the few images a rehearsal loads
            eff_spec["batch_size"] = 16
        parts["efficiency"] = efficiency_section(device, data_mod.load(DataSpec(**eff_spec), device.type), gpu,
                                                 tiny=a.rehearse)
        write()
    if "methods" not in skip:
        log("methods table")
        store_root = Path(tempfile.mkdtemp(prefix="slimbench-bench-"))
        os.environ["SLIMBENCH_HOME"] = str(store_root)

        def section(res: dict) -> str:
            return methods_section(res, data_spec, arch, base_epochs, ft, student_epochs, gpu)
        res = methods_table.run(data_spec, base_epochs, ft, student_epochs, Store(store_root), device.type, log=log,
                                arch=arch, measure=REHEARSAL_MEASURE if a.rehearse else None,
                                only=[w.strip() for w in a.only.split(",") if w.strip()] if a.only else None,
                                on_row=lambda r: write(("methods", section(r))))
        parts["methods"] = section(res)
        write()
    if not gpu:
        for key, module, title in (("queue", "bench.queue_load", "Queue throughput"),
                                   ("pages", "bench.pages", "Dashboard render time"),
                                   ("tour", "bench.quick_tour", "Quick tour (CPU) wall time"),
                                   ("photos", "bench.camera_photos", "Camera photos (memory)")):
            if key not in skip:
                log(title)
                parts[key] = optional_section(module, title)
                write()
    path = write(done=True)
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
