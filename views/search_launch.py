"""Experiments' Auto-compress tab: a search from a finished run, checked by the engine before anything is
queued (each refusal shown under the field it names), then queued as a normal job."""
from __future__ import annotations

from typing import Any, Callable

import streamlit as st

from engine import methods, searches
from engine.methods import autocompress, search_latency
from engine.spec import SpecError
from views.common import md_text, run_label, startable_runs

CANDIDATE_HELP = {"prune_int8": "structured pruning (channels cut, MACs down) then INT8",
                  "blocks_int8": "whole residual blocks removed (a shallower net: fewer layers, faster at batch 1) "
                                 "then INT8",
                  "lowrank_int8": "low-rank SVD of the layers then INT8",
                  "quantize_int8": "the start as it is, in INT8 (no training): tried first, the point every "
                                   "other recipe should beat",
                  "unstructured": "zeroed weights (sparse, same dense size and MACs)",
                  "distill": "a small student (MobileNet) trained with knowledge distillation",
                  "prune": "structured pruning alone (FP32, no INT8): for a device where INT8 runs no faster",
                  "blocks": "block pruning alone (FP32, no INT8)",
                  "lowrank": "low-rank SVD alone (FP32, no INT8)"}
# what a chip shows: short enough to fit whole beside the others at 800 px; CANDIDATE_HELP in the field's help
CANDIDATE_LABELS = {"prune_int8": "structured pruning → INT8", "blocks_int8": "block pruning → INT8",
                    "lowrank_int8": "low-rank SVD → INT8", "quantize_int8": "INT8 alone",
                    "unstructured": "unstructured (zeroed weights)", "distill": "distilled student",
                    "prune": "structured pruning (FP32)", "blocks": "block pruning (FP32)",
                    "lowrank": "low-rank SVD (FP32)"}
OBJECTIVES = {"size": "Size in MB (model.pt)", "macs": "MACs per image",
              "latency": "Latency: CPU, at a batch, in a runtime you choose",
              "energy": "Energy per image (CPU package, RAPL)"}


DEVICE_LABELS = {"cpu": "CPU", "cuda": "GPU (CUDA; INT8 left out)"}
RUNTIME_LABELS = {"eager": "PyTorch eager", "onnxruntime": "ONNX Runtime", "openvino": "OpenVINO",
                  "best": "Best: each model's fastest runtime here"}


def _param(name: str) -> methods.Param:
    return next(p for p in methods.get(searches.METHOD).params if p.name == name)


def kept(key: str, default: Any) -> None:
    """A kept widget's default goes through session state, not value= (views.common.KEPT_PREFIXES)."""
    st.session_state.setdefault(key, default)


def panel(store, launch: Callable[[list[dict[str, Any]]], None]) -> None:
    st.caption("Give the accuracy you may lose and what to minimise (or a budget to meet); the search tries "
               "pruning, low-rank, distillation and INT8 recipes (Optuna TPE), each trial a run of its own, chosen "
               "on the validation split. Its page shows the trials live.")
    slots: dict[str, Any] = {}
    made = searches.made_by_search(store.list())   # a search's trials: its own row (the winner's model) stands for them
    runs = [r for r in startable_runs() if r["id"] not in made]
    if not runs:
        st.info("No finished PyTorch run to start from yet: train a base (a preset, or Custom experiment), then "
                "search from it. From an uploaded checkpoint: on Custom experiment, start from *Upload a "
                "checkpoint* and choose the method `autocompress`.")
        return
    labels = {r["id"]: run_label(r) for r in runs}
    start = st.selectbox("Start from the finished run", list(labels), format_func=labels.get, key="search_start",
                         index=list(labels).index(searches.default_start(runs)),
                         help="its data, training and timing settings apply to every trial; offered first: the "
                              "newest trained base")
    st.caption("From an uploaded checkpoint: on **Custom experiment**, start from *Upload a checkpoint* and choose "
               "the method `autocompress`: the checkpoint is scored as a run of its own, then searched from.")
    slots["model.from_run"] = st.empty()

    c1, c2 = st.columns(2)
    with c1:
        kept("ac_limit", 1.0)
        limit = st.number_input("Accuracy limit: points it may lose on the validation split", min_value=0.0,
                                step=0.5, format="%g", key="ac_limit", help=_param("max_drop_pt").help)
        slots["method.params.max_drop_pt"] = st.empty()
    with c2:
        here = [o for o in OBJECTIVES if o in autocompress.objectives_here()]
        why_not = autocompress.energy_unmeasurable()
        objective = st.selectbox("Objective", here, format_func=OBJECTIVES.get, key="ac_objective",
                                 help="what every trial is measured by against the start"
                                      + (f"; energy is not offered: {why_not}" if why_not else ""))
        slots["method.params.objective"] = st.empty()
    runtime, batch, device = "eager", 1, "cpu"
    if objective == "latency":
        if autocompress.cuda_here():   # the GPU is offered only where this machine has one
            device = st.radio("Timed on", list(search_latency.DEVICES), horizontal=True, key="ac_device",
                              format_func=DEVICE_LABELS.get, help=_param("device").help)
            slots["method.params.device"] = st.empty()
        c1, c2 = st.columns(2)
        with c1:
            missing = {r: search_latency.unavailable(r, device) for r in search_latency.RUNTIMES}
            offered = [r for r in search_latency.RUNTIMES if not missing[r]]
            if st.session_state.get("ac_runtime") not in offered:   # e.g. openvino, then the GPU chosen
                st.session_state.pop("ac_runtime", None)
            kept("ac_runtime", "best" if "best" in offered else offered[0])
            runtime = st.selectbox("Timed in the runtime", offered, format_func=RUNTIME_LABELS.get, key="ac_runtime",
                                   help=_param("runtime").help + "".join(
                                       f"; {r} is not offered: {why}" for r, why in missing.items() if why))
            slots["method.params.runtime"] = st.empty()
        with c2:
            kept("ac_batch", 1)
            batch = st.number_input("At batch", min_value=1, step=1, key="ac_batch", help=_param("batch").help)
            slots["method.params.batch"] = st.empty()
    c1, c2 = st.columns(2)
    with c1:
        goal = st.radio("Goal", ["Minimise it", "Meet a budget"], horizontal=True, key="ac_goal",
                        help="minimise: the cheapest trial within the limit wins; a budget: the most accurate "
                             "trial at most 1/N of the start's wins")
    target = None
    with c2:
        if goal == "Meet a budget":
            kept("ac_target", 4.0)
            target = st.number_input("Times smaller / cheaper than the start (N)", min_value=1.0, step=0.5,
                                     format="%g", key="ac_target", help=_param("target").help)
        slots["method.params.target"] = st.empty()

    c1, c2 = st.columns(2)
    with c1:
        kept("ac_trials", 12)
        trials = st.number_input("Search budget: trials", min_value=0, step=1, key="ac_trials",
                                 help=_param("trials").help)
        slots["method.params.trials"] = st.empty()
    with c2:
        minutes = None
        if st.checkbox("Also a wall-time budget", key="ac_use_minutes"):
            kept("ac_minutes", 20.0)
            minutes = st.number_input("Search budget: minutes", min_value=0.0, step=5.0, format="%g",
                                      key="ac_minutes", help=_param("minutes").help)
        slots["method.params.minutes"] = st.empty()
    # the engine's candidates, in its order, its default space chosen, as `python -m engine autocompress` (the page
    # offered five of six: INT8 alone, which the search tries first, could not be chosen)
    kept("ac_space", list(autocompress.DEFAULT_SPACE))
    space = st.multiselect("Candidates searched", list(autocompress.CANDIDATES), key="ac_space", wrap=True,
                           format_func=lambda c: CANDIDATE_LABELS.get(c, c),
                           help="\n".join(f"- **{CANDIDATE_LABELS[c]}** (`{c}`): {why}" for c, why in CANDIDATE_HELP.items()))
    slots["method.params.space"] = st.empty()
    with st.expander("Search settings"):
        c1, c2, c3, c4 = st.columns(4)
        kept("ac_finetune", 1)
        kept("ac_margin", 3.0)
        kept("ac_seed", 0)
        finetune = c1.number_input("Fine-tune epochs per trial", min_value=1, key="ac_finetune",
                                   help=_param("finetune_epochs").help)
        margin = c2.number_input("Stop a trial this many points past the limit", min_value=0.0,
                                 format="%g", key="ac_margin", help=_param("prune_margin_pt").help)
        seed = c3.number_input("Sampler seed", min_value=0, key="ac_seed", help=_param("seed").help)
        kept("ac_parallel", 1)
        parallel = c4.number_input("Trials at once", min_value=1, key="ac_parallel", help=_param("parallel").help)
        slots["method.params.finetune_epochs"] = st.empty()
        slots["method.params.parallel"] = st.empty()

    params = {"max_drop_pt": float(limit), "objective": objective, "target": target, "trials": int(trials),
              "minutes": minutes, "space": list(space), "finetune_epochs": int(finetune),
              "prune_margin_pt": float(margin), "seed": int(seed), "parallel": int(parallel),
              "runtime": runtime, "batch": int(batch), "device": device}
    problem = None
    try:
        spec = searches.check_launch(store, start, params)
    except SpecError as e:
        problem = e
        slot = slots.get(e.field)
        (slot or st).error(md_text(e), icon=":material/block:")
    if st.button("Launch the search", type="primary", key="launch_search"):
        if problem is not None:
            st.error(f"Nothing was queued: {md_text(problem)}")
        else:
            launch([spec])
    latest = searches.searches_of(store.list(limit=50))
    if latest:
        st.page_link("views/search.py", label=f"Watch the latest search: {md_text(run_label(latest[0]))}",
                     icon=":material/travel_explore:", query_params={"run": latest[0]["id"]})
