"""Checkpoint bundles: one ``.pt`` that rebuilds the model without the run that made it.

The bundle is a plain dict of str/int/float/list/tensor, so ``torch.load(weights_only=True)``
reads it. It carries the arch and its constructor args, a *manifest* of every conv / linear /
batch-norm layer (so pruned, factorised or low-rank models rebuild in their new shape), the
preprocessing metadata (input size, normalisation, class names), the metrics, and the weights.
Mostly-zero weights are stored packed (bitmask + non-zero values) so size on disk honestly
shrinks with sparsity.
"""
from __future__ import annotations

import io
import math
import os
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torchvision.models.convnext import LayerNorm2d

from . import models, user_models
from .attention import HeadAttention
from .spec import SpecError

FORMAT = "slimbench-bundle"
VERSION = 1
PACK_MIN_SPARSITY = 0.3   # below this, a bitmask + values is no smaller than the dense tensor

# Bounds a bundle is checked against before anything is built from it (a crafted one asked for a
# 1,000,000-class head, 2.8 GB, or 2,000,000 layers). Each is far above any real model here: DenseNet-121
# has 246 manifest layers, 484 tensors and 190 KB of pickled structure for 1000 classes.
MAX_PICKLE_BYTES = 16 << 20      # a checkpoint's pickled structure, tensors aside (unpickling costs ~20x)
MAX_CLASSES = 100_000
MAX_MANIFEST_LAYERS = 20_000
MAX_TENSORS = 50_000
MAX_CHANNELS = 1 << 16           # channels / features of one layer
MAX_SEQUENTIAL = 4096            # children of one Sequential
MAX_GEOMETRY = 1024              # kernel size, stride, padding, dilation
PACKED_DTYPES = {"float32", "float16", "bfloat16", "float64"}


class BundleError(ValueError):
    """A checkpoint that cannot be used, with the reason."""


# --------------------------------------------------------------------------------------------
# Manifest: the shape of every layer that compression may change
# --------------------------------------------------------------------------------------------
# Batch norms by manifest type: BatchNorm1d follows a hidden Linear (CIFAR VGG-16-BN's classifier),
# and pruning that Linear shrinks it too.
BATCHNORMS: dict[str, type[nn.modules.batchnorm._BatchNorm]] = {"BatchNorm2d": nn.BatchNorm2d,
                                                                 "BatchNorm1d": nn.BatchNorm1d}
# Layer norms over channels (ConvNeXt's LayerNorm2d, a transformer's LayerNorm), one dimension only.
LAYERNORMS: dict[str, type[nn.LayerNorm]] = {"LayerNorm": nn.LayerNorm, "LayerNorm2d": LayerNorm2d}
MAX_PARAMETER_ELEMENTS = 1 << 28  # one loose parameter (a ViT-B/16 position embedding has 151,296)


def describe(m: nn.Module) -> dict[str, Any] | None:
    if isinstance(m, nn.Conv2d):
        return {"type": "Conv2d", "in_channels": m.in_channels, "out_channels": m.out_channels,
                "kernel_size": list(m.kernel_size), "stride": list(m.stride), "padding": list(m.padding),
                "dilation": list(m.dilation), "groups": m.groups, "bias": m.bias is not None}
    if isinstance(m, nn.Linear):
        return {"type": "Linear", "in_features": m.in_features, "out_features": m.out_features,
                "bias": m.bias is not None}
    if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
        return {"type": type(m).__name__, "num_features": m.num_features, "eps": m.eps, "momentum": m.momentum,
                "affine": m.affine}
    if isinstance(m, nn.LayerNorm) and len(m.normalized_shape) == 1:
        return {"type": type(m).__name__ if type(m) in (nn.LayerNorm, LayerNorm2d) else "LayerNorm",
                "num_features": m.normalized_shape[0], "eps": float(m.eps), "affine": m.elementwise_affine,
                "bias": m.bias is not None}
    if isinstance(m, HeadAttention):  # a pruned ViT's attention: its head count and size (its Linears follow)
        return {"type": "HeadAttention", "embed_dim": m.embed_dim, "num_heads": m.num_heads,
                "head_dim": m.head_dim, "bias": m.has_bias}
    if isinstance(m, nn.Sequential):
        return {"type": "Sequential", "length": len(m)}
    if isinstance(m, nn.Identity):
        return {"type": "Identity"}
    return None


def manifest(model: nn.Module) -> dict[str, dict[str, Any]]:
    out = {}
    for name, m in model.named_modules():
        d = describe(m) if name else None
        if d is not None:
            out[name] = d
        else:
            # Parameters a layer holds outside conv/linear/norm children (ConvNeXt's layer scale, a ViT's
            # class token): pruning shrinks some of them with the channels they scale.
            for pname, p in m.named_parameters(recurse=False):
                out[f"{name}.{pname}" if name else pname] = {"type": "Parameter", "shape": list(p.shape)}
    return out


def _make(d: dict[str, Any]) -> nn.Module:
    t = d["type"]
    if t == "Conv2d":
        return nn.Conv2d(d["in_channels"], d["out_channels"], tuple(d["kernel_size"]), tuple(d["stride"]),
                         tuple(d["padding"]), tuple(d["dilation"]), d["groups"], d["bias"])
    if t == "Linear":
        return nn.Linear(d["in_features"], d["out_features"], d["bias"])
    if t in BATCHNORMS:
        return BATCHNORMS[t](d["num_features"], d["eps"], d["momentum"], d["affine"])
    if t in LAYERNORMS:
        return LAYERNORMS[t](d["num_features"], d["eps"], d["affine"], bias=d["bias"])
    if t == "HeadAttention":
        return HeadAttention(d["embed_dim"], d["num_heads"], d["head_dim"], d["bias"])
    if t == "Parameter":
        return nn.Parameter(torch.zeros(d["shape"]))
    if t == "Sequential":
        return nn.Sequential(*[nn.Identity() for _ in range(d["length"])])
    if t == "Identity":
        return nn.Identity()
    raise BundleError(f"unknown layer type {t!r} in manifest")


def apply_manifest(model: nn.Module, man: dict[str, dict[str, Any]]) -> nn.Module:
    """Reshape/replace layers so ``model`` matches a manifest (parents before children)."""
    for name in sorted(man, key=lambda n: n.count(".")):
        d = man[name]
        parent_name, _, leaf = name.rpartition(".")
        try:
            parent = model.get_submodule(parent_name) if parent_name else model
        except AttributeError:
            raise BundleError(f"manifest names layer {name!r} whose parent does not exist") from None
        current = getattr(parent, leaf, None) if not leaf.isdigit() or not isinstance(parent, nn.Sequential) \
            else (parent[int(leaf)] if int(leaf) < len(parent) else None)
        if current is not None and (describe(current) if not isinstance(current, nn.Parameter)
                                    else {"type": "Parameter", "shape": list(current.shape)}) == d:
            continue
        new = _make(d)
        if isinstance(current, nn.Sequential) and d["type"] == "Sequential":
            # Same container kind, different length: keep existing children where they fit.
            kids = list(current.children())
            new = nn.Sequential(*(kids[i] if i < len(kids) else nn.Identity() for i in range(d["length"])))
        if isinstance(parent, nn.Sequential) and leaf.isdigit():
            idx = int(leaf)
            if idx >= len(parent):
                raise BundleError(f"manifest layer {name!r} is outside its container")
            parent[idx] = new
        else:
            setattr(parent, leaf, new)
    for name, m in model.named_modules():
        if isinstance(m, HeadAttention) and not m.consistent():
            raise BundleError(f"manifest layer {name!r} has {m.num_heads} heads of {m.head_dim} on a {m.embed_dim}-wide "
                              "stream, which its q/k/v/out_proj layers do not match")
    return model


# --------------------------------------------------------------------------------------------
# Packed sparse tensors
# --------------------------------------------------------------------------------------------
def pack(t: torch.Tensor) -> dict[str, Any]:
    flat = t.detach().cpu().reshape(-1)
    mask = flat != 0
    bits = np.packbits(mask.numpy())
    return {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch."),
            "mask": torch.from_numpy(bits), "values": flat[mask].clone()}


def unpack(p: dict[str, Any], name: str = "tensor") -> torch.Tensor:
    n = check_packed(name, p)
    mask = torch.from_numpy(np.unpackbits(p["mask"].numpy())[:n].astype(bool))
    if int(mask.sum()) != p["values"].numel():
        raise BundleError(f"damaged bundle: packed tensor {name!r} is corrupt: mask and values disagree")
    out = torch.zeros(n, dtype=getattr(torch, p["dtype"]))
    out[mask] = p["values"]
    return out.reshape(p["shape"])


# --------------------------------------------------------------------------------------------
# Save / load
# --------------------------------------------------------------------------------------------
def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temp file in the same folder + rename: a crash never leaves a half file visible."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def make_bundle(model: nn.Module, *, arch: str, num_classes: int, small_input: bool, meta: dict[str, Any],
                metrics: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    dense, packed = {}, {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        if v.is_floating_point() and v.numel() >= 64 and (v == 0).float().mean().item() >= PACK_MIN_SPARSITY:
            packed[k] = pack(v)
        else:
            dense[k] = v.clone()
    bundle = {"format": FORMAT, "version": VERSION, "arch": arch,
              "arch_kwargs": {"num_classes": int(num_classes), "small_input": bool(small_input),
                              "width": float(getattr(model, "slimbench_width", 1.0))},
              "meta": meta, "metrics": metrics or {}, "manifest": manifest(model),
              "state_dict": dense, "packed": packed, "extra": extra or {}}
    source = user_models.source_of(model)
    if source is not None:  # a user's architecture: how to rebuild it (engine.user_models)
        bundle["source"] = dict(source)
        if source["kind"] == "program":  # the graph as it now is (pruned, factorised ...), weights beside it
            try:
                blob = user_models.export_program(model, user_models.program_input_shape(model), source["name"])
            except user_models.UserModelError as e:
                raise BundleError(str(e)) from None
            bundle["source"]["program"] = torch.frombuffer(bytearray(blob), dtype=torch.uint8)
    return bundle


def save_bundle(bundle: dict[str, Any], path: Path) -> int:
    buf = io.BytesIO()
    torch.save(bundle, buf)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path).stat().st_size


def load_torch_file(path: str | Path, kind: str = "checkpoint") -> Any:
    """``torch.load`` with ``weights_only=True``: tensors and plain data only, never pickled code; and
    never a pickled structure past ``MAX_PICKLE_BYTES`` (its unpickling alone would cost gigabytes)."""
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"checkpoint not found: {path}")
    _check_pickle_size(path, kind)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        text = str(e)
        found = re.search(r"GLOBAL (\S+)", text)
        if found or "Unsupported global" in text:
            raise BundleError(f"{path.name} was refused: it holds pickled objects other than tensors and plain "
                              f"data ({found.group(1) if found else 'a global'}), which could run code on "
                              "loading; Slimbench never executes them") from None
        # The weights-only unpickler also stops at bytes torch.save never writes (garbage, a raw pickle).
        msg = "" if "Weights only load failed" in text else f": {text.splitlines()[0][:300]}" if text else ""
        raise BundleError(f"{path.name} is not a readable checkpoint (truncated, damaged or not written by "
                          f"torch.save){msg}") from None


def _check_pickle_size(path: Path, kind: str) -> None:
    """torch.save writes a zip whose ``data.pkl`` holds the structure (dicts, lists, tensor references)
    and whose other records hold the tensors; torch reads data.pkl whole, at its declared size."""
    try:
        with zipfile.ZipFile(path) as zf:
            sizes = [i.file_size for i in zf.infolist() if i.filename.rsplit("/", 1)[-1] == "data.pkl"]
    except (zipfile.BadZipFile, OSError):
        return  # not torch's zip format: torch.load itself refuses it or reads it from the file's own bytes
    if sizes and max(sizes) > MAX_PICKLE_BYTES:
        raise BundleError(f"damaged {kind}: {path.name} holds {max(sizes) / 2**20:.0f} MiB of pickled structure "
                          f"besides its tensors (limit {MAX_PICKLE_BYTES >> 20} MiB; real checkpoints hold well "
                          "under 1 MiB): refused before reading it")


def read_bundle(path: str | Path) -> dict[str, Any]:
    return checked_bundle(load_torch_file(path, kind="bundle"), Path(path).name)


def checked_bundle(b: Any, name: str) -> dict[str, Any]:
    """``b`` (a loaded checkpoint file called ``name``) if it is a bundle this Slimbench reads."""
    if not isinstance(b, dict):
        raise BundleError(f"{name} holds a {type(b).__name__}, not a Slimbench bundle or state dict")
    if b.get("format") != FORMAT:
        raise BundleError(f"{name} is not a Slimbench bundle (no format tag); import a plain state dict "
                          "first: python -m engine import FILE (or upload it on Experiments)")
    if b.get("version") != VERSION:
        raise BundleError(f"{name} is bundle version {b.get('version')!r}; this Slimbench reads version {VERSION}")
    return b


def fit_problems(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """How ``state`` fails to fit ``model`` exactly: wrong shapes, missing and unexpected tensors."""
    own = model.state_dict()
    missing = sorted(k for k in set(own) - set(state) if not k.endswith("num_batches_tracked"))  # unused counters
    unexpected = sorted(set(state) - set(own))
    wrong = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in state and own[k].shape != state[k].shape]
    parts = []
    for label, items in (("shape mismatch", wrong), ("missing", missing), ("unexpected", unexpected)):
        if items:
            parts.append(f"{label} " + "; ".join(items[:3]) + (f" (+{len(items) - 3} more)" if len(items) > 3 else ""))
    return parts


def model_from_bundle(b: dict[str, Any], trust_code: bool = False) -> nn.Module:
    """The model a bundle describes; a BundleError for any bundle that cannot be one, however damaged
    (a wrong type or a missing key anywhere in it is a damaged file, never a crash of the caller).
    ``trust_code``: a bundle of a model built by a Python file may run that file (else it is refused)."""
    try:
        return _build_model(b, trust_code)
    except BundleError:
        raise
    except user_models.UserModelError as e:
        raise BundleError(str(e)) from None
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError, OverflowError) as e:
        detail = str(e).splitlines()[0][:200] if str(e) else ""
        raise BundleError(f"damaged bundle: {type(e).__name__}" + (f": {detail}" if detail else "")) from None


def _build_model(b: dict[str, Any], trust_code: bool) -> nn.Module:
    if b.get("kind") == ONNX_FP32:
        raise BundleError(f"it holds an ONNX model ({b.get('arch')}), not PyTorch weights, so it cannot be trained or "
                          "compressed by methods that change weights; it can be measured, quantised to INT8 and run "
                          "(Try an image)")
    if b.get("kind") == ONNX_INT8:
        parent = (b.get("extra") or {}).get("parent")
        raise BundleError("it holds an INT8 ONNX Runtime model, not PyTorch weights, so it cannot be trained or "
                          "compressed further (it still runs: export.load_predictor); start from the model it was "
                          "quantised from" + (f", run {parent}" if parent else ""))
    arch = b.get("arch")
    source = b.get("source")
    if source is None and arch not in models.ARCHS:
        raise BundleError(f"bundle architecture {arch!r} is unknown; valid: {', '.join(models.ARCHS)}")
    check_contents(b)
    if source is None:
        # First on the meta device, which allocates nothing: a manifest or class count that the weights in
        # the file do not back is refused before a single real layer is built.
        with torch.device("meta"):
            _fitted_model(b, {k: torch.empty(p["shape"], dtype=getattr(torch, p["dtype"]))
                              for k, p in b["packed"].items()}, _registry_model(b))
        build = _registry_model(b)
    else:
        build = _source_model(b, trust_code)
    unpacked = {k: unpack(p, k) for k, p in b["packed"].items()}
    model = _fitted_model(b, unpacked, build)
    weights = b["state_dict"] | unpacked
    model.load_state_dict(weights)
    low = {v.dtype for v in weights.values() if v.is_floating_point()} & {torch.float16, torch.bfloat16}
    if low:  # a half-precision bundle (method half) runs in the precision it was stored in
        model = to_low_precision(model, low.pop())
    return model.eval()


def _registry_model(b: dict[str, Any]):
    def build() -> nn.Module:
        arch, kw = b["arch"], b["arch_kwargs"]
        try:
            return models.build(arch, kw["num_classes"], bool(kw.get("small_input", False)),
                                float(kw.get("width", 1.0)))
        except SpecError as e:
            raise BundleError(f"bundle cannot be rebuilt: {e}") from None
    return build


def _source_model(b: dict[str, Any], trust_code: bool):
    """The builder of a user's architecture (engine.user_models): its Python file, or its program."""
    source = b["source"]
    if not isinstance(source, dict) or source.get("kind") not in ("python", "program") or \
            not isinstance(source.get("name"), str):
        raise _damaged("its 'source' is not a Python file or a program")
    if source["kind"] == "python":
        if not all(isinstance(source.get(k), str) for k in ("file", "sha256", "builder")) or \
                not isinstance(source.get("kwargs"), dict):
            raise _damaged("its Python source lacks the file, sha256, builder or kwargs")
        return lambda: user_models.build_python(source, b["arch_kwargs"]["num_classes"], trust_code=trust_code)
    blob = source.get("program")
    if not isinstance(blob, torch.Tensor) or blob.dtype != torch.uint8 or blob.dim() != 1:
        raise _damaged("its program is missing")
    return lambda: user_models.program_from_bundle(blob.numpy().tobytes(), source["name"])


def _fitted_model(b: dict[str, Any], packed: dict[str, torch.Tensor], build) -> nn.Module:
    """The bundle's model with its manifest applied, once its weights (dense + ``packed``) fit it exactly."""
    arch, kw = b["arch"], b["arch_kwargs"]
    model = build()
    apply_manifest(model, b["manifest"])
    head_name, head = models.classifier_layer(model)
    outputs = head.out_features if isinstance(head, nn.Linear) else head.out_channels
    if outputs != kw["num_classes"]:
        raise BundleError(f"bundle says {kw['num_classes']} classes but its classifier {head_name}.weight has "
                          f"{outputs} outputs")
    problems = fit_problems(model, b["state_dict"] | packed)
    if problems:
        raise BundleError(f"weights do not fit {arch} with {kw['num_classes']} classes: " + " | ".join(problems))
    return model


# --------------------------------------------------------------------------------------------
# A bundle's contents checked against bounds, before anything is built from them
# --------------------------------------------------------------------------------------------
def _damaged(what: str) -> BundleError:
    return BundleError(f"damaged bundle: {what}")


def _int_in(value: Any, low: int, high: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _damaged(f"{what} is {value!r}, expected a whole number from {low} to {high}")
    return value


def check_contents(b: dict[str, Any]) -> None:
    """Types, counts and sizes of a PyTorch bundle's parts within bounds, packed layouts against their
    shapes: what building the model would otherwise allocate or fail on with an IndexError."""
    for part in ("arch_kwargs", "manifest", "state_dict", "packed"):
        if not isinstance(b.get(part), dict):
            raise _damaged(f"its {part!r} is {type(b.get(part)).__name__}, not a dict")
    kw = b["arch_kwargs"]
    _int_in(kw.get("num_classes"), 2, MAX_CLASSES, "arch_kwargs.num_classes")
    width = kw.get("width", 1.0)
    if not isinstance(width, (int, float)) or not 0 < width <= 8:
        raise _damaged(f"arch_kwargs.width is {width!r}, expected a number in (0, 8]")
    man, dense, packed = b["manifest"], b["state_dict"], b["packed"]
    if len(man) > MAX_MANIFEST_LAYERS:
        raise _damaged(f"its manifest lists {len(man):,} layers (limit {MAX_MANIFEST_LAYERS:,})")
    if len(dense) + len(packed) > MAX_TENSORS:
        raise _damaged(f"it holds {len(dense) + len(packed):,} tensors (limit {MAX_TENSORS:,})")
    for name, d in man.items():
        _check_layer(name, d)
    for name, t in dense.items():
        if not isinstance(name, str) or not isinstance(t, torch.Tensor):
            raise _damaged(f"state_dict entry {name!r} is a {type(t).__name__}, not a tensor")
    for name, p in packed.items():
        check_packed(name, p)


def _check_layer(name: Any, d: Any) -> None:
    if not isinstance(name, str) or not isinstance(d, dict):
        raise _damaged(f"manifest entry {name!r} is not a layer description")
    at = f"manifest layer {name!r}"
    kind = d.get("type")
    ints = {"Conv2d": ("in_channels", "out_channels", "groups"), "Linear": ("in_features", "out_features"),
            **{bn: ("num_features",) for bn in (*BATCHNORMS, *LAYERNORMS)}, "Sequential": (), "Identity": (),
            "Parameter": (), "HeadAttention": ("embed_dim", "num_heads", "head_dim")}
    if kind not in ints:
        raise _damaged(f"{at} has unknown type {kind!r}")
    for field in ints[kind]:
        _int_in(d.get(field), 1, MAX_CHANNELS, f"{at} {field}")
    if kind == "Sequential":
        _int_in(d.get("length"), 0, MAX_SEQUENTIAL, f"{at} length")
    if kind == "Parameter":
        shape = d.get("shape")
        if not isinstance(shape, list) or len(shape) > 8:
            raise _damaged(f"{at} shape is {shape!r}, expected a list of at most 8 sizes")
        if math.prod(_int_in(v, 0, MAX_CHANNELS * 4, f"{at} shape") for v in shape) > MAX_PARAMETER_ELEMENTS:
            raise _damaged(f"{at} has more than {MAX_PARAMETER_ELEMENTS:,} elements")
    if kind in LAYERNORMS and not (isinstance(d.get("eps"), float) and isinstance(d.get("affine"), bool)
                                   and isinstance(d.get("bias"), bool)):
        raise _damaged(f"{at} has an eps, affine or bias of the wrong type")
    if kind == "Conv2d":
        for field, low in (("kernel_size", 1), ("stride", 1), ("padding", 0), ("dilation", 1)):
            pair = d.get(field)
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise _damaged(f"{at} {field} is {pair!r}, expected two numbers")
            for v in pair:
                _int_in(v, low, MAX_GEOMETRY, f"{at} {field}")
        if d["in_channels"] % d["groups"] or d["out_channels"] % d["groups"]:
            raise _damaged(f"{at} groups {d['groups']} does not divide its channels")
    if kind in ("Conv2d", "Linear", "HeadAttention") and not isinstance(d.get("bias"), bool):
        raise _damaged(f"{at} bias is {d.get('bias')!r}, expected true or false")
    if kind in BATCHNORMS and not (isinstance(d.get("eps"), float) and isinstance(d.get("affine"), bool)
                                      and (d.get("momentum") is None or isinstance(d.get("momentum"), float))):
        raise _damaged(f"{at} has an eps, momentum or affine of the wrong type")


def check_packed(name: Any, p: Any) -> int:
    """The element count of a packed tensor whose parts agree with its shape (else "damaged bundle")."""
    at = f"packed tensor {name!r}"
    if not isinstance(name, str) or not isinstance(p, dict):
        raise _damaged(f"{at} is not a packed tensor")
    shape, mask, values = p.get("shape"), p.get("mask"), p.get("values")
    if not isinstance(shape, list) or len(shape) > 8:
        raise _damaged(f"{at} has shape {shape!r}")
    for dim in shape:
        _int_in(dim, 0, 1 << 40, f"{at} shape")
    n = math.prod(shape)
    if p.get("dtype") not in PACKED_DTYPES:
        raise _damaged(f"{at} has dtype {p.get('dtype')!r}; packed tensors are {', '.join(sorted(PACKED_DTYPES))}")
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.uint8 or mask.shape != ((n + 7) // 8,):
        raise _damaged(f"{at} has a mask of {getattr(mask, 'shape', type(mask).__name__)}, expected "
                       f"{(n + 7) // 8} bytes for shape {shape}")
    if not isinstance(values, torch.Tensor) or values.dim() != 1 or values.numel() > n \
            or str(values.dtype).removeprefix("torch.") != p["dtype"]:
        raise _damaged(f"{at} has values that do not fit its shape {shape} and dtype {p['dtype']}")
    return n


def _cast_input(dtype: torch.dtype):
    def hook(_mod, args):
        return tuple(a.to(dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)
    return hook


def _float_output(_mod, _args, out):
    return out.float()


def to_low_precision(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Weights in ``dtype``; float32 inputs are cast on the way in, logits come back as float32."""
    model = model.to(dtype)
    model.register_forward_pre_hook(_cast_input(dtype))
    model.register_forward_hook(_float_output)
    return model


def load_model(path: str | Path, trust_code: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """The bundle's model and the bundle; ``trust_code``: see :func:`model_from_bundle`."""
    b = read_bundle(path)
    return model_from_bundle(b, trust_code), b


# --------------------------------------------------------------------------------------------
# INT8 ONNX Runtime bundles (method quantize_int8): the same dict format, kind "onnx-int8",
# with the quantised ONNX file as a uint8 tensor under "onnx" instead of a state dict.
# --------------------------------------------------------------------------------------------
ONNX_INT8 = "onnx-int8"
ONNX_FP32 = "onnx-fp32"   # a user's own ONNX model (engine.onnx_models), the same layout
ONNX_KINDS = (ONNX_INT8, ONNX_FP32)


class OnnxRunner:
    """An ONNX model as a callable: float batch tensor -> float32 logits tensor (CPU)."""

    def __init__(self, onnx_bytes: bytes, device: str = "cpu", threads: int | None = None):
        import onnxruntime as ort
        providers = ["CPUExecutionProvider"]
        if device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        # Idle ORT threads otherwise spin-wait for work, stealing the cores PyTorch runs on next: timed
        # interleaved with a PyTorch model, that inflated the PyTorch side by up to 2x (ORT itself +4 %).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(onnx_bytes, opts, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        # A graph exported for batch 1 (a user's ONNX model) is fed one image at a time.
        self.one_at_a_time = self.session.get_inputs()[0].shape[0] == 1

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().to("cpu", torch.float32).contiguous().numpy()
        if self.one_at_a_time and len(x) > 1:
            return torch.cat([torch.from_numpy(self.session.run(None, {self.input_name: x[i:i + 1]})[0]).float()
                              for i in range(len(x))])
        return torch.from_numpy(self.session.run(None, {self.input_name: x})[0]).float()


def make_onnx_bundle(onnx_bytes: bytes, *, arch: str, num_classes: int, small_input: bool, meta: dict[str, Any],
                     metrics: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
                     kind: str = ONNX_INT8) -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION, "kind": kind, "arch": arch,
            "arch_kwargs": {"num_classes": int(num_classes), "small_input": bool(small_input)},
            "meta": meta, "metrics": metrics or {},
            "onnx": torch.frombuffer(bytearray(onnx_bytes), dtype=torch.uint8), "extra": extra or {}}


def load_predictor(path: str | Path, threads: int | None = None,
                   trust_code: bool = False) -> tuple[Any, dict[str, Any]]:
    """(callable batch tensor -> logits tensor, bundle) for every bundle kind; ``threads``: ONNX
    Runtime's CPU threads (fixed per session; PyTorch models take theirs when timed); ``trust_code``:
    see :func:`model_from_bundle`."""
    b = read_bundle(path)
    if b.get("kind") in ONNX_KINDS:
        what = "INT8" if b["kind"] == ONNX_INT8 else "ONNX"
        if not isinstance(b.get("onnx"), torch.Tensor) or b["onnx"].dtype != torch.uint8:
            raise BundleError(f"{Path(path).name} is an {what} bundle without its ONNX model")
        try:
            return OnnxRunner(b["onnx"].numpy().tobytes(), threads=threads), b
        except Exception as e:
            raise BundleError(f"{Path(path).name}: ONNX Runtime cannot load the {what} model: "
                              f"{str(e).splitlines()[0][:300]}") from None
    return model_from_bundle(b, trust_code), b


# --------------------------------------------------------------------------------------------
# ONNX
# --------------------------------------------------------------------------------------------
def export_onnx(model: nn.Module, input_shape: tuple[int, ...], path: Path) -> None:
    """Export with a dynamic batch axis to one self-contained file, written atomically."""
    model = model.to("cpu").eval()
    x = torch.randn((1, *input_shape))
    tmp = Path(path).with_name(f".{Path(path).name}.{os.getpid()}.tmp.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:  # the TorchScript exporter: fast and single-file
            torch.onnx.export(model, (x,), str(tmp), dynamo=False, input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17)
        except Exception:
            prog = torch.onnx.export(model, (x,), dynamo=True, input_names=["input"], output_names=["logits"],
                                     dynamic_shapes=({0: torch.export.Dim("batch", max=4096)},), verbose=False)
            prog.save(str(tmp), external_data=False)
    os.replace(tmp, path)


def onnx_session(path: str | Path, device: str = "cpu"):
    import onnxruntime as ort
    providers = ["CPUExecutionProvider"]
    if device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=providers)


@torch.no_grad()
def verify_onnx(model: nn.Module, path: Path, inputs: torch.Tensor) -> dict[str, Any]:
    """Top-1 agreement and max |logit difference| between torch and ONNX Runtime on ``inputs``."""
    sess = onnx_session(path)
    name = sess.get_inputs()[0].name
    ref = model.to("cpu").eval()(inputs).float()
    got = torch.from_numpy(sess.run(None, {name: inputs.numpy()})[0]).float()
    return {"onnx_top1_agreement": (ref.argmax(1) == got.argmax(1)).float().mean().item(),
            "onnx_max_abs_diff": (ref - got).abs().max().item()}
