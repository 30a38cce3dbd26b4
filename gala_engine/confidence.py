"""Per-cell confidence of an alignment, in [0, 1] (``obs['gala_confidence']``).

How well the image agrees with the cells around each cell after alignment: the image feature is moved into the
cells' µm raster by the result, its channels are combined as the alignment's fit combines them (non-negative
least squares over the cells' support), and the correlation with the cells' raster is taken in a Gaussian
window around each cell (std 5 cell spacings, at most 0.2 × the section's size, at least 2 raster pixels);
negative correlation counts as 0. Cells off the image see no image and get 0. The agreement is then lowered
where the LDDMM warp moves the cell far or compresses/stretches it strongly, and set to 0 where it folds.

Measured (``bench/qc_confidence.py``): Spearman of confidence vs true error on partly-wrong alignments is
negative on the bundled demos and validation cases (e.g. −0.84 MERFISH half-shifted, −0.78 nuclei bump); where
the cells' raster is flat (evenly packed cells) there is nothing to correlate and the confidence says little.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy.ndimage import map_coordinates
from scipy.optimize import nnls

from .search import SUPPORT_LEVEL
from .section import AlignmentResult, SectionRasters
from .transform import transform_image_source_to_target, transform_points_source_to_target

__all__ = ["cell_confidence", "local_correlation"]


def local_correlation(a: np.ndarray, b: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian-windowed correlation of two (h, w) rasters (window std ``sigma`` pixels) and their local
    variances: ``(rho, var_a, var_b)``, ``rho`` in [−1, 1] (0 where either is locally constant)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)

    def blur(x: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(x, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT)

    ma, mb = blur(a), blur(b)
    va = np.maximum(blur(a * a) - ma * ma, 0.0)
    vb = np.maximum(blur(b * b) - mb * mb, 0.0)
    cov = blur(a * b) - ma * mb
    tiny = 1e-12 * max(float(a.var()), float(b.var()), 1e-30)
    rho = np.where((va > tiny) & (vb > tiny), cov / np.sqrt(va * vb + 1e-300), 0.0)
    return np.clip(rho, -1.0, 1.0), va, vb


def _combined(moved: np.ndarray, J: np.ndarray) -> np.ndarray:
    """The image channels combined as the fit combines them: non-negative weights (plus an offset) that best
    predict the cells' raster over its support; one channel is returned as is."""
    support = J > SUPPORT_LEVEL * float(J.max())
    if moved.shape[0] == 1 or not support.any():
        return moved.sum(0)
    X = moved[:, support].T
    Xc = X - X.mean(0)
    coef, _ = nnls(Xc, J[support] - J[support].mean())
    if not np.any(coef > 0):
        coef = np.ones(moved.shape[0])
    return np.tensordot(coef, moved, axes=1)


def _sample(field: np.ndarray, x: list[np.ndarray], yx: np.ndarray) -> np.ndarray:
    """Bilinear sample of (h, w) ``field`` on grid ``x = [rows, cols]`` at (N, 2) (row, col) points (edge: nearest)."""
    r = (yx[:, 0] - x[0][0]) / (x[0][1] - x[0][0])
    c = (yx[:, 1] - x[1][0]) / (x[1][1] - x[1][0])
    return map_coordinates(np.asarray(field, np.float64), [r, c], order=1, mode="nearest")


def _warp_factor(result: AlignmentResult, xy_um: np.ndarray, um_per_px: float, scale_um: float) -> np.ndarray:
    """(N,) factor ≤ 1 for the LDDMM warp at each cell: 1 / (1 + (displacement / scale_um)²) × a Jacobian term
    (√ of min(det, 1/det) of the warp at the cell, 0 where it folds)."""
    if not np.any(result.v):
        return np.ones(len(xy_um))
    from .report import jacobian_det

    px = result.cells_to_image(xy_um)
    px_aff = result.cells_to_image(xy_um, deformed=False)
    d = np.linalg.norm(px - px_aff, axis=1) * um_per_px
    axes = [np.linspace(a[0], a[-1], 64) for a in result.xv]  # the flow φ (image px → px) on a 64² grid
    grid = np.stack(np.meshgrid(axes[0], axes[1], indexing="ij"), -1).reshape(-1, 2)
    phi = np.asarray(transform_points_source_to_target(result.xv, np.asarray(result.v, np.float64), np.eye(3), grid))
    det = jacobian_det(phi.reshape(64, 64, 2), axes)
    det_c = _sample(det, axes, px_aff[:, ::-1])
    jac = np.where(det_c > 0, np.sqrt(np.clip(np.minimum(det_c, 1.0 / np.maximum(det_c, 1e-12)), 0.0, 1.0)), 0.0)
    return jac / (1.0 + (d / max(scale_um, 1e-12)) ** 2)


def cell_confidence(rasters: SectionRasters, result: AlignmentResult, xy_um: np.ndarray, *,
                    window_cells: float = 5.0) -> np.ndarray:
    """Confidence of each cell's aligned position, (N,) float64 in [0, 1] (see the module docstring).

    Parameters
    ----------
    rasters
        The section's rasters (:func:`gala_engine.section.prepare_section`).
    result
        The finished alignment.
    xy_um
        The cells, (N, 2) (x, y) in µm (``obsm['spatial']``).
    window_cells
        Window of the local correlation: Gaussian std in cell spacings (at most 0.2 × the section's size, at
        least 2 raster pixels).
    """
    xy_um = np.asarray(xy_um, np.float64)[:, :2]
    if len(xy_um) == 0:
        return np.zeros(0)
    J = np.asarray(rasters.J, np.float64)[0]
    moved = transform_image_source_to_target(result.xv, np.asarray(result.v, np.float64),
                                             np.asarray(result.A, np.float64), rasters.xI,
                                             np.asarray(rasters.I, np.float64), rasters.xJ)
    image = _combined(moved, J)
    spacing = rasters.cell_spacing(xy_um)
    extent = float(np.sqrt(max(np.ptp(xy_um[:, 0]) * np.ptp(xy_um[:, 1]), 1e-12)))
    sigma = max(min(window_cells * spacing, 0.2 * extent) / rasters.dx, 2.0)
    rho, _, _ = local_correlation(image, J, sigma)
    agreement = np.clip(rho, 0.0, 1.0)
    yx = xy_um[:, ::-1]
    conf = _sample(agreement, rasters.xJ, yx)
    um_per_px = float(np.sqrt(abs(np.linalg.det(np.asarray(result.A_affine)[:2, :2]))))
    conf = conf * _warp_factor(result, xy_um, um_per_px, max(5.0 * spacing, 0.1 * extent))
    return np.clip(conf, 0.0, 1.0)
