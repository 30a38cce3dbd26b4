"""Colour deconvolution of brightfield stains (H&E, H-DAB IHC): the hematoxylin (nuclei) channel.

Optical density ``OD = −log(I / I0)`` (Beer–Lambert; ``I0`` the slide's background brightness) is a
non-negative mix of stain vectors. The vectors are estimated per image (Macenko et al. 2009: the plane of
the two largest principal directions of the tissue's OD, and the robust extreme angles in it), falling
back to Ruifrok & Johnston's fixed H&E vectors (2001, as in ``skimage.color.hed_from_rgb``) when the image
gives no clear two-stain plane. Transcriptomics cells are nuclei-centred, so hematoxylin is the image
signal their density follows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Ruifrok & Johnston (2001) unit OD vectors (R, G, B) of hematoxylin and eosin
RUIFROK_H = np.array([0.650, 0.704, 0.286])
RUIFROK_E = np.array([0.072, 0.990, 0.105])
OD_TISSUE = 0.15  # OD norm above which a pixel counts as stained tissue (Macenko's β)
MIN_TISSUE_PIXELS = 500
MAX_H_ANGLE = 35.0  # degrees: an estimated hematoxylin vector further than this from Ruifrok's is not trusted


@dataclass
class StainVectors:
    """Unit OD vectors of hematoxylin and the counterstain (eosin or DAB), the background ``I0`` (per channel, in
    the image's [0, 1] scale) and how they were found (``"macenko"`` or ``"ruifrok"``)."""

    hematoxylin: np.ndarray
    counterstain: np.ndarray
    background: np.ndarray
    method: str


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip(abs(_unit(a) @ _unit(b)), -1.0, 1.0))))


def background_level(rgb: np.ndarray) -> np.ndarray:
    """Per-channel brightness of the empty slide: the 99th percentile of each channel (at least 0.5, so a
    section that fills the image is not taken for background)."""
    flat = np.asarray(rgb, dtype=np.float32).reshape(-1, 3)
    step = max(1, flat.shape[0] // 200_000)
    return np.maximum(np.percentile(flat[::step], 99.0, axis=0), 0.5)


def optical_density(rgb: np.ndarray, background: np.ndarray) -> np.ndarray:
    """(…, 3) RGB in [0, 1] → (…, 3) float32 optical density ``−log(I / I0)``, ≥ 0."""
    # in place, float32 (a 2000×1500 image: np.clip and fresh temporaries cost more than the logarithm)
    ratio = np.asarray(rgb, dtype=np.float32) * (1.0 / np.asarray(background, dtype=np.float32))
    np.maximum(ratio, np.float32(1.0 / 255.0), out=ratio)
    np.minimum(ratio, np.float32(1.0), out=ratio)
    np.log(ratio, out=ratio)
    return np.negative(ratio, out=ratio)


def estimate_stains(rgb: np.ndarray, *, percentile: float = 1.0) -> StainVectors:
    """Macenko stain vectors of an RGB image in [0, 1], or Ruifrok's when the estimate is not trustworthy."""
    background = background_level(rgb)
    flat = np.asarray(rgb, dtype=np.float32).reshape(-1, 3)
    step = max(1, flat.shape[0] // 200_000)
    od = optical_density(flat[::step], background)
    od = od[np.linalg.norm(od, axis=1) > OD_TISSUE]
    fallback = StainVectors(RUIFROK_H, RUIFROK_E, background, "ruifrok")
    if od.shape[0] < MIN_TISSUE_PIXELS:
        return fallback
    _, vectors = np.linalg.eigh(np.cov(od.T))
    plane = vectors[:, [2, 1]]  # the two largest principal directions
    plane[:, 0] *= np.sign(plane[:, 0].sum()) or 1.0  # point into positive OD
    plane[:, 1] *= np.sign(plane[:, 1].sum()) or 1.0
    proj = od @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, [percentile, 100.0 - percentile])
    v1 = _unit(plane @ np.array([np.cos(lo), np.sin(lo)]))
    v2 = _unit(plane @ np.array([np.cos(hi), np.sin(hi)]))
    if (v1 < -0.05).any() or (v2 < -0.05).any() or _angle_deg(v1, v2) < 5.0:
        return fallback
    # hematoxylin absorbs red most: of the two, the vector with the larger red share
    h, other = (v1, v2) if v1[0] / v1.sum() > v2[0] / v2.sum() else (v2, v1)
    if _angle_deg(h, RUIFROK_H) > MAX_H_ANGLE:
        return fallback
    return StainVectors(np.clip(h, 0.0, None), np.clip(other, 0.0, None), background, "macenko")


def stain_densities(rgb: np.ndarray, stains: StainVectors | None = None, *,
                    band: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) RGB in [0, 1] → (hematoxylin concentration ≥ 0, total optical density), each (H, W) float32,
    from one optical-density pass. Hematoxylin by least squares on the stain vectors and their cross product
    (the residual). Row bands of ``band`` rows bound the memory."""
    rgb = np.asarray(rgb)
    if stains is None:
        stains = estimate_stains(rgb)
    residual = _unit(np.cross(stains.hematoxylin, stains.counterstain))
    unmix = np.linalg.inv(np.stack([stains.hematoxylin, stains.counterstain, residual]))  # OD = C @ M → C = OD @ M⁻¹
    both = np.empty((*rgb.shape[:2], 2), dtype=np.float32)
    # one product per pixel gives both: the hematoxylin column of the unmixing and the sum of the densities
    columns = np.stack([unmix[:, 0], np.ones(3)], 1).astype(np.float32)
    for start in range(0, rgb.shape[0], band):
        both[start : start + band] = optical_density(rgb[start : start + band, :, :3], stains.background) @ columns
    return np.clip(both[..., 0], 0.0, None), np.ascontiguousarray(both[..., 1])


def hematoxylin_density(rgb: np.ndarray, stains: StainVectors | None = None, *, band: int = 1024) -> np.ndarray:
    """(H, W, 3) RGB in [0, 1] → (H, W) float32 hematoxylin concentration (≥ 0) (:func:`stain_densities`)."""
    return stain_densities(rgb, stains, band=band)[0]


def unit_scale(pixels: np.ndarray) -> np.ndarray:
    """Pixels in any numeric scale → float32 in [0, 1]: integers by their dtype's range (an 8-bit or 16-bit image
    read with PIL, tifffile or OpenCV), floats above 1 by their maximum, floats in [0, 1] as they are."""
    arr = np.asarray(pixels)
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)
    out = arr.astype(np.float32)
    top = float(out.max()) if out.size else 0.0
    return out / top if top > 1.0 else out


def is_brightfield(pixels: np.ndarray) -> bool:
    """True for a brightfield image (stained tissue on a bright slide: H&E, IHC), False for fluorescence
    (bright signal on a dark background: DAPI), from the median brightness (pixels in any scale:
    :func:`unit_scale`), not the channel count."""
    arr = np.asarray(pixels)
    step = max(1, int(np.sqrt(arr.shape[0] * arr.shape[1] / 200_000)))  # ~200,000 pixels on a regular grid
    sample = unit_scale(arr[::step, ::step])
    gray = sample.mean(-1) if sample.ndim == 3 else sample
    return float(np.median(gray)) >= 0.25
