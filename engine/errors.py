"""Exception types shared across layers; they sit at the bottom so any layer can raise or catch them."""
from __future__ import annotations


class SpecError(ValueError):
    """A spec (or CLI argument) is invalid. The message names the field and the valid choices."""

    def __init__(self, field_path: str, message: str):
        self.field = field_path
        super().__init__(f"{field_path}: {message}" if field_path else message)


class Cancelled(Exception):
    """The job was asked to stop."""


class JobFailed(RuntimeError):
    """A job stopped with an error; ``str()`` is the one-line reason."""


class LeaseLost(RuntimeError):
    """This attempt no longer holds its job (it was requeued or claimed again): it must stop and
    write nothing more, neither to the store nor to the run folder, which now belong to another."""
