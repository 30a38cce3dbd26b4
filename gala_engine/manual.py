"""Hand-made alignments: a result from an affine (landmarks, a Xenium Explorer matrix) and manual nudges
(rotate, flip, shift, scale) of an existing result. Always a new :class:`AlignmentResult`; the input
result is never changed.

Matrices are 3×3, image pixels (row, col) → µm (row, col), as ``AlignmentResult.A``. Nudges are given
in the image's own terms (x = column, y = row, pixels; angles clockwise on screen, as the image is drawn
with row 0 at the top) and move where the cells land on the image.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .affine import swap_xy
from .errors import GalaInputError
from .events import ProgressCallback, StopPredicate
from .landmarks import Kind, LandmarkFit, Landmarks, fit_landmarks, landmark_errors, result_affine
from .params import AlignParams
from .section import AlignmentResult, SectionRasters, align_section

__all__ = ["LandmarkRefinement", "affine_result", "landmark_tolerance", "nudge", "nudge_matrix",
           "refine_from_landmarks"]


def affine_result(A: np.ndarray, *, image_shape: tuple[int, int] | None = None, source: str = "landmarks",
                  note: str = "", params: dict[str, Any] | None = None) -> AlignmentResult:
    """An :class:`AlignmentResult` that is the affine ``A`` alone (no warp: ``v`` = 0).

    ``origin = {"source": source, "note": note}`` says where it came from ("landmarks", "manual",
    "xenium matrix") and how; ``params`` (AlignParams names, default none) are kept as given.
    ``image_shape`` (rows, cols, full resolution) sizes the (zero) velocity grid; without it a unit grid is
    used (cells_to_image does not depend on it). ``fitness`` is NaN (no search ran), ``score`` 0.
    """
    from . import __version__

    A = np.asarray(A, dtype=np.float64)
    if A.shape != (3, 3) or not np.isfinite(A).all() or abs(np.linalg.det(A[:2, :2])) < 1e-300:
        raise GalaInputError("the affine must be a finite, invertible 3×3 matrix (image px → µm).")
    h, w = image_shape if image_shape is not None else (1, 1)
    xv = [np.linspace(0.0, float(max(h - 1, 1)), 4), np.linspace(0.0, float(max(w - 1, 1)), 4)]
    return AlignmentResult(A=A.copy(), A_affine=A.copy(), v=np.zeros((1, 4, 4, 2)), xv=xv, genes=np.zeros(5),
                           fitness=math.nan, score=0.0, params=dict(params or {}), device="–", runtime_s=0.0,
                           version=__version__, origin={"source": source, "note": note})


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
    centre (``centre_xy``, default the centre of the box around the cells as ``result`` places them) and a shift (pixels).

    ``result`` is an :class:`AlignmentResult` or a 3×3 matrix. An LDDMM warp is not carried over: the
    nudge starts from the affine that best stands for the warped result over ``cells_xy``
    (:func:`gala_engine.landmarks.result_affine`); refine again afterwards if needed.
    """
    A = np.asarray(result_affine(result, cells_xy) if hasattr(result, "A") else result, dtype=np.float64)
    if centre_xy is None:
        if cells_xy is not None and len(cells_xy):
            rc = np.asarray(cells_xy, np.float64)[:, ::-1] @ np.linalg.inv(A)[:2, :2].T + np.linalg.inv(A)[:2, 2]
            centre_xy = tuple(((rc.min(axis=0) + rc.max(axis=0)) / 2.0)[::-1])  # the cells' box on the image
        else:
            centre_xy = (0.0, 0.0)
    C_xy = nudge_matrix(rotate_deg=rotate_deg, flip_x=flip_x, flip_y=flip_y, scale=scale, shift_xy=shift_xy,
                        centre_xy=centre_xy)
    C_rc = swap_xy(C_xy)
    A_new = A @ np.linalg.inv(C_rc)  # new cells_to_image = C · old
    words = [f"rotate {rotate_deg:g}°" if rotate_deg else "", "flip ↔" if flip_x else "", "flip ↕" if flip_y else "",
             f"scale ×{scale:g}" if scale != 1.0 else "",
             f"shift ({shift_xy[0]:g}, {shift_xy[1]:g}) px" if any(shift_xy) else ""]
    return affine_result(A_new, image_shape=image_shape, source="manual", params=getattr(result, "params", None),
                         note=", ".join(w for w in words if w) or "no change")


@dataclass
class LandmarkRefinement:
    """What :func:`refine_from_landmarks` kept, and why.

    ``result``: the kept alignment (a new result). ``kept``: "refined" (search + LDDMM from the landmark
    affine), "refined affine" (its affine part, the warp dropped) or "landmarks" (the landmark affine alone).
    ``errors``: median landmark error (image px) of each candidate; ``tolerance_px``: the most a kept
    refinement may show; ``message``: one line for the user.
    """

    result: AlignmentResult
    kept: str
    fit: LandmarkFit
    tolerance_px: float
    errors: dict[str, float]
    message: str


def landmark_tolerance(fit: LandmarkFit, *, slack_px: float = 0.5) -> float:
    """The median landmark error a refinement may show and still be kept: what the landmark affine itself
    shows (its median residual) plus ``slack_px``. Conservative on purpose: with a handful of pairs the
    clicks' scatter cannot be told from the refinement's own error, so a refinement is kept only when it
    fits the pairs about as well as their own affine (e.g. an LDDMM warp following a deformed tissue that
    no affine fits)."""
    return fit.median_px + float(slack_px)


def refine_from_landmarks(
    rasters: SectionRasters,
    lm: Landmarks,
    params: AlignParams | None = None,
    *,
    kind: Kind = "similarity",
    guard: bool = True,
    slack_px: float = 0.5,
    progress: ProgressCallback | None = None,
    should_stop: StopPredicate | None = None,
) -> LandmarkRefinement:
    """"Landmarks then refine": fit the landmark affine, run the search + LDDMM from it (``init_A``), and keep
    the refinement only where it still agrees with the landmarks.

    The image evidence can pull a section away from where the user's landmarks put it (a near-symmetric
    tissue, sparse spots, an over-eager warp). With ``guard`` the candidates are tried in order — refined
    (with the warp), refined affine (warp dropped), landmark affine — and the first whose median landmark
    error is within :func:`landmark_tolerance` (the landmark affine's own error + ``slack_px``) is kept (the landmark affine
    always qualifies). ``guard=False`` keeps the refinement whatever it does.

    The image evidence is thus used where it agrees with the pairs; to use it against the pairs, align
    without landmarks (or with ``--landmarks-mode check``) and compare the landmark errors.
    """
    fit = fit_landmarks(lm, kind=kind, image_shape=rasters.image_full_shape)
    refined = align_section(rasters, params, init_A=fit.A, progress=progress, should_stop=should_stop)
    affine_part = dataclasses.replace(refined, A=refined.A_affine.copy(), v=np.zeros_like(refined.v))
    from_landmarks = affine_result(fit.A, image_shape=rasters.image_full_shape, source="landmarks",
                                   params=refined.params)
    candidates = {"refined": refined, "refined affine": affine_part, "landmarks": from_landmarks}
    errors = {k: float(np.median(landmark_errors(r, lm))) for k, r in candidates.items()}
    tol = landmark_tolerance(fit, slack_px=slack_px)
    if not guard:
        kept = "refined"
    else:
        kept = next(k for k in candidates if k == "landmarks" or errors[k] <= tol)
    if kept == "refined":
        msg = f"Kept the refinement: landmark error {errors['refined']:.1f} px (median)."
    elif kept == "refined affine":
        msg = (f"Kept the refined affine without its warp: the warp moved the landmarks to {errors['refined']:.1f} px "
               f"(more than the {tol:.1f} px allowed); affine part {errors['refined affine']:.1f} px.")
    else:
        msg = (f"Kept the landmark affine ({errors['landmarks']:.1f} px): the image-based refinement moved the "
               f"landmarks to {errors['refined']:.1f} px, more than the {tol:.1f} px allowed (the landmark affine's "
               "own error + 0.5 px).")
    result = candidates[kept]
    result.origin = {"source": {"refined": "landmarks + refine", "refined affine": "landmarks + refine (affine)",
                                "landmarks": "landmarks"}[kept], "note": msg}
    return LandmarkRefinement(result, kept, fit, tol, errors, msg)
