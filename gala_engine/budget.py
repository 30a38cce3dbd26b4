"""Memory and time budgets, estimated from the sizes of a job before it starts.

Every size-driving input — the cell raster's pixel size ``dx``, the image's loaded size and the
feature blur that follows from ``dx``, the number of cells, the rasters' sizes, ``ga_max_pixels``, the
population, generations, restarts, repeats, iterations and the LDDMM velocity grid (``a``) — enters
an estimate of the peak working memory and of the run time. :func:`check_prepare` (before the rasters
are made) and :func:`check_align` (before the alignment) raise :class:`~gala_engine.errors.GalaInputError`
when an estimate exceeds the :class:`Budget`, naming the input that drives it and what to change.

The estimates are deliberately rough upper bounds (bytes of the arrays a stage holds at once, and
pixel-operations at a conservative CPU rate); they exist to refuse absurd settings (``dx = 10⁶``,
10⁹ generations) in seconds instead of exhausting the machine, not to predict run times.

Defaults: memory ``min(8 GiB, half the machine's RAM)``, time 24 h; the environment variables
``GALA_MEMORY_BUDGET_GB`` and ``GALA_TIME_BUDGET_S`` change them (the app uses tighter per-session
budgets, see ``ui/budget.py``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import GalaInputError
from .raster import spacing_blur

__all__ = ["Budget", "Estimate", "check_align", "check_arrays", "check_prepare", "estimate_align", "estimate_prepare"]

_SECONDS_PER_PIXEL_OP = 2e-9  # conservative: ~3× the measured time of the tutorial run on a shared 2-core CPU
_MIN_RASTER_SIDE = 4  # a cell raster with fewer pixels a side has no shape to align
_MAX_RASTER_PIXELS = 64_000_000  # rasterize()'s own limit


@dataclass(frozen=True)
class Budget:
    """What one job may use: peak working memory (bytes) and estimated run time (seconds)."""

    memory_bytes: int
    seconds: float

    @classmethod
    def default(cls) -> Budget:
        """``$GALA_MEMORY_BUDGET_GB`` / ``$GALA_TIME_BUDGET_S``, else min(8 GiB, RAM / 2) and 24 h."""
        mem = _env_float("GALA_MEMORY_BUDGET_GB")
        sec = _env_float("GALA_TIME_BUDGET_S")
        return cls(int(mem * 2**30) if mem else min(8 * 2**30, _ram_bytes() // 2), sec or 24 * 3600.0)


def _env_float(name: str) -> float | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise GalaInputError(f"${name} must be a number, got {raw!r}.") from None
    if not (math.isfinite(value) and value > 0):
        raise GalaInputError(f"${name} must be a positive number, got {raw!r}.")
    return value


def _ram_bytes() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 16 * 2**30


@dataclass
class Estimate:
    """Peak memory (bytes) and time (seconds) of a stage; ``memory_parts`` / ``time_parts`` say what drives
    them (name → bytes or seconds)."""

    memory_bytes: float
    seconds: float
    memory_parts: dict[str, float] = field(default_factory=dict)
    time_parts: dict[str, float] = field(default_factory=dict)


def _gib(b: float) -> str:
    return f"{b / 2**30:.3g} GiB" if b >= 2**28 else f"{b / 2**20:.3g} MiB"


def _duration(s: float) -> str:
    if s >= 2 * 86400:
        return f"{s / 86400:.3g} days"
    if s >= 2 * 3600:
        return f"{s / 3600:.3g} h"
    return f"{s / 60:.3g} min" if s >= 120 else f"{s:.3g} s"


def _check(est: Estimate, budget: Budget, what: str, advice: dict[str, str]) -> Estimate:
    if est.memory_bytes > budget.memory_bytes:
        driver = max(est.memory_parts, key=est.memory_parts.get)
        raise GalaInputError(
            f"{what} would need about {_gib(est.memory_bytes)} of memory (mostly {driver}), more than the "
            f"budget of {_gib(budget.memory_bytes)}; {advice.get(driver, 'use smaller settings')}."
        )
    if est.seconds > budget.seconds:
        driver = max(est.time_parts, key=est.time_parts.get)
        raise GalaInputError(
            f"{what} would take about {_duration(est.seconds)} (mostly {driver}), more than the budget of "
            f"{_duration(budget.seconds)}; {advice.get(driver, 'use smaller settings')}."
        )
    return est


# ---------------------------------------------------------------------------------- rasters


def estimate_prepare(
    yx: np.ndarray,
    image_shape: tuple[int, ...],
    *,
    dx: float,
    spacing_um: float,
    image_reduce: int | None = None,
) -> tuple[Estimate, dict[str, float]]:
    """Estimate making the two rasters (see :func:`gala_engine.section.prepare_section`).

    Returns the estimate and the sizes it derived (``raster_rows``, ``raster_cols``, ``blur_px``,
    ``kernel_px``, ``image_reduce``).
    """
    n = len(yx)
    ext_y, ext_x = (float(np.ptp(yx[:, i])) if n else 0.0 for i in (0, 1))
    rows = max(2, math.floor(ext_y * 1.1 / dx) + 1)
    cols = max(2, math.floor(ext_x * 1.1 / dx) + 1)
    h, w = int(image_shape[0]), int(image_shape[1])
    c = int(image_shape[2]) if len(image_shape) > 2 else 1
    reduce = image_reduce or max(1, round(max(h, w) / (1.5 * max(rows, cols))))
    # the cell blur (raster px, std 2·blur) seen in loaded image pixels, as prepare_section smooths the image
    blur = spacing_blur(spacing_um, dx)
    sigma_um = 2.0 * blur * dx
    um_extent = math.sqrt(max(ext_y * ext_x, 1e-12))
    blur_px = max(reduce / 2.0, sigma_um / (um_extent / math.sqrt(h * w)))
    kernel = 2 * math.ceil(4.0 * blur_px) + 1  # OpenCV's float Gaussian kernel: ±4σ
    raster_px = rows * cols
    pad_px = (h + kernel) * (w + kernel)  # the blur's bordered copy
    mem = {
        "the cell raster (dx)": raster_px * 8.0 * 4,
        "the image feature (image size)": h * w * 4.0 * (4 + c),
        "the image blur kernel (dx)": pad_px * 4.0 * 2 - h * w * 8.0,
        "the cells (cell count)": n * 200.0,
    }
    tim = {
        "the cell raster (dx)": raster_px * 2 * (4 * blur + 1) * _SECONDS_PER_PIXEL_OP,
        "the image blur kernel (dx)": h * w * 2.0 * kernel * _SECONDS_PER_PIXEL_OP / 8,  # vectorised
        "the cells (cell count)": n * 50 * _SECONDS_PER_PIXEL_OP,
    }
    est = Estimate(sum(mem.values()), sum(tim.values()), mem, tim)
    sizes = {"raster_rows": rows, "raster_cols": cols, "blur_px": blur_px, "kernel_px": kernel,
             "image_reduce": reduce}
    return est, sizes


def check_prepare(
    yx: np.ndarray,
    image: Any,
    *,
    dx: float | None,
    image_reduce: int | None = None,
    budget: Budget | None = None,
    spacing: float | None = None,
) -> Estimate:
    """Refuse a ``dx`` / image / cell count whose rasters exceed ``budget`` (default :meth:`Budget.default`).

    Parameters
    ----------
    yx
        Cell centroids (row, col) in µm.
    image
        The :class:`~gala_engine.io.LoadedImage` (or anything with ``pixels``).
    dx
        Cell raster pixel size (µm); ``None``: what :func:`gala_engine.raster.choose_dx` picks.
    spacing
        The cells' :func:`~gala_engine.raster.cell_spacing` when already measured.
    """
    from .raster import cell_spacing, choose_dx

    yx = np.asarray(yx, dtype=np.float64)
    auto = choose_dx(yx[:, 1], yx[:, 0]) if len(yx) > 1 and np.ptp(yx, axis=0).max() > 0 else 1.0
    if dx is None:
        dx = auto
    if isinstance(dx, bool) or not isinstance(dx, int | float | np.integer | np.floating) or not (
        math.isfinite(float(dx)) and dx > 0
    ):
        raise GalaInputError(f"dx must be a positive number of µm per raster pixel, got {dx!r}.")
    dx = float(dx)
    if image_reduce is not None and (isinstance(image_reduce, bool) or int(image_reduce) != image_reduce
                                     or image_reduce < 1):
        raise GalaInputError(f"the image downsampling factor must be a whole number ≥ 1, got {image_reduce!r}.")
    if spacing is None:
        spacing = cell_spacing(yx) if len(yx) > 1 else dx
    est, sizes = estimate_prepare(yx, image.pixels.shape, dx=dx, spacing_um=spacing, image_reduce=image_reduce)
    rows, cols = sizes["raster_rows"], sizes["raster_cols"]
    if len(yx) > 1 and max(rows, cols) < _MIN_RASTER_SIDE:
        raise GalaInputError(
            f"dx={dx:g} µm is larger than the tissue: the cell raster would be {cols}×{rows} pixels, too few to "
            f"align; use a smaller dx (automatic: {auto:.3g} µm, about 200 pixels a side)."
        )
    if rows * cols > _MAX_RASTER_PIXELS:
        raise GalaInputError(
            f"dx={dx:g} µm gives a {cols}×{rows} cell raster (more than {_MAX_RASTER_PIXELS:,} pixels); use a "
            f"larger dx (automatic: {auto:.3g} µm)."
        )
    advice = {
        "the cell raster (dx)": f"use a larger dx (automatic: {auto:.3g} µm)",
        "the image blur kernel (dx)": f"use a smaller dx (automatic: {auto:.3g} µm): the image is smoothed to the "
        f"cell raster's blur, {sizes['blur_px']:.3g} image pixels at dx={dx:g}",
        "the image feature (image size)": "load the image at a smaller size (max_side) or raise the downsampling",
        "the cells (cell count)": "align a subset or a crop of the cells",
    }
    return _check(est, budget or Budget.default(), "Making the rasters", advice)


# ---------------------------------------------------------------------------------- alignment


def estimate_align(I_shape: tuple[int, ...], J_shape: tuple[int, ...], xI: list, params: Any) -> Estimate:
    """Estimate :func:`gala_engine.pipeline.gala` on rasters of these shapes with ``params`` (AlignParams)."""
    p = params
    hI, wI = int(I_shape[-2]), int(I_shape[-1])
    hJ, wJ = int(J_shape[-2]), int(J_shape[-1])
    pix_I, pix_J = hI * wI, hJ * wJ
    side = max(int(p.ga_max_pixels), 1)
    ga_px = min(pix_J, side * side) + min(pix_I, side * side)
    runs = p.ga_restarts * p.num_repeats
    # velocity grid: spacing a/2 over the source extent (full-resolution pixels)
    ext = [float(np.ptp(np.asarray(axis, dtype=np.float64))) if len(axis) else 0.0 for axis in xI]
    a = p.a if p.a is not None else max(ext) / 8.0
    a = max(float(a), 1e-300)
    pix_v = (ext[0] / (a / 2.0) + 2) * (ext[1] / (a / 2.0) + 2)
    mem = {
        "the GA population × ga_max_pixels": p.sol_per_pop * ga_px * 4.0 * 8,
        "the pose scan": (216 if p.seed_population else 0) * ga_px * 4.0 * 8,
        "the LDDMM velocity grid (a, nt)": p.nt * pix_v * 2 * 8.0 * (12 if p.num_iterations else 1),
        "the rasters (image and cell raster size)": (pix_I + pix_J) * 4.0 * 24,
    }
    tim = {
        "the GA generations × population × restarts": p.num_generations * p.sol_per_pop * runs * ga_px * 6,
        "the pose scan": (216 * p.scan_iterations * ga_px * 20 if p.seed_population else 0),
        "the affine refinement": p.refine_iterations * p.num_repeats * (pix_I + pix_J) * 20,
        "the LDDMM iterations": p.num_iterations * p.num_repeats * (p.nt * pix_v * 40 + (pix_I + pix_J) * 30),
    }
    tim = {k: v * _SECONDS_PER_PIXEL_OP for k, v in tim.items()}
    return Estimate(sum(mem.values()), sum(tim.values()), mem, tim)


def check_align(rasters: Any, params: Any, *, budget: Budget | None = None) -> Estimate:
    """Refuse parameters whose alignment of ``rasters`` (a SectionRasters) exceeds ``budget``."""
    return check_arrays(np.shape(rasters.I), np.shape(rasters.J), rasters.xI, params, budget=budget)


def check_arrays(I_shape: tuple[int, ...], J_shape: tuple[int, ...], xI: list, params: Any, *,
                 budget: Budget | None = None) -> Estimate:
    """:func:`check_align` for raster shapes (what :func:`gala_engine.pipeline.gala` is given)."""
    est = estimate_align(I_shape, J_shape, xI, params)
    advice = {
        "the GA population × ga_max_pixels": "lower sol_per_pop or ga_max_pixels",
        "the pose scan": "lower ga_max_pixels or scan_iterations, or set seed_population = false",
        "the LDDMM velocity grid (a, nt)": "raise a (the deformation's smoothness scale, in image pixels) or "
        "lower nt",
        "the rasters (image and cell raster size)": "use a larger dx or more image downsampling",
        "the GA generations × population × restarts": "lower num_generations, sol_per_pop, ga_restarts or "
        "num_repeats (early stops: ga_patience)",
        "the affine refinement": "lower refine_iterations",
        "the LDDMM iterations": "lower num_iterations or num_repeats, or raise a",
    }
    return _check(est, budget or Budget.default(), "This alignment", advice)
