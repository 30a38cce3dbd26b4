"""The 5-gene global transform ⇄ 3×3 matrix, and batched affine resampling on torch.

Genes are ``[angle°, sy, sx, ty, tx]``. With ``L = R(angle) · diag(sy, sx)`` acting on (row, col)
vectors and ``T = [ty, tx] + cJ − L · cI`` (cI, cJ the grid centres), the matrix ``A = [[L, T], [0, 1]]``
maps source (image pixel) coordinates to target (µm) coordinates. Negative scales are flips.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

_SWAP_XY = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # (x, y, 1) ⇄ (row, col, 1)


def swap_xy(M) -> np.ndarray:
    """An affine acting on (x, y) points (2×3 or 3×3) as the same map acting on (row, col) points (3×3), e.g. a
    ground truth image px (x, y) → µm (x, y) as the engine's ``A``; and back (the swap is its own inverse)."""
    M = np.asarray(M, dtype=np.float64)
    if M.shape == (2, 3):
        M = np.vstack([M, [0.0, 0.0, 1.0]])
    return _SWAP_XY @ M @ _SWAP_XY


def grid_centre(x: list) -> np.ndarray:
    """Centre (row, col) of a grid given as axis vectors ``[rows, cols]``."""
    return np.array([float(np.mean(np.asarray(axis))) for axis in x])


def genes_to_matrix(genes: torch.Tensor, cI: torch.Tensor, cJ: torch.Tensor) -> torch.Tensor:
    """(…, 5) genes → (…, 3, 3) matrices (torch, differentiable)."""
    theta = torch.deg2rad(genes[..., 0])
    cos, sin = torch.cos(theta), torch.sin(theta)
    sy, sx = genes[..., 1], genes[..., 2]
    L = torch.stack(
        [torch.stack([cos * sy, -sin * sx], -1), torch.stack([sin * sy, cos * sx], -1)], -2
    )
    T = genes[..., 3:5] + cJ - (L @ cI.unsqueeze(-1)).squeeze(-1)
    top = torch.cat([L, T.unsqueeze(-1)], -1)
    bottom = torch.zeros(*genes.shape[:-1], 1, 3, dtype=genes.dtype, device=genes.device)
    bottom[..., 0, 2] = 1.0
    return torch.cat([top, bottom], -2)


def genes_to_matrix_np(genes, xI: list, xJ: list) -> np.ndarray:
    """numpy convenience: genes (5,) or (P, 5) → (3, 3) or (P, 3, 3), centres from the grids."""
    g = torch.as_tensor(np.asarray(genes, dtype=np.float64))
    cI = torch.as_tensor(grid_centre(xI))
    cJ = torch.as_tensor(grid_centre(xJ))
    return genes_to_matrix(g, cI, cJ).numpy()


def matrix_to_genes(A, xI: list, xJ: list) -> np.ndarray:
    """3×3 matrix → canonical genes ``[angle° in (−180, 180], sy ≥ 0, sx, ty, tx]``.

    Exact for matrices of the gene form (rotation × diagonal scale); for a general affine the
    shear is dropped.
    """
    A = np.asarray(A, dtype=np.float64)
    L, T = A[:2, :2], A[:2, 2]
    angle = np.arctan2(L[1, 0], L[0, 0])
    sy = float(np.hypot(L[0, 0], L[1, 0]))
    c, s = np.cos(angle), np.sin(angle)
    sx = float(-s * L[0, 1] + c * L[1, 1])  # second column of Rᵀ·L
    deg = float(np.rad2deg(angle))
    if deg <= -180.0:
        deg += 360.0
    t = T - grid_centre(xJ) + L @ grid_centre(xI)
    return np.array([deg, sy, sx, t[0], t[1]])


def grid_points(x: list, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """(H, W, 2) tensor of the (row, col) coordinates of a grid given as axis vectors."""
    rows = torch.as_tensor(np.asarray(x[0]), dtype=dtype, device=device)
    cols = torch.as_tensor(np.asarray(x[1]), dtype=dtype, device=device)
    return torch.stack(torch.meshgrid(rows, cols, indexing="ij"), -1)


def _normalisation(x: list) -> tuple[list[float], list[float]]:
    """Per-axis ``scale``, ``offset`` in grid_sample's (x=col, y=row) order: ``u = p·scale + offset`` maps a
    physical coordinate ``p`` on grid ``x = [rows, cols]`` to [-1, 1] (±1 at the first/last pixel centre)."""
    scale = [2.0 / (float(x[d][-1]) - float(x[d][0])) for d in (1, 0)]
    offset = [-1.0 - float(x[d][0]) * scale[i] for i, d in enumerate((1, 0))]
    return scale, offset


def to_sample_grid(points: torch.Tensor, x: list) -> torch.Tensor:
    """Physical (row, col) points → grid_sample's normalised (x=col, y=row) in [-1, 1]."""
    # one fused multiply-add after the flip (col, row): a chain of broadcast ops over a last axis of size 2
    # is memory-bound and ran several times slower (LDDMM calls this 4× per iteration on ~180k points)
    scale, offset = _normalisation(x)
    return torch.addcmul(torch.tensor(offset, dtype=points.dtype, device=points.device), points.flip(-1),
                         torch.tensor(scale, dtype=points.dtype, device=points.device))


def sample(image: torch.Tensor, x: list, points: torch.Tensor, padding: str = "zeros") -> torch.Tensor:
    """Sample a (C, H, W) image on grid ``x`` at (…, 2) physical points → (C, …)."""
    shape = points.shape[:-1]
    grid = to_sample_grid(points.reshape(1, -1, 1, 2), x)
    out = F.grid_sample(image[None], grid, mode="bilinear", padding_mode=padding, align_corners=True)
    return out[0, :, :, 0].reshape(image.shape[0], *shape)


@lru_cache(maxsize=64)
def _half_and_mid(ends: tuple, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Half-extents and midpoints of the source and target axes, made once per grid pair and device
    (the GA calls :func:`genes_to_theta` every generation: no host→device copy each time)."""
    half = torch.tensor([(hi - lo) / 2.0 for lo, hi in ends], dtype=dtype, device=device)
    mid = torch.tensor([(hi + lo) / 2.0 for lo, hi in ends], dtype=dtype, device=device)
    return half[:2], mid[:2], half[2:], mid[2:]


def genes_to_inverse(genes: torch.Tensor) -> torch.Tensor:
    """(P, 5) genes → (P, 2, 2) ``L⁻¹``, the inverse of the linear part of ``genes_to_matrix(genes, …)``, in closed
    form: with ``L = R·diag(sy, sx)``, ``L⁻¹ = diag(1/sy, 1/sx)·Rᵀ`` (rows, in (row, col) order: [cos, sin] / sy and
    [-sin, cos] / sx). Differentiable."""
    theta = torch.deg2rad(genes[:, 0])
    cos, sin = torch.cos(theta), torch.sin(theta)
    return torch.stack([torch.stack([cos, sin], -1) / genes[:, 1, None],
                        torch.stack([-sin, cos], -1) / genes[:, 2, None]], -2)


def genes_to_theta(genes: torch.Tensor, xI: list, xJ: list, cI: torch.Tensor, cJ: torch.Tensor) -> torch.Tensor:
    """(P, 5) genes → (P, 2, 3) ``F.affine_grid`` matrices: each maps the target grid's normalised (x=col, y=row)
    in [-1, 1] (``align_corners=True``: ±1 are the first/last pixel centres) to the source's, so sampling there is
    sampling at ``A⁻¹·y`` (``A = genes_to_matrix(genes, cI, cJ)``) without any physical coordinate tensor.
    Axes must be uniformly spaced.

    ``cI``, ``cJ``: the centres the genes are defined against (the full grids' centres, also when ``xI``/``xJ``
    are a pooled level's grids). With ``L = R·diag(sy, sx)``, ``L⁻¹ = diag(1/sy, 1/sx)·Rᵀ``: a target normalised
    ``u`` maps to the source normalised ``(L⁻¹·(mid_J + half_J·u − cJ − t) + cI − mid_I) / half_I`` — a handful
    of element-wise ops per population (the GA's fitness calls this every generation). Differentiable.
    """
    ends = tuple((float(x[0]), float(x[-1])) for x in (*xI, *xJ))
    half_i, mid_i, half_j, mid_j = _half_and_mid(ends, genes.dtype, genes.device)
    inv = genes_to_inverse(genes)  # then the axis scalings
    M = inv * (half_j / half_i[:, None])
    t = ((inv @ (mid_j - cJ - genes[:, 3:5])[:, :, None]).squeeze(-1) + cI - mid_i) / half_i
    # grid_sample works in (x, y) = (col, row): reverse both axes
    return torch.cat([M.flip(-1).flip(-2), t.flip(-1).unsqueeze(-1)], -1)


def normalised_target_points(x: list, index: torch.Tensor, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """(2, N) normalised (x=col, y=row) coordinates in [-1, 1] of the pixels of grid ``x`` at the flat (row-major)
    ``index``."""
    H, W = len(x[0]), len(x[1])
    ys = torch.linspace(-1.0, 1.0, H, dtype=dtype, device=device)
    xs = torch.linspace(-1.0, 1.0, W, dtype=dtype, device=device)
    return torch.stack([xs.expand(H, W), ys[:, None].expand(H, W)]).reshape(2, -1)[:, index]


def sample_planar(image: torch.Tensor, x: list, points: torch.Tensor, padding: str = "zeros") -> torch.Tensor:
    """Like :func:`sample`, with the points channel-first: (2, …) (row plane, col plane) → (C, …).

    Every coordinate operation runs on whole contiguous planes (vectorised), and ``grid_sample`` reads the
    grid as a strided view: no interleaved (…, 2) temporaries, no flips (LDDMM's inner loop).
    """
    shape = points.shape[1:]
    scale, offset = _normalisation(x)
    rows, cols = points.reshape(2, -1).unbind(0)  # one unbind: its gradient is one stack, not two zero-filled copies
    grid = torch.stack([cols * scale[0] + offset[0], rows * scale[1] + offset[1]])  # (2, N): x=col, y=row
    out = F.grid_sample(image[None], grid.T.reshape(1, -1, 1, 2), mode="bilinear", padding_mode=padding,
                        align_corners=True)
    return out[0, :, :, 0].reshape(image.shape[0], *shape)
