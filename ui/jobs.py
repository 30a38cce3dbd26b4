"""A background alignment job: a worker thread that never touches Streamlit.

The engine's ``progress`` callback appends to lists guarded by the job's lock; pages read a
:meth:`Job.snapshot` on a timer. ``stop()`` sets an event the engine polls via ``should_stop``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gala_engine.errors import GalaInputError
from gala_engine.events import ProgressEvent
from gala_engine.params import AlignParams
from gala_engine.section import AlignmentResult, SectionRasters, align_section

log = logging.getLogger(__name__)

# One engine job at a time in this process (CPU cores / one GPU are shared by all sessions).
_ENGINE_LOCK = threading.Lock()

Runner = Callable[..., AlignmentResult]


LOG_COUNTS_STAGE = " · log counts"  # appended to a stage of the count scale's second search (Snapshot.stage)


@dataclass
class Snapshot:
    """A consistent copy of a job's progress for drawing."""

    state: str
    elapsed_s: float
    stage: str
    ga_best: list[float]
    ga_mean: list[float]
    refine: list[list[float]]  # one score curve per refinement level (coarse … full resolution)
    energy: list[float]
    genes: np.ndarray | None
    step: int
    total: int
    error: str | None
    result: AlignmentResult | None
    energy_steps: list[int] = field(default_factory=list)  # each energy's LDDMM step (restarts at 1 for each warp run)


@dataclass
class Job:
    """One alignment run of one session.

    ``state`` is ``"waiting"`` (for another session's job), ``"running"``, ``"done"``, ``"stopped"``
    (stopped by the user; ``result`` holds the best so far) or ``"error"``.
    """

    rasters: SectionRasters
    params: AlignParams
    gene_space: list[dict] | None = None
    runner: Runner | None = None  # None: gala_engine.section.align_section
    run_id: int = 0
    state: str = "waiting"
    error: str | None = None
    result: AlignmentResult | None = None
    reported: bool = False  # the page has recorded this job in the history
    context: Any = None  # what the page needs to draw and record the job (the Dataset it aligns)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    _t0: float = 0.0
    _t1: float | None = None
    _ga_best: list[float] = field(default_factory=list)
    _ga_mean: list[float] = field(default_factory=list)
    _refine: list[list[float]] = field(default_factory=list)
    _energy: list[float] = field(default_factory=list)
    _energy_steps: list[int] = field(default_factory=list)
    _genes: np.ndarray | None = None
    _stage: str = ""
    _step: int = 0
    _total: int = 0

    # ------------------------------------------------------------------ control
    def start(self) -> Job:
        """Start the worker thread (daemon) and return self."""
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._work, name=f"gala-job-{self.run_id}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Ask the engine to stop; it keeps the best transform found so far."""
        self._stop.set()

    @property
    def running(self) -> bool:
        """True until the worker has finished (any outcome)."""
        return self.state in ("waiting", "running")

    def join(self, timeout: float | None = None) -> None:
        """Wait for the worker (tests)."""
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------------ worker side
    def _progress(self, event: ProgressEvent) -> None:
        with self._lock:
            self._stage, self._step, self._total = event.stage, int(event.step), int(event.total)
            if event.extra.get("count_scale") == "log":  # the count scale's second search (section.align_section)
                self._stage = event.stage + LOG_COUNTS_STAGE
            if event.stage == "ga":
                self._ga_best.append(float(event.value))
                self._ga_mean.append(float(event.extra.get("mean", np.nan)))
                if event.genes is not None:
                    self._genes = np.asarray(event.genes, dtype=np.float64).copy()
            elif event.stage == "refine":
                if event.step == 1 or not self._refine:  # a new level: its scores are on their own scale
                    self._refine.append([])
                self._refine[-1].append(float(event.value))
                if event.genes is not None:
                    self._genes = np.asarray(event.genes, dtype=np.float64).copy()
            elif event.stage == "lddmm":
                self._energy.append(float(event.value))
                self._energy_steps.append(int(event.step))

    def _work(self) -> None:
        try:
            while not _ENGINE_LOCK.acquire(timeout=0.2):
                if self._stop.is_set():
                    self._finish("stopped", error="Stopped before it started (another run held the engine).")
                    return
            try:
                with self._lock:
                    self.state = "running"
                    self._t0 = time.monotonic()
                runner = self.runner or align_section
                result = runner(self.rasters, self.params, gene_space=self.gene_space,
                                progress=self._progress, should_stop=self._stop.is_set)
            finally:
                _ENGINE_LOCK.release()
        except GalaInputError as err:
            self._finish("error", error=f"{err} (run #{self.run_id} with {describe_params(self.params)})")
        except Exception as err:  # noqa: BLE001 — reported on the page, logged with traceback
            log.exception("alignment job %s failed", self.run_id)
            self._finish("error", error=(
                f"The alignment failed: {type(err).__name__}: {err}. Run #{self.run_id} had "
                f"{describe_params(self.params)}. Your data are unchanged: change the parameters (e.g. fewer "
                "generations or another device) and start again."))
        else:
            self._finish("stopped" if (result.stopped or self._stop.is_set()) else "done", result=result)

    def _finish(self, state: str, *, result: AlignmentResult | None = None, error: str | None = None) -> None:
        with self._lock:
            self.result, self.error, self._t1 = result, error, time.monotonic()
            self.state = state

    # ------------------------------------------------------------------ page side
    def snapshot(self) -> Snapshot:
        """Copy of the progress so far (safe to read while the worker runs)."""
        with self._lock:
            end = self._t1 if self._t1 is not None else time.monotonic()
            return Snapshot(
                state=self.state, elapsed_s=end - self._t0 if self._t0 else 0.0, stage=self._stage,
                ga_best=list(self._ga_best), ga_mean=list(self._ga_mean), refine=[list(level) for level in self._refine],
                energy=list(self._energy), genes=None if self._genes is None else self._genes.copy(),
                step=self._step, total=self._total, error=self.error, result=self.result,
                energy_steps=list(self._energy_steps),
            )


_MAIN_PARAMS = ("num_generations", "sol_per_pop", "ga_restarts", "refine_iterations", "num_iterations",
                "random_seed", "fitness", "device")


def describe_params(params: AlignParams) -> str:
    """A run's parameters in one line: the main ones, then every other value changed from the defaults."""
    values, defaults = params.to_dict(), AlignParams().to_dict()
    names = [*_MAIN_PARAMS, *(k for k in values if k not in _MAIN_PARAMS and values[k] != defaults[k])]
    return "parameters " + ", ".join(f"{k}={values[k]!r}" for k in names)


def start_job(rasters: SectionRasters, params: AlignParams, *, gene_space: list[dict] | None = None,
              run_id: int = 0, runner: Runner | None = None, context: Any = None) -> Job:
    """Create and start a :class:`Job` (``runner`` defaults to :func:`gala_engine.section.align_section`)."""
    return Job(rasters=rasters, params=params, gene_space=gene_space, runner=runner, run_id=run_id,
               context=context).start()


def history_row(job: Job, *, truth_error_px: float | None = None) -> dict[str, Any]:
    """One row of the run history table for a finished job."""
    snap = job.snapshot()
    p = job.params
    res = job.result
    return {
        "run": job.run_id,
        "state": job.state,
        "fitness": None if res is None else round(res.fitness, 4),
        "score": None if res is None else round(res.score, 4),
        "runtime_s": round(snap.elapsed_s, 1),
        "device": None if res is None else res.device,
        "error_px (vs truth)": None if truth_error_px is None else round(truth_error_px, 1),
        "generations": p.num_generations, "population": p.sol_per_pop, "restarts": p.ga_restarts,
        "lddmm_iters": p.num_iterations, "seed": p.random_seed, "fitness_fn": p.fitness,
        "genes": None if res is None else ", ".join(f"{g:.3g}" for g in res.genes),
        "pose": None if res is None else pose_words(res.genes, bold=False),
    }


def pose_words(genes: np.ndarray, *, bold: bool = True) -> str:
    """The 5 pose values in words: rotation, scale (µm per pixel), mirror, shift (µm); ``bold``: markdown."""
    angle, sy, sx, ty, tx = (float(g) for g in genes[:5])
    b = "**" if bold else ""
    mirrored = "yes" if sy * sx < 0 else "no"
    return (f"rotation {b}{angle:.1f}°{b} · scale {b}{abs(sy):.3g} × {abs(sx):.3g}{b} µm per pixel (y × x) · "
            f"mirrored {b}{mirrored}{b} · shift {b}{tx:.0f}, {ty:.0f}{b} µm (x, y)")
