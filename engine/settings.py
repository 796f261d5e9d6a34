"""Every ``SLIMBENCH_*`` environment variable, read here and nowhere else.

``SETTINGS`` is the table (name, default, meaning); each setting has one small accessor below that
reads the environment at call time (tests and the worker change it while running). Code that
*starts* a process names a variable through its entry (``HOME.name``) instead of spelling it.
``docs/SETTINGS.md`` is generated from the table: ``python -m engine.settings > docs/SETTINGS.md``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import SpecError


@dataclass(frozen=True)
class Setting:
    name: str
    default: str | None  # None: unset means "not given"
    meaning: str

    def raw(self) -> str | None:
        """The environment's value, else the default."""
        return os.environ.get(self.name, self.default)


HOME = Setting("SLIMBENCH_HOME", "workspace", "The workspace folder: `slimbench.db` and `runs/<id>/`.")
BACKEND = Setting("SLIMBENCH_BACKEND", "local", "Where the worker runs jobs: `local` (a process per job) or "
                  "`ray` (a task per job on the cluster at `RAY_ADDRESS`).")
HEARTBEAT_S = Setting("SLIMBENCH_HEARTBEAT_S", "2", "Seconds between heartbeats of a worker, its jobs and a "
                      "foreground run.")
STALE_S = Setting("SLIMBENCH_STALE_S", "15", "Seconds without a heartbeat after which a running job is marked "
                  "interrupted and a worker counts as dead.")
WORKER_CONCURRENCY = Setting("SLIMBENCH_WORKER_CONCURRENCY", None, "Jobs a worker runs at once (>= 1). Unset: one "
                             "per GPU, else one per 4 CPU cores, or what a Ray cluster holds.")
WORKER_IDLE_EXIT = Setting("SLIMBENCH_WORKER_IDLE_EXIT", "600", "Seconds an automatically started worker waits "
                           "with nothing to do before it exits.")
WORKER_ID = Setting("SLIMBENCH_WORKER_ID", None, "Set by whoever starts a worker: the id of the placeholder row it "
                    "takes over (internal).")
WORKER_PID = Setting("SLIMBENCH_WORKER_PID", None, "Set for a job process: its worker's pid, so the job dies with "
                     "the worker (internal).")
JOB_THREADS = Setting("SLIMBENCH_JOB_THREADS", None, "Set for a job process: the CPU threads torch may use, the "
                      "cores split between concurrent jobs (internal).")
NO_AUTOSTART = Setting("SLIMBENCH_NO_AUTOSTART", None, "`1`: submitting a job does not start a worker when none "
                       "is alive.")
CIFAR10 = Setting("SLIMBENCH_CIFAR10", None, "CIFAR-10 as a zip or folder in ImageFolder layout, when a spec "
                  "gives no `data.path` (presets, bench).")
CIFAR10_SMALL = Setting("SLIMBENCH_CIFAR10_SMALL", None, "The small CIFAR-10 subset the tests use (default: "
                        "`../shared/datasets/cifar10-small.zip`).")
FASHION_MNIST = Setting("SLIMBENCH_FASHION_MNIST", "/usr/share/datasets/fashion-mnist", "Folder of the "
                        "Fashion-MNIST idx files, when a spec gives no `data.path`.")
MLFLOW = Setting("SLIMBENCH_MLFLOW", None, "`1`: log every finished run to MLflow, whatever its spec's "
                  "`track.mlflow` says; the store is MLflow's own `MLFLOW_TRACKING_URI`, else `./mlruns`.")
TEST_HOME = Setting("SLIMBENCH_TEST_HOME", None, "Tests: the session workspace to use instead of a fresh temporary "
                    "one (keeps the trained reference runs between test sessions).")

SETTINGS: tuple[Setting, ...] = (HOME, BACKEND, HEARTBEAT_S, STALE_S, WORKER_CONCURRENCY, WORKER_IDLE_EXIT,
                                 WORKER_ID, WORKER_PID, JOB_THREADS, NO_AUTOSTART, CIFAR10, CIFAR10_SMALL,
                                 FASHION_MNIST, MLFLOW, TEST_HOME)


def home() -> Path:
    return Path(HOME.raw()).expanduser().resolve()


def backend() -> str:
    return BACKEND.raw().strip().lower() or "local"


def heartbeat_s() -> float:
    return float(HEARTBEAT_S.raw())


def stale_s() -> float:
    """A job or worker silent this long is dead; well under the promised 30 s by default."""
    return float(STALE_S.raw())


def worker_concurrency() -> int | None:
    """The configured number of concurrent jobs, or None when unset."""
    raw = WORKER_CONCURRENCY.raw()
    if not raw:
        return None
    n = int(raw)
    if n < 1:
        raise SpecError(WORKER_CONCURRENCY.name, f"must be >= 1, got {n}")
    return n


def worker_idle_exit() -> str:
    """Seconds, as the text handed to ``engine worker --exit-when-idle``."""
    return WORKER_IDLE_EXIT.raw()


def take_worker_id() -> str | None:
    """The worker id its starter chose, removed from the environment so job processes do not inherit it."""
    return os.environ.pop(WORKER_ID.name, None)


def worker_pid() -> int | None:
    raw = WORKER_PID.raw()
    return int(raw) if raw else None


def job_threads() -> int | None:
    raw = JOB_THREADS.raw()
    return int(raw) if raw else None


def no_autostart() -> bool:
    return NO_AUTOSTART.raw() == "1"


def cifar10() -> str | None:
    return CIFAR10.raw() or None


def cifar10_small() -> str | None:
    return CIFAR10_SMALL.raw() or None


def fashion_mnist() -> str:
    return FASHION_MNIST.raw()


def mlflow_always() -> bool:
    return MLFLOW.raw() == "1"


def test_home() -> str | None:
    return TEST_HOME.raw() or None


def markdown() -> str:
    """docs/SETTINGS.md: the table above as a page."""
    lines = ["# Settings", "",
             "Environment variables Slimbench reads. Generated from `engine/settings.py`; regenerate with",
             "`python -m engine.settings > docs/SETTINGS.md` (a test checks this file is current).", "",
             "| Variable | Default | Meaning |", "|---|---|---|"]
    lines += [f"| `{s.name}` | {'`' + s.default + '`' if s.default is not None else '(unset)'} | {s.meaning} |"
              for s in SETTINGS]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
