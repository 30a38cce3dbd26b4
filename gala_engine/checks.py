"""Plausibility checks of a loaded section before it is rasterised.

:mod:`gala_engine.io` checks that files can be read and have the right *shape*; this module checks that
what they hold makes sense for an alignment: enough distinct cells, coordinates that look like µm, a
usable per-cell signal, an image that is not blank. Blocking problems raise
:class:`~gala_engine.errors.GalaInputError` (the message says what is wrong and what to do); the rest
come back as warnings in plain words. The CLI, batch runs and the app all call :func:`check_cells`
and :func:`check_image`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import sparse

from . import constants
from .errors import GalaInputError
from .io import LoadedImage, _spatial_xy, cell_signal
from .raster import cell_spacing

__all__ = ["CellCheck", "FEW_CELLS", "MIN_CELLS", "SPACING_RANGE_UM", "check_cells", "check_image", "space_ranger_pixels"]

# distinct positions below which the 5 pose parameters (angle, 2 scales, 2 shifts) are not determined by a
# density raster: 3 cells score a confident-looking fitness at many poses
MIN_CELLS = 10
FEW_CELLS = 50  # below this many distinct positions the result is flagged as unreliable
_LINE_RATIO = 0.02  # minor / major spread of the positions under which they are taken to lie on a line
# plausible median nearest-neighbour spacing of cells / spots in µm: sub-cellular bins (Visium HD 2 µm,
# Stereo-seq 0.5 µm) up to sparse spot arrays (legacy ST 200 µm, a subsampled Visium slide ~300 µm)
SPACING_RANGE_UM = (0.5, 2000.0)


@dataclass
class CellCheck:
    """What :func:`check_cells` found.

    Attributes
    ----------
    n_cells, n_positions
        Rows of the AnnData, and distinct ``(x, y)`` positions among them.
    spacing_um
        Median distance (µm) from a cell to its nearest distinct neighbour.
    extent_um
        Width and height (µm) of the cells' bounding box, as ``(x, y)``.
    signal
        The signal to rasterise: the one asked for, or ``"cell density"`` when the counts are all zero.
    warnings
        Non-blocking findings, one sentence each.
    """

    n_cells: int
    n_positions: int
    spacing_um: float
    extent_um: tuple[float, float]
    signal: str
    warnings: list[str] = field(default_factory=list)


def check_cells(adata: Any, *, signal: str = constants.SIGNAL_TOTAL_COUNTS, name: str = "the cells") -> CellCheck:
    """Check that ``adata`` can be aligned with ``signal`` as the cell raster's weights.

    Parameters
    ----------
    adata
        The cells; ``obsm['spatial']`` holds ``(x, y)`` in µm (checked by :func:`gala_engine.io.read_cells`).
    signal
        ``"total counts"``, ``"cell density"``, a gene name, genes joined by ``,`` or ``pca[:k]`` (see
        :mod:`gala_engine.signals`).
    name
        How to call the input in messages (e.g. the file name).

    Returns
    -------
    CellCheck
        Counts, spacing, extent, the signal to use and warnings. All-zero counts fall back to
        ``"cell density"`` with a warning; duplicated positions or names are a warning.

    Raises
    ------
    GalaInputError
        Fewer than :data:`MIN_CELLS` distinct positions, a nearest-neighbour spacing outside
        :data:`SPACING_RANGE_UM` (coordinates not in µm), negative or non-finite values when the signal
        is read from ``X``, or an unknown gene.
    """
    xy = _spatial_xy(adata, name)
    n = len(xy)
    unique = np.unique(xy, axis=0)
    if len(unique) < MIN_CELLS:
        what = "a single cell" if n == 1 else f"{n} cells at {len(unique)} distinct position(s)"
        raise GalaInputError(
            f"{name} has {what}; an alignment needs at least {MIN_CELLS} cells at distinct positions "
            "(typically hundreds). Choose the whole section's cells."
        )
    _check_spread(unique, name)
    spacing = cell_spacing(unique)
    lo, hi = SPACING_RANGE_UM
    if not lo <= spacing <= hi:
        raise GalaInputError(_scale_message(name, spacing))
    warnings: list[str] = []
    if len(unique) < FEW_CELLS:
        warnings.append(
            f"only {len(unique)} cells at distinct positions: the cell raster has little structure and the "
            "alignment is unreliable (its fitness may look good at a wrong pose); check the result visually."
        )
    if len(unique) < n:
        dup = n - len(unique)
        warnings.append(
            f"{dup} of {n} cells repeat another cell's position (duplicated rows?); they are aligned as given "
            "and weigh double in the cell raster. Drop them with "
            "adata = adata[~pd.DataFrame(adata.obsm['spatial']).duplicated().to_numpy()].copy() if unintended."
        )
    if not adata.obs_names.is_unique:
        warnings.append(
            f"{int(adata.obs_names.duplicated().sum())} cell names (obs_names) are repeated; "
            "run adata.obs_names_make_unique() so results can be joined back to your cells."
        )
    pixels = space_ranger_pixels(adata, xy, spacing)
    if pixels is not None:
        warnings.append(pixels)
    used = _check_signal(adata, signal, warnings)
    ext = np.ptp(xy, axis=0)
    return CellCheck(n, len(unique), spacing, (float(ext[0]), float(ext[1])), used, warnings)


VISIUM_SPOT_UM = 55.0  # diameter of a Visium (v1/v2, CytAssist) capture spot
VISIUM_PITCH_UM = 100.0  # centre-to-centre distance of neighbouring Visium spots


def space_ranger_pixels(adata: Any, xy: np.ndarray, spacing: float) -> str | None:
    """A warning when ``obsm['spatial']`` holds Space Ranger's full-resolution image pixels rather than µm.

    ``scanpy.read_visium`` / ``squidpy.read.visium`` keep the spots' pixel positions in ``obsm['spatial']`` and the
    scale in ``uns['spatial'][library]['scalefactors']``: ``microns_per_pixel`` (Visium HD) or
    ``spot_diameter_fullres`` (pixels per 55 µm spot). Read as µm, the alignment still lands the spots on the image
    (its scale is searched), but every size shown in µm is in those pixels. ``xy``: the validated positions
    (:func:`gala_engine.io._spatial_xy`), ``spacing`` their median nearest-neighbour distance. Returns None when the
    file has no such scale factors or its positions are already in µm (they fit the array's pitch in µm)."""
    scale = _space_ranger_scale(adata)
    if scale is None:
        return None
    um_per_px, pitch_um, columns_per_pitch = scale
    # the array's own grid (obs array_row / array_col) gives the pitch in the file's unit exactly, even for spots
    # thinned out; without it, the nearest neighbours' spacing stands in for the pitch
    step = _array_pitch(adata.obs, xy, columns_per_pitch)
    measured, what = (step, "one array step is") if step is not None else (spacing, "neighbours are")
    as_um, as_px = measured, measured * um_per_px
    if abs(np.log(as_px / pitch_um)) >= abs(np.log(as_um / pitch_um)):
        return None  # already µm (or neither reading fits: nothing to say)
    return (
        f"obsm['spatial'] looks like Space Ranger's full-resolution image pixels, not µm: {what} {measured:.4g} "
        f"apart, which at the file's {um_per_px:.4g} µm per pixel (its scale factors) is {as_px:.3g} µm, closer to "
        f"the array's {pitch_um:g} µm pitch. "
        "The spots are aligned as given, but sizes and the scale shown in µm are then in those pixels. For µm: "
        f"adata.obsm['spatial'] = adata.obsm['spatial'] * {um_per_px:.6g}, then load the file again."
    )


def _space_ranger_scale(adata: Any) -> tuple[float, float, int] | None:
    """(µm per full-resolution pixel, the array's pitch in µm, array columns per pitch: 2 on Visium's hexagonal
    array, where neighbours in a row are two columns apart, 1 on Visium HD's square bins) from
    ``uns['spatial'][library]['scalefactors']``; None when absent or implausible (the file is untrusted: any type
    may sit there)."""
    libraries = adata.uns.get("spatial")
    if not isinstance(libraries, dict):
        return None
    for library in libraries.values():
        factors = library.get("scalefactors") if isinstance(library, dict) else None
        if not isinstance(factors, dict):
            continue
        um_per_px = _positive(factors.get("microns_per_pixel"))
        bin_um = _positive(factors.get("bin_size_um"))
        if um_per_px is not None and bin_um is not None:  # Visium HD: square bins of bin_size_um
            return um_per_px, bin_um, 1
        spot_px = _positive(factors.get("spot_diameter_fullres"))
        if spot_px is not None:
            return VISIUM_SPOT_UM / spot_px, VISIUM_PITCH_UM, 2
    return None


def _array_pitch(obs: Any, xy: np.ndarray, columns_per_pitch: int) -> float | None:
    """The array's pitch in the unit of the positions ``xy``: ``columns_per_pitch`` column steps of a least-squares
    affine from the spots' ``obs`` columns ``array_row`` / ``array_col`` to ``xy``. None without those columns, or
    when they do not map onto the positions (residual over a tenth of a step)."""
    if not {"array_row", "array_col"} <= set(map(str, obs.columns)):
        return None
    try:
        grid = np.stack([np.asarray(obs["array_row"], dtype=np.float64), np.asarray(obs["array_col"], dtype=np.float64)], 1)
    except (TypeError, ValueError):
        return None
    ok = np.isfinite(grid).all(1)
    if ok.sum() < 10 or np.ptp(grid[ok, 1]) < 2 or np.ptp(grid[ok, 0]) < 1:
        return None
    design = np.c_[grid[ok], np.ones(int(ok.sum()))]
    fit, *_ = np.linalg.lstsq(design, xy[ok], rcond=None)
    col_step = float(np.linalg.norm(fit[1]))
    residual = float(np.median(np.linalg.norm(design @ fit - xy[ok], axis=1)))
    if not np.isfinite(col_step) or col_step <= 0 or residual > 0.1 * col_step:
        return None
    return columns_per_pitch * col_step


def _positive(value: Any) -> float | None:
    """``value`` as a finite positive float (a scalar or a one-element array), else None."""
    try:
        number = float(np.asarray(value, dtype=np.float64).reshape(-1)[0]) if np.size(value) == 1 else None
    except (TypeError, ValueError):
        return None
    return number if number is not None and np.isfinite(number) and number > 0 else None


def _check_spread(xy: np.ndarray, name: str) -> None:
    """Refuse positions on (almost) a straight line: rotation and the cross-line scale are then undetermined."""
    centred = xy - xy.mean(axis=0)
    sv = np.linalg.svd(centred[:: max(1, len(xy) // 100_000)], compute_uv=False)
    if sv[0] <= 0 or sv[1] / sv[0] < _LINE_RATIO:
        raise GalaInputError(
            f"the {len(xy)} cells in {name} lie (almost) on a straight line (spread across it is "
            f"{sv[1] / max(sv[0], 1e-300):.2g} of the spread along it); an alignment needs cells spread over an "
            "area of tissue. Choose the whole section's cells (not one row or a line scan)."
        )


def _scale_message(name: str, spacing: float) -> str:
    lo, hi = SPACING_RANGE_UM
    if spacing > hi:
        guess = (
            "Coordinates in nm divide by 1000; coordinates in image pixels multiply by the µm per pixel "
            "(e.g. adata.obsm['spatial'] = adata.obsm['spatial'] * 0.2125 for Xenium)"
        )
    else:
        guess = "Coordinates in mm multiply by 1000 (adata.obsm['spatial'] = adata.obsm['spatial'] * 1000)"
    return (
        f"the cells in {name} are {spacing:.4g} units apart (median nearest-neighbour distance), but "
        f"obsm['spatial'] must be in µm, where cells or spots are {lo:g}–{hi:g} µm apart: the coordinates "
        f"look like another unit. {guess}, then load the file again."
    )


def _check_signal(adata: Any, signal: str, warnings: list[str]) -> str:
    """Validate the signal (errors from :func:`cell_signal`); fall back to density when all counts are 0."""
    if signal == constants.SIGNAL_DENSITY:
        return signal
    X = adata.X
    if signal == constants.SIGNAL_TOTAL_COUNTS and (X is None or adata.n_vars == 0):
        warnings.append(f"adata.X has no genes, so '{signal}' is not available; using '{constants.SIGNAL_DENSITY}'.")
        return constants.SIGNAL_DENSITY
    if signal == constants.SIGNAL_TOTAL_COUNTS:
        values = X.data if sparse.issparse(X) else np.asarray(X)
        if values.size and not np.isfinite(values).all():
            raise GalaInputError(
                f"adata.X has {int((~np.isfinite(values)).sum())} NaN or inf values, so '{signal}' cannot be "
                f"computed; fix X, or use '{constants.SIGNAL_DENSITY}' or one gene as the signal."
            )
    weights = cell_signal(adata, signal)  # raises on negative counts or an unknown gene
    if not np.any(weights != 0):
        what = "every cell has zero counts" if signal == constants.SIGNAL_TOTAL_COUNTS else f"'{signal}' is 0 in every cell"
        warnings.append(
            f"{what} in adata.X, so '{signal}' carries no information; using '{constants.SIGNAL_DENSITY}' "
            "(cell positions only). Put raw counts in X to use them."
        )
        return constants.SIGNAL_DENSITY
    return signal


def check_image(image: LoadedImage, *, name: str | None = None) -> list[str]:
    """Check a loaded image has something to align against; returns warnings.

    Raises
    ------
    GalaInputError
        Every loaded pixel has the same value (a blank, black or fully transparent image).
    """
    label = name or image.source
    px = image.pixels
    lo, hi = float(px.min()), float(px.max())
    if hi - lo < 1e-6:
        raise GalaInputError(
            f"the image {label} is blank: every pixel has the value {lo:.3g} (fully transparent, black or "
            "empty?). Export the stained tissue image again."
        )
    warnings = [n for n in image.notes if "1-bit" in n or "stack of" in n or "series" in n]
    sample = px[:: max(1, px.shape[0] // 512), :: max(1, px.shape[1] // 512)]
    p_lo, p_hi = (float(v) for v in np.percentile(sample, [1, 99]))
    if hi - lo < 2.0 / 255.0 or p_hi - p_lo < 2.0 / 255.0:
        warnings.append(
            f"the image {label} has almost no contrast (values {lo:.4f}–{hi:.4f}, 98% of pixels within "
            f"{p_lo:.4f}–{p_hi:.4f}): the alignment is unreliable. Check the exposure, or pick another channel / "
            "plane."
        )
    return warnings
