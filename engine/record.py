"""The result record's schema: one declaration per field, from which every view derives.

The results table (``results.table``), Compare's columns, the model card (``card.json``), the
CLI's ``runs`` / ``compare`` listings and ``docs/RECORD.md`` all read ``FIELDS``; a new metric is
declared here and measured where it is measured, nothing else. Plain data: importable without
torch, pandas or streamlit. The views read ``FIELDS`` when they run (not at import), so a field
added at run time (a test's monkeypatch, a plug-in) shows everywhere.

``python -m engine.record`` rewrites ``docs/RECORD.md``.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "RECORD.md"
KINDS = ("number", "text", "bool", "time", "json")   # time: epoch seconds; json: a list or object
SOURCES = ("record", "base", "view")


@dataclass(frozen=True)
class Cli:
    """A right-aligned column of ``engine runs`` / ``engine compare``: ``format(value * scale, spec)``."""
    header: str
    width: int
    spec: str
    scale: float = 1.0
    commands: tuple[str, ...] = ("compare",)
    to: str | None = None                   # an interval: this field is its low end, ``to`` its high one ("lo..hi")
    mark: tuple[str, str] | None = None     # (bool field, letter appended where it is true)
    order: int = 0                          # columns print by order, then as declared


@dataclass(frozen=True)
class Field:
    name: str
    label: str                              # column header / tile title
    unit: str = ""
    help: str = ""
    format: str | None = None               # printf-style, as Compare shows it ("%.4f", "%d", "%.2fx")
    kind: str = "number"                    # one of KINDS
    source: str = "record"                  # record: a key of the result record; base: derived against the
                                            # run's base in the results table; view: composed by a view
    table: bool = True                      # a column of the results table (record and base fields)
    card: bool = False                      # copied onto the model card (card.json)
    compare: int | None = None              # position among Compare's default columns (ascending)
    more: bool = True                       # else offered under Compare's "More columns" when a run has it
    cost_axis: str | None = None            # a cost of the accuracy-vs-cost Pareto front, by this short name
    cli: Cli | None = None
    shown_scale: float = 1.0                # Compare shows value x this (Δ accuracy: fractions as points)

    def __post_init__(self) -> None:
        if self.kind not in KINDS or self.source not in SOURCES:
            raise ValueError(f"field {self.name}: kind must be one of {KINDS}, source one of {SOURCES}")

    @property
    def base_relative(self) -> bool:
        return self.source == "base"

    @property
    def numeric(self) -> bool:
        return self.kind in ("number", "time")


_FRACTION = "fraction (0-1)"
_PAIRED = ("x faster, from timings interleaved with the model each step started from where 'paired' is ticked "
           "(multiplied along a chain)")

FIELDS: tuple[Field, ...] = (
    # -- what ran --------------------------------------------------------------------------------
    Field("run_id", "run_id", kind="text", compare=180, card=True, help="the run's id (its folder under runs/)"),
    Field("name", "name", kind="text", compare=10, card=True, help="the job's name"),
    Field("experiment", "experiment", kind="text", compare=52, card=True,
          help="the experiment the job was launched under (spec field experiment); blank for none"),
    Field("group", "group", kind="text", compare=54, card=True,
          help="the group within the experiment (spec field group); blank for none"),
    Field("method", "method", kind="text", compare=12, card=True, help="the registered method that made the model"),
    Field("arch", "arch", kind="text", compare=40, card=True, help="the model's architecture"),
    Field("dataset", "dataset", kind="text", compare=50, card=True, help="the data it was trained and tested on"),
    Field("data_path", "data path", kind="text", card=True,
          help="where the data came from: the spec's data.path or the dataset's configured default, resolved; "
               "blank for data shipped with a library (digits: scikit-learn's)"),
    Field("test_set_hash", "test set hash", kind="text", card=True,
          help="sha256 of the test split as scored (its images' bytes and shape, and labels): runs compare "
               "accuracies (Δ accuracy, the Pareto front, the winner) only within one hash; records from before "
               "it was kept are grouped by dataset, classes and test images"),
    Field("parent", "parent", kind="text", card=True, more=False,
          help="the run this one started from (none: a fresh architecture or a checkpoint)"),
    Field("base_id", "base run", kind="text", source="base", compare=190,
          help="the root of the run's parent chain, what every base-relative column compares with"),
    Field("chance_level", "chance level", kind="bool", source="base", compare=56, more=False,
          help="its answers are no better than guessing: the accuracy's 95% interval reaches 1 / classes or the "
               "most common class's share, or over 90% of its answers are one class. Kept off the Pareto front "
               "and out of the winner unless asked for"),
    Field("flags", "warnings", kind="text", source="base", compare=57, more=False,
          help="what would make this run's figures mislead: chance level (why), or a base still learning when it "
               "stopped (every run of its chain then mixes extra training into Δ accuracy)"),
    Field("control_verdict", "vs its control", kind="text", source="base", compare=58, more=False,
          help="did compressing beat simply training a smaller net? A compressed run's accuracy against its "
               "control (method control: the same family scaled to its MACs, trained from scratch with the same "
               "epoch budget), paired on the same test images, with the 95% interval; on a control's own row, the "
               "run it controls"),
    # -- controls (method control) ----------------------------------------------------------------
    Field("control_of", "control of", kind="text",
          help="the compressed run this control was trained for (method control)"),
    Field("control_delta_pt", "Δ vs control (pt)", "points", "the compressed run's accuracy minus this control's, "
          "both scored in the control's job on the same test images", "%+.2f"),
    Field("control_delta_ci95_pt", "Δ vs control 95% CI (pt)", "points", "[low, high] paired 95% interval of "
          "Δ vs control, from the images only one of the two got right", kind="json", table=False),
    Field("control_mcnemar_p", "McNemar p vs control", "", "exact McNemar test that the compressed run and its "
          "control are equally accurate on these images", "%.3g"),
    Field("control_of_accuracy", "compressed run's accuracy", _FRACTION, "the compressed run's top-1 on the "
          "control's test images, scored in the control's job", "%.4f"),
    Field("control_arch", "control arch", kind="text", help="the architecture the control was built as (a CIFAR "
          "ResNet may change depth where no width reaches the MACs)"),
    Field("control_width", "control width", "x", "channel-width multiplier of the control", "%.3f"),
    Field("control_target_macs", "control's target MACs", "MACs", "the compressed run's dense MACs, which the "
          "control matches within 5%", "%d"),
    Field("control_macs_ratio", "control MACs ÷ target", "x", "the control's MACs over the compressed run's "
          "(within 0.95-1.05)", "%.3f"),
    Field("control_epochs", "control epochs", "epochs", "the epoch budget the control trained for: every epoch "
          "the compressed model's weights went through along its chain (see control_epochs_counted)", "%d"),
    Field("control_epochs_counted", "control budget counted", kind="text",
          help="how the control's epoch budget was counted: each run of the compressed run's chain and its epochs"),
    # -- auto-compress (method autocompress) -----------------------------------------------------
    Field("search_trials", "search trials", "trials", "trials the search finished or stopped (resumed ones "
          "included; refused and stopped ones count against the budget)", "%d"),
    Field("search_killed", "trials stopped", "trials", "trials refused before training (a MACs/size proxy over "
          "the target), stopped after a fine-tune past the accuracy limit, or failed; why in search_trial_list",
          "%d"),
    Field("search_winner", "search winner", kind="text",
          help="the trial run the search chose (this run's model): the cheapest (or, with a target, the most "
               "accurate) within the limit, judged on the validation split only; blank: no trial met the limit"),
    Field("search_why", "why this one", kind="text",
          help="the winner's recipe and figures, or 'no trial met the limit' with the closest trials and what "
               "bound each"),
    Field("search_start_val_accuracy", "start's validation accuracy", _FRACTION,
          "the start's top-1 on the validation split: what every trial's drop is measured against", "%.4f"),
    Field("search_front", "search Pareto front", kind="json", table=False,
          help="trials no other beats on both validation accuracy and cost, cheapest first; only these carry a "
               "test_accuracy, read after the search ended"),
    Field("search_trial_list", "search trial list", kind="json", table=False,
          help="every trial: state, recipe, child run, validation accuracy and drop, cost and its share of the "
               "start's (objective latency: the runtime it was timed in, the start's side of that pair, runtimes "
               "refused for disagreeing with the model's own answers: eager's, or an INT8 model's in its format's "
               "runtime), why it was stopped, the proxy trial a full recipe was promoted from, and, for a seeded "
               "trial, the measurement it was seeded on"),
    Field("search_closest", "closest trials", kind="json", table=False,
          help="without a winner: the trials that came closest to the limit, each with what bound it"),
    Field("search_parallel", "trials at once", "trials", "trials the search ran at the same time (method "
          "param parallel)", "%d"),
    Field("search_where", "trials ran on", kind="text",
          help="local (child processes or, one at a time, in the search's own process) or ray (Ray tasks)"),
    Field("search_timing", "how trials were timed", kind="text",
          help="with objective latency: the runtime and batch, and whether each trial was timed as it ended (serial "
               "search) or every scored trial was timed again alone after a parallel search, against the start"),
    Field("search_latency_runtime", "search latency runtime", kind="text",
          help="with objective latency: the runtime every model was timed in (method param runtime: eager, "
               "onnxruntime, openvino, or best: each model's fastest here, on search_latency_device; the runtime each "
               "trial ran in is in "
               "search_trial_list); blank for other objectives"),
    Field("search_latency_batch", "search latency batch", "images", "with objective latency: the batch every "
          "model was timed at (method param batch)", "%d"),
    Field("search_latency_device", "search latency device", kind="text",
          help="with objective latency: the device every model and the start were timed on (method param device): "
               "cpu (with the CPU's model) or cuda (with the GPU's name); on cuda the runtimes are named "
               "eager_cuda and onnxruntime_cuda, and INT8 is left out of the search (search_timing says how)"),
    Field("search_start_runtime", "start's runtime", kind="text",
          help="with objective latency: the start's fastest runtime here (with runtime best; else the runtime "
               "chosen). Each trial's speed-up is paired with the start in the trial's own runtime "
               "(start_runtime in search_trial_list), never across runtimes"),
    Field("search_runtime_agreement", "runtime agreement", kind="json", table=False,
          help="with objective latency: per runtime, the start's top-1 agreement with eager on a few hundred "
               "validation images; a runtime under the threshold is refused (refused: why) and judges no model"),
    # -- accuracy --------------------------------------------------------------------------------
    Field("accuracy", "accuracy", _FRACTION, "top-1 on the test split", "%.4f", card=True, compare=14,
          cli=Cli("acc", 7, ".4f", commands=("runs", "compare"))),
    Field("accuracy_ci95", "accuracy 95% CI", _FRACTION, "[low, high] Wilson interval of the accuracy over the "
          "test images", kind="json", table=False, card=True),
    Field("delta_accuracy", "Δ accuracy (pt)", _FRACTION,
          "accuracy minus the base's on the same test images, shown in points (-1.5 = 1.5 points lost): each job "
          "also scores the model it started from (summed along a chain of runs); blank where the test sets differ",
          "%+.1f", source="base", compare=16, cli=Cli("Δ pt", 6, "+.1f", scale=100), shown_scale=100),
    Field("delta_ci_low", "Δ CI low (pt)", _FRACTION, "low end of Δ accuracy's 95% interval, shown in points",
          "%+.1f", source="base", cli=Cli("Δ 95% CI pt", 13, "+.1f", scale=100, to="delta_ci_high"), shown_scale=100),
    Field("delta_ci_high", "Δ CI high (pt)", _FRACTION, "high end of Δ accuracy's 95% interval, shown in points",
          "%+.1f", source="base", shown_scale=100),
    Field("mcnemar_p", "McNemar p", "", "exact McNemar test that this run and its base are equally accurate on "
          "these images; small (e.g. < 0.05): the difference is real", "%.3g", source="base"),
    Field("top5", "top-5", _FRACTION, "empty with 5 classes or fewer, where it is 1 by construction", "%.4f",
          card=True),
    Field("roc_auc", "ROC AUC", "", "macro one-vs-rest", "%.4f", card=True),
    Field("agreement", "agrees with start", _FRACTION, "share of test images on which this run's top-1 answer "
          "equals the model it started from (both run on the same images in its job)", "%.4f",
          cli=Cli("agree %", 7, ".1f", scale=100, order=1)),
    Field("flips_to_wrong", "newly wrong", _FRACTION, "share of test images the starting model got right and "
          "this run gets wrong", "%.4f"),
    Field("flips_to_right", "newly right", _FRACTION, "share of test images the starting model got wrong and "
          "this run gets right", "%.4f"),
    # -- size and compute ------------------------------------------------------------------------
    Field("size_bytes", "size .pt (bytes)", "bytes", "the checkpoint bundle's file size (model.pt, as "
          "downloaded; an INT8 run's holds its INT8 ONNX model). Zeros of unstructured pruning are stored dense",
          "%d", card=True, compare=20, cost_axis="size", cli=Cli("size MB", 8, ".2f", scale=1e-6, commands=("runs",))),
    Field("onnx_bytes", "size .onnx (bytes)", "bytes", "the run's ONNX file (model.onnx, as downloaded): fp32 with "
          "every zero stored, or INT8 for quantize_int8; blank where none was written (measure.onnx off, or the "
          "export failed)", "%d", card=True, compare=92),
    Field("compressed_bytes", "size .pt deflated (bytes)", "bytes", "model.pt deflated (zlib level 1, the "
          "compression of zip and gzip; their default level saves ~0.3 % more): what unstructured sparsity saves in "
          "transfer and storage", "%d", card=True, compare=94),
    Field("x_smaller", "x smaller (.pt)", "x", "the base's model.pt size ÷ this run's", "%.2fx", source="base",
          compare=22, cli=Cli("x smaller .pt", 13, ".2f")),
    Field("x_smaller_onnx", "x smaller (.onnx)", "x", "the base's model.onnx size ÷ this run's (blank where either "
          "has none)", "%.2fx", source="base", compare=102),
    Field("x_smaller_compressed", "x smaller (deflated .pt)", "x", "the base's deflated model.pt size ÷ this run's: "
          "the saving once zipped, where sparsity shows", "%.2fx", source="base", compare=104,
          cli=Cli("x smaller zip", 13, ".2f")),
    Field("params", "params", "parameters", "parameters of the model (dense count)", "%d", card=True,
          compare=170, cost_axis="params"),
    Field("macs", "MACs", "MACs", "multiply-accumulates per image (torchvision's 'GFLOPS' are MACs)", "%d",
          card=True, compare=24, cost_axis="macs", cli=Cli("MMACs", 9, ".1f", scale=1e-6, commands=("runs",))),
    Field("x_fewer_macs", "x fewer MACs", "x", "base MACs ÷ this run's MACs", "%.2fx", source="base",
          compare=33, cli=Cli("x fewer MACs", 12, ".2f")),
    Field("flops", "FLOPs", "FLOPs", "floating-point operations per image, 2 per MAC", "%d", card=True),
    Field("sparsity", "sparsity", _FRACTION, "share of exactly-zero conv/linear weights", "%.3f", card=True,
          compare=160),
    # -- speed and memory ------------------------------------------------------------------------
    Field("latency_ms", "latency (ms)", "ms", "CPU (latency_device; cpu_model, threads), batch 1, median", "%.3f",
          card=True, compare=26,
          cost_axis="latency", cli=Cli("lat ms", 7, ".2f", commands=("runs",))),
    Field("runtime", "timed in", kind="text", source="base", compare=31,
          help="what ran the model when it was timed (PyTorch eager, with its precision, or ONNX Runtime INT8): "
               "latencies compare only within one runtime"),
    Field("x_faster", "x faster", "x",
          "CPU batch-1 speed-up over the base, from timings interleaved with the model each step started from, "
          "in the same runtime (paired_speedup), where 'paired' is ticked (multiplied along a chain), else base latency ÷ this latency from separate "
          "jobs. An INT8 step counts against its own model in fp32 under ONNX Runtime, so the change of runtime "
          "is not credited to quantisation (the runtime method measures that)", "%.2fx", source="base",
          compare=28, cli=Cli("x faster", 9, ".2f", mark=("x_faster_paired", "p"))),
    Field("x_faster_paired", "paired", kind="bool", source="base", compare=29, more=False,
          help="x faster is the product of each step's paired_speedup: timed interleaved with the model the step "
               "started from, in the same runtime (an INT8 step: against that model in fp32 under ONNX Runtime), "
               "which cancels slow drift of the machine"),
    Field("x_faster_low", "x faster, slowest round", "x", "the slowest paired round's " + _PAIRED, "%.2fx",
          source="base", more=False),
    Field("x_faster_high", "x faster, fastest round", "x", "the fastest paired round's " + _PAIRED, "%.2fx",
          source="base", more=False),
    Field("energy_mj_per_image", "energy (mJ/image)", "mJ", "energy per image on the CPU at throughput_batch, from "
          "the hardware's own counter (energy_source: RAPL, the whole CPU package, so other processes count too); "
          "blank where the machine exposes none: never estimated", "%.3f", card=True, compare=132),
    Field("energy_source", "energy from", kind="text", card=True,
          help="the counter energy_mj_per_image came from (RAPL, NVML), or 'not available: why'"),
    Field("best_latency_ms", "latency, best runtime (ms)", "ms", "CPU batch-1 median latency in the fastest runtime "
          "that runs this model here and gives PyTorch's top-1 on ≥ 99.5 % of test images (best_runtime; every "
          "runtime's figures under deploy)", "%.3f", card=True, compare=136, cost_axis="latency, best runtime",
          cli=Cli("best ms", 8, ".2f", commands=("runs",))),
    Field("best_runtime", "best runtime", kind="text", card=True, compare=137,
          help="the runtime of best_latency_ms: eager, onnxruntime, openvino or compile (torch.compile with "
               "freezing); *_cuda on the GPU"),
    Field("best_throughput", "best-runtime img/s", "images/s", "CPU images per second at throughput_batch in "
          "best_runtime", "%.1f"),
    Field("best_energy_mj_per_image", "best-runtime energy (mJ/image)", "mJ", "energy per image in best_runtime, "
          "from the hardware counter; blank where none is readable", "%.3f"),
    Field("best_artefact_runtime", "download runtime", kind="text", card=True,
          help="the fastest verified runtime with a file to ship (model.onnx, OpenVINO IR, or the bundle for eager):"
               " what 'Download for the best runtime' gives"),
    Field("deploy", "runtimes", kind="json", table=False,
          help="per runtime (eager, onnxruntime, openvino, compile; *_cuda on the GPU): latency, throughput, load, "
               "energy, the artefact and its top-1 agreement with PyTorch on verified_images test images "
               "(verified: ≥ 99.5 %), or not_available with the reason (e.g. not installed on this machine)"),
    Field("deploy_paired_runtime", "paired in runtime", kind="text",
          help="the runtime deploy_paired_speedup was timed in: this run's best download runtime, its start "
               "exported to it too, so the runtime's own gain is not credited to compression"),
    Field("deploy_paired_speedup", "x faster than start, same runtime", "x", "CPU batch-1 speed-up over the start, "
          "both in deploy_paired_runtime, timed interleaved", "%.2fx", compare=142),
    Field("start_x_fewer_macs", "x fewer MACs than start", "x", "the start's MACs ÷ this run's", "%.2fx"),
    Field("speedup_per_mac_cut", "speed-up ÷ MAC cut", "", "deploy_paired_speedup ÷ start_x_fewer_macs: the share of "
          "the MAC reduction realised as batch-1 speed in that runtime (1.0: as fast as its MACs); blank without a "
          "MAC cut", "%.2f", compare=143),
    Field("eager_speedup_per_mac_cut", "speed-up ÷ MAC cut (eager)", "", "paired_speedup ÷ start_x_fewer_macs, in "
          "PyTorch eager", "%.2f"),
    Field("load_avg", "load while timed", "", "the 1-minute load average while latency_ms was timed (the higher "
          "of its start and end)", "%.2f"),
    Field("cpu_share", "CPU share while timed", _FRACTION, "this process's CPU time ÷ (wall time × timing "
          "threads) while latency_ms was timed: well below 1, it waited for its cores", "%.2f"),
    Field("others_cpu", "other processes' CPU while timed", "cores", "cores' worth of CPU time other processes "
          "used while latency_ms was timed (system-wide busy time less this process's, hypervisor steal included)",
          "%.2f"),
    Field("loaded", "timed under load", kind="bool", help="the load average was above the number of CPUs, or other "
          "processes took cores the timing threads needed (others_cpu above the CPUs left free + 0.25), while "
          "latency_ms was timed: the figure is suspect (also in Compare's warnings)"),
    Field("paired_threads", "paired threads", "threads", "CPU threads the paired speed-up was timed on", "%d"),
    Field("paired_threads_fallback", "paired fallback", kind="text",
          help="why the paired speed-up was timed on 1 thread instead of threads: the load left too few free "
               "cores, where threads waiting for a core skew each side differently"),
    Field("paired_loaded", "paired under load", kind="bool",
          help="the load average was above the number of CPUs, or other processes took cores the timing threads "
               "needed, while the paired speed-up was timed"),
    Field("latency_p90_ms", "latency p90 (ms)", "ms", "CPU, batch 1, 90th percentile", "%.3f"),
    Field("latency_cv", "latency CV", "", "spread of the repeated latency measurements (standard deviation ÷ "
          "mean); above ~0.1 the machine was busy while this run was timed", "%.3f"),
    Field("paired_speedup", "x faster than its start", "x", "CPU batch-1 speed-up over the model this run started "
          "from, in the same runtime, timed interleaved in this run's job (INT8: against its start in fp32 under "
          "ONNX Runtime, equal to int8_speedup)", "%.2fx"),
    Field("int8_speedup", "INT8 x faster than fp32 ORT", "x", "the quantised model against the same model in "
          "fp32, both in ONNX Runtime and timed interleaved: the gain of quantisation alone", "%.2fx"),
    Field("int8_agreement", "INT8 agrees with its FP32", _FRACTION, "share of test images on which the INT8 "
          "model's top-1 answer equals its own FP32 model's (the model it was quantised from, run in PyTorch): "
          "the fidelity of quantisation alone; target ≥ 0.97", "%.4f", card=True, compare=148),
    Field("int8_format", "INT8 format", kind="text", card=True,
          help="qdq (U8S8), qdq_reduce_range (7-bit weights), qdq_s8s8, qoperator (ONNX Runtime) or openvino "
               "(NNCF, run by OpenVINO); method.params.format auto picks the fastest on this CPU whose "
               "validation agreement meets 0.97 at 95 % confidence (its one-sided Wilson lower bound; "
               "int8_format_reason)"),
    Field("int8_val_agreement", "INT8 val agreement", _FRACTION, "share of validation images on which the INT8 "
          "model's top-1 equals its FP32 model's, measured while format auto chose the format (the floor is judged "
          "on its 95 % lower bound: quantization.auto records the images, the count and the bound)", "%.4f"),
    Field("int8_format_reason", "why this INT8 format", kind="text", card=True,
          help="format auto: the format kept and why (the fastest meeting the agreement floor; where none did with "
               "every layer INT8, the one meeting it with the fewest MACs kept FP32, or the most faithful found "
               "where no count of FP32 layers met it), with each format tried and its validation agreement and, where the floor was judged on it, its 95 % lower "
               "bound"),
    Field("int8_cpu", "CPU INT8 level", kind="text", card=True,
          help="the timing CPU's INT8 instructions from /proc/cpuinfo: amx, vnni (no U8S8 saturation), avx512 or "
               "avx2 (U8S8 can saturate: reduce_range, S8S8 or OpenVINO keep accuracy); int8_cpu_note says what "
               "it implies"),
    Field("int8_fp32_layers", "layers kept FP32", kind="json", card=True,
          help="the layers left in FP32 besides the first and last (keep_first_last_fp32), the most sensitive "
               "(lowest SQNR) first: by format auto where no format met the 0.97 agreement floor (at 95 % "
               "confidence) with every layer INT8 (int8_format_reason says why), then by an accuracy limit (max_drop_pt); empty: every layer is "
               "INT8"),
    Field("int8_fp32_weight_share", "FP32 weights' share of INT8 file", _FRACTION, "share of the INT8 ONNX file's "
          "bytes that are FP32 weights: the first and last layers (keep_first_last_fp32), int8_fp32_layers, and any "
          "layer its quantiser left FP32 (quantization.weight_storage names them; NNCF's skipped squeeze-and-excitation "
          "layers are stored INT8 and computed FP32, listed there as int8_weight_only)", "%.3f", card=True),
    Field("int8_val_drop_pt", "INT8 validation drop (pt)", "points", "accuracy lost to INT8 on the validation "
          "split where max_drop_pt was set (negative: gained)", "%+.2f"),
    Field("int8_limit_met", "INT8 limit met", kind="bool", help="whether the INT8 model kept within max_drop_pt; "
          "false: no count of FP32 layers met it, and the smallest drop found was kept"),
    Field("speedup_vs_eager_start", "x faster than eager start", "x", "INT8 (ONNX Runtime) against the model it "
          "started from run eagerly in PyTorch, timed interleaved: quantisation and the change of runtime together "
          "(not credited as x faster)", "%.2fx"),
    Field("throughput", "CPU img/s", "images/s", "images per second on the CPU at throughput_batch", "%.1f",
          card=True),
    Field("throughput_batch", "CPU batch", "images", "images per batch of the CPU throughput and the inference "
          "memory", "%d", card=True),
    Field("activation_peak_bytes", "inference memory (bytes)", "bytes", "peak bytes held at once by the input "
          "batch (throughput_batch images) and the activations of one forward, weights excluded: counted tensor by "
          "tensor in PyTorch in the job's own process (exact and cheap: one forward, no second process to start); "
          "scratch memory inside a kernel is not counted. Blank for a model another runtime runs (INT8 under ONNX "
          "Runtime)", "%d", card=True),
    Field("latency_device", "timed on", kind="text", card=True,
          help="the device of latency_ms, throughput and the speed-ups: always the CPU (GPU timings are gpu_*)"),
    Field("threads", "timing threads", "threads", "CPU threads of every CPU timing (PyTorch and ONNX Runtime)", "%d",
          card=True),
    Field("cpu_model", "CPU", kind="text", card=True, help="the CPU timed on (/proc/cpuinfo's model name)"),
    Field("gpu_latency_ms", "GPU latency (ms)", "ms", "GPU (gpu_name), batch 1, median", "%.3f", card=True),
    Field("gpu_name", "GPU", kind="text", card=True, help="the GPU of the gpu_* timings; blank: none was present"),
    Field("gpu_x_faster", "GPU x faster", "x", "GPU batch-1 speed-up over the base (paired where the jobs timed "
          "it interleaved)", "%.2fx", source="base"),
    Field("gpu_throughput", "GPU img/s", "images/s", "images per second on the GPU at gpu_throughput_batch", "%.1f"),
    Field("gpu_throughput_batch", "GPU batch", "images", "images per batch of the GPU throughput and memory", "%d"),
    Field("gpu_peak_mem_bytes", "GPU peak mem (bytes)", "bytes", "torch.cuda.max_memory_allocated during the "
          "batched GPU runs (gpu_throughput_batch images) minus what was allocated before them (the weights): "
          "activations and kernel workspace", "%d"),
    Field("train_seconds", "train time (s)", "s", "wall time of the job's training and fine-tuning", "%.1f"),
    Field("phase_seconds", "time per phase (s)", kind="json", table=False,
          help="the job's wall seconds by phase: data (loading, the starting model), train (training epochs with "
               "their validation), method (the rest of the method: cutting, calibrating, searching), evaluate (the "
               "test set, and the start on it), export (bundle and ONNX files), measure (latency, throughput, "
               "paired speed-ups)"),
    Field("bn_recalibration_images", "BN re-estimated on", "images",
          "training images (augmented as in training) the batch-norm running statistics were re-estimated on after each cut, "
          "before fine-tuning or scoring (train.bn_recalibration_images); 0: off, or nothing was cut", "%d",
          card=True),
    Field("training_lr", "training lr", help="the peak learning rate the model's weights were trained at: its own "
          "training phase's (a base, a control, a student), else its start's, carried along a chain of "
          "compressions; blank where no run says it (an imported model). A recovery fine-tune rewinds to it", format="%g",
          card=True),
    Field("recovery_lr", "recovery lr", help="the learning rate of the recovery fine-tune after the cut (the last, "
          "where there were several)", format="%g", card=True),
    Field("recovery_lr_source", "recovery lr from", kind="text", card=True,
          help="why recovery_lr: finetune_lr (set by the job), rewind (the start's training_lr: learning-rate "
               "rewinding, Renda et al. 2020, the default) or tenth (a tenth of the training rate: the start's record "
               "names no training rate, or the method's policy, e.g. QAT's)"),
    Field("recipe", "training recipe", kind="json", table=False, card=True,
          help="how the job trained, every choice resolved: optimizer, peak lr and epochs of each phase (train, "
               "finetune, ...), global batch and batch per device, schedule and warm-up, weight decay and what it "
               "applies to, label smoothing, augmentation, autocast dtype, channels_last, torch.compile, zero-init "
               "of residual blocks, device, DDP devices and SyncBatchNorm, and the family recipe the choices the spec "
               "left open came from (defaults: a ViT's is AdamW); blank for a job that trained nothing"),
    # -- where and on what -----------------------------------------------------------------------
    Field("device", "trained on", kind="text", card=True,
          help="the device the job trained and evaluated on; timings name theirs (latency_device, gpu_name)"),
    Field("num_classes", "classes", help="classes of the dataset (outputs of the model)", card=True),
    Field("input_size", "input size", "[C, H, W]", "the input the model takes", kind="json", table=False,
          card=True),
    Field("test_images", "test images", help="images the test metrics were computed on", card=True),
    Field("val_images", "validation images", help="images the best epoch (and an INT8 accuracy limit) was judged "
          "on (data.val_limit caps them)", card=True),
    Field("method_params", "parameters", kind="json", card=True, help="the method's parameters (defaults filled in)"),
    Field("finished", "finished", "epoch seconds", "when the run finished", kind="time"),
    # -- composed by the views from the columns above --------------------------------------------
    Field("pareto", "Pareto", kind="bool", source="view", table=False, compare=32,
          help="on the Pareto front of accuracy against the chosen cost: no run in view is both cheaper and "
               "more accurate"),
    Field("delta_ci", "Δ 95% CI (pt)", kind="text", source="view", table=False, compare=18,
          help="where Δ accuracy would lie with another draw of test images: from the answers that flipped "
               "against the base in this run's job (paired). An interval spanning 0 means the difference is "
               "within test-set noise. Blank for the base and for chains of runs"),
    Field("x_faster_range", "x faster range", kind="text", source="view", table=False, compare=30,
          help="the slowest and fastest of the paired rounds (multiplied along a chain of runs): a range that "
               "spans 1x means the speed-up is within timing noise"),
)


def get(name: str) -> Field:
    return next(f for f in FIELDS if f.name == name)


def table_fields() -> list[Field]:
    """The results table's columns, in order."""
    return [f for f in FIELDS if f.table and f.source != "view"]


def compare_defaults() -> list[str]:
    """Compare's default columns, in order."""
    return [f.name for f in sorted((f for f in FIELDS if f.compare is not None), key=lambda f: f.compare)]


def card_keys() -> list[str]:
    """The record fields the model card carries, in order."""
    return [f.name for f in FIELDS if f.card]


def cost_axes() -> list[Field]:
    """The costs accuracy can be plotted against (and its Pareto front taken along)."""
    return [f for f in FIELDS if f.cost_axis]


def cli_columns(command: str) -> list[Field]:
    """The fields ``engine <command>`` prints as columns, in order (``runs`` or ``compare``)."""
    return sorted((f for f in FIELDS if f.cli and command in f.cli.commands), key=lambda f: f.cli.order)


def markdown() -> str:
    """docs/RECORD.md: every field with its unit, meaning and where it shows."""
    def cell(s: str) -> str:
        return s.replace("|", "\\|")

    def shown(f: Field) -> str:
        where = []
        if f.table:
            where.append("table")
        if f.compare is not None:
            where.append("Compare")
        elif f.table and f.more:
            where.append("Compare (More columns)")
        if f.cost_axis:
            where.append(f"cost axis `{f.cost_axis}`")
        if f.card:
            where.append("card")
        if f.cli:
            where += [f"`engine {c}`" for c in f.cli.commands]
        return ", ".join(where)

    source = {"record": "record", "base": "base-relative", "view": "view"}
    lines = ["# The result record", "",
             "Generated from `engine/record.py` by `python -m engine.record`; do not edit by hand.", "",
             "A run's result record (`result.json`, the store's `record` column, the last line of "
             "`python -m engine run`) is one flat JSON object. The fields below are those the results table, "
             "Compare, the model card (`card.json`) and the CLI show; methods add their own keys beside them. "
             "*Source*: `record` is a key of the record; `base-relative` is derived in the results table "
             "against the run's base (the root of its parent chain); `view` is composed by Compare or the CLI.",
             "", "| field | label | unit | kind | source | shown in | meaning |",
             "|---|---|---|---|---|---|---|"]
    for f in FIELDS:
        unit = cell(f.unit) + (f" (Compare shows ×{f.shown_scale:g})" if f.shown_scale != 1 else "")
        lines.append(f"| `{f.name}` | {cell(f.label)} | {unit} | {f.kind} | {source[f.source]} | "
                     f"{shown(f)} | {cell(f.help)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write docs/RECORD.md (``--check``: exit 1 where the committed file differs)."""
    argv = sys.argv[1:] if argv is None else argv
    text = markdown()
    if "--check" in argv:
        stale = not DOC.is_file() or DOC.read_text(encoding="utf-8") != text
        if stale:
            print(f"{DOC} is stale: run python -m engine.record", file=sys.stderr)
        return int(stale)
    DOC.write_text(text, encoding="utf-8")
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
