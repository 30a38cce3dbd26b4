"""The image as shown on screen: area-resampled (no aliasing bands), contrast-stretched, with brightness,
contrast and gamma; crops of a region at the loaded resolution. No plotting here, only pixels.

Coordinates: full-resolution image pixels, x = column, y = row, pixel centres at integers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .io import LoadedImage, read_image

__all__ = ["NATIVE_MAX_PIXELS", "ScreenImage", "adjust", "crop_for_screen", "native_crop", "screen_image",
           "stretch_limits"]

NATIVE_MAX_PIXELS = 64_000_000  # re-read a file at full resolution for a crop only up to this size


@dataclass(frozen=True)
class ScreenImage:
    """uint8 RGB pixels for the screen and where they sit: pixel ``(r, c)`` of ``rgb`` is centred on
    full-resolution ``x = x0 + c·dx``, ``y = y0 + r·dy``."""

    rgb: np.ndarray
    x0: float
    y0: float
    dx: float
    dy: float


def stretch_limits(pixels: np.ndarray) -> tuple[float, float]:
    """The 1st and 99.5th percentiles of a grayscale image (what maps to black and white), from a sample
    of at most ~1 M pixels; ``(0, 1)`` for colour images (shown as they are)."""
    if pixels.shape[2] != 1:
        return 0.0, 1.0
    g = pixels[..., 0]
    step = max(1, int(np.sqrt(g.size / 1e6)))
    lo, hi = np.percentile(g[::step, ::step], [1.0, 99.5])
    return float(lo), float(max(hi, lo + 1e-6))


def adjust(pixels: np.ndarray, *, limits: tuple[float, float] = (0.0, 1.0), brightness: float = 0.0,
           contrast: float = 1.0, gamma: float = 1.0) -> np.ndarray:
    """(H, W, C) float pixels → (H, W, 3) uint8: ``limits`` mapped to 0…1, then ``v ** gamma`` (γ < 1
    lightens dark areas, e.g. a dim DAPI stain), then ``(v − ½)·contrast + ½ + brightness``, clipped."""
    lo, hi = limits
    v = (np.asarray(pixels, np.float32) - np.float32(lo)) / np.float32(max(hi - lo, 1e-6))
    v = np.clip(v, 0.0, 1.0)
    if gamma != 1.0:
        v = v ** np.float32(gamma)
    if contrast != 1.0 or brightness != 0.0:
        v = np.clip((v - 0.5) * np.float32(contrast) + 0.5 + np.float32(brightness), 0.0, 1.0)
    if v.shape[2] == 1:
        v = np.repeat(v, 3, axis=2)
    return (v[..., :3] * 255 + 0.5).astype(np.uint8)


def _resize_area(pixels: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    small = cv2.resize(np.ascontiguousarray(pixels, dtype=np.float32), (out_w, out_h), interpolation=cv2.INTER_AREA)
    return small[..., None] if small.ndim == 2 else small


def screen_image(image: LoadedImage, *, max_side: int = 1600, **adjustments: float) -> ScreenImage:
    """The whole image area-averaged to at most ``max_side`` pixels a side (averaging, not skipping rows,
    so fine texture does not turn into bands), with :func:`adjust`'s ``brightness``/``contrast``/``gamma``."""
    px = image.pixels
    h, w = px.shape[:2]
    f = min(1.0, max_side / max(h, w))
    out_w, out_h = max(1, round(w * f)), max(1, round(h * f))
    small = px if f == 1.0 else _resize_area(px, out_w, out_h)
    rgb = adjust(small, limits=stretch_limits(px), **adjustments)
    full_h, full_w = image.full_shape
    dx, dy = full_w / out_w, full_h / out_h
    return ScreenImage(rgb, dx / 2 - 0.5, dy / 2 - 0.5, dx, dy)


def crop_for_screen(image: LoadedImage, x_range: tuple[float, float], y_range: tuple[float, float], *,
                    max_side: int = 1600, **adjustments: float) -> ScreenImage | None:
    """The part of the image inside ``x_range`` × ``y_range`` (full-resolution pixels) at the loaded
    resolution (area-averaged only when that is more than ``max_side`` pixels a side); ``None`` when the
    box misses the image. The contrast stretch is the whole image's, so a crop matches its surroundings."""
    px = image.pixels
    h, w = px.shape[:2]
    s = float(image.scale)
    (xa, xb), (ya, yb) = sorted(x_range), sorted(y_range)
    c0, c1 = max(0, int(np.floor((xa + 0.5) / s))), min(w, int(np.ceil((xb + 0.5) / s)))
    r0, r1 = max(0, int(np.floor((ya + 0.5) / s))), min(h, int(np.ceil((yb + 0.5) / s)))
    if c1 - c0 < 1 or r1 - r0 < 1:
        return None
    part = px[r0:r1, c0:c1]
    f = min(1.0, max_side / max(part.shape[:2]))
    out_w, out_h = max(1, round(part.shape[1] * f)), max(1, round(part.shape[0] * f))
    small = part if f == 1.0 else _resize_area(part, out_w, out_h)
    rgb = adjust(small, limits=stretch_limits(px), **adjustments)
    dx, dy = (c1 - c0) * s / out_w, (r1 - r0) * s / out_h
    return ScreenImage(rgb, c0 * s + dx / 2 - 0.5, r0 * s + dy / 2 - 0.5, dx, dy)


def native_crop(source: str | os.PathLike[str], x_range: tuple[float, float], y_range: tuple[float, float], *,
                full_shape: tuple[int, int], options: dict[str, Any] | None = None, max_side: int = 1600,
                max_pixels: int = NATIVE_MAX_PIXELS, **adjustments: float) -> ScreenImage | None:
    """:func:`crop_for_screen` of the image file re-read at its own full resolution (``options``: the
    ``channel``/``series``/``plane`` it was loaded with), for detail the reduced copy in memory lacks.

    ``None`` when ``source`` is not a file or the whole image is above ``max_pixels`` (the file is read
    whole; a bigger one would cost too much memory): then crop the loaded copy instead."""
    h, w = full_shape
    if h * w > max_pixels or not Path(source).is_file():
        return None
    full = read_image(source, max_side=None, **(options or {}))
    return crop_for_screen(full, x_range, y_range, max_side=max_side, **adjustments)
