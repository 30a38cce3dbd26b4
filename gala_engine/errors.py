"""The engine's one exception type for bad input."""

from __future__ import annotations


class GalaInputError(ValueError):
    """Raised when an input cannot be used; the message says what is wrong and what to do."""
