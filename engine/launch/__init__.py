"""How a run is started, polled and killed on each backend, once: ``local`` (a process of its own on this
machine) and ``ray`` (a Ray task). The job queue's backends (``engine.backends``) and a search's child runs
(``engine.child_runs``) both start their runs through these modules; each hands back a handle with
``poll() -> exit status | None`` (None while it runs) and ``kill()``."""
