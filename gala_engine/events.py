"""Small progress events the engine sends to an optional ``progress`` callback."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class ProgressEvent:
    """One step of a long loop.

    ``stage`` is ``"scan"`` (the pose scan before the GA; ``value`` = best score so far), ``"ga"`` (one generation; ``value`` = best fitness, ``extra['mean']`` = mean fitness,
    ``genes`` = best genes so far), ``"refine"`` (affine refinement; ``value`` = score), ``"lddmm"``
    (one iteration; ``value`` = total energy, ``extra`` = matching/regularisation energies) or ``"nuclei"`` (one step
    of the cell-level refinement, :mod:`gala_engine.nuclei_fit`; ``value`` = held-out cells' mean nuclear stain,
    ``repeat`` = the fold).
    ``repeat`` counts ``num_repeats`` restarts from 0.
    """

    stage: str
    step: int
    total: int
    value: float
    genes: np.ndarray | None = None
    repeat: int = 0
    extra: dict = field(default_factory=dict)


ProgressCallback = Callable[[ProgressEvent], None]
StopPredicate = Callable[[], bool]


def emit(progress: ProgressCallback | None, event: ProgressEvent) -> None:
    """Send ``event`` if a callback was given."""
    if progress is not None:
        progress(event)


def stopped(should_stop: StopPredicate | None) -> bool:
    """True when the caller asked to stop."""
    return bool(should_stop is not None and should_stop())
