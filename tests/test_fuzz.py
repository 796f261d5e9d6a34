"""Input validation under random and mutated input (Hypothesis), and the hostile cases it covers.

Two readers take a user's files: the spec reader (``JobSpec.from_json`` / ``from_dict`` and
``validation.check_spec``, which the CLI, the queue and the pages use) and the checkpoint loaders
(``export.load_model`` for bundles, ``import_weights`` for plain state dicts). Whatever they are
fed, they either accept it or raise their documented error (``SpecError``, ``export.BundleError``),
never a stray ``TypeError``, ``KeyError`` or ``RecursionError``. The examples are bounded so that
the file runs in well under a minute; a failure prints the example and the seed that reproduce it.
"""
from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings, strategies as st

from engine import cli, export, import_weights, methods, models
from engine.spec import MAX_DEPTH, JobSpec, SpecError
from engine.validation import check_spec

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Each bundle example saves and loads a model: no shrinking (minutes for these), the failing example is
# printed as found.
BUNDLE_FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                       phases=[Phase.explicit, Phase.reuse, Phase.generate])

VALID = {"name": "fuzz", "data": {"name": "digits", "limit": 100, "seed": 1},
         "model": {"arch": "resnet18"}, "method": {"name": "baseline"},
         "train": {"epochs": 2, "warmup_epochs": 0.5, "seed": 3, "devices": 1},
         "measure": {"latency_runs": 5, "onnx": False}}


@pytest.fixture(autouse=True, scope="module")
def _workspace(tmp_path_factory):
    """Method checks may look runs up in the store: give them an empty workspace of their own."""
    mp = pytest.MonkeyPatch()
    mp.setenv("SLIMBENCH_HOME", str(tmp_path_factory.mktemp("fuzz-ws")))
    mp.setenv("SLIMBENCH_NO_AUTOSTART", "1")
    yield
    mp.undo()


# -- values a JSON file can hold (Python's reader also takes NaN and Infinity) ----------------------
def _nasty_text() -> st.SearchStrategy[str]:
    special = st.sampled_from(["", " ", "\x00", "../../etc/passwd", "x" * 5000, "\ud800", "cuda:99", "cuda:²",
                               "resnet18", "pipeline", "baseline", "nan", "-1", "{}", "a/b\\c", "~"])
    return st.one_of(special, st.text(max_size=40))


SCALARS = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.sampled_from([0, 1, 2, -1, 64, 65, 2**31, 2**32, 2**63, 2**70, 10**400]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([float("nan"), float("inf"), -float("inf"), 0.5, 1e6, -0.0, 1e-320]),
    _nasty_text())
JSON_VALUES = st.recursive(SCALARS, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                           st.dictionaries(_nasty_text(), kids, max_size=4)),
                           max_leaves=12)


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (a tuple of keys and indices) into nested dicts and lists, the root included."""
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, prefix + (i,))
    return out


def mutate(data: st.DataObject, value: Any, rounds: int = 3) -> Any:
    """``value`` (a deep copy) with a few random edits: a value replaced, a key dropped or added."""
    value = json.loads(json.dumps(value))
    for _ in range(data.draw(st.integers(1, rounds))):
        path = data.draw(st.sampled_from(_paths(value)))
        new = data.draw(JSON_VALUES)
        if not path:
            value = new
            continue
        parent = value
        for key in path[:-1]:
            parent = parent[key]
        op = data.draw(st.sampled_from(["replace", "drop", "add"]))
        if op == "replace" or not isinstance(parent, dict):
            parent[path[-1]] = new
        elif op == "drop":
            del parent[path[-1]]
        else:
            parent[data.draw(_nasty_text())] = new
    return value


def _method_params(data: st.DataObject, name: str) -> dict[str, Any]:
    """Parameters for a registered method: its own names, with values in, at and beyond their ranges."""
    out: dict[str, Any] = {}
    for p in methods.get(name).params:
        if not data.draw(st.booleans()):
            continue
        edge = [v for v in (p.low, p.high) if v is not None]
        plausible = st.sampled_from(edge + [p.default] + list(p.choices)) if edge or p.choices else st.just(p.default)
        out[p.name] = data.draw(st.one_of(plausible, JSON_VALUES))
    return out


def _accepted_or_spec_error(raw: Any) -> JobSpec | None:
    try:
        spec = check_spec(raw)
    except SpecError as e:
        assert str(e) and len(str(e)) < 2000, "an error message carries the hostile value whole"
        return None
    # What is accepted is a spec every later step can store and read back: strict JSON, same spec.
    text = json.dumps(spec.to_dict(), allow_nan=False)
    assert check_spec(json.loads(text)).to_dict() == spec.to_dict()
    return spec


# -- the spec reader ----------------------------------------------------------------------------------
@FUZZ
@given(st.data())
def test_mutated_specs_are_accepted_or_refused_with_a_spec_error(data):
    _accepted_or_spec_error(mutate(data, VALID))


@FUZZ
@given(st.data())
def test_method_parameters_are_accepted_or_refused_with_a_spec_error(data):
    registry = methods.load_all()
    name = data.draw(st.sampled_from(sorted(registry)))
    raw = {**VALID, "method": {"name": name, "params": _method_params(data, name)}}
    if registry[name].needs_base:  # a fresh arch is refused before the parameters are looked at
        raw["model"] = {"from_run": "r" * 12}
    if name == "pipeline":
        steps = data.draw(st.lists(st.sampled_from(sorted(set(registry) - {"pipeline"})), min_size=1, max_size=3))
        raw["method"]["params"]["steps"] = [{"name": s, "params": _method_params(data, s)} for s in steps]
    _accepted_or_spec_error(mutate(data, raw, rounds=1) if data.draw(st.booleans()) else raw)


@FUZZ
@given(JSON_VALUES)
def test_any_json_value_is_accepted_or_refused_with_a_spec_error(value):
    _accepted_or_spec_error(value)


@FUZZ
@given(st.sampled_from([("data", "path"), ("model", "checkpoint"), ("model", "pretrained")]),
       st.one_of(_nasty_text(), st.text(min_size=255, max_size=5000), st.binary(max_size=64).map(
           lambda b: b.decode("utf-8", "surrogateescape"))))
def test_any_path_is_found_or_refused_naming_its_field(field, path):
    section, key = field
    raw = {**VALID, section: {**VALID[section], key: path}}
    if key == "checkpoint":
        raw["model"] = {"checkpoint": path}
    try:
        check_spec(raw)
    except SpecError as e:
        assert len(str(e)) < 2000 and e.field.startswith(section), str(e)[:300]


def _valid_json_bytes() -> bytes:
    return json.dumps(VALID).encode()


@FUZZ
@given(st.data())
def test_spec_files_of_random_or_damaged_bytes_raise_only_spec_errors(data):
    raw = _valid_json_bytes()
    choice = data.draw(st.sampled_from(["random", "flip", "cut", "insert", "encoding"]))
    if choice == "random":
        blob = data.draw(st.binary(max_size=512))
    elif choice == "flip":
        i = data.draw(st.integers(0, len(raw) - 1))
        blob = raw[:i] + bytes([raw[i] ^ data.draw(st.integers(1, 255))]) + raw[i + 1:]
    elif choice == "cut":
        blob = raw[:data.draw(st.integers(0, len(raw)))]
    elif choice == "insert":
        i = data.draw(st.integers(0, len(raw)))
        blob = raw[:i] + data.draw(st.binary(min_size=1, max_size=16)) + raw[i:]
    else:
        text = json.dumps({**VALID, "name": data.draw(st.text(max_size=20))}, ensure_ascii=False)
        blob = text.encode(data.draw(st.sampled_from(["utf-16", "utf-16-le", "utf-32", "latin-1", "cp1252"])),
                           errors="replace")
    try:
        JobSpec.from_json(blob)
    except SpecError:
        pass


@pytest.mark.fast
@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 5000, 100_000])
def test_deeply_nested_specs_are_refused_without_recursion(depth):
    text = '{"method": {"name": "baseline", "params": {"x": ' + "[" * depth + "]" * depth + "}}}"
    with pytest.raises(SpecError, match="nested"):
        JobSpec.from_json(text)
    deep: Any = []
    for _ in range(depth):  # built in Python (a page, a preset), not parsed: refused all the same
        deep = [deep]
    with pytest.raises(SpecError, match="nested"):
        check_spec({**VALID, "method": {"name": "baseline", "params": {"x": deep}}})


# -- the CLI: each case once, exit 2 and one line naming the field, never a traceback --------------
HUGE_NAME = "x" * (50 << 20)
CLI_CASES = {
    "int parameter NaN": (json.dumps({**VALID, "model": {"from_run": "r" * 12}, "method": {
        "name": "prune_structured", "params": {"finetune_epochs": float("nan")}}}), "finetune_epochs: must be a finite"),
    "int parameter Infinity": (json.dumps({**VALID, "model": {"from_run": "r" * 12}, "method": {
        "name": "prune_structured", "params": {"finetune_epochs": float("inf")}}}), "finetune_epochs: must be a finite"),
    "pipeline step name as a list": (json.dumps({**VALID, "method": {"name": "pipeline", "params": {"steps": [
        {"name": ["baseline"]}]}}}), "steps[0].name: must be a method name"),
    "100,000-deep JSON": ("[" * 100_000 + "]" * 100_000, "spec: nested too deeply"),
    "UTF-16 file": (json.dumps(VALID).encode("utf-16"), "spec: the file is UTF-16 text; save it as UTF-8"),
    "UTF-16 without a byte-order mark": (json.dumps(VALID).encode("utf-16-le"), "spec: the file is UTF-16"),
    "raw binary": (bytes(range(128, 256)) * 20, "spec: not UTF-8 text"),
    "warmup_epochs NaN": (json.dumps({**VALID, "train": {"warmup_epochs": float("nan")}}),
                          "train.warmup_epochs: must be a finite number"),
    "warmup_epochs 1e6": (json.dumps({**VALID, "train": {"epochs": 3, "warmup_epochs": 1e6}}),
                          "train.warmup_epochs: must be between 0 and 3"),
    "train.seed 2**70": (json.dumps({**VALID, "train": {"seed": 2**70}}), "train.seed: must be between 0 and 4294967295"),
    "data.seed -1": (json.dumps({**VALID, "data": {"name": "digits", "seed": -1}}), "data.seed: must be between 0"),
    "train.devices beyond the machine": (json.dumps({**VALID, "train": {"devices": 64}}),
                                         "train.devices: this machine has"),
    "a 300-character name": (json.dumps({**VALID, "name": "x" * 300}), "name: must be at most 200 characters"),
    "a 5,000-character data.path": (json.dumps({**VALID, "data": {"name": "digits", "path": "x" * 5000}}),
                                    "data.path: not found: 'xxx"),
    "a 50 MB name": (json.dumps({**VALID, "name": HUGE_NAME}), "spec: 52,"),
}


@pytest.mark.fast
@pytest.mark.parametrize("command", ["run", "submit"])
@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_refuses_hostile_specs_with_exit_2_naming_the_field(case, command, tmp_path, capsys, monkeypatch):
    content, expected = CLI_CASES[case]
    path = tmp_path / "spec.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    if command == "submit":  # read from stdin: the same checks on bytes that were never a file
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(path.read_bytes())))
    from engine import devices
    monkeypatch.setattr(devices, "gpu_count", lambda: 0)  # as on a 2-core CPU machine
    monkeypatch.setattr(devices, "cpu_cores", lambda: 2)
    assert cli.main([command, str(path) if command == "run" else "-"]) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and "Traceback" not in err, err[:500]
    assert len(err) < 2000  # the hostile value is never echoed whole


@pytest.mark.fast
def test_devices_are_bounded_by_this_machines_gpus_or_cores(monkeypatch):
    from engine import devices
    monkeypatch.setattr(devices, "cpu_cores", lambda: 2)
    monkeypatch.setattr(devices, "gpu_count", lambda: 0)
    assert devices.devices_problem("cpu", 2) is None and devices.devices_problem("auto", 1) is None
    assert "2 CPU core(s)" in devices.devices_problem("auto", 3)
    monkeypatch.setattr(devices, "gpu_count", lambda: 4)
    assert devices.devices_problem("auto", 4) is None and devices.devices_problem("cpu", 2) is None
    assert "use at most 2, got 3" in devices.devices_problem("cuda:2", 3)
    assert "2 CPU core(s)" in devices.devices_problem("cpu", 4)
    monkeypatch.setenv("SLIMBENCH_BACKEND", "ray")  # a cluster's machines may have more: its worker decides
    assert check_spec({**VALID, "train": {"devices": 64, "device": "cpu"}}).train.devices == 64


# -- the checkpoint loaders -----------------------------------------------------------------------------
def _small_bundle() -> dict[str, Any]:
    """A squeezenet bundle (0.7 M parameters) with a sparse layer, so its packed tensors are fuzzed too."""
    torch.manual_seed(0)
    model = models.build("squeezenet1_1", 4, small_input=True).eval()
    w = model.features[0].weight.data
    w[w.abs() < w.abs().median()] = 0
    return export.make_bundle(model, arch="squeezenet1_1", num_classes=4, small_input=True,
                              meta={"input_size": [3, 32, 32], "normalisation": "dataset"})


BUNDLE = _small_bundle()
BUNDLE_BYTES = io.BytesIO()
torch.save(BUNDLE, BUNDLE_BYTES)
BUNDLE_BYTES = BUNDLE_BYTES.getvalue()
# A bundle's leaves are tensors and plain values; mutations put these in (small numbers only: a huge
# layer size is the bundle manifest's bound to refuse, tested where that lives, not memory to spend here).
BUNDLE_LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 300), st.floats(allow_nan=True, allow_infinity=True),
    _nasty_text(), st.sampled_from(["Conv2d", "Linear", "BatchNorm2d", "Sequential", "Identity", "float32",
                                    "int64", "bool", "complex64"]),
    st.lists(st.integers(-2, 8), max_size=4),
    st.builds(lambda shape, dt: torch.zeros(shape, dtype=dt), st.lists(st.integers(0, 5), max_size=3),
              st.sampled_from([torch.float32, torch.float16, torch.int64, torch.uint8, torch.bool])))


def _bundle_paths(b: dict[str, Any]) -> list[tuple]:
    out = []

    def walk(v: Any, prefix: tuple) -> None:
        out.append(prefix)
        if isinstance(v, dict):
            for k, x in v.items():
                walk(x, prefix + (k,))
        elif isinstance(v, list):
            for i, x in enumerate(v):
                walk(x, prefix + (i,))
    walk(b, ())
    return [p for p in out if p]


BUNDLE_PATHS = _bundle_paths(BUNDLE)


def _mutated_bundle(data: st.DataObject) -> dict[str, Any]:
    import copy
    b = copy.deepcopy(BUNDLE)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(BUNDLE_PATHS))
        parent = b
        try:
            for key in path[:-1]:
                parent = parent[key]
            if data.draw(st.booleans()) and isinstance(parent, dict):
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = data.draw(BUNDLE_LEAVES)
        except (KeyError, IndexError, TypeError):  # an earlier edit removed or replaced this path
            continue
    return b


def _loads_or_bundle_error(path: Path) -> None:
    try:
        export.load_model(path)
    except export.BundleError as e:
        assert str(e)


@BUNDLE_FUZZ
@given(data=st.data())
def test_mutated_bundles_load_or_raise_a_bundle_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("b") / "model.pt"
    torch.save(_mutated_bundle(data), path)
    _loads_or_bundle_error(path)


@BUNDLE_FUZZ
@given(data=st.data())
def test_damaged_bundle_files_raise_a_bundle_error(tmp_path_factory, data):
    raw = BUNDLE_BYTES
    choice = data.draw(st.sampled_from(["random", "flip", "cut", "zeros"]))
    if choice == "random":
        blob = data.draw(st.binary(max_size=2048))
    elif choice == "flip":
        blob = bytearray(raw)
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(raw) - 1))
            blob[i] ^= data.draw(st.integers(1, 255))
        blob = bytes(blob)
    elif choice == "cut":
        blob = raw[:data.draw(st.integers(0, len(raw) - 1))]
    else:
        i = data.draw(st.integers(0, len(raw) - 1))
        blob = raw[:i] + bytes(data.draw(st.integers(1, 4096))) + raw[i + 4096:]
    path = tmp_path_factory.mktemp("b") / "model.pt"
    path.write_bytes(blob)
    _loads_or_bundle_error(path)
    try:
        import_weights.inspect(path)
    except export.BundleError:
        pass


def _state_dict() -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in models.build("squeezenet1_1", 4, small_input=False).state_dict().items()}


STATE_DICT = _state_dict()


@BUNDLE_FUZZ
@given(data=st.data())
def test_mutated_state_dicts_import_or_raise_a_bundle_error(tmp_path_factory, data):
    sd: Any = dict(STATE_DICT)
    keys = sorted(sd)
    for _ in range(data.draw(st.integers(1, 3))):
        op = data.draw(st.sampled_from(["drop", "reshape", "retype", "nan", "rename", "foreign"]))
        k = data.draw(st.sampled_from(keys))
        if not torch.is_tensor(sd.get(k)):  # dropped, renamed or replaced by an earlier edit
            continue
        if op == "drop":
            del sd[k]
        elif op == "reshape":
            sd[k] = torch.zeros(data.draw(st.lists(st.integers(0, 6), max_size=4)))
        elif op == "retype":
            sd[k] = sd[k].to(data.draw(st.sampled_from([torch.float16, torch.int64, torch.bool, torch.uint8])))
        elif op == "nan" and sd[k].is_floating_point() and sd[k].numel():  # only a tensor gets here
            sd[k] = sd[k].clone()
            sd[k].view(-1)[0] = float("nan")
        elif op == "rename":
            sd[data.draw(_nasty_text())] = sd.pop(k)
        elif op == "foreign":
            sd[k] = data.draw(BUNDLE_LEAVES)
    wrap = data.draw(st.sampled_from(["plain", "state_dict", "lightning", "module.", "list"]))
    if wrap == "state_dict":
        sd = {"state_dict": sd, "epoch": 3}
    elif wrap == "lightning":
        sd = {"state_dict": {f"model.{k}": v for k, v in sd.items()}, "epoch": 3, "global_step": 9,
              "pytorch-lightning_version": "2.4.0"}
    elif wrap == "module.":
        sd = {f"module.{k}": v for k, v in sd.items()}
    elif wrap == "list":
        sd = list(sd.values())
    path = tmp_path_factory.mktemp("w") / "weights.pth"
    torch.save(sd, path)
    try:
        import_weights.inspect(path)
        bundle = import_weights.to_bundle(path, small_input=False)
    except export.BundleError as e:
        assert str(e)
        return
    assert bundle["arch"] == "squeezenet1_1"  # accepted: only when it is still that model, exactly


# -- Lightning checkpoints ------------------------------------------------------------------------------
@pytest.mark.fast
def test_lightning_checkpoints_import_or_say_how_to_save_the_weights(tmp_path, monkeypatch):
    import types
    net = models.build("squeezenet1_1", 4, small_input=False).eval()
    ckpt = {"epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.4.0", "loops": {},
            "optimizer_states": [], "lr_schedulers": [],
            "state_dict": {f"model.{k}": v for k, v in net.state_dict().items()}}
    torch.save({**ckpt, "state_dict": {**ckpt["state_dict"], "criterion.weight": torch.ones(4)}},
               tmp_path / "lit.ckpt")
    bundle = import_weights.to_bundle(tmp_path / "lit.ckpt", small_input=False)  # the "model." network only
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(export.model_from_bundle(bundle)(x), net(x))

    torch.save({**ckpt, "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}
                | {"teacher.fc.weight": torch.ones(2, 2)}}, tmp_path / "two.ckpt")
    with pytest.raises(import_weights.ImportWeightsError,
                       match=r"Lightning checkpoint .*prefixes net\., teacher\..*removeprefix\('net\.'\)"):
        import_weights.to_bundle(tmp_path / "two.ckpt")

    # Lightning's hyper-parameters pickled as its own class: refused unread, with the way out.
    fake = types.ModuleType("lightning")

    class AttributeDict(dict):
        pass
    AttributeDict.__module__, AttributeDict.__qualname__ = "lightning", "AttributeDict"
    fake.AttributeDict = AttributeDict
    monkeypatch.setitem(sys.modules, "lightning", fake)
    torch.save({**ckpt, "hyper_parameters": AttributeDict(lr=0.1)}, tmp_path / "hp.ckpt")
    with pytest.raises(import_weights.ImportWeightsError, match=r"Lightning checkpoint.*torch\.save\("):
        import_weights.inspect(tmp_path / "hp.ckpt")

