"""Bring a source raster that is far finer than the cells' raster to the cells' scale before it is compared.

The published tutorial passes the Sobel magnitude of the full-resolution image (e.g. 0.43 µm pixels) against
cells rasterised at 30 µm with a Gaussian of 2 raster pixels. Read point-wise at the target pixels, that
edge map is aliasing noise: on the MERFISH validation cases poses far from the truth (cells squeezed onto
part of the image) then score higher than the truth at every level of the search (tests/validation
KNOWN_MISSES history). Smoothed like the cells' raster, the truth is the best pose again.
"""

from __future__ import annotations

import numpy as np
import torch

from .search import SUPPORT_LEVEL, blur_raster, pool_raster

# the source's Gaussian in target pixels: between anti-aliasing (~1) and rasterize()'s own splat (std 2 × blur = 2 at
# blur = 1). Measured on the validation fast set (tutorial recipe, affine only): 1.5 beats 2.0 on 8 of 10 cases
# (uniform os2_ki67 0.38 vs 0.86 raster px, spots os2_ki67 0.37 vs 0.84) and keeps MERFISH clear of the smoothed
# Sobel's 'glass' test, which 2.5 trips (the search then runs 'tissue': 6.7 raster px)
TARGET_BLUR_PX = 1.5
# smooth only a source with more than this many pixels per target pixel at the rough scale: the CLI/app prepare
# the image at ~1.5 pixels per target pixel and already smoothed to the cells' blur (section.prepare_section)
MATCH_RATIO = 4.0
POOLED_SIGMA = 4.0  # the smoothing pools the source first so that its Gaussian spans this many pooled pixels


def axis_spacing(axis: np.ndarray) -> float:
    """The pixel size along one grid axis (median step; 1 for a single pixel)."""
    axis = np.asarray(axis, dtype=np.float64)
    return float(np.median(np.diff(axis))) if axis.size > 1 else 1.0


def source_pixels_per_target_pixel(I: np.ndarray, xI: list, J: np.ndarray, xJ: list) -> float:
    """Rough number of source pixels per target pixel: the scale taken as the ratio of the cells' support extent
    (target units) to the whole source's extent (source units), like ``section.matched_image_blur``."""
    total = np.asarray(J, dtype=np.float64).sum(0)
    support = total > SUPPORT_LEVEL * total.max()
    if support.sum() < 2:
        support = np.ones_like(support)
    rows, cols = np.nonzero(support)
    dJ = np.array([axis_spacing(xJ[0]), axis_spacing(xJ[1])])
    dI = np.array([axis_spacing(xI[0]), axis_spacing(xI[1])])
    ext_J = np.array([np.ptp(xJ[0][rows]), np.ptp(xJ[1][cols])]) + dJ
    ext_I = np.array([np.ptp(xI[0]), np.ptp(xI[1])]) + dI
    scale = float(np.sqrt(ext_J.prod() / ext_I.prod()))  # target units per source unit
    return float(np.sqrt(dJ.prod()) / scale / np.sqrt(dI.prod()))


def match_source_scale(I: np.ndarray, xI: list, J: np.ndarray, xJ: list) -> tuple[np.ndarray, list, dict | None]:
    """``(I, xI, info)``: the source (C, H, W) on its grid, smoothed to the target's scale when it has more than
    ``MATCH_RATIO`` pixels per target pixel (a Gaussian of ``TARGET_BLUR_PX`` target pixels seen in source pixels,
    computed by average pooling then a Gaussian of ``POOLED_SIGMA`` pooled pixels; the pooled grid keeps the
    source's coordinates, so a transform found on it applies to the original grid). Otherwise unchanged, info None."""
    ratio = source_pixels_per_target_pixel(I, xI, J, xJ)
    if not np.isfinite(ratio) or ratio <= MATCH_RATIO:
        return I, xI, None
    sigma_px = TARGET_BLUR_PX * ratio
    factor = max(1, int(sigma_px // POOLED_SIGMA))
    t = torch.as_tensor(np.asarray(I, dtype=np.float32))
    pooled, x_pooled = pool_raster(t, xI, factor)
    smooth = blur_raster(pooled, sigma_px / factor).numpy().astype(np.float64)
    info = {"source_px_per_target_px": ratio, "sigma_source_px": sigma_px, "pool": factor}
    return smooth, [np.asarray(a, dtype=np.float64) for a in x_pooled], info


__all__ = ["MATCH_RATIO", "TARGET_BLUR_PX", "match_source_scale", "source_pixels_per_target_pixel"]
