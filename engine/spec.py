"""Job specs: plain dataclasses, validated up front with messages that name the field.

A spec is JSON. ``JobSpec.from_dict`` rejects unknown keys, wrong types and impossible values
before any work starts; ``to_dict`` round-trips it. These checks are structural: they need no
registry and no torch. Whether the dataset, architecture and method exist and the method's
parameters are right is ``engine.validation.check_spec``, which every entry point uses.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import SpecError  # lives lower (other layers raise it); engine.spec.SpecError stays the usual name

# Bounds on what a spec may hold, so that a hostile or mistaken one is refused up front, not by the
# table, the store or the interpreter later (a 50 MB job name once made the Jobs table take 74 s).
MAX_NAME_CHARS = 200          # a job's name: shown in tables, logs and pipeline steps' names
LABELS = ("name", "experiment", "group")   # a job's plain-text labels: each at most MAX_NAME_CHARS
MAX_DEPTH = 32                # nesting of objects and lists (a spec needs 5: pipeline step params)
MAX_SPEC_BYTES = 1 << 20      # a spec's JSON text: real ones are a few KB
MAX_SEED = 2**32 - 1          # numpy's seeds are 32-bit; torch's 64-bit: the narrower one bounds both
MAX_RECALIBRATION_IMAGES = 100_000  # batch-norm statistics settle within a few thousand images


@dataclass
class DataSpec:
    name: str = "fashion-mnist"
    path: str | None = None          # dataset location (dir, zip, or torchvision root)
    image_size: int | None = None    # None: the dataset's native size (image folders: capped at 224 px)
    val_fraction: float = 0.1        # carved from train, seeded
    limit: int | None = None         # cap on train images (quick runs)
    val_limit: int | None = None     # cap on validation images (quick runs; the best epoch is chosen on them)
    test_limit: int | None = None    # cap on test images (quick runs)
    batch_size: int | None = None    # the global batch (split across train.devices); None: 64 on CPU, 512 on CUDA
    augment: bool = True
    seed: int = 0                    # which images form the validation split (train.seed: what training draws)


@dataclass
class ModelSpec:
    arch: str | None = None
    from_run: str | None = None
    checkpoint: str | None = None
    small_input: bool | None = None  # None: automatic for inputs <= 64 px
    pretrained: str | None = None    # local file of ImageNet weights (state dict)
    freeze_backbone: bool = False
    file: str | None = None          # your own architecture: "my_net.py:build" or a torch.export "net.pt2"
    builder_kwargs: dict[str, Any] | None = None  # a Python file's builder's keyword arguments
    weights: str | None = None       # a state dict loaded into the Python file's model (else it trains from scratch)
    normalisation: str | None = None  # how a program's / weights' inputs were normalised: dataset, imagenet, MEAN/STD
    trust_code: bool = False         # the explicit opt-in to run a Python model file's code


@dataclass
class MethodSpec:
    name: str = "baseline"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainSpec:
    epochs: int = 3
    optimizer: str | None = None     # sgd | adamw; None: the architecture family's recipe (training.RECIPES)
    lr: float | None = None          # None: sgd 0.1 x batch/256, adamw 1e-3; recovery: engine.recovery_lr
    momentum: float = 0.9
    weight_decay: float | None = None    # None: the recipe's (sgd 5e-4; ViTs from scratch, AdamW 0.05)
    label_smoothing: float | None = None  # None: the recipe's (sgd 0; ViTs 0.1)
    warmup_epochs: float = 0.5
    amp: str = "auto"                # auto | bf16 | fp16 | off; fp16 needs CUDA (auto: bf16 on CUDA, fp32 on CPU;
    #                                  bf16 on CPU: opt-in, faster on AVX-512 BF16 / AMX, training.amp_dtype)
    channels_last: bool | None = None  # None: on for CUDA and for CPU bf16 autocast
    compile: bool = False            # torch.compile the training model; `make bench-gpu` measures whether it pays
    zero_init_residual: bool = False  # ResNets from scratch: last BN of each block at 0 (slower in short runs)
    sync_bn: bool | None = None      # None: on with devices > 1 (BatchNorm over the global batch)
    device: str = "auto"             # auto | cpu | cuda | cuda:N
    devices: int = 1                 # >1: DistributedDataParallel, data.batch_size split across them
    seed: int = 0                    # everything random in training: fresh weights, batch order, augmentation, dropout
    bn_recalibration_images: int = 512  # after every cut: batch-norm statistics re-estimated on these; 0 = off


@dataclass
class MeasureSpec:
    threads: int | None = None       # CPU threads for timing; None: the job's share of the cores
    latency_runs: int = 30
    warmup_runs: int = 5
    batch_size: int = 64             # throughput batch on CPU
    gpu_batch_size: int = 256        # throughput batch on CUDA
    paired_rounds: int = 5           # speed-up vs the starting model timed interleaved; 0: off
    onnx: bool = True
    deploy: bool = True              # export, verify and time the result in every runtime available (engine.deploy)
    verify_images: int = 1000        # test images each deployed artefact is checked against PyTorch on
    compile: bool = False            # also torch.compile with freezing on the CPU (takes minutes: off by default)
    compile_timeout_s: int = 600     # give up on torch.compile after this long


@dataclass
class TrackSpec:
    mlflow: bool = False             # log the finished run to MLflow (engine.tracking); SLIMBENCH_MLFLOW=1 forces it


@dataclass
class JobSpec:
    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    method: MethodSpec = field(default_factory=MethodSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    measure: MeasureSpec = field(default_factory=MeasureSpec)
    track: TrackSpec = field(default_factory=TrackSpec)
    name: str | None = None
    experiment: str | None = None   # what the user calls this study ("ResNet-18 on my shoes")
    group: str | None = None        # a subset of it ("pruning sweep"); both filter Jobs, Compare and the CLI

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: Any) -> "JobSpec":
        if not isinstance(raw, dict):
            raise SpecError("spec", f"must be a JSON object, got {type(raw).__name__}")
        check_depth(raw)
        sections = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in set(raw) - set(sections))
        if unknown:
            raise SpecError(short_key(unknown[0]), f"unknown section; valid: {', '.join(sections)}")
        kwargs: dict[str, Any] = {}
        for name, f in sections.items():
            if name not in raw:
                continue
            if name in LABELS:
                kwargs[name] = _check_type(name, raw[name], "str | None")
                continue
            kwargs[name] = _build(f.default_factory, raw[name], name)  # type: ignore[misc]
        spec = cls(**kwargs)
        spec.validate()
        return spec

    @classmethod
    def from_json(cls, text: str | bytes) -> "JobSpec":
        """A spec from JSON text, or from a file's bytes (which must be UTF-8)."""
        return cls.from_dict(parse_json(text))

    @classmethod
    def from_file(cls, path: str | Path) -> "JobSpec":
        p = Path(path)
        if not p.is_file():
            raise SpecError("spec", f"file not found: {p}")
        return cls.from_json(p.read_bytes())

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def replace(self, **sections: Any) -> "JobSpec":
        """A copy with whole sections or nested fields replaced, e.g. replace(method=MethodSpec(...))."""
        d = self.to_dict()
        for k, v in sections.items():
            d[k] = dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v
        return JobSpec.from_dict(d)

    # -- validation ---------------------------------------------------------------------------
    def validate(self) -> None:
        """The structural checks (ranges, choices, files, one model source); registries: engine.validation."""
        d, m, t, ms = self.data, self.model, self.train, self.measure
        if d.image_size is not None and not 4 <= d.image_size <= 1024:
            raise SpecError("data.image_size", f"must be between 4 and 1024 pixels, got {d.image_size}")
        if not 0.0 <= d.val_fraction < 1.0:
            raise SpecError("data.val_fraction", f"must be in [0, 1), got {d.val_fraction}")
        for name in ("limit", "val_limit", "test_limit"):
            v = getattr(d, name)
            if v is not None and v < 1:
                raise SpecError(f"data.{name}", f"must be a positive number of images, got {v}")
        if d.batch_size is not None and not 1 <= d.batch_size <= 65536:
            raise SpecError("data.batch_size", f"must be between 1 and 65536, got {d.batch_size}")
        if d.path is not None and not _exists(d.path):
            raise SpecError("data.path", f"not found: {_shown_path(d.path)}")

        sources = [k for k in ("arch", "from_run", "checkpoint", "file") if getattr(m, k)]
        if len(sources) != 1:
            raise SpecError("model", "give exactly one of arch, from_run, checkpoint, file"
                            + (f" (got {', '.join(sources)})" if sources else ""))
        _check_model_file(m)
        for name in ("checkpoint", "pretrained", "weights"):
            v = getattr(m, name)
            if v and not _exists(v, file=True):
                raise SpecError(f"model.{name}", f"file not found: {_shown_path(v)}")
        if m.pretrained and not m.arch:
            raise SpecError("model.pretrained", "ImageNet weights apply to a fresh arch; give model.arch")
        if m.from_run is not None and not _is_run_id(m.from_run):
            raise SpecError("model.from_run", f"not a run id: {short_repr(m.from_run)}")

        if t.epochs < 0 or t.epochs > 10000:
            raise SpecError("train.epochs", f"must be between 0 and 10000, got {t.epochs}")
        if t.optimizer not in (None, "sgd", "adamw"):
            raise SpecError("train.optimizer", f"unknown optimizer {short_repr(t.optimizer)}; valid: sgd, adamw")
        if t.lr is not None and not 0 < t.lr <= 10:
            raise SpecError("train.lr", f"must be in (0, 10], got {t.lr}")
        if not 0 <= t.momentum < 1:
            raise SpecError("train.momentum", f"must be in [0, 1), got {t.momentum}")
        if t.weight_decay is not None and not 0 <= t.weight_decay < 1:
            raise SpecError("train.weight_decay", f"must be in [0, 1), got {t.weight_decay}")
        if t.label_smoothing is not None and not 0 <= t.label_smoothing < 1:
            raise SpecError("train.label_smoothing", f"must be in [0, 1), got {t.label_smoothing}")
        warmup_max = max(t.epochs, 1)
        if not 0 <= t.warmup_epochs <= warmup_max:
            raise SpecError("train.warmup_epochs", f"must be between 0 and {warmup_max} (train.epochs: a longer "
                            f"warm-up never reaches the learning rate, so nothing is learnt), got {t.warmup_epochs:g}")
        if t.amp not in ("auto", "bf16", "fp16", "off"):
            raise SpecError("train.amp", f"unknown value {short_repr(t.amp)}; valid: auto, bf16, fp16, off")
        index = t.device[5:] if t.device.startswith("cuda:") else ""
        if not (t.device in ("auto", "cpu", "cuda") or (index.isascii() and index.isdigit())):  # not "cuda:²"
            raise SpecError("train.device", f"unknown device {short_repr(t.device)}; valid: auto, cpu, cuda, cuda:N")
        if not 1 <= t.devices <= 64:
            raise SpecError("train.devices", f"must be between 1 and 64, got {t.devices}")
        if not (t.bn_recalibration_images == 0 or 2 <= t.bn_recalibration_images <= MAX_RECALIBRATION_IMAGES):
            raise SpecError("train.bn_recalibration_images", f"must be 0 (off) or between 2 and "
                            f"{MAX_RECALIBRATION_IMAGES:,} (a batch norm needs two images to estimate a variance), "
                            f"got {t.bn_recalibration_images}")
        if d.batch_size is not None and d.batch_size < 2 * t.devices:
            raise SpecError("data.batch_size", f"is the global batch, split across train.devices ({t.devices}); "
                            f"BatchNorm needs at least 2 images per device: use at least {2 * t.devices}")
        if t.device == "cpu" and t.amp == "fp16":
            raise SpecError("train.amp", "fp16 autocast is CUDA-only and train.device is cpu: use auto, bf16 or off")
        if t.sync_bn and t.devices == 1:
            raise SpecError("train.sync_bn", "synchronises BatchNorm across DDP processes, and train.devices is 1: "
                                             "leave it unset, or set train.devices above 1")
        if t.zero_init_residual and not (m.arch and not m.pretrained):
            raise SpecError("train.zero_init_residual", "zeroes the last BatchNorm of each residual block of a model "
                            "trained from scratch; this model starts from trained weights (model.from_run, "
                            "model.checkpoint or model.pretrained): leave it unset")
        for where, seed in (("data.seed", d.seed), ("train.seed", t.seed)):
            if not 0 <= seed <= MAX_SEED:
                raise SpecError(where, f"must be between 0 and {MAX_SEED} (2**32 - 1), got {short_repr(seed)}")
        for label in LABELS:
            v = getattr(self, label)
            if v is not None and len(v) > MAX_NAME_CHARS:
                raise SpecError(label, f"must be at most {MAX_NAME_CHARS} characters, got {len(v):,}")

        if ms.threads is not None and not 1 <= ms.threads <= 512:
            raise SpecError("measure.threads", f"must be between 1 and 512, got {ms.threads}")
        if not 1 <= ms.latency_runs <= 10000:
            raise SpecError("measure.latency_runs", f"must be between 1 and 10000, got {ms.latency_runs}")
        if not 0 <= ms.warmup_runs <= 1000:
            raise SpecError("measure.warmup_runs", f"must be between 0 and 1000, got {ms.warmup_runs}")
        if not 0 <= ms.paired_rounds <= 1000:
            raise SpecError("measure.paired_rounds", f"must be between 0 and 1000, got {ms.paired_rounds}")
        for name in ("batch_size", "gpu_batch_size"):
            v = getattr(ms, name)
            if not 1 <= v <= 65536:
                raise SpecError(f"measure.{name}", f"must be between 1 and 65536, got {v}")
        if not 1 <= ms.verify_images <= 1_000_000:
            raise SpecError("measure.verify_images", f"must be between 1 and 1000000, got {ms.verify_images}")
        if not 10 <= ms.compile_timeout_s <= 7200:
            raise SpecError("measure.compile_timeout_s", f"must be between 10 and 7200, got {ms.compile_timeout_s}")


def _check_model_file(m: ModelSpec) -> None:
    """model.file and its companions: the file exists, a Python file comes with the opt-in to run it."""
    python = bool(m.file) and not m.file.endswith(".pt2")
    if m.file:
        path, sep, builder = m.file.rpartition(":") if python else (m.file, "", "")
        if python and not (sep and path.endswith(".py") and builder.isidentifier()):
            raise SpecError("model.file", f"expected FILE.py:BUILDER (e.g. my_net.py:build) or a torch.export "
                                          f"program FILE.pt2, got {short_repr(m.file)}")
        if not _exists(path, file=True):
            raise SpecError("model.file", f"file not found: {_shown_path(path)}")
        if python and not m.trust_code:
            raise SpecError("model.trust_code", f"model.file {short_repr(m.file)} is Python code, and building the "
                            "model runs it with your permissions: set model.trust_code to true (CLI: "
                            "--trust-model-code) only for a file you trust; a torch.export program (.pt2) needs no "
                            "such trust")
    trained = bool(m.file) and (not python or m.weights is not None)  # weights whose inputs were normalised somehow
    for name, ok in (("builder_kwargs", python), ("weights", python), ("normalisation", trained)):
        if getattr(m, name) is not None and not ok:
            raise SpecError(f"model.{name}", "applies to " + ("a Python model file (model.file FILE.py:BUILDER)"
                                                              if name != "normalisation" else
                                                              "a torch.export program or model.weights (a model "
                                                              "trained here is normalised with its data's own statistics)"))


def parse_json(text: str | bytes) -> Any:
    """JSON text (or UTF-8 bytes) as Python values; a SpecError for anything else: malformed JSON,
    another encoding, binary data, or nesting deeper than Python's parser can follow."""
    if len(text) > MAX_SPEC_BYTES:
        raise SpecError("spec", f"{len(text):,} bytes long; a job spec is at most {MAX_SPEC_BYTES:,} (a few KB "
                                "is usual): is this the right file?")
    if isinstance(text, (bytes, bytearray)):
        text = _utf8(bytes(text))
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise SpecError("spec", f"malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise SpecError("spec", f"nested too deeply (a spec needs no more than {MAX_DEPTH} levels)") from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise SpecError("spec", f"unreadable JSON: {str(e)[:200]}") from None


def _utf8(data: bytes) -> str:
    # UTF-16 shows as a byte-order mark, or as a zero byte beside each ASCII character ('{' = 7b 00)
    if data.startswith((b"\xff\xfe", b"\xfe\xff")) or (b"\x00" in data[:4] and b"{" in data[:4]):
        raise SpecError("spec", "the file is UTF-16 text; save it as UTF-8 (e.g. iconv -f UTF-16 -t UTF-8)")
    try:
        return data.decode("utf-8-sig")  # a UTF-8 byte-order mark (Windows editors) is harmless
    except UnicodeDecodeError as e:
        raise SpecError("spec", f"not UTF-8 text (byte {e.start} is 0x{data[e.start]:02x}): a job spec is a "
                                "JSON file saved as UTF-8") from None


def check_depth(value: Any) -> None:
    """Refuse objects and lists nested deeper than MAX_DEPTH (iteratively: no recursion to exhaust)."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise SpecError("spec", f"nested more than {MAX_DEPTH} levels deep; a spec needs no more than a few")
        children = v.values() if isinstance(v, dict) else v if isinstance(v, (list, tuple)) else ()
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list, tuple)))


def finite_float(where: str, value: int | float) -> float:
    """``value`` as a float, refused when NaN, infinite (Python's JSON reads both) or beyond a float."""
    try:
        f = float(value)
    except OverflowError:
        raise SpecError(where, f"must be a finite number, got an integer of {value.bit_length()} bits") from None
    if not math.isfinite(f):
        raise SpecError(where, f"must be a finite number, got {value}")
    return f


def _exists(path: str, file: bool = False) -> bool:
    """Whether ``path`` names an existing folder or file; False for names no file system takes (too
    long, a NUL byte) rather than an OSError."""
    try:
        p = Path(path).expanduser()
        return p.is_file() if file else p.exists()
    except (OSError, ValueError, RuntimeError):  # RuntimeError: "~nobody" has no home to expand
        return False


def _shown_path(path: str) -> str:
    return path if path.isprintable() and len(path) <= 300 else short_repr(path)


def short_key(key: str, limit: int = 60) -> str:
    """An unknown key as a field name in a message, cut to ``limit`` characters."""
    return key if len(key) <= limit else f"{key[:limit]}…"


def short_repr(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: error messages never carry a hostile value whole."""
    if isinstance(value, int) and value.bit_length() > 256:  # repr refuses integers past 4300 digits
        return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"


def _is_run_id(s: str) -> bool:
    return isinstance(s, str) and 0 < len(s) <= 64 and all(c.isalnum() or c in "-_" for c in s)


def _build(factory: Any, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise SpecError(where, f"must be an object, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(factory)}
    unknown = sorted(str(k) for k in set(raw) - set(fields))
    if unknown:
        raise SpecError(f"{where}.{short_key(unknown[0])}", f"unknown field; valid: {', '.join(fields)}")
    kwargs = {k: _check_type(f"{where}.{k}", v, fields[k].type) for k, v in raw.items()}
    return factory(**kwargs)


def _check_type(where: str, value: Any, annotation: Any) -> Any:
    """Check a JSON value against a field's annotation string ('int | None', 'float', ...)."""
    ann = str(annotation).replace("typing.", "")
    allowed = [a.strip() for a in ann.split("|")]
    if value is None:
        if "None" in allowed:
            return None
        raise SpecError(where, "must not be null")
    for a in allowed:
        if a == "bool" and isinstance(value, bool):
            return value
        if a == "int" and isinstance(value, int) and not isinstance(value, bool):
            return value
        if a == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return finite_float(where, value)
        if a == "str" and isinstance(value, str):
            return value
        if a.startswith("dict") and isinstance(value, dict):
            return value
    want = " or ".join(a for a in allowed if a != "None")
    raise SpecError(where, f"must be {want}, got {type(value).__name__} {short_repr(value)}")
