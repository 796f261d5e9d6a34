"""CLI commands for background jobs: submit, jobs, cancel, retry, worker (registered on import).
Everything imported here is torch-free, so these commands start fast."""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import sys
from pathlib import Path

from . import jobs, phases
from .commands import arg, command
from .errors import SpecError
from .spec import JobSpec, ModelSpec, parse_json
from .store import STATES, Store
from .worker import Worker


def read_spec(a: argparse.Namespace) -> JobSpec:
    """The spec ``a.spec`` names, with ``--experiment`` / ``--group`` (where given) in place of its own."""
    spec = JobSpec.from_json(sys.stdin.buffer.read()) if a.spec == "-" else JobSpec.from_file(a.spec)
    given = {k: getattr(a, k) for k in ("experiment", "group") if getattr(a, k, None) is not None}
    if getattr(a, "model_file", None):
        given["model"] = _model_file(a)
    elif any(getattr(a, k, None) for k in ("model_kwargs", "weights", "norm")):
        raise SpecError("--model-file", "--model-kwargs, --weights and --norm go with --model-file")
    if given:
        spec = dataclasses.replace(spec, **given)
        spec.validate()
    return spec


def _model_file(a: argparse.Namespace) -> ModelSpec:
    """The spec's model section as ``--model-file`` and its companions give it (paths made absolute: the
    job may run in another folder, a worker's)."""
    path, sep, builder = a.model_file.rpartition(":") if not a.model_file.endswith(".pt2") else (a.model_file, "", "")
    kwargs = None
    if a.model_kwargs is not None:
        kwargs = parse_json(a.model_kwargs)
        if not isinstance(kwargs, dict):
            raise SpecError("--model-kwargs", f"must be a JSON object of the builder's arguments, got {a.model_kwargs!r}")
    absolute = lambda p: str(Path(p).expanduser().absolute())  # noqa: E731
    return ModelSpec(file=absolute(path) + sep + builder, builder_kwargs=kwargs, trust_code=a.trust_model_code,
                     weights=absolute(a.weights) if a.weights else None, normalisation=a.norm)


def label_args(fn):
    """``--experiment`` and ``--group`` on a command that takes a spec, and ``--model-file`` with its companions
    (the user's own architecture in place of the spec's model)."""
    fn = arg("--norm", default=None, help="with --model-file: how the weights' inputs were normalised: dataset "
                                          "(default), imagenet or MEAN/STD")(fn)
    fn = arg("--weights", default=None, help="with --model-file FILE.py:BUILDER: a state dict to load into the "
                                             "built model (else it trains from scratch)")(fn)
    fn = arg("--trust-model-code", action="store_true",
             help="run the Python model file's code (it runs with your permissions: only for a file you trust)")(fn)
    fn = arg("--model-kwargs", default=None, help="the builder's keyword arguments as a JSON object")(fn)
    fn = arg("--model-file", default=None,
             help="your own architecture in place of the spec's model: FILE.py:BUILDER (with --trust-model-code) "
                  "or a torch.export program FILE.pt2")(fn)
    fn = arg("--group", default=None, help="the group within the experiment (replaces the spec's group)")(fn)
    return arg("--experiment", default=None, help="the experiment the job belongs to (replaces the spec's)")(fn)


def labelled(rows: list[dict], a: argparse.Namespace) -> list[dict]:
    """The rows whose spec has the ``--experiment`` / ``--group`` asked for (all where none was)."""
    for k in ("experiment", "group"):
        if getattr(a, k, None) is not None:
            rows = [r for r in rows if (r.get("spec") or {}).get(k) == getattr(a, k)]
    return rows


def label_text(row: dict) -> str:
    """"experiment / group" of a row's spec, "-" for neither."""
    spec = row.get("spec") or {}
    return " / ".join(v for v in (spec.get("experiment"), spec.get("group")) if v) or "-"


@command("submit", "queue a job spec for the background worker; prints the job id")
@arg("spec", help="path to a JSON job spec ('-' for stdin)")
@arg("--no-worker", action="store_true", help="only queue it; do not start a worker if none is alive")
@label_args
def cmd_submit(a: argparse.Namespace) -> int:
    spec = read_spec(a)
    job_id = jobs.submit(spec, autostart=False if a.no_worker else None)
    print(job_id)
    return 0


@command("jobs", "list background jobs with their state and latest progress")
@arg("--json", action="store_true", help="one JSON array of job rows")
@arg("--state", action="append", default=None, help="only jobs in this state (repeatable)")
@arg("--limit", type=int, default=50)
@arg("--experiment", default=None, help="only jobs of this experiment")
@arg("--group", default=None, help="only jobs of this group")
def cmd_jobs(a: argparse.Namespace) -> int:
    for s in a.state or []:
        if s not in STATES:
            raise SpecError("--state", f"unknown state {s!r}; valid: {', '.join(STATES)}")
    filtered = a.experiment is not None or a.group is not None
    rows = labelled(jobs.list_jobs(states=a.state, limit=None if filtered else a.limit), a)[:a.limit]
    if a.json:
        for r in rows:
            r.update(experiment=(r.get("spec") or {}).get("experiment"), group=(r.get("spec") or {}).get("group"))
        keys = ("id", "state", "name", "experiment", "group", "method", "arch", "dataset", "parent", "created", "started", "finished",
                "attempts", "worker", "pid", "error", "waiting_for", "waiting", "last_event")
        print(json.dumps([{k: r.get(k) for k in keys} for r in rows]))
        return 0
    print(f"{'id':<24} {'state':<11} {'experiment / group':<24} {'method':<18} {'arch':<16} {'created':<19} "
          "progress / error")
    for r in rows:
        info = r["error"] or phases.label(r["state"], r["last_event"], r["waiting"])
        created = dt.datetime.fromtimestamp(r["created"]).strftime("%Y-%m-%d %H:%M:%S")
        print(f"{r['id']:<24} {r['state']:<11} {label_text(r)[:24]:<24} {r['method'] or '-':<18} {r['arch'] or '-':<16} {created:<19} {info}")
    return 0


def bulk_args(fn):
    """Job ids, or ``--experiment`` / ``--group``: every job of that experiment (group) the action applies to."""
    fn = arg("--group", default=None, help="every such job of this group")(fn)
    fn = arg("--experiment", default=None, help="every such job of this experiment")(fn)
    return arg("job_ids", nargs="*", metavar="ID", help="job ids")(fn)


def chosen_jobs(a: argparse.Namespace, states: tuple[str, ...], verb: str) -> list[str]:
    """The ids named, or those of ``--experiment`` / ``--group`` in ``states``; never both, never neither."""
    label = a.experiment is not None or a.group is not None
    if a.job_ids and label:
        raise SpecError("ID", "give job ids or --experiment/--group, not both")
    if not a.job_ids and not label:
        raise SpecError("ID", f"name the jobs to {verb}: job ids, or --experiment X (and/or --group G)")
    if a.job_ids:
        return list(a.job_ids)
    ids = jobs.matching(Store(), experiment=a.experiment, group=a.group, states=states)
    if not ids:
        print(f"no {' or '.join(states)} job in experiment/group {label_text({'spec': vars(a)})!r}: "
              f"nothing to {verb}", file=sys.stderr)
    return ids


def report(outcome: dict[str, str | None], done: str, verb: str) -> int:
    """A line per job: ``done`` (a format of its id) on stdout, or why not on stderr; exit status 1 when
    any job was refused."""
    for job_id, why in outcome.items():
        if why is None:
            print(done.format(job_id))
        else:
            print(f"cannot {verb} {job_id}: {why}", file=sys.stderr)
    return 1 if any(why is not None for why in outcome.values()) else 0


@command("cancel", "cancel queued or running jobs (a running one stops within seconds): IDs or --experiment X")
@bulk_args
def cmd_cancel(a: argparse.Namespace) -> int:
    return report(jobs.cancel_many(chosen_jobs(a, ("queued", "running"), "cancel")), "cancel requested: {}", "cancel")


@command("retry", "queue interrupted, failed or cancelled jobs again (same ids, printed): IDs or --experiment X")
@bulk_args
def cmd_retry(a: argparse.Namespace) -> int:
    return report(jobs.retry_many(chosen_jobs(a, jobs.RETRYABLE, "retry")), "{}", "retry")


@command("worker", "run queued jobs, each in a process of its own (foreground; Ctrl-C stops)")
@arg("--concurrency", type=int, default=None, help="jobs at once (default: one per GPU, CPU cores / 4)")
@arg("--backend", default=None, help="local (default) or ray; default from SLIMBENCH_BACKEND")
@arg("--exit-when-idle", type=float, default=None, metavar="SECONDS", help="exit after this long with nothing to do")
def cmd_worker(a: argparse.Namespace) -> int:
    if a.concurrency is not None and a.concurrency < 1:
        raise SpecError("--concurrency", f"must be >= 1, got {a.concurrency}")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    return Worker(concurrency=a.concurrency, backend=a.backend, exit_when_idle=a.exit_when_idle).run()
