"""Try an image: each chosen model's top-5, latency on this image, agreement with the base, and Grad-CAM."""
from __future__ import annotations

import hashlib
import logging

import numpy as np
import pandas as pd
import streamlit as st

from engine import predict, saliency
from engine.data import IMAGE_SUFFIXES, ImageError, load_pil
from views.common import done_runs, fmt_ms, get_store, md_text, run_label

st.title("Try an image")
log = logging.getLogger("slimbench.pages")
MODEL_PX = 250  # a model's answers: its name, top-5 and a 224 px map; three to a row at 1280 px
store = get_store()


@st.cache_resource(show_spinner="Loading model ...", max_entries=16)
def predictor(root: str, run_id: str) -> predict.Predictor:
    return predict.load_run(run_id, store)


@st.cache_resource(show_spinner="Loading test images ...", max_entries=2)
def samples(data_key: str, spec_data: dict, n: int) -> list[tuple[str, bytes]]:
    return predict.test_samples(spec_data, n)


runs = done_runs()
if not runs:
    st.info("No finished runs yet: train one on **Experiments** first.")
    st.stop()
by_id = {r["id"]: r for r in runs}
labels = {r["id"]: run_label(r) for r in runs}
base = next((r for r in runs if not r.get("parent")), runs[0])
family = [base["id"]] + [r["id"] for r in runs if r.get("parent") == base["id"]][:3]
chosen = st.multiselect("Models", list(labels), default=family, format_func=labels.get, key="runs",
                        help="The first is the reference: the others are marked as agreeing with it or not.")
if not chosen:
    st.warning("Choose at least one model.")
    st.stop()
ref_id = chosen[0]
ref_name = by_id[ref_id].get("name") or by_id[ref_id].get("method") or ref_id
if len(chosen) > 1:
    st.caption(f"Reference: **{md_text(ref_name)}** (`{ref_id}`), the first model chosen: every other model is marked "
               "as agreeing with its top-1 answer or differing from it. Reorder the models to change it.")

source = st.radio("Images", ["Upload", "Test-set samples"], horizontal=True, key="img_source")
images: list[tuple[str, bytes, str | None]] = []  # (title, bytes, true class where known)
if source == "Upload":
    files = st.file_uploader("One or more images (any common format)", type=list(IMAGE_SUFFIXES),
                             accept_multiple_files=True, key="images")
    images = [(f.name, f.getvalue(), None) for f in files or []]
else:
    spec_data = (by_id[ref_id].get("spec") or {}).get("data") or {}
    n = st.slider("How many", 1, 16, 4, key="n_samples")
    try:
        images = [(f"test #{i} (true: {label})", raw, label)
                  for i, (label, raw) in enumerate(samples(repr(sorted(spec_data.items())), spec_data, n))]
    except Exception as e:  # the dataset may have moved since the run
        st.error(f"Could not load the test set of {ref_id}: {md_text(e)}. Upload images instead.")
st.session_state.setdefault("cam", True)  # kept widget: default via state, not value=
show_cam = st.toggle("Saliency maps (Grad-CAM)", key="cam")
if not images:
    st.info("Upload an image (or pick test-set samples) to see predictions.")
    st.stop()

models: dict[str, predict.Predictor] = {}
for rid in chosen:
    try:
        models[rid] = predictor(str(store.root), rid)
    except predict.PredictError as e:
        st.error(f"{md_text(labels[rid])}: {md_text(e)}. Choose another run.")
if not models:
    st.stop()


# Each model's answer (and latency) and map are measured once per image, not on every rerun: toggling
# the maps or adding a model then costs only what is new.
@st.cache_data(show_spinner=False, max_entries=512)
def working_copy(digest: str, _raw: bytes) -> tuple[bytes, tuple[int, int]]:
    return predict.working_copy(_raw)


@st.cache_data(show_spinner=False, max_entries=512)
def prediction(root: str, run_id: str, digest: str, _raw: bytes) -> predict.Prediction:
    return predictor(root, run_id).predict(_raw)


@st.cache_data(show_spinner=False, max_entries=512)
def cam_overlay(root: str, run_id: str, digest: str, _raw: bytes, index: int) -> np.ndarray:
    pred = predictor(root, run_id)
    cam = saliency.grad_cam(pred.model, pred.preprocess(_raw), index)
    return saliency.overlay(np.asarray(load_pil(_raw)), cam)


@st.cache_data(show_spinner=False, max_entries=512)
def unlike_training(root: str, run_id: str, digest: str, _raw: bytes) -> list[str]:
    """How the image differs from model ``run_id``'s training images: brightness and contrast against its
    normalisation, colour on a grey model."""
    return predict.far_from_training(_raw, predictor(root, run_id).meta)


def show(name: str, raw: bytes, truth: str | None) -> None:
    """One image: its thumbnail, then each model's answer side by side."""
    digest = hashlib.sha256(raw).hexdigest()
    try:
        raw, (w, h) = working_copy(digest, raw)
    except ImageError as e:
        st.error(f"{md_text(name)}: {md_text(e)}. Upload a PNG, JPEG, WebP, BMP, GIF or TIFF image.")
        return
    c1, c2 = st.columns([1, 5], vertical_alignment="center")
    c1.image(raw, width=120)
    c2.markdown(f"#### {md_text(name)}")
    c2.caption(f"{w}x{h} px" + (f", reduced to {predict.WORKING_SIDE} px on its longer side before each model "
                                "resizes it to its input" if max(w, h) > predict.WORKING_SIDE else ""))
    far = unlike_training(str(store.root), ref_id, digest, raw) if ref_id in models else []
    if far:
        c2.warning(f"Unlike the images {md_text(ref_name)} was trained on: " + "; ".join(far) + ". Its answers on it "
                   "say little about its accuracy.", icon=":material/travel_explore:")
    # one fixed-width block per model, as many to a row as fit: columns squeezed on a narrow page cut the
    # probabilities off and let the Grad-CAM map overlap the next model's answers
    row = st.container(horizontal=True)
    cols = [row.container(width=MODEL_PX) for _ in models]
    preds = {}
    for col, (rid, pred) in zip(cols, models.items()):
        with col:
            try:
                out = prediction(str(store.root), rid, digest, raw)
            except (ImageError, ValueError, RuntimeError) as e:
                st.error(f"{md_text(labels[rid])}: cannot predict this image ({md_text(e)}).")
                continue
            preds[rid] = out
            verdict = []
            if truth is not None:
                verdict.append(":green[right]" if out.top[0][0] == truth else ":red[wrong]")
            if rid != ref_id and ref_id in preds:
                # "the reference", named once above: a long run name repeated in every column buried the answer
                verdict.append(":green[:material/check_circle: agrees with the reference]"
                               if out.index == preds[ref_id].index
                               else ":red[:material/cancel: differs from the reference]")
            elif rid == ref_id and len(models) > 1:
                verdict.append("reference")
            st.markdown(f"**{md_text(by_id[rid].get('name') or by_id[rid].get('method'))}**  \n"
                        f"`{rid}` · {fmt_ms(out.latency_ms)}" + "".join(f" · {v}" for v in verdict))
            top = pd.DataFrame(out.top, columns=["class", "probability"])
            top["probability"] *= 100  # one decimal for every row: "percent" printed 0 to 2 as it saw fit
            st.dataframe(top, hide_index=True, width="stretch", key=f"top_{name}_{rid}",
                         column_config={"probability": st.column_config.ProgressColumn(min_value=0, max_value=100,
                                                                                       format="%.1f %%")})
            if show_cam and pred.is_torch:
                st.image(cam_overlay(str(store.root), rid, digest, raw, out.index),
                         caption=f"Grad-CAM for “{md_text(out.top[0][0])}”", width=224)
            elif show_cam:
                st.caption("No saliency map: this model is not a PyTorch model (e.g. INT8 ONNX Runtime).")


for name, raw, truth in images:
    st.divider()
    try:
        show(name, raw, truth)
    except Exception as e:  # one image the page cannot show must not hide the ones after it
        log.exception("Try an image: %s", name)
        st.error(f"{md_text(name)}: this image could not be shown ({type(e).__name__}: {md_text(e)}). The others are below.")
