"""Predictions of a finished run's model on new images: top-5 with probabilities and latency.

``Predictor`` loads a run's checkpoint bundle once (the dashboard caches it) and preprocesses
images exactly as the bundle's metadata says (input size, channels, mean/std).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from . import export, layout
from .data import decode_image, load, load_pil, preprocess_image
from .spec import DataSpec
from .store import Store, check_run_id


class PredictError(ValueError):
    """A run that cannot be used for predictions, with what to do about it."""


@dataclass
class Prediction:
    top: list[tuple[str, float]]  # (class name, probability), best first
    index: int                    # predicted class index
    latency_ms: float             # median forward time for this one image (batch 1)


class Predictor:
    def __init__(self, model: Any, bundle: dict[str, Any], run_id: str | None = None):
        self.model, self.bundle, self.run_id = model, bundle, run_id
        self.meta = bundle.get("meta", {})
        n = int(bundle.get("arch_kwargs", {}).get("num_classes", 0)) or len(self.meta.get("class_names", []))
        names = list(self.meta.get("class_names") or [])
        self.class_names = names if len(names) == n else [str(i) for i in range(n)]

    @property
    def is_torch(self) -> bool:
        """Only plain PyTorch models have gradients for saliency maps."""
        return isinstance(self.model, nn.Module)

    def preprocess(self, raw: bytes) -> torch.Tensor:
        return preprocess_image(raw, self.meta)

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return torch.as_tensor(out).float()

    def predict(self, raw: bytes, k: int = 5, timing_runs: int = 5) -> Prediction:
        x = self.preprocess(raw)
        self.logits(x)  # warm-up: first call pays allocation and lazy-init costs
        times = []
        for _ in range(timing_runs):
            t0 = time.perf_counter()
            logits = self.logits(x)
            times.append((time.perf_counter() - t0) * 1000.0)
        probs = torch.softmax(logits[0], 0)
        p, idx = probs.topk(min(k, len(probs)))
        top = [(self.class_names[i], float(v)) for v, i in zip(p.tolist(), idx.tolist())]
        return Prediction(top, int(idx[0]), statistics.median(times))


# How far an image may sit from the training images before the page says so. Inputs are normalised
# with the training set's per-channel mean and std, so its pixels have mean 0 and std 1 there: an image
# whose mean is over 1.5 of those stds off (a white-background photo for a black-background set), whose
# contrast is under a quarter or over 3x the training set's, or that is in colour where the model only
# ever saw grey, is unlike what the model learnt from; its answers say little.
FAR_MEAN = 1.5
CONTRAST_RANGE = (0.25, 3.0)
COLOUR_SATURATION = 0.15    # mean (max - min) over R, G, B of a pixel, 0-1: above this an image is in colour


def far_from_training(raw: bytes, meta: dict[str, Any]) -> list[str]:
    """Why an image looks unlike the training images of a model with bundle ``meta`` (empty if it does not):
    its brightness and contrast against the training set's (its normalisation), and colour on a grey model."""
    size = int(meta["input_size"][-1])
    t = decode_image(raw, size).float() / 255.0
    out = []
    if int(meta.get("channels", 3)) == 1 and t.shape[0] == 3:
        sat = (t.max(0).values - t.min(0).values).mean().item()
        if sat > COLOUR_SATURATION:
            out.append(f"it is in colour (saturation {sat:.2f}) while the model was trained on grey images")
    x = preprocess_image(raw, meta)[0]
    grey = int(meta.get("channels", 3)) == 1
    means = x.mean((1, 2))
    c = int(means.abs().argmax())
    where = "" if grey else f" ({'RGB'[c]} channel)"
    if abs(means[c].item()) > FAR_MEAN:
        out.append(f"its mean brightness{where} is {means[c].item():+.1f} training-set standard deviations from the "
                   f"training images' mean (beyond ±{FAR_MEAN:g})")
    contrast = x.std((1, 2)).mean().item()
    if not CONTRAST_RANGE[0] <= contrast <= CONTRAST_RANGE[1]:
        out.append(f"its contrast is {contrast:.2f}x the training images' (outside "
                   f"{CONTRAST_RANGE[0]:g}-{CONTRAST_RANGE[1]:g}x)")
    return out


def load_path(path: str, run_id: str | None = None, trust_code: bool = False) -> Predictor:
    """A bundle file -> Predictor. INT8 ONNX bundles go through export.load_predictor where available;
    ``trust_code``: a model built by a Python file may run it (a run of this workspace's, opted in)."""
    loader = getattr(export, "load_predictor", None)
    try:
        if loader is not None:
            loaded = loader(path, trust_code=trust_code)
            model, bundle = loaded if isinstance(loaded, tuple) else (loaded, getattr(loaded, "bundle", {}))
        else:
            model, bundle = export.load_model(path, trust_code)
    except export.BundleError as e:
        raise PredictError(str(e)) from None
    if isinstance(model, nn.Module):
        model = model.to("cpu").eval()
    return Predictor(model, bundle, run_id)


def load_run(run_id: str, store: Store | None = None) -> Predictor:
    store = store or Store()
    try:
        check_run_id(run_id)
    except ValueError:
        raise PredictError(f"not a run id: {run_id!r}") from None
    row = store.get(run_id)
    if row is None:
        raise PredictError(f"no run {run_id} in this workspace")
    if row["state"] != "done":
        raise PredictError(f"run {run_id} is {row['state']}; only finished runs can predict")
    path = store.run_dir(run_id) / layout.CHECKPOINT
    if not path.is_file():
        raise PredictError(f"run {run_id} has no checkpoint file (was it deleted?)")
    return load_path(str(path), run_id, trust_code=True)


WORKING_SIDE = 1024  # pixels: above every model's input size (data.image_size <= 1024)


BROWSER_FORMATS = ("JPEG", "PNG", "WEBP")  # what a browser shows and st.image passes on as it is


def working_copy(raw: bytes, max_side: int = WORKING_SIDE) -> tuple[bytes, tuple[int, int]]:
    """The image as 8-bit JPEG/PNG/WebP bytes at most ``max_side`` pixels on its longer side
    (antialiased), and its original (width, height). A camera-size image is then decoded once, not
    once per model and rerun; every model reduces it to its own input size (a few dozen pixels) anyway.
    Anything a browser (or st.image, which re-encodes as JPEG) cannot show as it is — 16-bit, 32-bit,
    float, LAB, CMYK, palette or transparent images, TIFF, BMP, GIF — becomes a PNG of its 8-bit
    conversion, the one the models see. Raises ImageError."""
    import io

    from PIL import Image
    im = load_pil(raw)
    size = im.size
    with Image.open(io.BytesIO(raw)) as original:  # header only: the format and mode as uploaded
        as_is = original.format in BROWSER_FORMATS and original.mode in ("L", "RGB")
    if max(size) <= max_side and as_is:
        return raw, size
    im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue(), size


def test_samples(spec_data: dict[str, Any], n: int = 8) -> list[tuple[str, bytes]]:
    """The first ``n`` test images of a run's dataset as (true class name, PNG bytes)."""
    import io

    from PIL import Image
    data = load(DataSpec(**spec_data))
    out = []
    for i in range(min(n, len(data.test))):
        arr = data.test.x[i].permute(1, 2, 0).numpy()
        im = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        out.append((data.class_names[int(data.test.y[i])], buf.getvalue()))
    return out
