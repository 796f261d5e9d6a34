"""What the lent GPU machine (nvidia-h200) lacks of this repo's requirements, and what we carry to it as wheels.

The one list: ABSENT, import name -> distribution, read off the device's package list (the workplace's KINDS.md,
"Python packages already there", read on 2026-11-17) against requirements.txt and requirements-ray.txt. The
device has everything else they name (torch 2.11, torchvision 0.26, onnx, onnxruntime, onnxscript, numpy,
pandas, psutil, nvidia-ml-py, cloudpickle, scikit-learn, pytest ...), and nothing can be installed there from a
registry.

CARRIED: those of them the GPU commands (`python -m bench gpu`, `gpu-bases`, `literature`, `autocompress --gpu`) need, pinned; scripts/gpu_prepare.sh
downloads their wheels into .whl/ and scripts/gpu_session.sh installs them there. Found by rehearsing the
commands with every ABSENT package blocked (`scripts/gpu_session.sh --rehearse PART`); the rest are optional
where those commands meet them (OpenVINO: "not available on this machine"; MLflow: tracking off).

`install()` hides them from every finder on sys.meta_path, so that ``import <absent>`` raises ModuleNotFoundError
and ``importlib.util.find_spec`` answers None, as there; scripts/rehearse/sitecustomize.py calls it in every Python process of a rehearsal (children too:
they inherit PYTHONPATH). ``python3 scripts/rehearse/device_packages.py --carried`` prints CARRIED, one a line.
"""
from __future__ import annotations

import os
import sys

ABSENT = {
    "torch_pruning": "torch-pruning",
    "openvino": "openvino",
    "nncf": "nncf",
    "optuna": "optuna",
    "mlflow": "mlflow-skinny",
    "streamlit": "streamlit",
    "plotly": "plotly",
    "playwright": "playwright",
    "pytest_playwright": "pytest-playwright",
    "importlinter": "import-linter",
    "ray": "ray",
    # optuna's own needs that the device lacks: colorlog is carried; alembic and sqlalchemy (with mako) serve only
    # optuna's SQL storages, and the engine's searches use its JournalStorage (engine/methods/autocompress.py)
    "colorlog": "colorlog",
    "alembic": "alembic",
    "sqlalchemy": "sqlalchemy",
    "mako": "mako",
}
# import name -> pinned requirement (the version this repo's .venv tests with). torch-pruning's own needs
# (torch, numpy) are on the device.
CARRIED = {"torch_pruning": "torch-pruning==1.6.1",
           # the auto-compress search (`python -m bench autocompress --gpu`): ~0.4 MB with colorlog
           "optuna": "optuna==5.1.0", "colorlog": "colorlog==6.12.0"}
# A carried wheel's declared needs that it never imports on the paths the GPU commands take (checked by rehearsing
# with them hidden): not carried, so the 64 MiB a call sends keeps room for CIFAR-10.
UNUSED_NEEDS = {"alembic", "sqlalchemy"}
# A rehearsal can allow more (comma-separated import names) while it checks whether carrying them fixes it.
ALLOW_ENV = "SLIMBENCH_REHEARSE_ALLOW"


class DeviceAbsent:
    """Hides the packages the device lacks (and we do not carry) from one finder of sys.meta_path: for them it
    finds nothing, so ``import X`` raises ModuleNotFoundError and ``importlib.util.find_spec("X")`` is None,
    exactly as where X is not installed (code that probes before importing takes its no-X path)."""

    def __init__(self, inner, blocked: dict[str, str]):
        self.inner, self.blocked = inner, blocked

    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] in self.blocked:
            return None
        find = getattr(self.inner, "find_spec", None)
        return find(fullname, path, target) if find else None

    def invalidate_caches(self):
        getattr(self.inner, "invalidate_caches", lambda: None)()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __repr__(self):
        return f"DeviceAbsent({self.inner!r}, hiding {sorted(self.blocked)})"


def install(allowed: set[str] | None = None) -> dict[str, str]:
    """Hide every ABSENT package but the carried ones (and ``allowed``) in this process; returns those hidden."""
    extra = {x.strip() for x in os.environ.get(ALLOW_ENV, "").split(",") if x.strip()}
    keep = set(CARRIED) | extra | set(allowed or ())
    blocked = {k: v for k, v in ABSENT.items() if k not in keep}
    for name in list(sys.modules):   # already imported (by a .pth file, say): forget it, so the block applies
        if name.partition(".")[0] in blocked:
            del sys.modules[name]
    sys.meta_path[:] = [f if isinstance(f, DeviceAbsent) else DeviceAbsent(f, blocked) for f in sys.meta_path]
    sys.path_importer_cache.clear()
    return blocked


if __name__ == "__main__":
    if sys.argv[1:] == ["--carried"]:
        print("\n".join(CARRIED.values()))
    elif sys.argv[1:] == ["--absent"]:
        print("\n".join(f"{k} {v}" for k, v in ABSENT.items()))
    else:
        sys.exit("usage: device_packages.py --carried | --absent")
