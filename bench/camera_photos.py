"""Camera photos: a job on a folder of 4000x3000 JPEGs must stay within a stated memory bound.

Users upload what their phones take. Before images were decoded reduced, 20 such photos grew one job
to 13.7 GB until the kernel's OOM killer ended it. The photos here are generated in code (a colour
gradient, the class's shape and sensor-like noise, JPEG quality 90); the job is a real
``python -m engine run`` process, and its peak resident memory is read from the kernel (``wait4``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ("circle", "square")
BOUND_MB = 2048      # the job's peak RSS, decoding and training included, at data.image_size 64


def make_photos(folder: Path, n_images: int, width: int = 4000, height: int = 3000, seed: int = 0) -> int:
    """``n_images`` camera-size JPEGs in ``folder/<class>/``, classes alternating; returns their bytes."""
    from PIL import Image, ImageDraw
    rng = np.random.default_rng(seed)
    total = 0
    ramp = np.linspace(0, 1, width, dtype=np.float32)[None, :, None]
    for i in range(n_images):
        cls = CLASSES[i % len(CLASSES)]
        tint = rng.uniform(40, 200, size=3).astype(np.float32)
        base = (tint * (0.6 + 0.4 * ramp)).repeat(height, axis=0)  # a lit background, left to right
        im = Image.fromarray(base.astype(np.uint8), "RGB")
        draw = ImageDraw.Draw(im)
        r = int(rng.uniform(0.15, 0.3) * height)
        cx, cy = (int(rng.uniform(r, width - r)), int(rng.uniform(r, height - r)))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if cls == "circle" else draw.rectangle)((cx - r, cy - r, cx + r, cy + r), fill=fill)
        noisy = np.asarray(im, dtype=np.int16) + rng.integers(-6, 7, size=(height, width, 3), dtype=np.int16)
        path = folder / cls / f"IMG_{i:04d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8), "RGB").save(path, "JPEG", quality=90)
        total += path.stat().st_size
    return total


# `python -m engine run SPEC`, saying its peak resident memory on stderr as it exits.
HIGH_WATER = (
    "import atexit, runpy, sys\n"
    "def said():\n"
    "    with open('/proc/self/status') as f:\n"
    "        kb = next((l.split()[1] for l in f if l.startswith('VmHWM:')), None)\n"
    "    if kb:\n"
    "        sys.stderr.write(f'slimbench-vmhwm-kb {kb}\\n')\n"
    "atexit.register(said)\n"
    "sys.argv = ['engine', 'run', sys.argv[1]]\n"
    "runpy.run_module('engine', run_name='__main__', alter_sys=True)\n")


def run(n_images: int = 200, width: int = 4000, height: int = 3000, image_size: int = 64,
        bound_mb: int = BOUND_MB, epochs: int = 1, timeout_s: float = 1800,
        measure: dict | None = None) -> dict[str, Any]:
    """Generate the photos, train ResNet-18 on them in a job process at ``image_size``, and return its
    peak RSS against ``bound_mb`` with the job's outcome. ``measure`` overrides the job's measure settings
    (the test's 3-photo run skips the deployment export, which is not what it checks)."""
    with tempfile.TemporaryDirectory(prefix="slimbench-photos-") as tmp:
        folder = Path(tmp) / "photos"
        t0 = time.perf_counter()
        size = make_photos(folder, n_images, width, height)
        made_s = time.perf_counter() - t0
        spec = {"name": "camera photos", "data": {"name": "imagefolder", "path": str(folder), "image_size": image_size,
                                                 "batch_size": 32},
                "model": {"arch": "resnet18"}, "method": {"name": "baseline"},
                "train": {"epochs": epochs, "device": "cpu"},
                "measure": {"onnx": False, "latency_runs": 5, "warmup_runs": 1, "paired_rounds": 0, **(measure or {})}}
        (Path(tmp) / "spec.json").write_text(json.dumps(spec))
        env = {**os.environ, "SLIMBENCH_HOME": str(Path(tmp) / "ws")}  # cwd=ROOT: this checkout's engine
        t1 = time.perf_counter()
        with open(Path(tmp) / "stdout", "wb") as out, open(Path(tmp) / "stderr", "wb") as err:
            p = subprocess.Popen([sys.executable, "-c", HIGH_WATER, str(Path(tmp) / "spec.json")], cwd=ROOT,
                                 env=env, stdout=out, stderr=err)
            try:
                _, status, usage = os.wait4(p.pid, 0)  # this child's own peak RSS, from the kernel
            except BaseException:
                p.kill()
                raise
            p.returncode = os.waitstatus_to_exitcode(status)
        job_s = time.perf_counter() - t1
        stdout = (Path(tmp) / "stdout").read_text().strip().splitlines()
        stderr = (Path(tmp) / "stderr").read_text()
    # The job's own high-water mark (VmHWM, reset by exec). wait4's ru_maxrss is not: Linux carries the
    # forking parent's RSS across exec, so from a large parent (a long pytest session) it reports the parent.
    hwm = [line.split()[1] for line in stderr.splitlines() if line.startswith("slimbench-vmhwm-kb ")]
    peak_mb = (int(hwm[-1]) if hwm else usage.ru_maxrss) / 1024  # kilobytes
    record = json.loads(stdout[-1]) if p.returncode == 0 and stdout else {}
    return {"images": n_images, "width": width, "height": height, "image_size": image_size,
            "photo_mb": size / 2**20, "make_s": made_s, "job_s": job_s, "returncode": p.returncode,
            "peak_rss_mb": peak_mb, "bound_mb": bound_mb, "within_bound": peak_mb <= bound_mb and p.returncode == 0,
            "accuracy": record.get("accuracy"), "error": None if p.returncode == 0 else stderr[-1500:]}


def section() -> str:
    r = run()
    verdict = "met" if r["within_bound"] else (
        "job failed" if r["returncode"] else f"missed by {r['peak_rss_mb'] - r['bound_mb']:.0f} MB")
    lines = ["### Camera photos (memory)", "",
             f"- {r['images']} camera photos ({r['width']}x{r['height']} JPEG, quality 90, {r['photo_mb']:.0f} MB, "
             f"generated in code) trained at `data.image_size` {r['image_size']} (ResNet-18, 1 epoch, CPU, "
             f"`python -m engine run`): peak RSS of the job process **{r['peak_rss_mb']:.0f} MB** (bound "
             f"{r['bound_mb']} MB — {verdict}); the job took {r['job_s']:.0f} s"
             + (f", test accuracy {r['accuracy']:.3f} (1 epoch on synthetic photos: a memory test, not an accuracy "
                "result)" if r["accuracy"] is not None else "")]
    if r["error"]:
        lines.append(f"- The job failed: `{r['error'].strip().splitlines()[-1]}`")
    return "\n".join(lines)
