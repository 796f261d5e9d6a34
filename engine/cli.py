"""Command line: ``python -m engine <command>``. Bad input exits 2 with one clear message.

Command bodies import the heavy engine modules they use (torch, pandas) inside the function, lazy
on purpose: a command then loads only what it needs, so ``engine jobs`` or ``engine runs`` start
fast. The background-job commands live in ``jobs_cli``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

from . import jobs, methods, phases
from .commands import COMMANDS, arg, command
from .errors import Cancelled, JobFailed, SpecError
from .jobs_cli import label_args, label_text, labelled, read_spec
from .store import STATES, Store

from . import record

EXIT_BAD_INPUT = 2


class _Echo:
    """Progress on stderr: a redrawn bar on a terminal, one line per event otherwise (throttled)."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last = 0.0

    def __call__(self, **ev: Any) -> None:
        phase = ev.get("phase", "")
        words = phases.phase_words(phase, ev)   # "training epoch 2/8", "sensitivity probe 3/16 (layer1.0.conv1)"
        if "steps" in ev and "step" in ev:
            frac = ev["step"] / max(1, ev["steps"])
            bar = "#" * int(frac * 20)
            msg = f"{words} [{bar:<20}]"
            if "loss" in ev:
                msg += f" loss {ev['loss']:.3f} acc {ev.get('acc', 0):.3f} {ev.get('images_per_s', 0):.0f} img/s"
            if ev.get("eta_s") is not None:
                msg += f" eta {ev['eta_s']:.0f}s"
        else:
            shown = {k: v for k, v in ev.items() if k not in ("phase", "epoch", "epochs")}
            msg = words + "".join(f" {k}={v:.4f}" if isinstance(v, float) else f" {k}={v}" for k, v in shown.items())
        now = time.monotonic()
        if self.tty:
            sys.stderr.write("\r\033[K" + msg + ("\n" if phase.endswith(":val") or "steps" not in ev else ""))
            sys.stderr.flush()
        elif phase.endswith(":val") or "steps" not in ev or now - self.last > 5:
            self.last = now
            print(msg, file=sys.stderr, flush=True)


def _run_here(spec: Any, store: Store | None = None,
              run_id: str | None = None) -> tuple[dict[str, Any] | None, int]:
    """Run ``spec`` (a dict or JobSpec) here, its progress on stderr: (its record, 0), or (None, the exit status)
    with why on stderr when it failed or was cancelled."""
    from .runner import run_spec  # checks the spec against the registries before it creates a run
    try:
        return run_spec(spec, store, run_id=run_id, echo=_Echo()), 0
    except JobFailed as e:
        print(f"error: job failed: {e}", file=sys.stderr)
        return None, 1
    except Cancelled:
        print("cancelled", file=sys.stderr)
        return None, 130


@command("run", "run a job spec in the foreground; the last stdout line is the result record (JSON)")
@arg("spec", help="path to a JSON job spec ('-' for stdin)")
@label_args
def cmd_run(a: argparse.Namespace) -> int:
    record, code = _run_here(read_spec(a))
    if record is not None:
        print(json.dumps(record))
    return code


def input_shape(size: int, model: Any = None, arch: str = "") -> tuple[int, int, int]:
    """The (3, size, size) input of ``--input-size`` (models take RGB; grey images are repeated),
    refused where out of range or where ``model``'s downsampling leaves nothing of it."""
    import torch

    from . import models
    if not 4 <= size <= 1024:
        raise SpecError("--input-size", f"must be between 4 and 1024, got {size}")
    shape = (3, size, size)
    if isinstance(model, torch.nn.Module):
        models.check_input_fits(model, arch, shape, "--input-size")
    return shape


@command("profile", "params / MACs / FLOPs of an architecture, without any data")
@arg("arch")
@arg("--input-size", type=int, default=224)
@arg("--num-classes", type=int, default=1000)
@arg("--small-input", action="store_true", help="CIFAR-style stem (3x3 stride-1 conv, no max-pool)")
def cmd_profile(a: argparse.Namespace) -> int:
    from . import measure, models
    model = models.build(a.arch, a.num_classes, a.small_input)
    shape = input_shape(a.input_size, model, a.arch)
    c = measure.count_macs(model, shape)
    print(json.dumps({"arch": a.arch, "input_size": a.input_size, "num_classes": a.num_classes,
                      "small_input": a.small_input, "params": measure.count_params(model),
                      "macs": c["macs"], "flops": c["flops"],
                      "params_m": round(measure.count_params(model) / 1e6, 3), "gmacs": round(c["macs"] / 1e9, 4),
                      "gflops": round(c["flops"] / 1e9, 4)}))
    return 0


@command("measure", "size, params, MACs/FLOPs, sparsity and speed of a checkpoint bundle; with --against, its "
         "speed-up over another bundle, both timed interleaved")
@arg("checkpoint", help="a Slimbench bundle (model.pt of a run, or a downloaded one)")
@arg("--against", default=None, help="a second bundle (e.g. the base): report the paired speed-up over it "
                                     "(paired_speedup; speedup_across_runtimes where one is an INT8 bundle and the "
                                     "other a PyTorch one)")
@arg("--threads", type=int, default=None, help="CPU threads for timing (default: all physical cores)")
@arg("--runs", type=int, default=30, help="timed batch-1 runs")
@arg("--batch-size", type=int, default=64, help="batch for the throughput figure")
@arg("--rounds", type=int, default=5, help="interleaved rounds for --against")
@arg("--input-size", type=int, default=None,
     help="image side to time at (default: the size the bundle records; imported bundles record none)")
@arg("--trust-model-code", action="store_true",
     help="a bundle of a model built by a Python file (model.file) runs that file to rebuild it: allow it")
def cmd_measure(a: argparse.Namespace) -> int:
    import torch

    from . import export, measure
    for name, v, lo, hi in (("--runs", a.runs, 1, 10000), ("--batch-size", a.batch_size, 1, 65536),
                            ("--rounds", a.rounds, 1, 1000), ("--threads", a.threads or 1, 1, 512)):
        if not lo <= v <= hi:
            raise SpecError(name, f"must be between {lo} and {hi}, got {v}")

    def load(path: str, where: str):
        try:
            return export.load_predictor(path, measure.timing_threads(a.threads), trust_code=a.trust_model_code)
        except export.BundleError as e:
            raise SpecError(where, str(e)) from None

    model, bundle = load(a.checkpoint, "checkpoint")
    recorded = tuple(bundle.get("meta", {}).get("input_size") or ())
    if a.input_size is not None:
        shape = input_shape(a.input_size, model, bundle.get("arch", ""))
    elif len(recorded) == 3:
        shape = recorded
    else:
        raise SpecError("--input-size", "the bundle does not record its input size (an imported checkpoint): "
                                        "give it, e.g. 224 for ImageNet-style weights or 32 for CIFAR")
    cpu = torch.device("cpu")
    out: dict[str, Any] = {"checkpoint": a.checkpoint, "arch": bundle.get("arch"), "kind": bundle.get("kind", "torch"),
                           "input_size": list(shape), "size_bytes": Path(a.checkpoint).stat().st_size,
                           "compressed_bytes": measure.deflated_bytes(a.checkpoint), "cpu_model": measure.cpu_model()}
    if isinstance(model, torch.nn.Module):
        out.update(params=measure.count_params(model), sparsity=measure.sparsity(model),
                   **measure.count_macs(model, shape))
    elif bundle.get("kind") == export.ONNX_FP32:  # a user's ONNX model: counted on its graph
        from . import onnx_models
        out.update(onnx_models.static_metrics(bundle["onnx"].numpy().tobytes(), shape))
    out.update(measure.measure_speed(model, shape, cpu, a.batch_size, a.runs, threads=a.threads))
    if a.against:
        ref, ref_bundle = load(a.against, "--against")
        ref_size = ref_bundle.get("meta", {}).get("input_size")
        if ref_size and list(ref_size) != list(shape):
            raise SpecError("--against", f"expects input {ref_size}, {a.checkpoint} is timed at {list(shape)}")
        p = measure.paired_speedup(ref, model, shape, cpu, a.runs, threads=a.threads, rounds=a.rounds)
        # paired_speedup means "in the same runtime", as in a run's record; a PyTorch bundle against an
        # INT8 (ONNX Runtime) one also times the change of runtime, and says so under its own key
        ref_kind = ref_bundle.get("kind", "torch")
        key = "paired_speedup" if ref_kind == out["kind"] else "speedup_across_runtimes"
        out.update({"against": a.against, "against_kind": ref_kind, key: p["speedup"],
                    f"{key}_range": [p["speedup_min"], p["speedup_max"]], "against_latency_ms": p["ref_latency_ms"]})
    print(json.dumps(out))
    return 0


@command("sweep", "thread and batch sweeps of a finished run: latency at 1..N threads, throughput at several "
         "batches, in one deployment runtime; written to the run's sweep.json")
@arg("run_id", help="a finished run")
@arg("--runtime", default=None, help="eager, onnxruntime or openvino (default: the run's best download runtime)")
@arg("--threads", default=None, help="comma-separated thread counts (default: 1, 2, 4, ... up to the CPU count)")
@arg("--batches", default=None, help="comma-separated batch sizes for throughput (default: 1,8,32,128)")
@arg("--runs", type=int, default=20, help="timed batch-1 runs per thread count")
def cmd_sweep(a: argparse.Namespace) -> int:
    from . import sweeps

    def ints(text: str | None, flag: str) -> list[int] | None:
        if text is None:
            return None
        try:
            return [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise SpecError(flag, f"must be comma-separated whole numbers, got {text!r}") from None
    print(json.dumps(sweeps.sweep_run(Store(), a.run_id, a.runtime, ints(a.threads, "--threads"),
                                      ints(a.batches, "--batches"), a.runs)))
    return 0


@command("import", "turn a plain PyTorch state dict of a registered architecture, or an ONNX model, into a "
         "checkpoint bundle")
@arg("weights", help="a file saved with torch.save(model.state_dict(), path) (wrapped, DDP-prefixed or a "
                        "PyTorch Lightning checkpoint is fine), or an ONNX model (.onnx: measured, INT8, runtimes "
                        "and Try an image; no training)")
@arg("--arch", default=None, help="the architecture (default: read from the weights)")
@arg("--small-input", choices=("yes", "no"), default=None,
     help="whether the model uses the small-input stem (default: read from the weights where they tell)")
@arg("--norm", default="dataset",
     help="input normalisation the model was trained with: dataset (its data's own mean/std, as Slimbench "
          "trains), imagenet, or MEAN/STD such as 0.5,0.5,0.5/0.25,0.25,0.25")
@arg("--classes", default=None, help="comma-separated class names, in output order")
@arg("--input-size", type=int, default=None,
     help="the image side the model was trained at, recorded in the bundle (then `measure` and runs check it)")
@arg("-o", "--out", default=None, help="bundle path (default: WEIGHTS' name + .bundle.pt in this folder)")
def cmd_import(a: argparse.Namespace) -> int:
    from . import export, import_weights
    small = None if a.small_input is None else a.small_input == "yes"
    classes = [c.strip() for c in a.classes.split(",")] if a.classes is not None else None
    if classes is not None and (not all(classes) or len(set(classes)) != len(classes)):
        raise SpecError("--classes", f"class names must be non-empty and distinct, got {classes}")
    try:
        norm = import_weights.parse_normalisation(a.norm)
    except export.BundleError as e:
        raise SpecError("--norm", str(e)) from None
    if a.weights.endswith(".onnx"):
        from . import onnx_models
        if a.arch or small is not None:
            raise SpecError("--arch", "an ONNX model's graph is its architecture: leave --arch and --small-input out")
        try:
            bundle = onnx_models.to_bundle(a.weights, norm=import_weights.normalisation(norm),
                                           input_size=a.input_size and input_shape(a.input_size)[-1],
                                           class_names=classes)
        except (export.BundleError, OSError) as e:
            raise SpecError("weights", str(e)) from None
        return _write_import(a, bundle)
    try:
        bundle = import_weights.to_bundle(a.weights, arch=a.arch, small_input=small, norm=norm, class_names=classes)
    except export.BundleError as e:
        raise SpecError("weights", str(e)) from None
    if a.input_size is not None:
        model = export.model_from_bundle(bundle)
        bundle["meta"]["input_size"] = list(input_shape(a.input_size, model, bundle["arch"]))
    return _write_import(a, bundle)


def _write_import(a: argparse.Namespace, bundle: dict[str, Any]) -> int:
    from . import export
    out = writable(a.out or f"{Path(a.weights).stem}.bundle.pt", "--out")
    size = export.save_bundle(bundle, out)
    print(json.dumps({"bundle": str(out), "arch": bundle["arch"], **bundle["arch_kwargs"],
                      "normalisation": bundle["meta"]["normalisation"], "size_bytes": size}))
    return 0


@command("runs", "list runs in the workspace")
@arg("--json", action="store_true", help="one JSON array with full records")
@arg("--state", default=None, help="only runs in this state (done, failed, ...)")
@arg("--experiment", default=None, help="only runs of this experiment")
@arg("--group", default=None, help="only runs of this group")
def cmd_runs(a: argparse.Namespace) -> int:
    if a.state and a.state not in STATES:
        raise SpecError("--state", f"unknown state {a.state!r}; valid: {', '.join(STATES)}")
    rows = labelled(Store().list(state=a.state or "done"), a)
    if a.json:
        print(json.dumps([{**{k: r[k] for k in ("id", "state", "method", "arch", "dataset", "parent", "created",
                                                 "error", "record")},
                           "experiment": (r.get("spec") or {}).get("experiment"),
                           "group": (r.get("spec") or {}).get("group")} for r in rows]))
        return 0
    cols = record.cli_columns("runs")
    print(f"{'id':<24} {'state':<10} {'experiment / group':<24} {'method':<20} {'arch':<18} {'dataset':<14} "
          + cli_header(cols))
    for r in rows:
        rec = r["record"] or {}
        print(f"{r['id']:<24} {r['state']:<10} {label_text(r)[:24]:<24} {r['method'] or '-':<20} {rec.get('arch') or r['arch'] or '-':<18} "
              f"{r['dataset'] or '-':<14} " + cli_cells(cols, rec.get))
    return 0


def cli_header(cols: list[record.Field]) -> str:
    return " ".join(f"{f.cli.header:>{f.cli.width}}" for f in cols)


def cli_cells(cols: list[record.Field], value: Callable[[str], Any]) -> str:
    """The schema's CLI columns of one run; ``value(name)`` reads a field ("-" where unmeasured)."""
    def num(v: Any, c: record.Cli) -> str:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and v == v
        return format(v * c.scale, c.spec) if ok else "-"
    cells = []
    for f in cols:
        c, v = f.cli, value(f.name)
        text = num(v, c)
        if c.to is not None:                           # an interval, lo..hi
            text = text if text == "-" else f"{text}..{num(value(c.to), c)}"
        if c.mark is not None:                         # e.g. "p": the speed-up was timed paired
            text += c.mark[1] if value(c.mark[0]) else " "
        cells.append(f"{text:>{c.width}}")
    return " ".join(cells)


COST_COLUMNS = {f.cost_axis: f.name for f in record.cost_axes()}


@command("compare", "finished runs relative to their bases (x smaller, x fewer MACs, x faster, accuracy change) "
                    "with the Pareto front of accuracy against a cost: the Compare page without the dashboard")
@arg("--axis", choices=list(COST_COLUMNS), default="size", help="the cost for the Pareto front (default: size)")
@arg("--method", action="append", help="only runs of this method (repeatable)")
@arg("--dataset", help="only runs on this dataset")
@arg("--csv", help="also write every column of the table to this CSV file")
@arg("--json", action="store_true", help="print the table as one JSON array instead")
@arg("--best", help="accuracy, size, macs or latency: rank the runs meeting the limits below by it, the winner "
                    "first (default with a limit: accuracy)")
@arg("--max-size-mb", type=float, help="only runs whose bundle (model.pt) is at most this many MB (10^6 bytes)")
@arg("--max-mmacs", type=float, help="only runs with at most this many million MACs per image")
@arg("--max-latency-ms", type=float, help="only runs at most this slow (CPU, batch 1, median)")
@arg("--min-accuracy", type=float, help="only runs at least this accurate (0-1)")
@arg("--max-drop-pt", type=float, help="only runs losing at most this many accuracy points against their base")
@arg("--include-chance", action="store_true", help="let runs at chance level (no better than guessing) onto the "
                                                    "Pareto front and into the ranking; by default they are kept off")
def cmd_compare(a: argparse.Namespace) -> int:
    from . import results
    df = results.table(results.records(Store()))
    if a.method:
        df = df[df["method"].isin(a.method)]
    if a.dataset:
        df = df[df["dataset"] == a.dataset]
    cost = COST_COLUMNS[a.axis]
    df = df.assign(pareto=results.pareto_mask(df, cost, include_chance=a.include_chance)).sort_values(["base_id", cost], na_position="last")
    for flag in ("max_size_mb", "max_mmacs", "max_latency_ms", "min_accuracy", "max_drop_pt"):
        if getattr(a, flag) is not None and getattr(a, flag) < 0:
            raise SpecError("--" + flag.replace("_", "-"), f"must not be negative, got {getattr(a, flag)}")
    limits = {"max_size_bytes": a.max_size_mb and a.max_size_mb * 1e6, "max_macs": a.max_mmacs and a.max_mmacs * 1e6,
              "max_latency_ms": a.max_latency_ms, "min_accuracy": a.min_accuracy,
              "max_drop": a.max_drop_pt and a.max_drop_pt / 100}
    ranking = a.best or any(v is not None for v in limits.values())
    if ranking:
        df, n_sets = results.on_newest_test_set(df)
        if n_sets > 1:
            print(f"note: the runs were scored on {n_sets} test sets; ranking those on the newest run's "
                  f"({df['dataset'].iloc[0]}, {df['test_images'].iloc[0]:.0f} images); --dataset chooses another",
                  file=sys.stderr)
        try:
            df = results.winners(df, a.best or "accuracy", include_chance=a.include_chance, **limits)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if a.csv:
        df.to_csv(writable(a.csv, "--csv"), index=False)
    if a.json:
        print(df.to_json(orient="records"))
        return 1 if ranking and df.empty else 0  # as the text form: nothing meets the limits
    if df.empty:
        print("no finished run meets the limits" if ranking else "no finished runs match", file=sys.stderr)
        return 1 if ranking else 0

    def num(v: Any, fmt: str) -> str:
        return "-" if v is None or v != v else format(v, fmt)

    cols = record.cli_columns("compare")
    print(f"{'':1} {'run id':<24} {'method':<20} {'arch':<18} " + cli_header(cols))
    for r in df.to_dict("records"):
        print(f"{'*' if r['pareto'] else ' ':1} {r['run_id']:<24} {r['method'] or '-':<20} {r['arch'] or '-':<18} "
              + cli_cells(cols, r.get))
    print(f"*: on the Pareto front of accuracy against {a.axis}; p: speed-up timed interleaved with the model each step "
          "started from, in the same runtime (an INT8 step: that model in fp32 under ONNX Runtime); x smaller .pt: "
          "the model.pt bundles, zip: deflated; "
          "Δ 95% CI: paired over the answers that flipped (an interval spanning 0 is test-set noise); "
          "agree: top-1 answers equal to the model each run started from")
    for r in df[df["chance_level"].fillna(False).astype(bool)].to_dict("records"):
        print(f"! {r['run_id']} {r['flags']}" + ("" if a.include_chance else "; kept off the Pareto front and the "
                                                  "ranking (--include-chance lets it in)"))
    if ranking:
        w = df.iloc[0]
        print(f"winner by {a.best or 'accuracy'} ({len(df)} run(s) meet the limits): {w.run_id} {w.method}, "
              f"accuracy {num(w.accuracy, '.4f')}, {num(w.size_bytes / 1e6, '.2f')} MB, {num(w.macs / 1e6, '.1f')} "
              f"MMACs, {num(w.latency_ms, '.3f')} ms; checkpoint {Store().run_dir(w.run_id) / 'model.pt'}")
    return 0


@command("methods", "list the registered methods and their parameters")
@arg("--json", action="store_true")
def cmd_methods(a: argparse.Namespace) -> int:
    reg = methods.load_all()
    if a.json:
        print(json.dumps({n: {"help": m.help, "family": m.family, "needs_base": m.needs_base,
                              "params": [p.__dict__ for p in m.params]} for n, m in sorted(reg.items())},
                         default=list))
        return 0
    for n, m in sorted(reg.items()):
        print(f"{n}  ({m.family})  {m.help}")
        for p in m.params:
            rng = f" {p.range_text()}" if p.kind in ("int", "float") else (f" {{{', '.join(p.choices)}}}" if p.choices else "")
            kind = ("run id" + (f" ({p.run_method})" if p.run_method else "")) if p.kind == "run" else p.kind
            print(f"    {p.name}: {kind}{rng} = {p.default!r}  {p.help}")
    return 0


@command("mlflow", "log finished runs to MLflow (MLFLOW_TRACKING_URI, else ./mlruns): spec as params, record as "
                   "metrics, bundle/ONNX/card as artefacts, pipeline steps nested; runs already there are skipped")
@arg("run_ids", nargs="*", help="runs to log (default: every finished top-level run)")
@arg("--uri", help="tracking URI instead of MLFLOW_TRACKING_URI / ./mlruns")
def cmd_mlflow(a: argparse.Namespace) -> int:
    from . import tracking  # imports MLflow: loaded only by this command
    store = Store()
    uri = tracking.tracking_uri(a.uri)
    ids = a.run_ids or [r["id"] for r in reversed(store.list("done")) if not r.get("parent")]
    for run_id in ids:
        row = store.get(run_id)
        if row is None or row["state"] != "done":
            raise SpecError("run_ids", f"{run_id} is not a finished run in this workspace")
    failed = 0
    for run_id in ids:
        try:
            print(f"{run_id} -> {tracking.log_run(store, run_id, uri)}")
        except Exception as e:
            failed += 1
            print(f"{run_id}: not logged: {(tracking.status(store.run_dir(run_id)) or {}).get('error') or e}",
                  file=sys.stderr)
    print(f"{len(ids) - failed} of {len(ids)} run(s) logged to {uri}", file=sys.stderr)
    return 1 if failed else 0


@command("presets", "list the ready-made plans: the data, model and settings each uses, and how long it takes")
@arg("--json", action="store_true")
def cmd_presets(a: argparse.Namespace) -> int:
    from . import presets  # builds plans from the method registry: loaded only by this command
    store = Store()
    at_once = jobs.worker_status(store)["concurrency"]
    if a.json:
        here = {n: presets.estimate_plan(p(), store, at_once) for n, p in presets.PRESETS.items()}
        # estimate_s: on the machine it was sized on; estimate_here_s: from this machine's finished runs
        # (null without any), leaving out the jobs_without_history
        print(json.dumps({n: {"description": presets.describe(n, store, at_once), "device": p.device,
                              "estimate_s": p.estimate_s, "estimate_here_s": here[n].seconds,
                              "jobs": here[n].jobs, "jobs_without_history": here[n].unknown}
                          for n, p in presets.PRESETS.items()}))
        return 0
    for n in presets.PRESETS:
        print(f"{n}\n    {presets.describe(n, store, at_once)}")
    return 0


@command("autocompress", "search methods and pipelines (Optuna) for the smallest / fastest model within an "
         "accuracy limit on the validation split; each trial is a child run; --resume continues a stopped search")
@arg("--from-run", default=None, help="the finished run to compress (its data, training and timing settings apply)")
@arg("--max-drop-pt", type=float, default=1.0, help="validation accuracy the search may lose, in points")
@arg("--objective", default="size", help="size, macs, latency (at --batch in --runtime on --device) or energy (CPU mJ per "
     "image, where this machine can read its RAPL counter)")
@arg("--runtime", default="eager", help="with --objective latency: the runtime each model and the start are timed in: "
     "eager, onnxruntime, openvino, or best (each model's fastest here)")
@arg("--batch", type=int, default=1, help="with --objective latency: the batch each model is timed at")
@arg("--device", default="cpu", help="with --objective latency: where every model is timed: cpu, or cuda (eager on "
     "CUDA or ONNX Runtime's CUDA provider; INT8 is left out there)")
@arg("--int8-format", default="auto", help="the INT8 step's format in every candidate ending in INT8 (auto: "
     "quantize_int8's own choice on this CPU; or qdq, qdq_reduce_range, qdq_s8s8, qoperator, openvino)")
@arg("--int8-calibration-batches", type=int, default=None, help="the INT8 step's calibration batches (default: "
     "quantize_int8's)")
@arg("--target", type=float, default=None, help="a budget instead of a minimum: the objective at most 1/TARGET of "
     "the start's (4 = 4x smaller)")
@arg("--trials", type=int, default=12, help="search budget in trials")
@arg("--minutes", type=float, default=None, help="search budget in wall time")
@arg("--space", default=None, help="comma-separated candidates (default: prune_int8, blocks_int8, lowrank_int8, "
     "quantize_int8, unstructured, distill; also prune, blocks, lowrank: the same cuts without INT8)")
@arg("--finetune-epochs", type=int, default=1, help="the short fine-tune of each trial (the cheap proxy)")
@arg("--promote", type=int, default=2, help="trials on or near the proxies' front run again with the full recipe "
     "(0: none)")
@arg("--full-epochs", type=int, default=3, help="the full recipe's fine-tune epochs, KD-assisted where the method "
     "has a distillation-assisted fine-tune")
@arg("--seed", type=int, default=0, help="the sampler's seed")
@arg("--no-seeded", action="store_true", help="do not run the recipes measured to work first (structured to 1/2.1 "
     "and to 35 %% of the MACs with the full fine-tune -> INT8); only what the sampler draws")
@arg("--parallel", type=int, default=1, help="trials at once, each a process of its own (Ray tasks under "
     "SLIMBENCH_BACKEND=ray); with --objective latency the trials are timed again alone after the search")
@arg("--resume", default=None, metavar="RUN", help="continue the search run RUN from its finished trials")
def cmd_autocompress(a: argparse.Namespace) -> int:
    store = Store()
    if a.resume:
        row = store.get(a.resume)
        if row is None or (row["spec"] or {}).get("method", {}).get("name") != "autocompress":
            raise SpecError("--resume", f"no autocompress run {a.resume!r} in {store.root}")
        if row["state"] == "done":
            raise SpecError("--resume", f"run {a.resume} has finished; start a new search")
        spec, run_id = row["spec"], a.resume
    else:
        if not a.from_run:
            raise SpecError("--from-run", "give the finished run to compress (or --resume RUN)")
        base = store.get(a.from_run)
        if base is None or base["state"] != "done":
            raise SpecError("--from-run", f"no finished run {a.from_run!r} in {store.root}")
        params: dict[str, Any] = {"max_drop_pt": a.max_drop_pt, "objective": a.objective, "target": a.target,
                                  "trials": a.trials, "minutes": a.minutes, "finetune_epochs": a.finetune_epochs,
                                  "promote": a.promote, "full_epochs": a.full_epochs, "seed": a.seed, "parallel": a.parallel, "runtime": a.runtime, "batch": a.batch,
                                  "device": a.device, "int8_format": a.int8_format,
                                  "int8_calibration_batches": a.int8_calibration_batches,
                                  "seeded": not a.no_seeded}
        if a.space:
            params["space"] = [c.strip() for c in a.space.split(",") if c.strip()]
        spec = {k: v for k, v in base["spec"].items() if k in ("data", "train", "measure", "experiment", "group")}
        spec.update({"model": {"from_run": a.from_run}, "method": {"name": "autocompress", "params": params},
                     "name": f"autocompress of {a.from_run}"})
        run_id = None
    rec, code = _run_here(spec, store, run_id)
    if rec is None:
        return code
    print(f"{rec['search_trials']} trial(s), {rec['search_killed']} stopped or refused. {rec['search_why']}",
          file=sys.stderr)
    print(json.dumps(rec))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine", description="Slimbench engine")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, add_args, help) in COMMANDS.items():
        add_args(sub.add_parser(name, help=help, description=help))
    return parser


def writable(path: str, flag: str):
    """``path`` as a file this command can write (its folder exists, it is no folder itself), or a SpecError."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise SpecError(flag, f"{p} is a folder; give a file name")
    if not p.parent.is_dir():
        raise SpecError(flag, f"folder {p.parent} does not exist")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    try:
        return COMMANDS[a.command][0](a)
    except SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


# The background-job commands (submit, jobs, cancel, retry, worker), registered after this module's
# own so that the help lists them in that order.
from . import jobs_cli  # noqa: E402,F401
