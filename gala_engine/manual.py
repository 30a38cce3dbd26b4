"""Hand-made alignments: a result from an affine (landmarks, a Xenium Explorer matrix) and manual nudges
(rotate, flip, shift, scale) of an existing result. Always a new :class:`AlignmentResult`; the input
result is never changed.

Matrices are 3×3, image pixels (row, col) → µm (row, col), as ``AlignmentResult.A``. Nudges are given
in the image's own terms (x = column, y = row, pixels; angles clockwise on screen, as the image is drawn
with row 0 at the top) and move where the cells land on the image.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .errors import GalaInputError
from .landmarks import result_affine
from .section import AlignmentResult

__all__ = ["affine_result", "nudge", "nudge_matrix"]

_SWAP = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


def affine_result(A: np.ndarray, *, image_shape: tuple[int, int] | None = None, source: str = "landmarks",
                  params: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> AlignmentResult:
    """An :class:`AlignmentResult` that is the affine ``A`` alone (no warp: ``v`` = 0).

    ``source`` says where it came from ("landmarks", "manual", "xenium matrix"); it is kept in
    ``params['source']`` with anything in ``extra``. ``image_shape`` (rows, cols, full resolution) sizes
    the (zero) velocity grid; without it a unit grid is used (cells_to_image does not depend on it).
    """
    from . import __version__

    A = np.asarray(A, dtype=np.float64)
    if A.shape != (3, 3) or not np.isfinite(A).all() or abs(np.linalg.det(A[:2, :2])) < 1e-300:
        raise GalaInputError("the affine must be a finite, invertible 3×3 matrix (image px → µm).")
    h, w = image_shape if image_shape is not None else (1, 1)
    xv = [np.linspace(0.0, float(max(h - 1, 1)), 4), np.linspace(0.0, float(max(w - 1, 1)), 4)]
    p = dict(params or {})
    p["source"] = source
    p.update(extra or {})
    return AlignmentResult(A=A.copy(), A_affine=A.copy(), v=np.zeros((1, 4, 4, 2)), xv=xv, genes=np.zeros(5),
                           fitness=math.nan, score=math.nan, params=p, device="none", runtime_s=0.0,
                           version=__version__)


def nudge_matrix(*, rotate_deg: float = 0.0, flip_x: bool = False, flip_y: bool = False, scale: float = 1.0,
                 shift_xy: tuple[float, float] = (0.0, 0.0), centre_xy: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """The correction in image pixels (x, y) → (x, y) as a 3×3: about ``centre_xy``, flip (x: mirror left-right,
    y: mirror top-bottom), scale, rotate by ``rotate_deg`` (clockwise on screen, y pointing down), then shift."""
    if not (math.isfinite(scale) and scale > 0):
        raise GalaInputError(f"scale must be a positive number, got {scale}.")
    t = math.radians(rotate_deg)
    R = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])  # y down: positive = clockwise
    F = np.diag([-1.0 if flip_x else 1.0, -1.0 if flip_y else 1.0])
    L = scale * R @ F
    c = np.asarray(centre_xy, dtype=np.float64)
    C = np.eye(3)
    C[:2, :2] = L
    C[:2, 2] = c - L @ c + np.asarray(shift_xy, dtype=np.float64)
    return C


def nudge(result: Any, *, cells_xy: np.ndarray | None = None, rotate_deg: float = 0.0, flip_x: bool = False,
          flip_y: bool = False, scale: float = 1.0, shift_xy: tuple[float, float] = (0.0, 0.0),
          centre_xy: tuple[float, float] | None = None,
          image_shape: tuple[int, int] | None = None) -> AlignmentResult:
    """A new affine result: ``result``'s cells moved on the image by a rotation / flip / scale about their
    centre (``centre_xy``, default the centre of the cells as ``result`` places them) and a shift (pixels).

    ``result`` is an :class:`AlignmentResult` or a 3×3 matrix. An LDDMM warp is not carried over: the
    nudge starts from the affine that best stands for the warped result over ``cells_xy``
    (:func:`gala_engine.landmarks.result_affine`); refine again afterwards if needed.
    """
    A = np.asarray(result_affine(result, cells_xy) if hasattr(result, "A") else result, dtype=np.float64)
    if centre_xy is None:
        if cells_xy is not None and len(cells_xy):
            um = np.asarray(cells_xy, np.float64)
            lo, hi = um.min(axis=0), um.max(axis=0)
            centre_um_rc = ((lo + hi) / 2.0)[::-1]
            centre_xy = tuple((np.linalg.inv(A) @ np.r_[centre_um_rc, 1.0])[:2][::-1])
        else:
            centre_xy = (0.0, 0.0)
    C_xy = nudge_matrix(rotate_deg=rotate_deg, flip_x=flip_x, flip_y=flip_y, scale=scale, shift_xy=shift_xy,
                        centre_xy=centre_xy)
    C_rc = _SWAP @ C_xy @ _SWAP
    A_new = A @ np.linalg.inv(C_rc)  # new cells_to_image = C · old
    base = dict(getattr(result, "params", {}) or {})
    base.pop("source", None)
    step = {"rotate_deg": float(rotate_deg), "flip_x": bool(flip_x), "flip_y": bool(flip_y), "scale": float(scale),
            "shift_x": float(shift_xy[0]), "shift_y": float(shift_xy[1])}
    return affine_result(A_new, image_shape=image_shape, source="manual", params=base,
                         extra={"nudge": ", ".join(f"{k}={v}" for k, v in step.items())})
