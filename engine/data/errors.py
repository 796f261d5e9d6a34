"""What the data layer refuses, with messages a person can act on."""
from __future__ import annotations

from ..spec import SpecError


class DataError(SpecError):
    def __init__(self, message: str):
        self.reason = message  # without the field prefix, for pages that name the dataset themselves
        super().__init__("data", message)


class ImageError(ValueError):
    """An image that cannot be used, with a message a person can act on."""
