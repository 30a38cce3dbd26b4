"""A "before" pose for the viewer: the cells' µm coordinates laid on the image's tissue by matching
their centroid and spread to the tissue mask's (one isotropic scale, a shift, no rotation).

Coordinates: cells (x, y) in µm in, (x, y) in full-resolution image pixels out.
"""

from __future__ import annotations

import cv2
import numpy as np

from .features import image_feature, tissue_mask
from .io import LoadedImage

__all__ = ["apply_placement", "placement_affine", "tissue_moments"]

_MIN_MASS = 1e-6


def _small(image: LoadedImage, max_side: int) -> tuple[np.ndarray, float]:
    """An area-averaged copy of the loaded pixels with its long side ≤ ``max_side``, and its
    full-resolution pixels per small pixel."""
    px = image.pixels
    h, w = px.shape[:2]
    k = max(1, int(np.ceil(max(h, w) / max_side)))
    hk, wk = max(1, h // k), max(1, w // k)
    small = cv2.resize(np.ascontiguousarray(px[: hk * k, : wk * k]), (wk, hk), interpolation=cv2.INTER_AREA)
    if small.ndim == 2:
        small = small[..., None]
    return small, float(image.scale) * k


def tissue_moments(image: LoadedImage, *, max_side: int = 256) -> tuple[np.ndarray, float] | None:
    """Centroid (x, y) and RMS radius of the tissue in full-resolution pixels, or ``None`` when the
    image shows no tissue apart from the background.

    The tissue is :func:`gala_engine.features.tissue_mask` of the image's ``"auto"`` feature (stain for
    brightfield H&E/IHC, edges for fluorescence such as DAPI) on a copy at most ``max_side`` pixels a side.
    """
    small, f = _small(image, max_side)
    if min(small.shape[:2]) < 2:
        return None
    rows, cols, feature = image_feature(small, scale=f)
    mask = tissue_mask(feature).astype(np.float64)
    mass = mask.sum()
    if mass < _MIN_MASS or mass > 0.999 * mask.size:  # nothing, or everything: no tissue outline
        return None
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    cx, cy = float((mask * cc).sum() / mass), float((mask * rr).sum() / mass)
    rms = float(np.sqrt((mask * ((cc - cx) ** 2 + (rr - cy) ** 2)).sum() / mass))
    return np.array([cx, cy]), rms


def placement_affine(xy_um: np.ndarray, image: LoadedImage, *, max_side: int = 256) -> np.ndarray:
    """(2, 3) affine ``M`` with ``[x_px, y_px] = M @ [x_um, y_um, 1]`` putting the cells on the tissue.

    The cells' centroid goes onto the tissue's centroid and their RMS radius onto the tissue's
    (:func:`tissue_moments`); no rotation or mirror, so it shows how far the section is from aligned.
    Without a tissue outline (a blank image) the cells are centred on the image and fitted into 90 %
    of it.
    """
    xy = np.asarray(xy_um, dtype=np.float64)[:, :2]
    h, w = image.full_shape
    c_cells = xy.mean(axis=0) if len(xy) else np.zeros(2)
    spread = float(np.sqrt(((xy - c_cells) ** 2).sum(axis=1).mean())) if len(xy) else 0.0
    tissue = tissue_moments(image, max_side=max_side)
    if tissue is not None and spread > 0:
        centre, rms = tissue
        s = rms / spread
    else:
        centre = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
        ext = np.ptp(xy, axis=0) if len(xy) else np.zeros(2)
        s = 0.9 * min(w / ext[0] if ext[0] > 0 else np.inf, h / ext[1] if ext[1] > 0 else np.inf)
        s = 1.0 if not np.isfinite(s) else s
    M = np.zeros((2, 3))
    M[0, 0] = M[1, 1] = s
    M[:, 2] = centre - s * c_cells
    return M


def apply_placement(M: np.ndarray, xy_um: np.ndarray) -> np.ndarray:
    """(N, 2) (x, y) µm → (x, y) full-resolution pixels through a :func:`placement_affine` matrix."""
    xy = np.asarray(xy_um, dtype=np.float64)[:, :2]
    return xy @ np.asarray(M)[:, :2].T + np.asarray(M)[:, 2]
