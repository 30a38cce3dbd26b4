"""Read tissue images and cell tables, and write aligned ``.h5ad`` files.

Coordinates: images are ``(H, W, C)`` arrays indexed ``[row, col] = [y, x]``; ``obsm['spatial']``
holds cell centroids as ``(x, y)`` in µm, and :func:`spatial_yx` swaps them to ``(row, col)``.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import math
import os
import struct
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse

from . import constants
from .errors import GalaInputError

__all__ = [
    "LoadedImage",
    "cell_signal",
    "read_cells",
    "read_image",
    "spatial_yx",
    "write_h5ad_atomic",
]

_MIN_SIDE = 8  # smallest image side (pixels) we accept
_BAND_BYTES = 64 * 2**20  # float32 bytes converted per band while reading and reducing
_MAX_DECLARED_PIXELS = 20 * 10**9  # a 40× whole-slide scan is ~150k × 100k = 15 gigapixels
_PIL_HEADER_BOUND = 2**32  # pixels Pillow may declare while we only read the header
_PIL_LOCK = threading.Lock()
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
# what decoders raise on damaged or unexpected files
_READ_ERRORS = (
    OSError,
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    RuntimeError,
    struct.error,
)
_CONVERT_HINT = (
    "convert it to a tiled pyramidal TIFF (e.g. `vips tiffsave in.png out.tif --tile --pyramid "
    "--compression deflate`) and load that instead"
)


@dataclass
class LoadedImage:
    """An image loaded for alignment, possibly downsampled.

    Attributes
    ----------
    pixels
        ``(H, W, C)`` float32 in [0, 1], ``C`` = 3 (RGB) or 1 (grayscale, e.g. DAPI). Indexed
        ``[row, col] = [y, x]``. Transparent pixels are composited on white.
    scale
        Full-resolution pixels per loaded pixel (≥ 1; 1 when not downsampled). Loaded pixel
        ``(r, c)`` covers full-resolution rows ``[r·scale, (r+1)·scale)`` and the same for columns,
        so a loaded pixel-centre coordinate ``u`` maps to ``(u + 0.5)·scale − 0.5`` at full resolution.
    full_shape
        ``(H, W)`` of the full-resolution image, in pixels.
    source
        The file path, or ``"<bytes>"`` for in-memory data.
    notes
        What the reader chose or noticed (the series / plane used, a 1-bit image, an EXIF rotation),
        one sentence each; :func:`gala_engine.checks.check_image` reports the warnings among them.
    """

    pixels: np.ndarray
    scale: float
    full_shape: tuple[int, int]
    source: str
    notes: list[str] = field(default_factory=list)

    @property
    def is_gray(self) -> bool:
        """Whether the image has a single channel."""
        return self.pixels.shape[2] == 1


# --------------------------------------------------------------------------------------- images


def read_image(
    source: str | os.PathLike[str] | bytes,
    *,
    max_side: int | None = 4096,
    channel: int | None = None,
    series: int | None = None,
    plane: int | None = None,
) -> LoadedImage:
    """Read a PNG, JPEG or TIFF (incl. 16-bit, float, pyramidal) as float32 in [0, 1].

    Parameters
    ----------
    source
        A file path, or the file's bytes (e.g. an upload).
    max_side
        Longest side, in loaded pixels. Larger images are reduced by an integer factor with area
        averaging (from the smallest pyramid level that is still large enough, for pyramidal TIFFs);
        ``None`` keeps full resolution.
    channel
        For multi-channel images (e.g. a fluorescence OME-TIFF), the 0-based channel to load as
        grayscale. ``None``: 1 channel → gray, 3 → RGB, others → error.
    series
        For TIFFs holding several images (OME-TIFF series, a thumbnail page, a label or macro image),
        the 0-based series to load. ``None``: the largest full-resolution one.
    plane
        For Z-stacks / time series / multi-page stacks, the 0-based plane. ``None``: the first plane that
        is not blank.

    EXIF / TIFF orientation tags are applied: the pixels are as the image is displayed.

    Returns
    -------
    LoadedImage
        Pixels ``(H, W, C)`` with ``C`` in {1, 3}, the downsampling ``scale`` and the full size.

    Raises
    ------
    GalaInputError
        Missing, empty, corrupt, too small (< 8 px a side), too large for Pillow's safety limit in a
        non-TIFF format, or an unsupported pixel layout.
    """
    if max_side is not None and (int(max_side) != max_side or max_side < _MIN_SIDE):
        raise GalaInputError(f"max_side must be an integer ≥ {_MIN_SIDE} or None, got {max_side!r}.")
    for label, value in (("channel", channel), ("series", series), ("plane", plane)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0):
            raise GalaInputError(f"{label} must be a non-negative integer or None, got {value!r}.")
    with _open_source(source, "image") as (fh, name):
        head = fh.read(16)
        fh.seek(0)
        if head.startswith(_TIFF_MAGIC):
            return _read_tiff(fh, name, max_side, channel, series, plane)
        if head.startswith(_HDF5_MAGIC):
            raise GalaInputError(
                f"{name} is an HDF5 file (an .h5ad?), not an image; give it as the cells file and "
                "choose a PNG, JPEG or TIFF image."
            )
        return _read_pil(fh, name, max_side, channel)


@contextlib.contextmanager
def _open_source(source: Any, what: str) -> Iterator[tuple[Any, str]]:
    """Yield a binary file handle and a display name; empty or missing inputs raise."""
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        if not data:
            raise GalaInputError(f"the {what} data is empty (0 bytes); choose the file again.")
        yield io.BytesIO(data), "<bytes>"
        return
    if not isinstance(source, str | os.PathLike):
        raise GalaInputError(f"{what} source must be a path or bytes, got {type(source).__name__}.")
    path = Path(source)
    problem = path_problem(path)
    if problem:
        raise GalaInputError(f"{what} file {problem}")
    if path.stat().st_size == 0:
        raise GalaInputError(f"{what} file {path} is empty (0 bytes); export it again.")
    with path.open("rb") as fh:
        yield fh, str(path)


def path_problem(path: Path) -> str:
    """Why ``path`` cannot be read as an input file ("" when it is a regular file), as the end of a sentence
    that starts with the file's role ("image file ...")."""
    import stat

    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return f"not found: {path}; check the path."
    except NotADirectoryError:
        return f"not found: {path} (a part of the path is a file, not a folder); check the path."
    except OSError as exc:
        return f"{path} cannot be opened ({exc.strerror or exc}); check the path and its permissions."
    if stat.S_ISDIR(mode):
        return f"{path} is a folder; give the file inside it."
    if not stat.S_ISREG(mode):
        kind = "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
        return f"{path} is {kind}, not a regular file; copy the data into a file and give that."
    return ""


def _check_side(h: int, w: int, name: str) -> None:
    if min(h, w) < _MIN_SIDE:
        raise GalaInputError(f"{name} is {w}×{h} pixels; an image needs at least {_MIN_SIDE} pixels on each side.")


def _factor(long_side: int, max_side: int | None) -> int:
    return 1 if max_side is None else max(1, math.ceil(long_side / max_side))


def _unit_scale(dtype: np.dtype) -> float | None:
    """Multiplier that maps a dtype's full range to [0, 1]; None: rescale by data min/max."""
    if dtype == np.uint8:
        return 1.0 / 255.0
    if dtype == np.uint16:
        return 1.0 / 65535.0
    if dtype == np.bool_:
        return 1.0
    if np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating):
        return None
    raise GalaInputError(f"unsupported pixel type {dtype}; save the image as 8- or 16-bit.")


@dataclass
class _Layout:
    """How raw ``(h, w, n)`` samples become ``(h, w, C)`` float32."""

    kind: str  # gray | rgb | rgba | graya | select | palette | cmyk
    unit: float | None  # dtype → [0, 1] multiplier; None: min/max rescale afterwards
    index: int = 0  # channel for kind "select"
    assoc_alpha: bool = False  # alpha premultiplied
    lut: np.ndarray | None = None  # (N, 3) float32 for kind "palette"
    invert: bool = False  # min-is-white

    @property
    def channels(self) -> int:
        return 3 if self.kind in ("rgb", "rgba", "palette", "cmyk") else 1

    def convert(self, raw: np.ndarray) -> np.ndarray:
        if raw.ndim == 2:
            raw = raw[:, :, None]
        if self.kind == "palette":
            idx = np.clip(raw[:, :, 0], 0, len(self.lut) - 1)
            return self.lut[idx]
        x = raw.astype(np.float32)
        if self.unit is None:
            np.nan_to_num(x, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        elif self.unit != 1.0:
            x *= np.float32(self.unit)
        if self.kind == "gray":
            return x[:, :, :1]
        if self.kind == "select":
            return x[:, :, self.index : self.index + 1]
        if self.kind == "rgb":
            return x[:, :, :3]
        if self.kind == "cmyk":
            k = 1.0 - x[:, :, 3:4]
            return (1.0 - x[:, :, :3]) * k
        n = 3 if self.kind == "rgba" else 1
        color, alpha = x[:, :, :n], np.clip(x[:, :, n : n + 1], 0.0, 1.0)
        if self.assoc_alpha:
            return color + (1.0 - alpha)
        return color * alpha + (1.0 - alpha)


def _finish(pixels: np.ndarray, layout: _Layout) -> np.ndarray:
    """Rescale raw-valued data to [0, 1] and apply min-is-white; in place where possible."""
    if layout.unit is None and pixels.size:
        lo, hi = float(pixels.min()), float(pixels.max())
        if lo < 0.0 or hi > 1.0:
            if hi > lo:
                pixels -= np.float32(lo)
                pixels *= np.float32(1.0 / (hi - lo))
            else:
                pixels[...] = 0.0
    if layout.invert:
        np.subtract(np.float32(1.0), pixels, out=pixels)
    np.clip(pixels, 0.0, 1.0, out=pixels)
    return pixels


def _reduce_banded(read_rows: Callable[[int, int], np.ndarray], h: int, w: int, layout: _Layout, k: int) -> np.ndarray:
    """Convert and area-average ``k×k`` blocks band by band (partial edge blocks averaged too)."""
    c = layout.channels
    out = np.empty((-(-h // k), -(-w // k), c), np.float32)
    band = max(1, _BAND_BYTES // max(1, w * c * 4 * k)) * k
    cols = np.arange(0, w, k)
    col_n = np.diff(np.append(cols, w)).astype(np.float32)
    for r0 in range(0, h, band):
        r1 = min(h, r0 + band)
        x = layout.convert(read_rows(r0, r1))
        if k > 1:
            rows = np.arange(0, r1 - r0, k)
            row_n = np.diff(np.append(rows, r1 - r0)).astype(np.float32)
            x = np.add.reduceat(np.add.reduceat(x, rows, axis=0), cols, axis=1)
            x /= row_n[:, None, None] * col_n[None, :, None]
        out[r0 // k : r0 // k + x.shape[0]] = x
    return _finish(out, layout)


# -- TIFF (tifffile) -----------------------------------------------------------------------------


class _TiffFallback(Exception):
    """tifffile cannot decode this TIFF; Pillow may (if small enough)."""


def _read_tiff(fh: Any, name: str, max_side: int | None, channel: int | None, series: int | None = None,
               plane: int | None = None) -> LoadedImage:
    import tifffile

    try:
        with tifffile.TiffFile(fh) as tif:
            return _read_tiff_open(tif, fh, name, max_side, channel, series, plane)
    except GalaInputError:
        raise
    except _TiffFallback as exc:
        reason = str(exc)
    except Exception as exc:  # noqa: BLE001 - codecs raise their own types (zlib.error, ...)
        reason = f"{type(exc).__name__}: {exc}"
    fh.seek(0)
    try:
        return _read_pil(fh, name, max_side, channel)
    except GalaInputError as exc:
        raise GalaInputError(f"cannot read the TIFF {name} ({reason}); Pillow could not either: {exc}") from None


_SIDE_IMAGES = ("label", "macro", "thumbnail", "overview", "mask")


def _pick_series(tif: Any, want: int | None, name: str) -> tuple[int, list[str]]:
    """The series to read: ``want``, or the largest one that is not a label / macro / thumbnail image."""
    all_series = list(tif.series)
    if want is not None:
        if want >= len(all_series):
            raise GalaInputError(f"series={want} asked for, but {name} has {len(all_series)} series (0–"
                                 f"{len(all_series) - 1}).")
        return want, []

    def rank(i: int) -> tuple[bool, int, int]:
        s = all_series[i]
        try:
            h, w = _tiff_yx(s.axes, s.shape)
        except _TiffFallback:
            return (False, -1, -i)
        side = str(getattr(s, "name", "") or "").lower()
        return (not any(k in side for k in _SIDE_IMAGES), h * w, -i)

    best = max(range(len(all_series)), key=rank)
    notes = []
    if len(all_series) > 1:
        notes.append(f"{name} holds {len(all_series)} images (series); using series {best}, the largest "
                     "full-resolution one (choose another with --series / the Series selector).")
    return best, notes


def _read_tiff_open(tif: Any, fh: Any, name: str, max_side: int | None, channel: int | None,
                    want_series: int | None = None, plane: int | None = None) -> LoadedImage:
    if not tif.series:
        raise _TiffFallback("no image found in it; the file may be corrupt or truncated")
    pick_series, notes = _pick_series(tif, want_series, name)
    series = tif.series[pick_series]
    n_planes = _n_planes(series)
    if plane is not None and plane >= n_planes:
        raise GalaInputError(f"plane={plane} asked for, but {name} has {n_planes} plane(s) (0–{n_planes - 1}).")
    tries = [plane] if plane is not None else list(range(min(n_planes, 64)))
    for p in tries:
        image = _read_tiff_plane(tif, fh, series, pick_series, name, max_side, channel, p)
        px = image.pixels
        if plane is not None or float(px.max()) - float(px.min()) > 1e-6:
            break
    if n_planes > 1:
        skipped = f" (planes 0–{p - 1} are blank)" if p > 0 and plane is None else ""
        notes.append(f"{name} is a stack of {n_planes} planes; using plane {p}{skipped} (choose another with "
                     "--plane / the Plane selector).")
    image.notes[:0] = notes
    return image


def _n_planes(series: Any) -> int:
    """Planes of the first axis that is not Y, X, samples or channels (Z, T, pages, …); 1 if none."""
    for a, n in zip(series.axes, series.shape, strict=True):
        if a not in "YXSC":
            return int(n)
    return 1


def _read_tiff_plane(tif: Any, fh: Any, series: Any, pick_series: int, name: str, max_side: int | None,
                     channel: int | None, plane: int) -> LoadedImage:
    from tifffile import TIFF

    levels = list(series.levels)
    shapes = [_tiff_yx(lv.axes, lv.shape) for lv in levels]
    full_h, full_w = shapes[0]
    _check_side(full_h, full_w, name)
    _check_declared_size(full_h, full_w, name)
    pick = 0
    if max_side is not None and max(full_h, full_w) > max_side:
        ok = [i for i, s in enumerate(shapes) if max(s) >= max_side]
        pick = min(ok, key=lambda i: max(shapes[i]))
    level = levels[pick]
    h, w = shapes[pick]
    kf = level.keyframe
    try:
        TIFF.DECOMPRESSORS[kf.compression]
    except KeyError as exc:
        raise _TiffFallback(
            f"compression {kf.compression.name} needs the 'imagecodecs' package: pip install imagecodecs"
        ) from exc
    _check_chunks(kf, h, w, name)
    index, layout = _tiff_layout(level, kf, channel, name, plane)
    k = _factor(max(h, w), max_side)
    scale = _level_factor(full_h, full_w, h, w) * k
    array = _tiff_array(tif, fh, level, pick, pick_series)

    def read_rows(r0: int, r1: int) -> np.ndarray:
        idx = tuple(slice(r0, r1) if i == "Y" else v for i, v in index)
        part = np.asarray(array[idx])
        kept = [a for a, v in index if isinstance(v, slice)]
        order = [kept.index(a) for a in ("Y", "X", "S", "C") if a in kept]
        return part.transpose(order).reshape(part.shape[kept.index("Y")], w, -1)

    pixels = _reduce_banded(read_rows, h, w, layout, k)
    notes = [_ONE_BIT.format(name=name)] if getattr(kf, "bitspersample", 8) == 1 else []
    pixels, (full_h, full_w) = _orient(pixels, int(getattr(kf, "orientation", 1) or 1), (full_h, full_w), notes, name)
    return LoadedImage(pixels, float(scale), (int(full_h), int(full_w)), name, notes)


_ONE_BIT = ("{name} is a 1-bit (black and white) image: the alignment sees only its outlines and is often wrong; "
            "load the original 8- or 16-bit grayscale or colour image")


def _orient(pixels: np.ndarray, code: int, full: tuple[int, int], notes: list[str],
            name: str) -> tuple[np.ndarray, tuple[int, int]]:
    """Apply an EXIF / TIFF orientation (2–8) so the pixels are as displayed; returns (pixels, full (H, W))."""
    if code not in range(2, 9):
        return pixels, full
    ops = {2: (False, False, True), 3: (False, True, True), 4: (False, True, False), 5: (True, False, False),
           6: (True, False, True), 7: (True, True, True), 8: (True, True, False)}
    transpose, flip_rows, flip_cols = ops[code]
    if transpose:
        pixels = pixels.transpose(1, 0, 2)
        full = (full[1], full[0])
    if flip_rows:
        pixels = pixels[::-1]
    if flip_cols:
        pixels = pixels[:, ::-1]
    notes.append(f"{name} carries an orientation tag ({code}); the image is used as displayed (rotated / flipped).")
    return np.ascontiguousarray(pixels), full


def _check_declared_size(h: int, w: int, name: str) -> None:
    """Refuse sizes no slide reaches (a damaged header or a decompression bomb)."""
    if h * w > _MAX_DECLARED_PIXELS:
        raise GalaInputError(
            f"{name} declares {w}×{h} = {h * w / 1e9:.1f} gigapixels, more than the "
            f"{_MAX_DECLARED_PIXELS / 1e9:.0f} gigapixels of the largest whole-slide scans: the file is too large "
            "or damaged (a decompression bomb?). Export the image again, or crop it to the tissue."
        )


def _check_chunks(kf: Any, h: int, w: int, name: str) -> None:
    """The tiles / strips present must cover the declared size (else: damaged, or a bomb)."""
    want = math.prod(getattr(kf, "chunked", ()) or (1,))
    have = len(getattr(kf, "dataoffsets", ()) or ())
    if have < want:
        raise GalaInputError(
            f"{name} declares {w}×{h} pixels but holds data for only {have} of its {want} tiles/strips: "
            "the file is damaged or truncated (or too large for what it holds, a decompression bomb?). "
            "Export it again."
        )


def _tiff_yx(axes: str, shape: tuple[int, ...]) -> tuple[int, int]:
    if "Y" not in axes or "X" not in axes:
        raise _TiffFallback(f"no Y/X axes in the TIFF series (axes {axes!r})")
    return int(shape[axes.index("Y")]), int(shape[axes.index("X")])


def _level_factor(full_h: int, full_w: int, h: int, w: int) -> float:
    """Full-resolution pixels per level pixel; integer when the level is a ceil/floor halving."""
    f = (full_h / h + full_w / w) / 2.0
    n = round(f)
    if n >= 1 and all(size in (full // n, -(-full // n)) for size, full in ((h, full_h), (w, full_w))):
        return float(n)
    return f


def _tiff_layout(level: Any, kf: Any, channel: int | None, name: str,
                 plane: int = 0) -> tuple[list[tuple[str, Any]], _Layout]:
    """Index per axis (a slice keeps the axis) and the sample layout of one TIFF level."""
    from tifffile import PHOTOMETRIC

    axes, shape = level.axes, level.shape
    size = dict(zip(axes, shape, strict=True))
    s, c = size.get("S", 1), size.get("C", 1)
    index: list[tuple[str, Any]] = []
    for a in axes:
        if a in "YXS":
            index.append((a, slice(None)))
        elif a == "C":
            if s > 1 and c > 1:
                index.append((a, 0 if channel is None else _check_channel(channel, c, name)))
            else:
                index.append((a, slice(None)))
        else:
            index.append((a, plane))  # the plane of the first Z / T / pages axis, 0 of the others
            plane = 0
    n = s if (s > 1 or c == 1) else c
    if s > 1 and c > 1:
        channel = None  # consumed by the C axis
    unit = _unit_scale(np.dtype(level.dtype))
    photometric = kf.photometric
    alpha = tuple(int(e) for e in (kf.extrasamples or ()))
    has_alpha = bool(alpha) and alpha[0] in (1, 2)
    if channel is not None:
        return index, _Layout("select", unit, index=_check_channel(channel, n, name))
    if photometric == PHOTOMETRIC.PALETTE and n == 1 and kf.colormap is not None:
        lut = np.asarray(kf.colormap, np.float64).T
        lut = (lut / (65535.0 if lut.max() > 255 else 255.0)).astype(np.float32)
        return index, _Layout("palette", None, lut=lut)
    if photometric == PHOTOMETRIC.SEPARATED:
        if n < 4 or unit is None:
            raise _TiffFallback(f"CMYK TIFF with {n} samples of {level.dtype}")
        return index, _Layout("cmyk", unit)
    if photometric in (PHOTOMETRIC.RGB, PHOTOMETRIC.YCBCR) or (photometric == PHOTOMETRIC.MINISBLACK and n == 3):
        if n < 3:
            raise _TiffFallback(f"RGB TIFF with {n} samples")
        if n >= 4 and has_alpha:
            return index, _Layout("rgba", unit, assoc_alpha=alpha[0] == 1)
        return index, _Layout("rgb", unit)
    if photometric in (PHOTOMETRIC.MINISBLACK, PHOTOMETRIC.MINISWHITE):
        invert = photometric == PHOTOMETRIC.MINISWHITE
        if n == 1:
            return index, _Layout("gray", unit, invert=invert)
        if n == 2 and has_alpha:
            return index, _Layout("graya", unit, assoc_alpha=alpha[0] == 1, invert=invert)
        raise GalaInputError(
            f"{name} has {n} channels; save the one to align against (e.g. DAPI) as a grayscale image, "
            f"or an RGB image; or pick one with --channel (the app's Channel box; read_image(..., channel=<0..{n - 1}>) from Python)."
        )
    raise _TiffFallback(f"photometric {getattr(photometric, 'name', photometric)} is not handled")


def _check_channel(channel: int, n: int, name: str) -> int:
    if channel >= n:
        raise GalaInputError(f"channel={channel} asked for, but {name} has {n} channel(s).")
    return channel


def _tiff_array(tif: Any, fh: Any, level: Any, pick: int, series: int = 0) -> Any:
    """Something sliceable like the level's array: a memmap/buffer view, or a zarr array."""
    # dataoffset is set only for contiguous, uncompressed data
    offset = getattr(level, "dataoffset", None)
    if offset is not None and level.keyframe.is_final:
        dtype = np.dtype(level.dtype).newbyteorder(tif.byteorder)
        shape = tuple(level.shape)
        if isinstance(fh, io.BytesIO):
            data = fh.getvalue()  # shares the caller's bytes; no copy
            return np.frombuffer(data, dtype, count=math.prod(shape), offset=offset).reshape(shape)
        if level.keyframe.is_memmappable:
            return np.memmap(fh.name, dtype, mode="r", offset=offset, shape=shape)
    import zarr

    # a store over a BytesIO is not marked read-only, so zarr refuses mode="r"; we only read
    return zarr.open(tif.aszarr(series=series, level=pick))


# -- everything else (Pillow) --------------------------------------------------------------------


def _pil_open(fh: Any, name: str) -> tuple[Any, int | None]:
    """Open with Pillow's bomb guard lifted only while the header is read; return (image, limit)."""
    from PIL import Image, UnidentifiedImageError

    with _PIL_LOCK:
        limit = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None if limit is None else max(limit, _PIL_HEADER_BOUND)
        try:
            im = Image.open(fh)
        except UnidentifiedImageError:
            raise GalaInputError(
                f"{name} is not a readable image (expected PNG, JPEG or TIFF); it may be damaged or another "
                "format: export the image again as PNG, JPEG or TIFF."
            ) from None
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise GalaInputError(f"cannot read the image {name}: {exc}; check the file.") from None
        finally:
            Image.MAX_IMAGE_PIXELS = limit
    return im, limit


def _read_pil(fh: Any, name: str, max_side: int | None, channel: int | None) -> LoadedImage:
    im, limit = _pil_open(fh, name)
    with im:
        full_w, full_h = im.size
        _check_side(full_h, full_w, name)
        pre = 1  # reduction done while decoding (JPEG DCT scaling)
        if limit is not None and full_w * full_h > limit:
            too_big = (
                f"{name} is {full_w}×{full_h} = {full_w * full_h / 1e6:.1f} MP, beyond Pillow's "
                f"safety limit of {limit / 1e6:.1f} MP; {_CONVERT_HINT}."
            )
            if im.format != "JPEG" or max_side is None:
                raise GalaInputError(too_big)
            want = _factor(max(full_w, full_h), max_side)
            im.draft(im.mode, (-(-full_w // want), -(-full_h // want)))
            pre = round(full_w / im.size[0])
            if im.size[0] * im.size[1] > limit:
                raise GalaInputError(too_big)
        orientation = _pil_orientation(im)
        notes = [_ONE_BIT.format(name=name)] if im.mode == "1" else []
        im, layout = _pil_layout(im, name, channel)
        try:
            raw = np.asarray(im)
        except (OSError, SyntaxError, ValueError) as exc:
            raise GalaInputError(
                f"the image data in {name} is corrupt or truncated ({exc}); export it again."
            ) from None
    if orientation in range(2, 9):  # rotate the decoded samples (views), then reduce: as displayed, exactly
        raw, (full_h, full_w) = _orient(raw if raw.ndim == 3 else raw[:, :, None], orientation, (full_h, full_w),
                                        notes, name)
    h, w = raw.shape[:2]
    k = _factor(max(h, w), max_side)
    pixels = _reduce_banded(lambda r0, r1: raw[r0:r1], h, w, layout, k)
    return LoadedImage(pixels, float(pre * k), (int(full_h), int(full_w)), name, notes)


def _pil_orientation(im: Any) -> int:
    """The EXIF orientation tag (1 = as stored) of a Pillow image; 1 when the EXIF block is unreadable."""
    try:
        return int(im.getexif().get(0x0112, 1) or 1)
    except (OSError, SyntaxError, ValueError, TypeError, struct.error):
        return 1


def _pil_layout(im: Any, name: str, channel: int | None) -> tuple[Any, _Layout]:
    """Bring a Pillow image to a mode we convert, and describe its samples."""
    mode = im.mode
    if mode in ("P", "PA"):
        keep_alpha = mode == "PA" or "transparency" in im.info
        im = im.convert("RGBA" if keep_alpha else "RGB")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        im = im.convert("RGB")
    elif mode == "RGBa":
        im = im.convert("RGBA")
    elif mode == "La":
        im = im.convert("LA")
    elif mode == "1":
        im = im.convert("L")
    mode = im.mode
    kinds = {"L": "gray", "LA": "graya", "RGB": "rgb", "RGBA": "rgba"}
    if mode in kinds:
        kind = kinds[mode]
        if channel is not None:
            return im, _Layout("select", 1 / 255, index=_check_channel(channel, len(mode), name))
        return im, _Layout(kind, 1 / 255)
    if mode.startswith("I;16"):
        return im, _Layout("gray", 1 / 65535)
    if mode == "I":
        return im, _Layout("gray", None)
    if mode == "F":
        return im, _Layout("gray", None)
    raise GalaInputError(f"{name} has the unsupported pixel mode {mode!r}; save it as 8/16-bit grayscale or RGB.")


# --------------------------------------------------------------------------------------- cells


def read_cells(source: str | os.PathLike[str] | bytes) -> Any:
    """Read an AnnData ``.h5ad`` and check its cell coordinates.

    Parameters
    ----------
    source
        A path, or the file's bytes (written to a temporary file and read fully into memory).

    Returns
    -------
    anndata.AnnData
        The file's AnnData, unchanged. ``obsm['spatial']`` holds ``(N, 2)`` finite centroids
        ``(x, y)`` in µm, N ≥ 1.

    Raises
    ------
    GalaInputError
        Not an .h5ad, no ``obsm['spatial']``, wrong shape, NaN/inf coordinates or no cells.
    """
    with _open_source(source, "cells") as (fh, name):
        head = fh.read(1024)
        data = fh.getvalue() if isinstance(fh, io.BytesIO) else None
    if data is None:
        adata = _read_h5ad(Path(source), name, head)
    else:
        fd, tmp_name = tempfile.mkstemp(suffix=".h5ad")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            adata = _read_h5ad(Path(tmp_name), name, head)
        finally:
            Path(tmp_name).unlink(missing_ok=True)
    _spatial_xy(adata, name)
    return adata


def _read_h5ad(path: Path, name: str, head: bytes) -> Any:
    import anndata
    import h5py

    if not h5py.is_hdf5(path):
        kind = "text" if _looks_like_text(head) else "binary data"
        raise GalaInputError(
            f"{name} is not an AnnData .h5ad file (it is not HDF5; it looks like {kind}). "
            "Save the cells with anndata: adata.write_h5ad('cells.h5ad')."
        )
    from .h5safety import check_self_contained, truncated_error

    check_self_contained(path, name)  # nothing outside the file is opened (external links, VDS, ...)
    try:
        return anndata.read_h5ad(path)
    except _READ_ERRORS as exc:
        if "truncated" in str(exc).lower():
            raise truncated_error(name, exc) from None
        raise GalaInputError(
            f"{name} is HDF5 but not a readable AnnData .h5ad ({type(exc).__name__}: {exc}); "
            "re-save it with adata.write_h5ad(...)."
        ) from None


def _looks_like_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\x00" not in head


# (x column, y column) pairs that often hold centroids in obs
_XY_COLUMNS = (
    ("x", "y"),
    ("center_x", "center_y"),
    ("x_centroid", "y_centroid"),
    ("global_x", "global_y"),
    ("x_location", "y_location"),
)


def _spatial_xy(adata: Any, name: str = "the AnnData") -> np.ndarray:
    """Validated ``obsm['spatial']`` as float64 ``(N, 2)`` (x, y) µm; raises GalaInputError."""
    key = constants.SPATIAL_KEY
    if adata.n_obs < 1:
        raise GalaInputError(f"{name} has no cells (0 rows in obs); choose a file with cells.")
    if key not in adata.obsm:
        keys = list(adata.obsm.keys())
        msg = f"{name} has no obsm['{key}'] with the cell centroids (x, y) in µm"
        msg += f"; obsm keys present: {keys}" if keys else "; obsm is empty"
        if keys:
            msg += f". Rename the right one, e.g. adata.obsm['{key}'] = adata.obsm['{keys[0]}']"
        lower = {str(c).lower(): str(c) for c in adata.obs.columns}
        pair = next(
            ([lower[x], lower[y]] for x, y in _XY_COLUMNS if x in lower and y in lower),
            None,
        )
        if pair:
            msg += f". obs has {pair}: adata.obsm['{key}'] = adata.obs[{pair}].to_numpy()"
        elif not keys:
            msg += f". Store them as adata.obsm['{key}'] = xy (an n_cells × 2 array of x, y in µm) and save again"
        raise GalaInputError(msg + ".")
    raw = adata.obsm[key]
    if sparse.issparse(raw):
        raise GalaInputError(
            f"obsm['{key}'] in {name} is a scipy sparse matrix {raw.shape}; cell centroids must be a dense "
            f"(n_cells, 2) array of x, y in µm: adata.obsm['{key}'] = adata.obsm['{key}'].toarray(), then save again."
        )
    arr = np.asarray(raw.to_numpy() if hasattr(raw, "to_numpy") else raw)
    if arr.ndim != 2 or arr.shape[1] != 2:
        msg = f"obsm['{key}'] in {name} has shape {arr.shape}; it must be (n_cells, 2): x, y in µm"
        if arr.ndim < 2 or arr.shape[1] == 1:
            msg += ". It has one column (x only, or a cell index?): store both x and y, one row per cell"
        elif arr.ndim == 2 and arr.shape[1] == 3:
            msg += f". It has 3 columns (x, y, z?): keep x and y with adata.obsm['{key}'] = adata.obsm['{key}'][:, :2]"
        raise GalaInputError(msg + ".")
    try:
        arr = arr.astype(np.float64)
    except (TypeError, ValueError):
        raise GalaInputError(
            f"obsm['{key}'] in {name} is not numeric ({arr.dtype}); store x, y in µm as numbers."
        ) from None
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        raise GalaInputError(
            f"obsm['{key}'] in {name} has {int(bad.sum())} of {len(arr)} rows with NaN or inf; "
            "drop those cells first, e.g. adata = adata[np.isfinite(adata.obsm['spatial']).all(1)].copy()."
        )
    return arr


def spatial_yx(adata: Any) -> np.ndarray:
    """Cell centroids as float64 ``(N, 2)`` in (row, col) = (y, x), µm, from ``obsm['spatial']``."""
    return np.ascontiguousarray(_spatial_xy(adata)[:, ::-1])


def cell_signal(adata: Any, signal: str = constants.SIGNAL_TOTAL_COUNTS) -> np.ndarray:
    """Per-cell weights for the cell raster, float64 ``(N,)``.

    Parameters
    ----------
    adata
        The cells.
    signal
        ``"total counts"`` (row sums of ``X``; raw counts expected), ``"cell density"`` (all ones),
        or a gene in ``var_names`` (its ``X`` column). Several channels (genes joined by ``,``, ``pca[:k]``; see
        :mod:`gala_engine.signals`): the mean of the channels scaled to [0, 1], a per-cell summary for colouring
        and checks (the target raster combines the channels' rasters: :func:`gala_engine.signals.combine_channels`).

    Raises
    ------
    GalaInputError
        Negative or non-finite counts for total counts, or an unknown gene (close matches named).
    """
    if signal == constants.SIGNAL_DENSITY:
        return np.ones(adata.n_obs, np.float64)
    if signal not in (constants.SIGNAL_TOTAL_COUNTS,) and signal not in adata.var_names:
        from .signals import parse_signal, signal_channels

        if parse_signal(signal).kind == "pca" or "," in signal:  # several channels: one summary value per cell
            weights, _ = signal_channels(adata, signal)
            span = np.ptp(weights, axis=0)
            return ((weights - weights.min(0)) / np.where(span > 0, span, 1.0)).mean(1)
    X = adata.X
    if X is None:
        raise GalaInputError(f"adata.X is empty, so '{signal}' cannot be computed; use '{constants.SIGNAL_DENSITY}'.")
    if signal == constants.SIGNAL_TOTAL_COUNTS:
        values = np.asarray(X.data if sparse.issparse(X) else X)
        if values.size and values.min() < 0:
            raise GalaInputError(
                "adata.X has negative values (scaled or log data?); total counts need raw counts. "
                f"Put counts in X, or use '{constants.SIGNAL_DENSITY}' or one gene."
            )
        out = np.asarray(X.sum(axis=1, dtype=np.float64)).ravel()
    else:
        out = _gene_column(adata, X, signal)
    if not np.isfinite(out).all():
        raise GalaInputError(f"'{signal}' has NaN or inf for some cells; check adata.X.")
    return out


def _gene_column(adata: Any, X: Any, gene: str) -> np.ndarray:
    names = adata.var_names
    if gene not in names:
        pool = [str(g) for g in names]
        close = difflib.get_close_matches(gene, pool, n=5, cutoff=0.6)
        close += [g for g in pool if g.lower() == gene.lower() and g not in close]
        hint = f"close matches: {close}" if close else "no close matches"
        raise GalaInputError(
            f"gene '{gene}' is not in var_names ({len(pool)} genes; {hint}); or use "
            f"'{constants.SIGNAL_TOTAL_COUNTS}' / '{constants.SIGNAL_DENSITY}'."
        )
    loc = names.get_loc(gene)
    if not isinstance(loc, int | np.integer):
        raise GalaInputError(f"gene '{gene}' appears more than once in var_names; run adata.var_names_make_unique().")
    col = X[:, int(loc)]
    col = col.toarray() if hasattr(col, "toarray") else np.asarray(col)
    return np.asarray(col, np.float64).ravel()


# --------------------------------------------------------------------------------------- writing


def write_h5ad_atomic(
    adata: Any,
    path: str | os.PathLike[str],
    *,
    protect: Iterable[str | os.PathLike[str]] = (),
    before_rename: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``adata`` to ``path`` (gzip) via a temporary file in the same folder and a rename.

    Parameters
    ----------
    adata
        What to write.
    path
        Destination ``.h5ad``; replaced atomically, so readers never see a half-written file.
    protect
        Paths that must not be overwritten (the inputs).
    before_rename
        Called with the written temporary file before it is renamed (e.g. to add HDF5 hard links).

    Returns
    -------
    Path
        The written path.
    """
    dest = Path(path)
    for p in protect:
        if _same_file(dest, Path(p)):
            raise GalaInputError(f"refusing to overwrite the input file {p}; choose another output name.")
    if dest.is_dir():
        raise GalaInputError(f"output path {dest} is a folder; give a file name ending in .h5ad.")
    if not dest.parent.is_dir():
        raise GalaInputError(f"output folder {dest.parent} does not exist; create it first.")
    from .outputs import clean_stale_temps, temp_prefix

    clean_stale_temps(dest)
    mode = (dest.stat().st_mode & 0o777) if dest.exists() else 0o644
    fd, tmp_name = tempfile.mkstemp(prefix=temp_prefix(dest), suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    adata = _writable_uns(adata)
    try:
        adata.write_h5ad(tmp, compression="gzip")
        if before_rename is not None:
            before_rename(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def _writable_uns(adata: Any) -> Any:
    """``adata``, or a copy whose ``uns`` has ragged / variable-length arrays (which h5ad cannot store as
    arrays) as dicts of their rows ``{"0": row0, "1": row1, …}``; the caller's object is never changed."""
    fixed, changed = _fix_uns(adata.uns)
    if not changed:
        return adata
    out = adata.copy()
    out.uns = fixed
    return out


def _fix_uns(value: Any) -> tuple[Any, bool]:
    if isinstance(value, dict) or (hasattr(value, "keys") and hasattr(value, "items") and not hasattr(value, "dtype")):
        out, changed = {}, False
        for k, v in value.items():
            out[k], c = _fix_uns(v)
            changed |= c
        return out, changed
    if isinstance(value, np.ndarray) and value.dtype == object:
        items = list(value.ravel())
        if items and not all(isinstance(v, str) for v in items):
            if all(isinstance(v, np.ndarray | list | tuple) for v in items):
                rows = {str(i): np.asarray(v) for i, v in enumerate(items)}
                return {k: _fix_uns(v)[0] for k, v in rows.items()}, True
            return np.asarray([str(v) for v in items], dtype=object).reshape(value.shape), True
    return value, False


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()
