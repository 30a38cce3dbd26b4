"""Apply an alignment (A, v, xv) to points and images, in both directions.

The model maps source (image pixels) to target (µm) as ``x ↦ A · φ(x)``, φ the flow of ``v``.
Points are (N, 2) in (row, col). numpy in → numpy out; torch in → torch out.
"""

from __future__ import annotations

import numpy as np
import torch

from .affine import grid_points, sample
from .lddmm import backward_shift


def _as_tensors(xv, v, A, points):
    is_numpy = not isinstance(points, torch.Tensor)
    ref = v if isinstance(v, torch.Tensor) else (A if isinstance(A, torch.Tensor) else None)
    dtype = ref.dtype if ref is not None else torch.float64
    device = ref.device if ref is not None else torch.device("cpu")
    v_t = torch.as_tensor(np.asarray(v) if not isinstance(v, torch.Tensor) else v, dtype=dtype, device=device)
    A_t = torch.as_tensor(np.asarray(A) if not isinstance(A, torch.Tensor) else A, dtype=dtype, device=device)
    P = torch.as_tensor(np.ascontiguousarray(points) if is_numpy else points, dtype=dtype, device=device)
    xv = [np.asarray(axis.cpu() if isinstance(axis, torch.Tensor) else axis, dtype=np.float64) for axis in xv]
    return xv, v_t, A_t, P, is_numpy


def _shift_at(shift: torch.Tensor, xv: list, P: torch.Tensor) -> torch.Tensor:
    """The backward displacement (2, n_r, n_c) on the velocity grid, interpolated at (…, 2) points → (…, 2)."""
    return sample(shift, xv, P).permute(*range(1, P.ndim), 0)


def _return(P: torch.Tensor, is_numpy: bool):
    return P.detach().cpu().numpy() if is_numpy else P


def transform_points_source_to_target(xv, v, A, points, *, fixed_point_iterations: int = 10):
    """Source points (image pixels, row/col) → target (µm, row/col): the flow forward, then ``A``.

    The forward flow is the inverse of the backward map that LDDMM fits and that
    :func:`transform_points_target_to_source` applies, ``φ⁻¹(Q) = Q + s(Q)`` (``s`` from
    :func:`lddmm.backward_shift`): ``Q`` solves ``Q = P − s(Q)`` by fixed-point iteration from
    ``Q = P − s(P)`` (``fixed_point_iterations=0``: that first-order step only).
    """
    xv, v, A, P, is_numpy = _as_tensors(xv, v, A, points)
    shift = backward_shift(v, xv)
    Q = P - _shift_at(shift, xv, P)
    for _ in range(fixed_point_iterations):
        Q = P - _shift_at(shift, xv, Q)
    Q = Q @ A[:2, :2].T + A[:2, 2]
    return _return(Q, is_numpy)


def transform_points_target_to_source(xv, v, A, points):
    """Target points (µm, row/col) → source (image pixels, row/col): ``A⁻¹``, then the backward map
    ``φ⁻¹`` exactly as LDDMM evaluates it (integrated on the velocity grid, :func:`lddmm.backward_shift`)."""
    xv, v, A, P, is_numpy = _as_tensors(xv, v, A, points)
    Ainv = torch.linalg.inv(A)
    P = P @ Ainv[:2, :2].T + Ainv[:2, 2]
    P = P + _shift_at(backward_shift(v, xv), xv, P)
    return _return(P, is_numpy)


def transform_image_source_to_target(xv, v, A, xI, I, xJ):
    """Resample the source image (C, H, W) on grid ``xI`` into the target grid ``xJ``."""
    xv_, v_t, A_t, _, _ = _as_tensors(xv, v, A, np.zeros((1, 2)))
    I_t = torch.as_tensor(np.asarray(I) if not isinstance(I, torch.Tensor) else I, dtype=v_t.dtype, device=v_t.device)
    pts = grid_points(xJ, dtype=v_t.dtype, device=v_t.device)
    back = transform_points_target_to_source(xv_, v_t, A_t, pts)
    out = sample(I_t, xI, back, padding="zeros")
    return out if isinstance(I, torch.Tensor) else out.cpu().numpy()


def transform_image_target_to_source(xv, v, A, xJ, J, xI):
    """Resample the target raster (C, H, W) on grid ``xJ`` into the source grid ``xI`` (overlays)."""
    xv_, v_t, A_t, _, _ = _as_tensors(xv, v, A, np.zeros((1, 2)))
    J_t = torch.as_tensor(np.asarray(J) if not isinstance(J, torch.Tensor) else J, dtype=v_t.dtype, device=v_t.device)
    pts = grid_points(xI, dtype=v_t.dtype, device=v_t.device)
    fwd = transform_points_source_to_target(xv_, v_t, A_t, pts)
    out = sample(J_t, xJ, fwd, padding="zeros")
    return out if isinstance(J, torch.Tensor) else out.cpu().numpy()
