"""Your own architecture: a Python file's builder, or a ``torch.export`` program (``.pt2``).

A **Python file** (``my_net.py:build``) is imported and its builder called: that runs the user's code,
so it happens only where the caller passes ``trust_code`` (``--trust-model-code``, ``model.trust_code``,
the Experiments checkbox). Its source records the file's path, sha256, builder and kwargs, and a
rebuild refuses a file whose bytes changed since (its weights would not mean what they meant).

A **program** is read with ``torch.export.load``: a graph of ATen operators and its weights, no pickled
code. Its graph is *lifted*: every ``aten.conv2d``, ``aten.linear`` and ``aten.batch_norm`` whose weights
are the program's own becomes a real ``nn.Conv2d`` / ``nn.Linear`` / ``nn.BatchNorm`` called by an FX
graph, so training (batch norm in train mode), torch-pruning's dependency graph, low-rank rewrites and
ONNX export all see ordinary layers. A bundle keeps the (re-exported) program of the model as it now is,
with its weights zeroed and deflated: the bundle's own state dict holds the weights, packed when sparse,
so sizes stay what the weights cost.
"""
from __future__ import annotations

import hashlib
import importlib.util
import inspect
import io
import json
import keyword
import sys
import zipfile
import zlib
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

PROGRAM_SUFFIX = ".pt2"
PYTHON_SUFFIX = ".py"
SOURCE_KEY = "slimbench_source"        # on a model: how to rebuild it (kept in its bundle)
INPUT_KEY = "slimbench_input_shape"     # on a lifted program: the (C, H, W) it was exported for
# Kinds of parameterised layers the bundle's manifest rebuilds in a new shape (engine.export.describe).
RESHAPEABLE = (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)


class UserModelError(ValueError):
    """A model file that cannot be used, with the reason and the way out."""


def sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def parse_ref(ref: str) -> tuple[str, Path, str | None]:
    """``("python", path, builder)`` for ``file.py:builder``, ``("program", path, None)`` for ``file.pt2``."""
    if ref.endswith(PROGRAM_SUFFIX):
        return "program", Path(ref).expanduser(), None
    path, sep, builder = ref.rpartition(":")
    if not sep or not path.endswith(PYTHON_SUFFIX):
        raise UserModelError(f"expected FILE.py:BUILDER (e.g. my_net.py:build) or FILE.pt2, got {ref[:200]!r}")
    if not builder.isidentifier() or keyword.iskeyword(builder):
        raise UserModelError(f"builder {builder[:80]!r} is not a Python function name")
    return "python", Path(path).expanduser(), builder


def describe_ref(source: dict[str, Any]) -> str:
    """The short name a model of this source goes by (its record's ``arch``)."""
    if source["kind"] == "python":
        return f"{source['name']}:{source['builder']}"
    return source.get("name", "program.pt2")


# --------------------------------------------------------------------------------------------
# Python file + builder (runs the user's code: only with trust_code)
# --------------------------------------------------------------------------------------------
def python_source(path: str | Path, builder: str, kwargs: dict[str, Any] | None) -> dict[str, Any]:
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise UserModelError(f"model file not found: {path}")
    return {"kind": "python", "file": str(path), "name": path.name, "sha256": sha256(path), "builder": builder,
            "kwargs": dict(kwargs or {})}


def build_python(source: dict[str, Any], num_classes: int, *, trust_code: bool) -> nn.Module:
    """The model ``source``'s builder makes, after checking the file is the one recorded (same sha256)."""
    name, path = source["name"], Path(source["file"])
    if not trust_code:
        raise UserModelError(f"the model is built by the Python file {name}, and building it runs that file's code: "
                             "refused without the opt-in (--trust-model-code, model.trust_code, or the Experiments "
                             "checkbox 'Run this Python file's code'); use it only for a file you trust")
    if not path.is_file():
        raise UserModelError(f"the model's Python file {path} is gone: restore it to rebuild the model")
    now = sha256(path)
    if now != source["sha256"]:
        raise UserModelError(f"the model's Python file {path} has changed since this model was made (sha256 "
                             f"{source['sha256'][:12]}… recorded, {now[:12]}… now): its weights may no longer fit or "
                             "mean the same; restore the file as it was, or start again from the changed file")
    module_name = f"slimbench_user_model_{now[:16]}"
    module = sys.modules.get(module_name)
    if module is None:
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise UserModelError(f"{name} cannot be imported as a Python module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses and pickling look a class's module up here
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            del sys.modules[module_name]
            raise UserModelError(f"importing {name} raised {_one_line(e)}") from None
    fn = getattr(module, source["builder"], None)
    if not callable(fn):
        found = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_")
                       and getattr(v, "__module__", None) == module_name)
        raise UserModelError(f"{name} has no function {source['builder']!r}; it defines "
                             f"{', '.join(found[:10]) or 'no public function'}")
    kwargs = dict(source.get("kwargs") or {})
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    if "num_classes" in params and "num_classes" not in kwargs:
        kwargs["num_classes"] = num_classes
    try:
        model = fn(**kwargs)
    except Exception as e:
        raise UserModelError(f"{name}:{source['builder']}(**{_short(kwargs)}) raised {_one_line(e)}") from None
    if not isinstance(model, nn.Module):
        raise UserModelError(f"{name}:{source['builder']} returned a {type(model).__name__}, not a torch.nn.Module")
    set_source(model, source)
    return model


# --------------------------------------------------------------------------------------------
# torch.export programs (no user code runs)
# --------------------------------------------------------------------------------------------
def load_program(data: bytes | str | Path, name: str) -> nn.Module:
    """A ``.pt2`` (file or bytes) as a trainable, prunable module (its graph lifted)."""
    raw = Path(data).read_bytes() if isinstance(data, (str, Path)) else data
    check_archive(raw, name)
    try:
        ep = torch.export.load(io.BytesIO(raw))
    except Exception as e:
        saved = _saved_by(raw)
        raise UserModelError(f"{name} cannot be read as a torch.export program with torch {torch.__version__}"
                             + (f" (it was saved by torch {saved})" if saved else "") + f": {_one_line(e)}; programs "
                             "are read by the torch version that saved them or a compatible one: export it again "
                             "with this version (torch.export.save)") from None
    model = lift(ep, name)
    set_source(model, {"kind": "program", "name": name})
    return model


def check_archive(raw: bytes, name: str) -> None:
    """Refuse a .pt2 holding anything ``torch.export.load`` would unpickle with code execution: its
    example inputs fall back to ``torch.load(weights_only=False)``, weights and constants marked
    ``use_pickle`` are loaded so, and custom / opaque objects are unpickled outright. A program of plain
    tensors (what ``torch.export.save`` writes for a model of ordinary layers) passes untouched."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(raw))
        members = {i.filename: i for i in archive.infolist()}
    except (zipfile.BadZipFile, ValueError):
        raise UserModelError(f"{name} cannot be read as a torch.export program with torch {torch.__version__}: it "
                             "is not a .pt2 archive (write one with torch.export.save)") from None

    def refuse(member: str, what: str) -> UserModelError:
        return UserModelError(f"{name} was refused: {member} holds {what}, which torch.export.load would unpickle "
                              "with code execution; Slimbench never loads it: export a program of plain tensors")

    def plain(member: str) -> None:
        try:
            torch.load(io.BytesIO(archive.read(member)), map_location="cpu", weights_only=True)
        except Exception:
            raise refuse(member, "pickled objects other than tensors") from None
    for member in members:
        if "/models/" in member and member.endswith(".json"):
            _check_schema(archive.read(member), name)
        if member.endswith(".pt"):  # example inputs, legacy weight / constant files: torch.save pickles
            plain(member)
        if member.endswith("_config.json") and ("/data/weights/" in member or "/data/constants/" in member):
            try:
                config = json.loads(archive.read(member)).get("config") or {}
            except (ValueError, AttributeError):
                raise UserModelError(f"{name}: {member} is damaged") from None
            folder = member.rsplit("/", 1)[0]
            for fqn, meta in config.items():
                path = str((meta or {}).get("path_name", ""))
                if path.startswith(("custom_obj", "opaque_obj")):
                    raise refuse(f"{member} ({fqn})", "a custom object")
                if (meta or {}).get("use_pickle"):
                    plain(f"{folder}/{path}")


def _check_schema(doc: bytes, name: str) -> None:
    """A program written by a torch whose program schema (major version) this torch does not read is
    refused naming both, rather than with torch's "error when deserializing"."""
    try:
        from torch._export.serde.schema import SCHEMA_VERSION  # the schema this torch writes and reads
        meta = json.loads(doc)
        saved = meta.get("schema_version") or {}
        major, minor = int(saved["major"]), int(saved.get("minor", 0))
    except Exception:  # no schema recorded where expected: torch.export.load says what is wrong
        return
    by = f"by torch {str(meta['torch_version'])[:40]} " if meta.get("torch_version") else ""
    if major != SCHEMA_VERSION[0]:
        raise UserModelError(f"{name} cannot be read as a torch.export program with torch {torch.__version__}: it was "
                             f"saved {by}with program schema {major}.{minor} and this torch reads schema "
                             f"{SCHEMA_VERSION[0]}.x; programs are read by the torch version that saved them or a "
                             "compatible one: export it again with this version (torch.export.save)")


def _saved_by(raw: bytes) -> str | None:
    """The torch version a program's archive says saved it (None where it does not say)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(raw))
        doc = next(archive.read(m) for m in archive.namelist() if "/models/" in m and m.endswith(".json"))
        return str(json.loads(doc)["torch_version"])[:40]
    except Exception:
        return None


def _placeholder_shape(ep: torch.export.ExportedProgram, name: str) -> tuple[int, ...]:
    inputs = [s for s in ep.graph_signature.input_specs if s.kind == torch.export.graph_signature.InputKind.USER_INPUT]
    if len(inputs) != 1:
        raise UserModelError(f"{name} takes {len(inputs)} inputs; an image classifier takes one batch of images")
    node = next(n for n in ep.graph.nodes if n.op == "placeholder" and n.name == inputs[0].arg.name)
    val = node.meta.get("val")
    if val is None or val.dim() != 4:
        raise UserModelError(f"{name}'s input is {getattr(val, 'shape', 'unknown')}; an image classifier takes "
                             "a batch of images, N x C x H x W")
    dims = []
    for i, d in enumerate(val.shape):
        if i and not isinstance(d, int):
            raise UserModelError(f"{name}'s input has a dynamic dimension {i} ({d}); only the batch may be dynamic: "
                                 "export with one fixed image size")
        dims.append(d)
    return tuple(int(d) for d in dims[1:])


class _Lifter:
    def __init__(self, gm: fx.GraphModule):
        self.gm, self.root = gm, nn.Module()
        self.uses: dict[str, int] = {}
        for n in gm.graph.nodes:
            for a in n.all_input_nodes:
                if a.op == "get_attr":
                    self.uses[a.target] = self.uses.get(a.target, 0) + 1

    def tensor(self, node: Any) -> torch.Tensor | None:
        if not isinstance(node, fx.Node) or node.op != "get_attr":
            return None
        return _attr(self.gm, node.target)

    def owner(self, nodes: list[Any]) -> str | None:
        """The module path that owns exactly these tensors, each used once (else the op stays as it is)."""
        attrs = [n for n in nodes if n is not None]
        if not attrs or any(not isinstance(n, fx.Node) or n.op != "get_attr" or self.uses.get(n.target) != 1
                            for n in attrs):
            return None
        prefixes = {n.target.rpartition(".")[0] for n in attrs}
        return prefixes.pop() if len(prefixes) == 1 else None


def lift(ep: torch.export.ExportedProgram, name: str) -> fx.GraphModule:
    shape = _placeholder_shape(ep, name)
    gm = ep.module()
    lifter = _Lifter(gm)
    graph = gm.graph
    aten = torch.ops.aten
    made: dict[str, nn.Module] = {}
    for node in list(graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn":  # shape guards of the export: sizes change
            graph.erase_node(node)
            continue
        if node.op != "call_function":
            continue
        if _flattens(node, aten):  # core ATen's flatten: a view to [batch, C*H*W] with the count baked in
            node.target, node.args = aten.flatten.using_ints, (node.args[0], 1)
            continue
        module, path, x = _layer_of(node, lifter, aten)
        if module is None or path in made:
            continue
        made[path] = module
        with graph.inserting_before(node):
            new = graph.call_module(path, (x,))
        if node.target == aten._native_batch_norm_legit_no_training.default:  # core ATen: (out, mean, rstd)
            new.meta = dict(next(iter(node.users)).meta)
            for item in list(node.users):
                item.replace_all_uses_with(new)
                graph.erase_node(item)
        else:
            new.meta = dict(node.meta)
            node.replace_all_uses_with(new)
        graph.erase_node(node)
    graph.eliminate_dead_code()
    root = nn.Module()
    used = {n.target for n in graph.nodes if n.op in ("get_attr", "call_module")}
    for target in sorted(used, key=lambda t: t.count(".")):
        obj = made.get(target)
        if obj is None:
            obj = _attr(gm, target)
        _install(root, target, obj)
    lifted = fx.GraphModule(root, graph, class_name="LiftedProgram")
    lifted.meta[INPUT_KEY] = shape
    return lifted.eval()


def _attr(gm: nn.Module, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _install(root: nn.Module, target: str, obj: Any) -> None:
    *parents, leaf = target.split(".")
    mod = root
    for p in parents:
        if not hasattr(mod, p):
            mod.add_module(p, nn.Module())
        mod = getattr(mod, p)
    if isinstance(obj, nn.Module):
        mod.add_module(leaf, obj)
    elif isinstance(obj, nn.Parameter):
        mod.register_parameter(leaf, obj)
    elif isinstance(obj, torch.Tensor):
        mod.register_buffer(leaf, obj)
    else:
        setattr(mod, leaf, obj)


def _layer_of(node: fx.Node, lifter: _Lifter, aten: Any) -> tuple[nn.Module | None, str | None, Any]:
    """The real layer an ATen call with the program's own weights is, the module path it goes under and
    its input. Both spellings are read: the training IR's ``conv2d`` / ``linear`` / ``batch_norm`` and the
    core ATen a program has after ``run_decompositions()`` (``convolution``, ``addmm`` / ``mm`` of a
    transposed weight, ``_native_batch_norm_legit_no_training``)."""
    args = list(node.args)
    none = (None, None, None)
    if node.target in (aten.conv2d.default, aten.convolution.default):
        weight, bias = args[1], args[2] if len(args) > 2 else None
        if node.target == aten.convolution.default:
            stride, padding, dilation, transposed, output_padding, groups = args[3:9]
            if transposed or any(output_padding):
                return none
        else:
            stride, padding, dilation, groups = (args + [None] * 7)[3:7]
        path = lifter.owner([weight, bias])
        w = lifter.tensor(weight)
        if path is None or w is None or w.dim() != 4:
            return none
        conv = nn.Conv2d(w.shape[1] * (groups or 1), w.shape[0], tuple(w.shape[2:]), tuple(stride or (1, 1)),
                         tuple(padding or (0, 0)), tuple(dilation or (1, 1)), groups or 1, bias=bias is not None)
        conv.weight = _param(w)
        if bias is not None:
            conv.bias = _param(lifter.tensor(bias))
        return conv, path, args[0]
    if node.target in (aten.linear.default, aten.addmm.default, aten.mm.default):
        if node.target == aten.linear.default:
            x, weight, bias = args[0], args[1], args[2] if len(args) > 2 else None
            w = lifter.tensor(weight)
        else:
            bias, x, wt = (args[0], args[1], args[2]) if node.target == aten.addmm.default else (None, *args[:2])
            if node.kwargs or not _transposed(wt, aten) or len(wt.users) != 1:  # beta / alpha scale: not a Linear
                return none
            weight = wt.args[0]
            w = lifter.tensor(weight)
        path = lifter.owner([weight, bias])
        if path is None or w is None or w.dim() != 2:
            return none
        b = lifter.tensor(bias) if bias is not None else None
        if bias is not None and (b is None or b.dim() != 1):
            return none
        lin = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
        lin.weight = _param(w)
        if b is not None:
            lin.bias = _param(b)
        return lin, path, x
    if node.target in (aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default):
        x, weight, bias, mean, var = args[:5]
        if node.target == aten.batch_norm.default:
            momentum, eps = args[6], args[7]
        else:  # used only through getitem(…, 0): the normalised tensor
            momentum, eps = args[5], args[6]
            if any(u.op != "call_function" or u.args[1] != 0 for u in node.users):
                return none
        path = lifter.owner([weight, bias, mean, var])
        val = getattr(x, "meta", {}).get("val")
        if path is None or mean is None or weight is None or val is None or val.dim() not in (2, 4):
            return none
        m = lifter.tensor(mean)
        bn = (nn.BatchNorm2d if val.dim() == 4 else nn.BatchNorm1d)(m.shape[0], eps=eps, momentum=momentum)
        bn.weight, bn.bias = _param(lifter.tensor(weight)), _param(lifter.tensor(bias))
        bn.running_mean.copy_(m)
        bn.running_var.copy_(lifter.tensor(var))
        counter = f"{path}.num_batches_tracked"
        if counter in dict(lifter.gm.named_buffers()):
            bn.num_batches_tracked.copy_(lifter.gm.get_buffer(counter))
        return bn, path, x
    return none


def _flattens(node: fx.Node, aten: Any) -> bool:
    """``node`` reshapes a batch to ``[batch, everything else]`` with the size of everything else written
    as a number (as ``run_decompositions()`` spells ``torch.flatten(x, 1)``): once a method removes
    channels that number is wrong, while ``flatten`` follows."""
    if node.target not in (aten.view.default, aten.reshape.default, aten._unsafe_view.default) or len(node.args) != 2:
        return False
    x, shape = node.args
    val = getattr(x, "meta", {}).get("val") if isinstance(x, fx.Node) else None
    if val is None or val.dim() < 2 or not isinstance(shape, (list, tuple)) or len(shape) != 2:
        return False
    rest = 1
    for d in val.shape[1:]:
        if not isinstance(d, int):
            return False
        rest *= d
    return isinstance(shape[1], int) and shape[1] == rest  # then the first is the batch, whatever spells it


def _transposed(node: Any, aten: Any) -> bool:
    """``node`` is a 2-D weight's transpose (``permute(w, [1, 0])`` or ``t(w)``), as core ATen spells a Linear."""
    if not isinstance(node, fx.Node) or node.op != "call_function":
        return False
    if node.target == aten.t.default:
        return True
    return node.target == aten.permute.default and list(node.args[1]) == [1, 0]


def _param(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.detach().clone())


def _store(model: nn.Module) -> dict[str, Any]:
    # An FX GraphModule's deepcopy keeps its ``meta`` dict but no other attribute of its own.
    return model.meta if isinstance(model, fx.GraphModule) else model.__dict__


def set_source(model: nn.Module, source: dict[str, Any]) -> None:
    _store(model)[SOURCE_KEY] = dict(source)


def source_of(model: nn.Module) -> dict[str, Any] | None:
    """How ``model`` is rebuilt when it is a user's architecture (None for the registry's)."""
    return _store(model).get(SOURCE_KEY)


def program_input_shape(model: nn.Module) -> tuple[int, ...] | None:
    """The (C, H, W) a lifted program was exported for (None for any other model)."""
    return model.meta.get(INPUT_KEY) if isinstance(model, fx.GraphModule) else None


def unlifted_layers(model: nn.Module) -> list[str]:
    """Tensors a lifted program uses outside a real layer (e.g. a layer norm or a shared weight): no
    method that reshapes layers can follow them. Empty for every other model."""
    if program_input_shape(model) is None:
        return []
    out = []
    for node in model.graph.nodes:
        if node.op == "get_attr":
            users = ", ".join(str(getattr(u.target, "__name__", u.target)) for u in node.users)
            out.append(f"{node.target} (used by {users})")
    return out


def export_program(model: nn.Module, input_shape: tuple[int, ...], name: str) -> bytes:
    """``model`` as a ``.pt2`` with a dynamic batch, its weights zeroed and the file deflated: the graph
    that rebuilds it (its weights live beside it, in the bundle's state dict)."""
    import copy
    blank = copy.deepcopy(model).to("cpu").eval()
    with torch.no_grad():
        for t in [*blank.parameters(), *blank.buffers()]:
            t.zero_()
    x = torch.zeros((2, *input_shape))
    try:
        ep = torch.export.export(blank, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=65536)},),
                                 strict=False)
    except Exception as e:
        raise UserModelError(f"{name} as it now is cannot be exported again as a program ({_one_line(e)})") from None
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    return zlib.compress(buf.getvalue(), 6)


def program_from_bundle(blob: bytes, name: str) -> nn.Module:
    try:
        raw = zlib.decompress(blob)
    except zlib.error:
        raise UserModelError(f"{name}: its program is damaged (not deflated data)") from None
    return load_program(raw, name)


def check_reshapeable(model: nn.Module, method: str) -> None:
    """Refuse, before training, a method that reshapes layers on a model with layers its bundle
    could not rebuild in a new shape, naming the first such layer and the reason."""
    source = source_of(model)
    if not source:
        return
    if source["kind"] == "program":
        left = unlifted_layers(model)
        if left:
            raise UserModelError(f"{method} cannot change {describe_ref(source)}: its tensor {left[0]} is not the "
                                 "weight of a Conv2d, Linear or BatchNorm, so removing channels could not follow it")
        return
    for name, m in model.named_modules():
        own = list(m.parameters(recurse=False))
        if own and not isinstance(m, RESHAPEABLE):
            raise UserModelError(f"{method} cannot change {describe_ref(source)}: layer {name} is a {type(m).__name__}; "
                                 "a model built from a Python file is rebuilt in a new shape only through its "
                                 "Conv2d, Linear and BatchNorm layers")


def _one_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:120] + "…"
