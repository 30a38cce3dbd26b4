"""Synthetic cells drawn from a real image, moved by a KNOWN transform (and optionally a warp)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gala_engine import choose_dx, image_feature, rasterize


@dataclass
class SynthPair:
    xI: list
    I: np.ndarray
    xJ: list
    J: np.ndarray
    cells_px: np.ndarray  # (N, 2) true source positions (row, col), image pixels
    cells_um: np.ndarray  # (N, 2) observed target positions (row, col), µm
    A: np.ndarray  # true 3×3 affine, pixels → µm
    dx: float


def make_pair(image: np.ndarray, angle: float, sy: float, sx: float, shift=(1000.0, -500.0), *,
              n_cells: int = 4000, warp: float = 0.0, seed: int = 0, reduce: int = 4,
              kind: str = "auto", power: float = 2.0, smooth: float = 0.0) -> SynthPair:
    """Cells sampled where the image is bright (∝ intensity**power), mapped by R(angle)·diag(sy, sx) + shift,
    then displaced by a smooth sinusoidal warp of amplitude ``warp`` µm. ``kind``/``smooth`` choose the
    source feature (:func:`image_feature`), ``power`` the sampling density ∝ intensity**power."""
    rng = np.random.default_rng(seed)
    prob = image.ravel().astype(np.float64) ** power
    idx = rng.choice(prob.size, n_cells, p=prob / prob.sum())
    px = np.stack([idx // image.shape[1], idx % image.shape[1]], 1) + rng.uniform(-0.5, 0.5, (n_cells, 2))
    theta = np.deg2rad(angle)
    L = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]) @ np.diag([sy, sx])
    A = np.eye(3)
    A[:2, :2], A[:2, 2] = L, shift
    um = px @ L.T + np.asarray(shift)
    if warp:
        lo, span = um.min(0), np.ptp(um, 0)
        u = (um - lo) / span
        um = um + warp * np.stack([np.sin(2 * np.pi * u[:, 1]), np.sin(2 * np.pi * u[:, 0])], 1)
    dx = choose_dx(um[:, 1], um[:, 0])
    XJ, YJ, J = rasterize(um[:, 1], um[:, 0], dx=dx)
    YI, XI, I = image_feature(image, reduce=reduce, kind=kind, smooth=smooth)
    return SynthPair([YI, XI], I, [YJ, XJ], J, px, um, A, dx)


def median_error_target_px(pair: SynthPair, mapped_px: np.ndarray) -> float:
    """Median distance between mapped and true source positions, in target-raster pixels."""
    err_px = np.linalg.norm(np.asarray(mapped_px) - pair.cells_px, axis=1)
    um_per_px = np.sqrt(abs(np.linalg.det(pair.A[:2, :2])))
    return float(np.median(err_px) * um_per_px / pair.dx)
