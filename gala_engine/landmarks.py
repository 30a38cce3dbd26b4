"""Landmarks: matching point pairs (image pixels ↔ cell µm), the affine they imply, the landmark error
(target registration error) of any alignment, and the CSV files of GALA and 10x Xenium Explorer.

Conventions
-----------
- A pair is one point on the image, ``(image_x, image_y)`` = (column, row) in **full-resolution image
  pixels**, and the same tissue point among the cells, ``(cells_x, cells_y)`` in **µm** as in
  ``obsm['spatial']``. Pairs are held as a :class:`Landmarks` (two (N, 2) (x, y) arrays and names).
- Matrices are 3×3 and map image pixels (row, col) to µm (row, col), the convention of ``result['A']``
  and ``AlignmentResult.A`` (``gala(..., init_A=...)`` takes the same).
- The landmark error of a pair is the distance, in image pixels, between its image point and where the
  alignment puts its cell point (:meth:`AlignmentResult.cells_to_image`, the same map that writes
  ``obsm['spatial_he']``, LDDMM warp included).

Files
-----
- GALA's CSV: header ``image_x,image_y,cells_x,cells_y`` (an optional ``name`` column), one pair a row.
- Xenium Explorer's keypoints CSV: header ``fixedX,fixedY,alignmentX,alignmentY``; ``fixed`` is the
  Xenium side (µm by default, ``fixed_unit="px"`` for Xenium morphology pixels of ``pixel_size`` µm),
  ``alignment`` the pixels of the image being aligned (the H&E).
- Xenium Explorer's transformation matrix CSV: three comma-separated rows, no header, a 3×3 matrix
  ``M`` with ``[x', y', 1] = M · [x, y, 1]`` from H&E pixels (x = column, y = row) to Xenium morphology
  pixels, which are ``pixel_size`` µm (0.2125 µm by default, ``pixel_size`` in ``experiment.xenium``).
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .affine import swap_xy
from .errors import GalaInputError

__all__ = [
    "GALA_COLUMNS",
    "XENIUM_COLUMNS",
    "XENIUM_PIXEL_SIZE",
    "LandmarkFit",
    "Landmarks",
    "RunLandmarks",
    "apply_matrix",
    "check_landmarks",
    "fit_landmarks",
    "landmark_errors",
    "landmark_summary",
    "landmarks_csv",
    "landmarks_uns",
    "matrix_from_xenium",
    "matrix_to_xenium",
    "prepare_inputs",
    "read_landmarks",
    "read_xenium_matrix",
    "result_affine",
    "write_landmarks",
    "write_xenium_matrix",
    "xenium_matrix_path",
    "xenium_matrix_text",
]

GALA_COLUMNS = ("image_x", "image_y", "cells_x", "cells_y")
XENIUM_COLUMNS = ("fixedX", "fixedY", "alignmentX", "alignmentY")
XENIUM_PIXEL_SIZE = 0.2125  # µm per Xenium morphology pixel (experiment.xenium "pixel_size")
MIN_PAIRS = 3
Kind = Literal["similarity", "affine"]


# ------------------------------------------------------------------------------------- pairs


@dataclass
class Landmarks:
    """Point pairs: ``image_xy`` (N, 2) full-resolution image pixels (x = column, y = row) and
    ``cells_xy`` (N, 2) µm (x, y as in ``obsm['spatial']``), with a name per pair."""

    image_xy: np.ndarray
    cells_xy: np.ndarray
    names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.image_xy = np.asarray(self.image_xy, dtype=np.float64).reshape(-1, 2)
        self.cells_xy = np.asarray(self.cells_xy, dtype=np.float64).reshape(-1, 2)
        if len(self.image_xy) != len(self.cells_xy):
            raise GalaInputError(
                f"{len(self.image_xy)} image points but {len(self.cells_xy)} cell points; each landmark "
                "needs one of each."
            )
        names = [str(n) for n in self.names]
        self.names = names + [str(i + 1) for i in range(len(names), len(self.image_xy))]

    def __len__(self) -> int:
        return len(self.image_xy)

    @classmethod
    def from_rows(cls, rows: Any) -> Landmarks:
        """From an iterable of ``(image_x, image_y, cells_x, cells_y)`` rows or an (N, 4) array."""
        arr = np.asarray(rows, dtype=np.float64).reshape(-1, 4)
        return cls(arr[:, :2], arr[:, 2:])

    def as_rows(self) -> np.ndarray:
        """(N, 4) ``image_x, image_y, cells_x, cells_y``."""
        return np.c_[self.image_xy, self.cells_xy]

    def to_dict(self) -> dict[str, Any]:
        """JSON-/h5ad-friendly: ``{"names": [...], "image_xy": [[x, y], ...], "cells_xy": [...]}``."""
        return {"names": list(self.names), "image_xy": self.image_xy.tolist(), "cells_xy": self.cells_xy.tolist()}


def _spread(xy: np.ndarray) -> tuple[float, float]:
    """Largest and smallest singular values of the centred points (their spread along two axes)."""
    s = np.linalg.svd(xy - xy.mean(axis=0), compute_uv=False)
    return float(s[0]), float(s[-1]) if len(s) > 1 else 0.0


def check_landmarks(
    lm: Landmarks,
    *,
    image_shape: tuple[int, int] | None = None,
    min_pairs: int = MIN_PAIRS,
    name: str = "landmarks",
) -> Landmarks:
    """Refuse pairs that cannot define an alignment; returns ``lm`` unchanged when they can.

    Raises :class:`GalaInputError` (the message says what to fix) for fewer than ``min_pairs`` pairs,
    NaN / infinite coordinates, points that (nearly) lie on one line on either side, and, with
    ``image_shape = (rows, cols)`` of the full-resolution image, image points outside the image.
    """
    n = len(lm)
    if n < min_pairs:
        raise GalaInputError(
            f"{name}: {n} pair(s); at least {min_pairs} pairs (image point + matching cell point) are "
            "needed, spread over the tissue."
        )
    bad = ~(np.isfinite(lm.image_xy).all(axis=1) & np.isfinite(lm.cells_xy).all(axis=1))
    if bad.any():
        rows = ", ".join(lm.names[i] for i in np.flatnonzero(bad)[:5])
        raise GalaInputError(f"{name}: pair(s) {rows} have empty, NaN or infinite coordinates; fix or delete them.")
    for side, xy, unit in (("image", lm.image_xy, "px"), ("cell", lm.cells_xy, "µm")):
        big, small = _spread(xy)
        if big <= 0 or small <= 1e-3 * big:
            raise GalaInputError(
                f"{name}: the {side} points lie on one line (or on one spot: spread {big:.3g} {unit}); "
                "an affine needs points around the tissue, not along a line: move or add a pair off that line."
            )
    if image_shape is not None:
        h, w = float(image_shape[0]), float(image_shape[1])
        x, y = lm.image_xy[:, 0], lm.image_xy[:, 1]
        out = (x < -0.5) | (y < -0.5) | (x > w - 0.5) | (y > h - 0.5)
        if out.any():
            i = int(np.flatnonzero(out)[0])
            raise GalaInputError(
                f"{name}: image point of pair {lm.names[i]} ({x[i]:.1f}, {y[i]:.1f}) is outside the "
                f"{int(w)}×{int(h)} px image; landmark image coordinates are full-resolution pixels "
                "(x = column, y = row). Was the file made for a different (e.g. down-scaled) image?"
            )
    return lm


# ------------------------------------------------------------------------------------- fitting


@dataclass
class LandmarkFit:
    """The affine fitted to landmark pairs.

    ``A``: 3×3, image pixels (row, col) → µm (row, col) (as ``result['A']``). ``residuals_px``: per pair,
    the distance (image pixels) from each image point to its cell point mapped by ``A⁻¹``.
    ``mirrored``: the fit includes a reflection (the image is flipped relative to the cells).
    """

    A: np.ndarray
    kind: str
    mirrored: bool
    residuals_px: np.ndarray

    @property
    def median_px(self) -> float:
        return float(np.median(self.residuals_px)) if self.residuals_px.size else math.nan

    @property
    def sigma_px(self) -> float:
        """The clicks' scatter estimated from the residuals: per-coordinate standard deviation (image px),
        ``√(Σ r² / (2N − p))`` with p = 4 (similarity) or 6 (affine) parameters; 0 without spare pairs."""
        dof = 2 * self.residuals_px.size - (6 if self.kind == "affine" else 4)
        return float(np.sqrt(np.sum(self.residuals_px**2) / dof)) if dof > 0 else 0.0

    @property
    def scale_um_per_px(self) -> float:
        """√|det| of the linear part: µm per image pixel."""
        return float(np.sqrt(abs(np.linalg.det(self.A[:2, :2]))))

    @property
    def angle_deg(self) -> float:
        """Rotation of the fit (degrees, in (−180, 180]), after removing any reflection."""
        L = self.A[:2, :2] @ (np.diag([1.0, -1.0]) if self.mirrored else np.eye(2))
        return float(np.rad2deg(np.arctan2(L[1, 0] - L[0, 1], L[0, 0] + L[1, 1])))


def _design_similarity(src: np.ndarray, mirrored: bool) -> np.ndarray:
    """Rows of the linear system for ``dst = [[a, -b], [b, a]]·src + t`` (or ``[[a, b], [b, -a]]``
    mirrored), unknowns ``(a, b, tx, ty)``; rows interleaved x, y."""
    n = len(src)
    M = np.zeros((2 * n, 4))
    x, y = src[:, 0], src[:, 1]
    if not mirrored:
        M[0::2] = np.c_[x, -y, np.ones(n), np.zeros(n)]
        M[1::2] = np.c_[y, x, np.zeros(n), np.ones(n)]
    else:
        M[0::2] = np.c_[x, y, np.ones(n), np.zeros(n)]
        M[1::2] = np.c_[-y, x, np.zeros(n), np.ones(n)]
    return M


def _similarity_xy(src: np.ndarray, dst: np.ndarray, mirrored: bool) -> np.ndarray:
    """Least-squares similarity (x, y) → (x, y) as a 3×3, proper or with a reflection."""
    M = _design_similarity(src, mirrored)
    a, b, tx, ty = np.linalg.lstsq(M, dst.reshape(-1), rcond=None)[0]
    L = np.array([[a, -b], [b, a]]) if not mirrored else np.array([[a, b], [b, -a]])
    out = np.eye(3)
    out[:2, :2], out[:2, 2] = L, (tx, ty)
    return out


def _affine_xy(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares general affine (x, y) → (x, y) as a 3×3."""
    X = np.c_[src, np.ones(len(src))]
    sol = np.linalg.lstsq(X, dst, rcond=None)[0]  # (3, 2)
    out = np.eye(3)
    out[:2, :] = sol.T
    return out


def apply_matrix(M: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply a 3×3 affine to (N, 2) points (in whatever order the matrix was built for)."""
    pts = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
    return pts @ np.asarray(M)[:2, :2].T + np.asarray(M)[:2, 2]


def fit_landmarks(lm: Landmarks, *, kind: Kind = "similarity", allow_flip: bool = True,
                  image_shape: tuple[int, int] | None = None) -> LandmarkFit:
    """Fit the affine image pixels → µm that best maps the pairs' cell points onto their image points.

    The fit minimises the squared distances **in image pixels** (the cells' µm mapped into the image),
    so the residuals are what the user sees on the image. ``kind="similarity"``: rotation + one scale
    + shift (4 parameters; with ``allow_flip`` the reflected version is also fitted and the better one
    kept, so a flipped section is detected); ``kind="affine"``: 6 parameters (shear and anisotropic
    scale; a reflection shows as a negative determinant). Needs ≥ 3 pairs not on one line
    (:func:`check_landmarks`; with ``image_shape`` the image points must lie inside the image).

    Returns
    -------
    LandmarkFit
        ``A`` (3×3, image (row, col) → µm (row, col)), per-pair residuals in image pixels, ``mirrored``.
    """
    check_landmarks(lm, image_shape=image_shape)
    if kind not in ("similarity", "affine"):
        raise GalaInputError(f"kind must be 'similarity' or 'affine', got {kind!r}.")
    src, dst = lm.cells_xy, lm.image_xy  # fit µm → px, so the least squares are in image pixels
    if kind == "affine":
        B = _affine_xy(src, dst)
    else:
        options = [_similarity_xy(src, dst, False)] + ([_similarity_xy(src, dst, True)] if allow_flip else [])
        B = min(options, key=lambda M: float(np.sum((apply_matrix(M, src) - dst) ** 2)))
    if abs(np.linalg.det(B[:2, :2])) < 1e-300:
        raise GalaInputError("the landmarks give a degenerate (zero-area) map; check that the pairs are matched.")
    residuals = np.linalg.norm(apply_matrix(B, src) - dst, axis=1)
    A = swap_xy(np.linalg.inv(B))  # px (x, y) → µm (x, y), then in (row, col) order
    return LandmarkFit(A=A, kind=kind, mirrored=bool(np.linalg.det(B[:2, :2]) < 0), residuals_px=residuals)


# ------------------------------------------------------------------------------------- errors of results


def _cells_to_image(result: Any, cells_xy: np.ndarray) -> np.ndarray:
    """(x, y) µm → (x, y) image pixels through ``result``: an object with ``cells_to_image`` (an
    ``AlignmentResult``, LDDMM included) or a 3×3 matrix image (row, col) → µm (row, col)."""
    if hasattr(result, "cells_to_image"):
        return np.asarray(result.cells_to_image(cells_xy), dtype=np.float64)
    A = np.asarray(result, dtype=np.float64)
    if A.shape != (3, 3):
        raise GalaInputError(f"expected an alignment result or a 3×3 matrix, got shape {A.shape}.")
    rc = apply_matrix(np.linalg.inv(A), np.asarray(cells_xy, np.float64)[:, ::-1])
    return rc[:, ::-1]


def landmark_errors(result: Any, lm: Landmarks) -> np.ndarray:
    """Landmark error (target registration error) of each pair, in full-resolution image pixels: the
    distance between the pair's image point and where ``result`` puts its cell point. ``result`` is an
    ``AlignmentResult`` (mapped with ``cells_to_image``, the LDDMM warp included) or a 3×3 matrix."""
    if len(lm) == 0:
        return np.zeros(0)
    return np.linalg.norm(_cells_to_image(result, lm.cells_xy) - lm.image_xy, axis=1)


def landmark_summary(result: Any, lm: Landmarks) -> dict[str, Any]:
    """JSON-friendly landmark errors of ``result``: ``median_px``, ``mean_px``, ``max_px``, ``n`` and
    ``pairs`` (one dict per pair: name, image_x, image_y, cells_x, cells_y, mapped_x, mapped_y, error_px)."""
    mapped = _cells_to_image(result, lm.cells_xy) if len(lm) else np.zeros((0, 2))
    err = np.linalg.norm(mapped - lm.image_xy, axis=1) if len(lm) else np.zeros(0)
    pairs = [
        {"name": lm.names[i], "image_x": float(lm.image_xy[i, 0]), "image_y": float(lm.image_xy[i, 1]),
         "cells_x": float(lm.cells_xy[i, 0]), "cells_y": float(lm.cells_xy[i, 1]),
         "mapped_x": float(mapped[i, 0]), "mapped_y": float(mapped[i, 1]), "error_px": float(err[i])}
        for i in range(len(lm))
    ]
    stat = (lambda f: float(f(err))) if err.size else (lambda f: math.nan)
    return {"n": len(lm), "median_px": stat(np.median), "mean_px": stat(np.mean), "max_px": stat(np.max),
            "pairs": pairs}


def landmarks_uns(result: Any, lm: Landmarks, *, mode: str = "") -> dict[str, Any]:
    """The pairs and their errors under ``result`` as arrays for ``uns['gala']['landmarks']`` (h5ad-safe):
    ``names``, ``image_xy`` (N, 2) px, ``cells_xy`` (N, 2) µm, ``error_px`` (N,), ``median_px`` and, if
    given, ``mode`` ("init": the alignment started from the landmarks; "check": only measured)."""
    err = landmark_errors(result, lm)
    out: dict[str, Any] = {"names": np.asarray(lm.names, dtype=str), "image_xy": lm.image_xy.copy(),
                           "cells_xy": lm.cells_xy.copy(), "error_px": err,
                           "median_px": float(np.median(err)) if err.size else math.nan}
    if mode:
        out["mode"] = mode
    return out


# ------------------------------------------------------------------------------------- CSV files


def _read_text(source: str | os.PathLike[str] | bytes, what: str) -> tuple[str, str]:
    if isinstance(source, bytes | bytearray):
        data, label = bytes(source), what
    else:
        path = Path(source)
        if not path.is_file():
            raise GalaInputError(f"{what} file not found: {path}; check the path.")
        data, label = path.read_bytes(), str(path)
    try:
        return data.decode("utf-8-sig"), label
    except UnicodeDecodeError:
        raise GalaInputError(f"{label} is not a text (UTF-8) CSV file.") from None


def _number(value: str, label: str, row: int, col: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise GalaInputError(f"{label}: row {row}, column {col}: {value!r} is not a number.") from None


def read_landmarks(
    source: str | os.PathLike[str] | bytes,
    *,
    pixel_size: float = XENIUM_PIXEL_SIZE,
    fixed_unit: Literal["um", "px"] = "um",
    image_shape: tuple[int, int] | None = None,
) -> Landmarks:
    """Read landmark pairs from GALA's CSV or Xenium Explorer's keypoints CSV (told apart by the header).

    ``source`` is a path or the file's bytes (an upload). For a keypoints file, ``fixedX/fixedY`` are
    the cells' side in µm (``fixed_unit="px"``: Xenium pixels, multiplied by ``pixel_size``) and
    ``alignmentX/alignmentY`` the image's pixels. The pairs are checked (:func:`check_landmarks`).

    Raises
    ------
    GalaInputError
        Missing file, wrong columns, non-numeric values, NaN, fewer than 3 pairs, collinear points,
        image points outside ``image_shape``.
    """
    text, label = _read_text(source, "landmarks")
    reader = csv.reader(io.StringIO(text))
    rows = [r for r in reader if any(c.strip() for c in r)]
    if not rows:
        raise GalaInputError(f"{label} is empty; it needs a header {','.join(GALA_COLUMNS)} and one pair a row.")
    header = [c.strip() for c in rows[0]]
    low = [c.lower() for c in header]
    if all(c in low for c in GALA_COLUMNS):
        cols, xenium = GALA_COLUMNS, False
    elif all(c.lower() in low for c in XENIUM_COLUMNS):
        cols, xenium = XENIUM_COLUMNS, True
    else:
        raise GalaInputError(
            f"{label} has columns {header}; a landmark file needs the header "
            f"{','.join(GALA_COLUMNS)} (image pixels, cell µm) or Xenium Explorer's keypoints header "
            f"{','.join(XENIUM_COLUMNS)}."
        )
    idx = [low.index(c.lower()) for c in cols]
    name_idx = low.index("name") if "name" in low else None
    values, names = [], []
    for i, r in enumerate(rows[1:], start=2):
        if len(r) < len(header):
            r = r + [""] * (len(header) - len(r))
        vals = []
        for j, c in zip(idx, cols):
            cell = r[j].strip()
            vals.append(math.nan if cell.lower() in ("", "nan") else _number(cell, label, i, c))
        values.append(vals)
        names.append(r[name_idx].strip() if name_idx is not None and r[name_idx].strip() else str(i - 1))
    arr = np.asarray(values, dtype=np.float64).reshape(-1, 4)
    if xenium:
        fixed = arr[:, :2] * (pixel_size if fixed_unit == "px" else 1.0)
        lm = Landmarks(arr[:, 2:], fixed, names)
    else:
        lm = Landmarks(arr[:, :2], arr[:, 2:], names)
    return check_landmarks(lm, image_shape=image_shape, name=label)


def landmarks_csv(lm: Landmarks, *, fmt: Literal["gala", "xenium"] = "gala", pixel_size: float = XENIUM_PIXEL_SIZE,
                  fixed_unit: Literal["um", "px"] = "um") -> str:
    """The CSV text of :func:`write_landmarks`."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if fmt == "xenium":
        w.writerow(XENIUM_COLUMNS)
        fixed = lm.cells_xy / (pixel_size if fixed_unit == "px" else 1.0)
        for f, a in zip(fixed, lm.image_xy):
            w.writerow([repr(float(f[0])), repr(float(f[1])), repr(float(a[0])), repr(float(a[1]))])
    elif fmt == "gala":
        w.writerow([*GALA_COLUMNS, "name"])
        for row, name in zip(lm.as_rows(), lm.names):
            w.writerow([*(repr(float(v)) for v in row), name])
    else:
        raise GalaInputError(f"fmt must be 'gala' or 'xenium', got {fmt!r}.")
    return buf.getvalue()


def write_landmarks(path: str | os.PathLike[str], lm: Landmarks, *, fmt: Literal["gala", "xenium"] = "gala",
                    pixel_size: float = XENIUM_PIXEL_SIZE, fixed_unit: Literal["um", "px"] = "um") -> Path:
    """Write pairs as GALA's CSV (``fmt="gala"``: image_x,image_y,cells_x,cells_y,name) or Xenium
    Explorer's keypoints CSV (``fmt="xenium"``: fixedX,fixedY = cells µm, alignmentX,alignmentY = image px)."""
    path = Path(path)
    path.write_text(landmarks_csv(lm, fmt=fmt, pixel_size=pixel_size, fixed_unit=fixed_unit), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------- Xenium matrix


def _check_pixel_size(pixel_size: float) -> float:
    if not (isinstance(pixel_size, int | float) and math.isfinite(pixel_size) and pixel_size > 0):
        raise GalaInputError(f"pixel_size must be a positive number of µm per Xenium pixel, got {pixel_size!r}.")
    return float(pixel_size)


def matrix_to_xenium(A: np.ndarray, *, pixel_size: float = XENIUM_PIXEL_SIZE) -> np.ndarray:
    """GALA's 3×3 (image (row, col) → µm (row, col)) as Xenium Explorer's matrix (image (x, y) →
    Xenium pixels (x, y) of ``pixel_size`` µm)."""
    s = _check_pixel_size(pixel_size)
    M = np.diag([1.0 / s, 1.0 / s, 1.0]) @ swap_xy(A)
    M[2] = (0.0, 0.0, 1.0)
    return M


def matrix_from_xenium(M: np.ndarray, *, pixel_size: float = XENIUM_PIXEL_SIZE) -> np.ndarray:
    """Xenium Explorer's matrix (image (x, y) → Xenium pixels) as GALA's 3×3 (image (row, col) → µm)."""
    s = _check_pixel_size(pixel_size)
    A = swap_xy(np.diag([s, s, 1.0]) @ np.asarray(M, np.float64))
    A[2] = (0.0, 0.0, 1.0)
    return A


def xenium_matrix_text(A: np.ndarray, *, pixel_size: float = XENIUM_PIXEL_SIZE) -> str:
    """The CSV text of :func:`write_xenium_matrix` (three rows of three numbers, no header)."""
    M = matrix_to_xenium(A, pixel_size=pixel_size)
    return "".join(",".join(repr(float(v)) if i < 2 else f"{v:g}" for v in row) + "\n" for i, row in enumerate(M))


def write_xenium_matrix(path: str | os.PathLike[str], A: np.ndarray, *, pixel_size: float = XENIUM_PIXEL_SIZE) -> Path:
    """Write ``A`` (image (row, col) → µm (row, col)) as Xenium Explorer's transformation-matrix CSV."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(xenium_matrix_text(A, pixel_size=pixel_size), encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_xenium_matrix(source: str | os.PathLike[str] | bytes, *, pixel_size: float = XENIUM_PIXEL_SIZE) -> np.ndarray:
    """Read Xenium Explorer's transformation-matrix CSV (3×3, or its top 2×3 rows) as GALA's 3×3
    (image (row, col) → µm (row, col)).

    Raises
    ------
    GalaInputError
        Not 2×3 / 3×3 numbers, a bottom row other than 0,0,1, NaN, or a singular matrix.
    """
    text, label = _read_text(source, "transformation matrix")
    rows = [r for r in csv.reader(io.StringIO(text)) if any(c.strip() for c in r)]
    try:
        M = np.array([[float(c) for c in r if c.strip()] for r in rows], dtype=np.float64)
    except ValueError:
        raise GalaInputError(
            f"{label} is not a transformation matrix: it should hold three rows of three comma-separated "
            "numbers (Xenium Explorer's 'transformation matrix' CSV, no header). A keypoints file goes to "
            "--landmarks instead."
        ) from None
    if M.shape == (2, 3):
        M = np.vstack([M, [0.0, 0.0, 1.0]])
    if M.shape != (3, 3):
        raise GalaInputError(f"{label}: expected a 3×3 matrix (three rows of three numbers), got shape {M.shape}.")
    if not np.isfinite(M).all():
        raise GalaInputError(f"{label}: the matrix contains NaN or infinite values.")
    if not np.allclose(M[2], (0.0, 0.0, 1.0), atol=1e-9):
        raise GalaInputError(f"{label}: the last row must be 0,0,1 (an affine matrix), got {M[2].tolist()}.")
    if abs(np.linalg.det(M[:2, :2])) < 1e-12:
        raise GalaInputError(f"{label}: the matrix is singular (it maps the image onto a line or a point).")
    return matrix_from_xenium(M, pixel_size=pixel_size)


def result_affine(result: Any, cells_xy: np.ndarray | None = None) -> np.ndarray:
    """The 3×3 affine (image (row, col) → µm (row, col)) that best stands for ``result``.

    Without a deformation (``v`` all zero) that is ``result.A``; with an LDDMM warp, the least-squares
    affine through the cells' aligned positions (``cells_xy`` µm mapped by ``cells_to_image``), so an
    exported matrix places the cells where the warped alignment does, up to the warp's non-affine part.
    """
    v = getattr(result, "v", None)
    if v is None or not np.any(np.asarray(v)) or cells_xy is None or len(cells_xy) < 3:
        return np.asarray(result.A, dtype=np.float64)
    cells_xy = np.asarray(cells_xy, np.float64)
    px = np.asarray(result.cells_to_image(cells_xy), np.float64)
    B = _affine_xy(cells_xy, px)  # µm (x, y) → px (x, y)
    return swap_xy(np.linalg.inv(B))


# ------------------------------------------------------------------------------------- one run's files


def xenium_matrix_path(out: str | os.PathLike[str]) -> Path:
    """Where a run written to ``out`` (an ``.h5ad``) puts its Xenium Explorer matrix: ``<stem>_xenium_matrix.csv``."""
    out = Path(out)
    return out.with_name(f"{out.stem}_xenium_matrix.csv")


@dataclass
class RunLandmarks:
    """The landmark / transform inputs of one file-based run (:func:`prepare_inputs`) and what they produce."""

    pairs: Landmarks | None = None
    mode: str = ""
    fit: str = "similarity"
    init_A: np.ndarray | None = None
    refine_from: Landmarks | None = None
    inputs: list[Path] = field(default_factory=list)
    matrix_path: Path | None = None
    pixel_size: float = XENIUM_PIXEL_SIZE
    message: str = ""

    def outputs(self, result: Any, adata: Any) -> dict[str, Any]:
        """Write the Xenium matrix (if asked) and return the run summary's ``landmarks`` / ``xenium_matrix``."""
        out: dict[str, Any] = {}
        if self.matrix_path is not None:
            xy = np.asarray(adata.obsm["spatial"], np.float64)[:, :2]
            write_xenium_matrix(self.matrix_path, result_affine(result, xy), pixel_size=self.pixel_size)
            out["xenium_matrix"] = str(self.matrix_path)
        if self.pairs is not None:
            out["landmarks"] = {"mode": self.mode, **landmark_summary(result, self.pairs)}
            if self.message:
                out["landmarks"]["message"] = self.message
        return out


def prepare_inputs(
    image_shape: tuple[int, int],
    *,
    landmarks: str | os.PathLike[str] | None = None,
    mode: str = "init",
    fit: str = "similarity",
    init_transform: str | os.PathLike[str] | None = None,
    pixel_size: float | None = None,
    out: str | os.PathLike[str] | None = None,
    protect: list | tuple = (),
    write_matrix: bool = True,
) -> RunLandmarks:
    """Read and check a run's landmark file and starting transform before any work (CLI / batch).

    ``landmarks`` (pairs CSV) with ``mode`` "init" (start from their ``fit`` affine) or "check" (only
    report their error); ``init_transform``: a Xenium Explorer matrix CSV (``pixel_size`` µm per Xenium
    pixel). Giving both with mode "init" is refused (two starting points). With ``out`` and
    ``write_matrix`` the result's matrix goes to :func:`xenium_matrix_path` (never over an input).
    """
    if mode not in ("init", "check"):
        raise GalaInputError(f"--landmarks-mode must be 'init' or 'check', got {mode!r}.")
    if fit not in ("similarity", "affine"):
        raise GalaInputError(f"the landmark fit must be 'similarity' or 'affine', got {fit!r}.")
    ps = _check_pixel_size(XENIUM_PIXEL_SIZE if pixel_size is None else pixel_size)
    run = RunLandmarks(mode=mode if landmarks is not None else "", fit=fit, pixel_size=ps)
    if landmarks is not None:
        run.pairs = read_landmarks(landmarks, pixel_size=ps, image_shape=image_shape)
        run.inputs.append(Path(landmarks))
        if mode == "init":
            if init_transform is not None:
                raise GalaInputError(
                    "--init-transform and --landmarks (mode init) both give a starting pose; keep one, or use "
                    "--landmarks-mode check to measure the landmarks' error of a run started from the matrix."
                )
            run.refine_from = run.pairs
    if init_transform is not None:
        run.init_A = read_xenium_matrix(init_transform, pixel_size=ps)
        run.inputs.append(Path(init_transform))
    if out is not None and write_matrix:
        run.matrix_path = xenium_matrix_path(out)
        for p in [*protect, *run.inputs]:
            if Path(p).resolve() == run.matrix_path.resolve():
                raise GalaInputError(
                    f"the run's Xenium matrix would be written to {run.matrix_path}, which is an input; "
                    "rename that input or choose another --out."
                )
    return run
