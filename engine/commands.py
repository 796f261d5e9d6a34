"""The CLI's command registry: ``@command`` and ``@arg`` register a ``python -m engine`` subcommand.

Kept apart from ``engine.cli`` so that the modules defining commands (``cli`` itself, ``jobs_cli``)
import the registry below them, and ``cli`` imports ``jobs_cli``, not the other way round.
"""
from __future__ import annotations

import argparse
from typing import Any, Callable

COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], Callable[[argparse.ArgumentParser], None], str]] = {}


def command(name: str, help: str):
    def deco(fn):
        def add_args(p: argparse.ArgumentParser) -> None:
            for args, kwargs in getattr(fn, "_args", []):
                p.add_argument(*args, **kwargs)
        COMMANDS[name] = (fn, add_args, help)
        return fn
    return deco


def arg(*args: Any, **kwargs: Any):
    def deco(fn):
        fn._args = [(args, kwargs)] + getattr(fn, "_args", [])
        return fn
    return deco
