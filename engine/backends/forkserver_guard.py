"""Preloaded (only) by the local backend's forkserver: the forkserver dies with the worker that
started it, instead of lingering once the worker is gone (e.g. after ``kill -9``)."""
from ..procs import set_parent_death_signal

set_parent_death_signal()
