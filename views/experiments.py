"""Experiments: dataset + base model + methods (with sweeps and pipelines), or a preset -> queued jobs."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from engine import (data as data_mod, export, import_weights, jobs, methods, models, onnx_models, presets,
                    user_models, validation)
from engine.spec import DataSpec, SpecError
from views import search_launch
from views.common import (accept_upload, device_text, discard_upload, done_runs, get_store, keep_units, md_text,
                          plural, refused_upload, run_label, save_upload, short_floats, startable_runs, upload_limit_mb,
                          uploader_key)

st.title("Experiments")
st.caption("Train a base model, compress it with any registered method, and queue the jobs. "
           "Results appear on **Jobs** while they run and on **Compare** when they finish.")

try:
    registry = methods.load_all()
except Exception as e:  # one broken method module must not hide the others
    registry = methods.METHODS
    st.error(f"Some compression methods could not be loaded ({type(e).__name__}: {md_text(e)}); "
             "the registered ones are still available. Check the engine/methods modules.")
store = get_store()


def launch(plan: list[dict[str, Any]], again: bool = False) -> None:
    """Validate the whole plan, then queue it; report problems as errors naming the field. A plan
    identical to jobs already queued or running is held back (a second click on Launch queued it
    twice) until the user confirms it (``again``). Every job carries the experiment and group typed
    above the tabs, which Jobs, Compare and the CLI filter by."""
    labels = {k: " ".join(str(st.session_state.get(f"exp_{k}") or "").split()) for k in ("experiment", "group")}
    plan = [{**s, **{k: v for k, v in labels.items() if v}} for s in plan]
    if st.session_state.get("track_mlflow"):
        plan = [{**s, "track": {**s.get("track", {}), "mlflow": True}} for s in plan]
    ok, problems = presets.check(plan)
    if problems:
        st.error("Nothing was queued. Fix these first:\n\n" + "\n".join(f"- {md_text(p)}" for p in problems))
        return
    twins = [] if again else presets.already_queued(ok, store.list(("queued", "running")))
    if twins:
        st.session_state["held_launch"] = {"plan": ok, "twins": twins}
        st.rerun()
    try:
        ids = presets.launch(ok, lambda s: jobs.submit(s, store))
    except (SpecError, ValueError) as e:
        st.error(f"Could not queue the jobs: {md_text(e)}")
        return
    st.session_state["launched"] = ids
    st.session_state["just_launched"] = True
    st.rerun()  # the sidebar's queue counts and worker state, drawn before this page, catch up


def plan_table(plan: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame([{"job": s.get("name"), "method": s["method"]["name"],
                          "params": json.dumps(short_floats(s["method"]["params"])) if s["method"]["params"]
                          else "defaults",
                          "starts from": starts_from(s["model"])} for s in plan])


def starts_from(model: dict[str, Any]) -> str:
    src = model.get("from_run")
    if isinstance(src, str) and src.startswith(presets.REF_PREFIX):
        return f"job {int(src[len(presets.REF_PREFIX):]) + 1} of this plan"
    if model.get("file"):
        return Path(model["file"].rpartition(":")[0] if ".py:" in model["file"] else model["file"]).name
    if model.get("arch"):
        return f"new {model['arch']}" + (" from ImageNet weights" if model.get("pretrained") else "")
    return src or model.get("checkpoint") or ""


@st.cache_data(show_spinner="Reading the checkpoint…", max_entries=8)
def inspect_checkpoint(path: str) -> tuple[str, Any]:
    kind, what = import_weights.inspect(path)
    if kind == "bundle":  # only what the page shows: the weights stay on disk
        what = {"arch": what.get("arch"), **what.get("arch_kwargs", {}), "kind": what.get("kind", "torch"),
                "dataset": what.get("meta", {}).get("dataset"), "accuracy": what.get("metrics", {}).get("accuracy")}
    return kind, what


def checkpoint_panel(ck) -> str:
    """The path of a bundle for the uploaded checkpoint: the upload itself if it is one, else its
    state dict imported as the user describes it (architecture, stem, normalisation)."""
    path = save_upload(ck, "checkpoints")
    if path.suffix == ".onnx":
        return onnx_panel(ck, path)
    try:
        kind, what = inspect_checkpoint(str(path))
        if kind == "bundle" and what["kind"] != "torch":
            raise export.BundleError(f"it holds a {what['kind']} model; compression starts from PyTorch weights")
    except export.BundleError as e:  # the file itself is unusable: it leaves the workspace at once
        discard_upload("ckpt", ck, path, upload_problem(ck.name, e))
    if kind == "bundle":
        acc = f", accuracy {what['accuracy']:.4f} on {what['dataset']}" if what.get("accuracy") is not None else ""
        st.success(md_text(f"Slimbench bundle: {what['arch']}, {what['num_classes']} classes{acc}."))
        return str(path)
    matches: list[import_weights.Match] = what
    if matches:
        st.info("PyTorch state dict: its tensors fit " + " or ".join(m.describe() for m in matches) + ".")
    else:
        st.warning("PyTorch state dict whose tensors fit no listed architecture exactly; pick the one it "
                   "should be to see what differs.")
    archs = list(dict.fromkeys(m.arch for m in matches)) or list(models.ARCHS)
    c1, c2 = st.columns(2)
    arch = c1.selectbox("Architecture of these weights", archs, key="ck_arch")
    stems = sorted({m.small_input for m in matches if m.arch == arch}) or [False, True]
    small = c2.radio("Stem", stems, horizontal=True, key="ck_stem",
                     format_func=lambda v: "small-input (3x3 stride 1)" if v else "standard (ImageNet)",
                     help="Weights show a 7x7 vs 3x3 first conv but not a stride, so some architectures ask.")
    norm = normalisation_input("Feeding a model inputs normalised otherwise than in its training costs accuracy "
                               "silently; say how it was trained.")
    # One bundle per description of the upload, named like it (jobs are labelled by the file's name).
    out = path.parent / f"{arch}-{'small' if small else 'std'}-{norm_key(norm)}" / f"{path.stem}.pt"
    if not out.is_file():
        bundle = import_weights.to_bundle(path, arch=arch, small_input=small, norm=norm)
        out.parent.mkdir(exist_ok=True)
        export.save_bundle(bundle, out)
    return str(out)


@st.cache_data(show_spinner="Reading the ONNX graph…", max_entries=8)
def read_onnx(path: str) -> str:
    return onnx_models.read(Path(path).read_bytes(), Path(path).name).describe()


def onnx_panel(ck, path: Path) -> str:
    """The path of an ``onnx-fp32`` bundle of an uploaded ONNX model, normalised as the user states."""
    try:
        described = read_onnx(str(path))
    except export.BundleError as e:  # odd inputs, external weights, not ONNX: the file leaves the workspace
        discard_upload("ckpt", ck, path, upload_problem(ck.name, e))
    st.info(md_text(f"ONNX model, {described}. It is scored and measured as given, quantised to INT8 and tried on "
                    "images; methods that change PyTorch weights cannot run on it."))
    norm = normalisation_input("An ONNX graph does not say how its inputs were normalised; inputs normalised "
                               "otherwise than in its training cost accuracy silently.")
    out = path.parent / f"onnx-{norm_key(norm)}" / f"{path.stem}.pt"
    if not out.is_file():
        bundle = onnx_models.to_bundle(path, norm=import_weights.normalisation(norm))
        out.parent.mkdir(exist_ok=True)
        export.save_bundle(bundle, out)
    return str(out)


@st.cache_data(show_spinner="Reading the program…", max_entries=8)
def read_program(path: str) -> tuple[int, ...]:
    """The (C, H, W) an uploaded program takes; a BundleError for one that cannot be used."""
    try:
        return tuple(user_models.program_input_shape(user_models.load_program(path, Path(path).name)))
    except user_models.UserModelError as e:
        raise export.BundleError(str(e)) from None


TRUST_LABEL = "Run this Python file's code"


def own_model_panel(up, base_train: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The spec's model section for an uploaded Python model file or torch.export program, and what
    keeps it from launching (None: nothing)."""
    path = save_upload(up, "models")
    if path.suffix == ".pt2":
        try:
            shape = read_program(str(path))
        except export.BundleError as e:  # not a program, pickled code, another torch: it leaves the workspace
            discard_upload("own_model", up, path, upload_problem(up.name, e))
        st.info(md_text(f"A torch.export program taking {shape[0]} x {shape[1]} x {shape[2]} images: a graph of "
                        "PyTorch operators with its weights. Reading it runs none of your code; every method works "
                        "on its convolutions, linear layers and batch norms."))
        norm_label = st.radio("Inputs were normalised with", [k for k, v in NORMS.items() if v], horizontal=True,
                              key="own_norm", help="A program does not record how its inputs were normalised; "
                                                   "inputs normalised otherwise cost accuracy silently.")
        base_train["epochs"] = int(st.number_input("Fine-tune epochs before compressing (0 = use it as it is)",
                                                   0, 10000, 0, key="own_epochs"))
        return {"file": str(path), "normalisation": NORMS[norm_label]}, None
    st.warning("A Python file: building the model **runs this file's code** on this server, with the dashboard's "
               "permissions. Tick the box only for a file you wrote or trust.")
    c1, c2 = st.columns(2)
    st.session_state.setdefault("own_builder", "build")  # kept widget: default via state, not value=
    builder = c1.text_input("Builder function (returns the nn.Module)", key="own_builder").strip()
    st.session_state.setdefault("own_kwargs", "{}")
    kwargs_text = c2.text_input("Builder keyword arguments (JSON)", key="own_kwargs",
                                help="num_classes is passed when the builder takes it and it is not given here")
    trusted = st.checkbox(TRUST_LABEL, key="own_trust",
                          help="Slimbench imports the file and calls the builder; bundles of its runs record the "
                               "file's sha256 and are refused once the file changes.")
    base_train["epochs"] = int(st.number_input("Baseline epochs (trained from scratch)", 1, 10000, 3, key="own_epochs"))
    try:
        kwargs = json.loads(kwargs_text or "{}")
    except json.JSONDecodeError as e:
        return {}, f"builder keyword arguments: not JSON ({e.msg})"
    if not isinstance(kwargs, dict):
        return {}, "builder keyword arguments: give a JSON object, e.g. {\"width\": 16}"
    if not builder.isidentifier():
        return {}, "builder function: give the name of a function defined in the file"
    if not trusted:
        return {}, f"tick \"{TRUST_LABEL}\" to build the model from {up.name}, or upload a .pt2 program"
    return {"file": f"{path}:{builder}", "builder_kwargs": kwargs or None, "trust_code": True}, None


INIT_WEIGHTS = {"random (train from scratch)": False, "ImageNet state dict (transfer learning)": True}


@st.cache_data(show_spinner="Reading the weights ...", max_entries=8)
def imagenet_fit(path: str, mtime: float, arch: str) -> tuple[int, list[str]]:
    """(tensors transferred, names besides the head left fresh) of an ImageNet state dict on ``arch``;
    SpecError if it does not fit."""
    model = models.build(arch, 10, False)
    skipped = models.load_imagenet_weights(model, path)
    head = models.classifier_layer(model)[0] + "."   # a new head by design, not a misfit
    return len(model.state_dict()) - len(skipped), [k for k in skipped if not k.startswith(head)]


def pretrained_panel(arch: str) -> tuple[str | None, str | None]:
    """(path of the chosen ImageNet state dict, None) once one fits ``arch``; else (None, the problem)."""
    src = st.radio("State dict from", ["Path on this server", "Upload"], horizontal=True, key="pretrained_source")
    if src == "Upload":
        up = st.file_uploader(f"torchvision ImageNet weights for {arch} (torch.save(model.state_dict()))",
                              type=["pt", "pth", "bin"], key=uploader_key("pretrained"),
                              help=f"Never unpickled as code. Up to {upload_limit_mb():,} MB.")
        if up is None:
            refused = refused_upload("pretrained")
            if refused:
                st.error(md_text(refused) + " Upload another file.")
            return None, refused or "upload the ImageNet state dict first"
        accept_upload("pretrained")
        path, name = save_upload(up, "weights"), up.name
    else:
        typed = st.text_input("File on this server", key="pretrained_path",
                              placeholder="/models/resnet18-f37072fd.pth").strip()
        if not typed:
            return None, "enter the path of the ImageNet state dict"
        path, name = Path(typed).expanduser(), typed
        if not path.is_file():
            st.error(md_text(f"{typed}: no such file on this server."))
            return None, f"{typed}: no such file"
    try:
        used, skipped = imagenet_fit(str(path), path.stat().st_mtime, arch)
    except SpecError as e:
        problem = upload_problem(name, e).replace(str(path), name)
        if src == "Upload":  # a file that fits no such net leaves the workspace at once
            discard_upload("pretrained", up, path, problem)
        st.error(md_text(problem))
        return None, problem
    st.success(md_text(f"{name}: {used} tensors of {arch} come from ImageNet; a new head for this dataset's classes"
                       + (f" and {len(skipped)} tensor(s) that do not fit ({', '.join(skipped[:3])}"
                          f"{' …' if len(skipped) > 3 else ''}) start fresh." if skipped else " starts fresh.")),
               icon=":material/move_down:")
    return str(path), None


def upload_problem(name: str, error: Exception) -> str:
    """The reason an upload is refused, naming it once."""
    return str(error) if name in str(error) else f"{name}: {error}"


NORMS = {"this dataset's own mean/std (as Slimbench trains)": "dataset", "ImageNet's": "imagenet", "custom": None}


def normalisation_input(why: str) -> Any:
    """How the uploaded model's inputs were normalised, as the user says (``why``: the radio's help)."""
    norm: Any = NORMS[st.radio("Inputs were normalised with", list(NORMS), horizontal=True, key="ck_norm", help=why)]
    if norm is None:
        c1, c2 = st.columns(2)
        mean = c1.text_input("Mean per channel", "0.5, 0.5, 0.5", key="ck_mean")
        std = c2.text_input("Std per channel", "0.5, 0.5, 0.5", key="ck_std")
        norm = import_weights.parse_normalisation(f"{mean}/{std}")
    return norm


def norm_key(norm: Any) -> str:
    import hashlib
    return norm if isinstance(norm, str) else hashlib.sha256(repr(norm).encode()).hexdigest()[:8]


@st.cache_data(show_spinner=False, max_entries=16, ttl=60)
def describe_imagefolder(path: str) -> tuple[dict | None, str | None]:
    try:
        return data_mod.describe_imagefolder(path), None
    except data_mod.DataError as e:
        return None, e.reason
    except OSError as e:  # the engine turns what it expects into DataError; a path typed here may be anything
        return None, f"cannot read {path}: {e.strerror or e}"


def imagefolder_summary(path: str, name: str) -> str | None:
    """Show what an image folder holds, or why it cannot be used (then returned as the problem)."""
    what, problem = describe_imagefolder(path)
    if problem:
        problem = problem.replace(path, name)  # an upload's stored path means nothing to the user
        problem = problem if name in problem else f"{name}: {problem}"
        st.error(md_text(problem))
        return problem
    classes, counts = what["classes"], what["images"]
    split = (f"{counts['train']} train / {counts['test']} test images" if "test" in counts
             else f"{counts['all']} images (20 % held out for testing)")
    st.caption(md_text(f"{len(classes)} classes ({', '.join(classes[:8])}{' …' if len(classes) > 8 else ''}), "
                       f"{split}."))
    if what["note"]:
        st.warning(md_text(what["note"][0].upper() + what["note"][1:] + "."), icon=":material/visibility_off:")
    return None


def decoding_memory(data: dict[str, Any]) -> str | None:
    """Show the memory the chosen image folder takes decoded; the problem (then also shown) if it would not fit."""
    try:
        est = data_mod.check_decoding_memory(DataSpec(**data))
    except data_mod.DataError as e:
        st.error(f"Too large to decode on this machine: {md_text(e.reason)}.", icon=":material/memory:")
        return e.reason
    if est is not None:
        st.caption(f"Decoded in memory: {est.text()}.")
    return None


if st.session_state.pop("just_launched", False):  # once, right after a launch
    ids = st.session_state["launched"]
    st.success(f"Queued {plural(len(ids), 'job')}: {', '.join(ids[:6])}{' ...' if len(ids) > 6 else ''}",
               icon=":material/rocket_launch:")
    st.page_link("views/jobs.py", label="Watch them on Jobs", icon=":material/arrow_forward:")

held = st.session_state.get("held_launch")
if held:
    twins = held["twins"]
    st.warning(f"Not queued: the same jobs are already queued or running ({', '.join(twins[:6])}"
               f"{' ...' if len(twins) > 6 else ''}). Launching again would queue {len(held['plan'])} more job(s) "
               "doing the same work.", icon=":material/content_copy:")
    c1, c2, _ = st.columns([1, 1, 2])
    if c1.button("Queue them again anyway", key="launch_again"):
        del st.session_state["held_launch"]
        launch(held["plan"], again=True)
    if c2.button("Don't", key="launch_drop"):
        del st.session_state["held_launch"]
        st.rerun()

c1, c2 = st.columns(2)
c1.text_input("Experiment", key="exp_experiment", max_chars=200, placeholder="e.g. shoes classifier, May",
              help="a name every job launched below carries; Jobs, Compare and `engine jobs/runs --experiment` "
                   "filter by it")
c2.text_input("Group", key="exp_group", max_chars=200, placeholder="e.g. pruning sweep",
              help="a subset of the experiment (`--group` on the CLI)")
st.toggle("Log finished runs to MLflow", key="track_mlflow",
          help="each job launched below is logged when it finishes (spec as params, results as metrics, model, ONNX "
               "and card as artefacts, pipeline steps nested) to MLFLOW_TRACKING_URI as the dashboard's worker sees "
               "it, else ./mlruns beside it; nothing is sent anywhere else. A store that cannot be reached leaves "
               "the run finished and says why on Compare. `python -m engine mlflow` exports past runs.")
# A keyed tab set remembers the open tab: unkeyed, the success message a launch adds above it made it a
# new element, which opened on Presets again.
tab_preset, tab_custom, tab_search = st.tabs(["Presets", "Custom experiment", "Auto-compress"], key="exp_tab",
                                             on_change="rerun")

# -- presets ------------------------------------------------------------------------------------
with tab_preset:
    name = st.selectbox("Preset", list(presets.PRESETS), key="preset")
    st.caption(keep_units(md_text(presets.describe(name, store, jobs.worker_status(store)["concurrency"]))),
               help="What this preset trains on, with which settings, and how long it takes on this machine: "
                    "estimated from the runs finished here (the same job, else the same method and data at other "
                    "settings), else the estimate for the machine it was sized on, labelled as such.")
    try:
        plan = presets.PRESETS[name]()
    except Exception as e:  # e.g. a method module mid-edit; the page stays usable
        st.error(f"This preset cannot be built here ({type(e).__name__}: {md_text(e)}); try the custom experiment.")
        plan = []
    if plan:
        ok, problems = presets.check(plan)
        if all(s["method"]["name"] == "baseline" for s in ok):
            st.markdown(f"**{len(ok)} jobs**: one base model each.")
        else:
            st.markdown(f"**{len(ok)} jobs**: a baseline, then every registered compression method "
                        f"({len(ok) - 1}) starting from it.")
        needs_gpu = presets.PRESETS[name].device == "cuda" and not device_text().startswith("CUDA")
        if needs_gpu:
            st.warning("This preset trains on CUDA, which this machine lacks: its jobs would fail, so it cannot "
                       "be launched here. Use the Quick tour, or run it where `nvidia-smi` shows a GPU.")
        st.dataframe(plan_table(ok), hide_index=True, width="stretch")
        for p in problems:
            st.warning(f"Left out: {md_text(p)}")
        if st.button(f"Launch {name}", type="primary", key="launch_preset", disabled=not ok or needs_gpu):
            launch(ok)

# -- auto-compress ------------------------------------------------------------------------------
with tab_search:
    if tab_search.open:   # drawn only when shown: its check reads the start run's spec and data on every rerun
        search_launch.panel(store, launch)


# -- custom -------------------------------------------------------------------------------------
def param_widget(method: str, p: methods.Param) -> Any:
    key = f"p.{method}.{p.name}"
    label = p.name.replace("_", " ")
    help_ = p.help + (f" Range {p.range_text()}." if p.kind in ("int", "float") else "")
    if p.optional:
        if not st.checkbox(f"set {label}", value=p.default is not None, key=key + ".set", help=help_):
            return None
    if p.kind == "bool":
        return st.checkbox(label, value=bool(p.default), key=key, help=help_)
    if p.kind in ("int", "float"):
        is_int = p.kind == "int"
        lo = None if p.low is None else (p.low + (1 if p.low_open else 0) if is_int else p.low)
        hi = None if p.high is None else (p.high - (1 if p.high_open else 0) if is_int else p.high)
        cast = int if is_int else float
        default = p.default if p.default is not None else (lo if lo is not None else 0)
        return st.number_input(label, value=cast(default), min_value=None if lo is None else cast(lo),
                               max_value=None if hi is None else cast(hi), step=1 if is_int else None,
                               format=None if is_int else "%g", key=key, help=help_)
    if p.kind == "str" and p.choices:
        return st.selectbox(label, p.choices, index=p.choices.index(p.default) if p.default in p.choices else 0,
                            key=key, help=help_)
    if p.kind == "run":
        runs = [r for r in done_runs() if r.get("method") == p.run_method] if p.run_method else startable_runs()
        if not runs:
            what = f"a finished {p.run_method} run" if p.run_method else "a finished run"
            raise SpecError(f"{method}.{p.name}", f"needs {what}; there is none yet")
        labels = {r["id"]: run_label(r) for r in runs}
        return st.selectbox(label, list(labels), format_func=labels.get, key=key, help=help_)
    if p.kind == "list":
        text = st.text_area(label + " (JSON list)", value=json.dumps(p.default if p.default is not None else []),
                            key=key, help=help_)
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise SpecError(f"{method}.{p.name}", f"not valid JSON: {e.msg} at column {e.colno}") from None
    return st.text_input(label, value="" if p.default is None else str(p.default), key=key, help=help_)


def method_panel(name: str) -> list[dict[str, Any]]:
    """Widgets for one method; returns its parameter variants (one per sweep value)."""
    m = registry[name]
    with st.expander(f"**{name}** · {m.family}", expanded=True):
        st.caption(m.help)
        params: dict[str, Any] = {}
        cols = st.columns(3)
        for i, p in enumerate(m.params):
            with cols[i % 3]:
                params[p.name] = param_widget(name, p)
        numeric = [p for p in m.params if p.kind in ("int", "float", "str", "run")]
        if not numeric:
            return [params]
        c1, c2 = st.columns([1, 2])
        which = c1.selectbox("Sweep over", ["(no sweep)"] + [p.name for p in numeric], key=f"sweep.{name}",
                             help="Queue one job per value, e.g. ratios 0.3, 0.5, 0.7 -> three jobs.")
        if which == "(no sweep)":
            return [params]
        p = next(p for p in numeric if p.name == which)
        text = c2.text_input("Values (comma separated)", key=f"sweep_values.{name}",
                             placeholder="0.3, 0.5, 0.7" if p.kind == "float" else "",
                             help=f"one job per value; they replace {which.replace('_', ' ')} above")
        values = presets.parse_values(p, text, f"{name}.{which}")
        return presets.sweep(params, which, values)


with tab_custom:
    st.subheader("1 · Data")
    source = st.radio("Dataset source", ["Built-in", "Upload a zip (ImageFolder layout)", "Path on this server"],
                      horizontal=True, key="data_source")
    data: dict[str, Any] = {}
    data_problem = None
    if source == "Built-in":
        builtin = [n for n in data_mod.DATASETS if n != "imagefolder"]
        ds = st.selectbox("Dataset", builtin, index=builtin.index("fashion-mnist") if "fashion-mnist" in builtin else 0,
                          key="dataset", help="digits: 8x8 scikit-learn digits (seconds). fashion-mnist: 28x28 "
                          "clothing. cifar10: needs a local zip/folder path.")
        data["name"] = ds
        if ds == "cifar10":
            st.session_state.setdefault("cifar_path", str(presets.SHARED_CIFAR10))  # kept widget: default via state, not value=
            data["path"] = st.text_input("CIFAR-10 location (zip or folder in ImageFolder layout)",
                                         key="cifar_path")
    elif source.startswith("Upload"):
        up = st.file_uploader("Zip with train/<class>/*.jpg and test/<class>/... (or just <class>/...)",
                              type=["zip"], key=uploader_key("data_zip"),
                              help=f"Up to {upload_limit_mb():,} MB; a larger dataset can be read in place: "
                                   "choose \"Path on this server\".")
        data["name"] = "imagefolder"
        if up is None and (refused := refused_upload("data_zip")):
            st.error(md_text(refused) + " Upload another zip.")
            data_problem = refused
        elif up is None:
            data_problem = "upload a zip of images first"
        else:
            accept_upload("data_zip")
            path = save_upload(up, "datasets")
            data["path"] = str(path)
            data_problem = imagefolder_summary(data["path"], up.name)
            if data_problem:  # an unusable archive leaves the workspace and the server's memory
                discard_upload("data_zip", up, path, data_problem)
    else:
        data["name"] = "imagefolder"
        data["path"] = st.text_input("Folder or zip on this server", key="data_path",
                                     placeholder="/data/my-images or /data/my-images.zip").strip()
        data_problem = imagefolder_summary(data["path"], data["path"]) if data["path"] else "enter a dataset path"
    c1, c2, c2v, c3, c4 = st.columns(5)
    limit = c1.number_input("Train images (0 = all)", 0, 10_000_000, 2000, step=500, key="limit")
    test_limit = c2.number_input("Test images (0 = all)", 0, 10_000_000, 1000, step=500, key="test_limit")
    val_limit = c2v.number_input("Validation images (0 = all)", 0, 10_000_000, 1000, step=500, key="val_limit",
                                 help="Images the best epoch (and an INT8 accuracy limit) is judged on, drawn from "
                                      "the validation split; a quick run bounds every split.")
    image_size = c3.number_input("Image size (0 = native)", 0, 1024, 0, step=8, key="image_size",
                                 help=f"Side in pixels every image is resized to. 0: the images' own size, capped at "
                                      f"{data_mod.NATIVE_SIDE_LIMIT} px (camera photos are decoded reduced); set a "
                                      "size to train larger.")
    batch = c4.number_input("Batch size", 1, 65536, 64, step=32, key="batch_size")
    data.update({k: int(v) for k, v in (("limit", limit), ("val_limit", val_limit), ("test_limit", test_limit),
                                          ("image_size", image_size))
                 if v}, batch_size=int(batch))
    if data["name"] in ("imagefolder", "cifar10") and not data_problem:
        data_problem = decoding_memory(data)

    st.subheader("2 · Base model")
    base_kind = st.radio("Start from", ["Train an architecture", "A finished run", "Upload a checkpoint",
                                        "Your own architecture"], horizontal=True, key="base_kind")
    model: dict[str, Any] = {}
    base_train: dict[str, Any] = {}
    onnx_start = False  # an uploaded ONNX model: scored as given, and only methods without PyTorch weights run
    if base_kind == "Train an architecture":
        c1, c2 = st.columns(2)
        model["arch"] = c1.selectbox("Architecture", list(models.ARCHS), key="arch")
        base_train["epochs"] = int(c2.number_input("Baseline epochs", 1, 10000, 3, key="base_epochs"))
        weights = st.radio("Initial weights", list(INIT_WEIGHTS), horizontal=True, key="init_weights",
                           help="Transfer learning: start from a torchvision ImageNet state dict on this machine "
                                "(nothing is downloaded), with a new classifier head for this dataset's classes.")
        if INIT_WEIGHTS[weights]:
            pretrained, weights_problem = pretrained_panel(model["arch"])
            data_problem = data_problem or weights_problem
            if pretrained:
                model["pretrained"] = pretrained
                st.session_state.setdefault("freeze_backbone", True)  # kept widget: default via state, not value=
                model["freeze_backbone"] = st.checkbox(
                    "Freeze the backbone: train only the new head (and any layer the weights do not fit)",
                    key="freeze_backbone", help="With few images per class a frozen backbone cannot overfit "
                    "them; untick to fine-tune every layer.")
        if not data_problem and not model.get("pretrained"):
            try:
                why = validation.scratch_warning(DataSpec(**data), base_train["epochs"], int(batch))
            except (TypeError, ValueError):  # a half-typed dataset: the launch check names the field
                why = None
            if why:
                st.warning(md_text(why[0].upper() + why[1:] + "."), icon=":material/model_training:")
    elif base_kind == "A finished run":
        runs = startable_runs()  # an INT8 ONNX Runtime model cannot be trained further
        if not runs:
            data_problem = data_problem or "no finished run to start from yet: train an architecture first"
            st.info("No finished PyTorch runs yet (INT8 runs cannot be compressed further).")
        else:
            labels = {r["id"]: run_label(r) for r in runs}
            model["from_run"] = st.selectbox("Run", list(labels), format_func=labels.get, key="base_run")
    elif base_kind == "Your own architecture":
        own = st.file_uploader("A Python file with a builder function, or a torch.export program (.pt2)",
                               type=["py", "pt2"], key=uploader_key("own_model"),
                               help="torch.export.save(torch.export.export(model, (x,), dynamic_shapes="
                                    "({0: torch.export.Dim('batch')},)), 'model.pt2') makes a program.")
        if own is None and (refused := refused_upload("own_model")):
            st.error(md_text(refused) + " Upload another model file.")
            data_problem = data_problem or refused
        elif own is None:
            data_problem = data_problem or "upload your model's Python file or .pt2 program first"
        else:
            accept_upload("own_model")
            model, refused = own_model_panel(own, base_train)
            data_problem = data_problem or refused
    else:
        ck = st.file_uploader("Checkpoint: a Slimbench bundle, a PyTorch state dict of a listed architecture, or an "
                              "ONNX model", type=["pt", "pth", "bin", "ckpt", "onnx"], key=uploader_key("ckpt"),
                              help="A state dict as saved by torch.save(model.state_dict(), path); wrapped in "
                                   "{'state_dict': ...}, DDP-prefixed or a PyTorch Lightning checkpoint is fine. "
                                   f"Never unpickled as code. Up to {upload_limit_mb():,} MB.")
        if ck is None and (refused := refused_upload("ckpt")):
            st.error(md_text(refused) + " Upload another checkpoint.")
            data_problem = data_problem or refused
        elif ck is None:
            data_problem = data_problem or "upload a checkpoint first"
        else:
            accept_upload("ckpt")
            onnx_start = ck.name.lower().endswith(".onnx")
            try:
                model["checkpoint"] = checkpoint_panel(ck)
            except export.BundleError as e:  # the file is fine, the description given of it does not fit
                st.error(md_text(upload_problem(ck.name, e)))
                data_problem = data_problem or f"{ck.name} cannot be used ({e})"
        if onnx_start:
            base_train["epochs"] = 0  # it has no PyTorch weights to fine-tune: scored and measured as given
        else:
            base_train["epochs"] = int(st.number_input(
                "Fine-tune epochs before compressing (0 = use it as it is)", 0, 10000, 0, key="ck_epochs",
                help="The checkpoint first gets a run of its own on this data (scored and measured), which every "
                     "method starts from and is compared with."))

    st.subheader("3 · Methods")
    choices = sorted((n for n in registry if n != "baseline"), key=lambda n: (registry[n].family, n))
    if onnx_start:
        unavailable = [n for n in choices if n not in onnx_models.METHODS]
        choices = [n for n in choices if n in onnx_models.METHODS]
        # a choice made before the ONNX upload would not be among the options any more
        st.session_state["methods"] = [n for n in st.session_state.get("methods", []) if n in choices]
        st.info(md_text(f"On an ONNX model: {', '.join(choices)}. Not available: {', '.join(unavailable)}: each "
                        f"{onnx_models.WHY_NOT}."))
    chosen = st.multiselect("Compression methods", choices, key="methods",
                            format_func=lambda n: f"{n} ({registry[n].family})",
                            help="Each method's parameters appear below with their valid ranges.")
    steps, problem = [], None
    for name in chosen:
        try:
            steps.append((name, method_panel(name)))
        except SpecError as e:
            problem = str(e)
            st.error(md_text(e))
    chain = st.checkbox("Pipeline: run the methods in this order, each starting from the previous result",
                        key="chain", disabled=len(chosen) < 2)

    st.subheader("4 · Training and measurement")
    c1, c2, c3, c4 = st.columns(4)
    epochs = c1.number_input("Student training epochs", 0, 10000, 1, key="epochs",
                             help="Epochs for distill and compact students whose own 'epochs' is not set, and for "
                                  "slimming's expand phase. Methods that prune, decompose, rewrite or quantise a "
                                  "model fine-tune for their own 'finetune epochs' above.")
    device = c2.selectbox("Device", ["auto", "cpu", "cuda"], key="device")
    st.session_state.setdefault("onnx", True)  # kept widget: default via state, not value=
    onnx = c3.checkbox("Export + verify ONNX", key="onnx",
                       help="also what ONNX Runtime and OpenVINO run: each result is deployed, checked against "
                            "PyTorch and timed in every runtime this machine has")
    st.session_state.setdefault("compile_rt", False)  # kept widget: default via state, not value=
    compile_rt = c3.checkbox("Also time torch.compile", key="compile_rt",
                             help="torch.compile with freezing on the CPU, as one more deployment runtime; compiling "
                                  "takes minutes per result")
    latency_runs = c4.number_input("Latency runs", 1, 10000, 30, key="latency_runs",
                                   help="timed batch-1 runs per measurement, at least (timing also lasts at "
                                        "least 0.5 s, so fast models get more)")
    measure = {"onnx": onnx, "latency_runs": int(latency_runs), **({"compile": True} if compile_rt else {})}
    base_train["device"] = device

    if not data_problem and not problem and (steps or model.get("arch") or model.get("checkpoint")
                                             or model.get("file")):
        preview = presets.custom_plan(data=data, model=model, steps=steps, base_train=base_train, chain=chain,
                                      train={"epochs": int(epochs), "device": device}, measure=measure)
        with st.expander(f"Launch queues **{plural(len(preview), 'job')}**"):
            st.dataframe(plan_table(preview), hide_index=True, width="stretch", key="custom_plan")
        took = presets.estimate_plan(preview, store, jobs.worker_status(store)["concurrency"])
        st.caption(f"How long on this machine: {took.text()}", help="From the runs finished here: the same job, "
                   "else the same method and data at other settings. Jobs with neither are not counted.")
    if st.button("Launch", type="primary", key="launch_custom"):
        if data_problem:
            st.error(f"Cannot launch: {md_text(data_problem)}.")
        elif problem:
            st.error(f"Cannot launch: {md_text(problem)}")
        elif not (model.get("arch") or model.get("checkpoint") or model.get("file")) and not steps:
            st.error("Cannot launch: choose at least one compression method.")
        elif chain and any(len(v) > 1 for _, v in steps):
            st.error("Cannot launch: a pipeline takes one setting per step; remove the sweep or untick Pipeline.")
        else:
            launch(presets.custom_plan(data=data, model=model, steps=steps, base_train=base_train, chain=chain,
                                       train={"epochs": int(epochs), "device": device}, measure=measure))
