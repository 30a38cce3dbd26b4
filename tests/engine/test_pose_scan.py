"""The pose scan's starts when the cells cover only part of the imaged tissue (their centroid is off the tissue's)."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates

from gala_engine.affine import genes_to_matrix_np, grid_centre, matrix_to_genes
from gala_engine.pipeline import SCAN_SHIFTS
from gala_engine.search import fill_gene_space, pose_grid


def _partial_pair(corner: tuple[int, int], angle: float = 100.0, scale: float = 20.0, cover: float = 0.6):
    """A textured tissue filling a 60×80 px image; cells (µm raster, 30 µm pixels) on an off-centre rectangle of
    ``cover`` of it (at ``corner``), mapped by a known rotation + scale → (I, xI, J, xJ, A, the rectangle's centre)."""
    rng = np.random.default_rng(0)
    I = gaussian_filter(rng.random((60, 80)), 2.0)
    I = (I - I.min()) / np.ptp(I)
    xI = [np.arange(60.0), np.arange(80.0)]
    side = np.sqrt(cover) * np.array([60.0, 80.0])
    lo = np.array(corner) * (np.array([60.0, 80.0]) - side)
    t = np.deg2rad(angle)
    A = np.eye(3)
    A[:2, :2] = scale * np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    A[:2, 2] = [500.0, -300.0]
    corners = np.array([[0.0, 0.0], [0.0, 79.0], [59.0, 0.0], [59.0, 79.0]]) @ A[:2, :2].T + A[:2, 2]
    xJ = [np.arange(lo_j - 60.0, hi_j + 60.0, 30.0) for lo_j, hi_j in zip(corners.min(0), corners.max(0))]
    rows, cols = np.meshgrid(*xJ, indexing="ij")
    back = np.linalg.solve(A[:2, :2], np.stack([rows.ravel(), cols.ravel()]) - A[:2, 2:])
    inside = np.all((back >= lo[:, None]) & (back <= (lo + side)[:, None]), axis=0)
    J = (map_coordinates(I, back, order=1) * inside).reshape(rows.shape)
    return I[None], xI, J[None], xJ, A, lo + side / 2


def _nearest_start_um(poses: np.ndarray, xI, xJ, A: np.ndarray, centre_px: np.ndarray) -> float:
    """Over the starts at the true turn (± 5°, no flip): the least distance (µm) between where a start and the
    truth put the cells' centre."""
    true_angle = matrix_to_genes(A, xI, xJ)[0]
    same_turn = (np.abs((poses[:, 0] - true_angle + 180.0) % 360.0 - 180.0) <= 5.0) & (poses[:, 2] > 0)
    want = A[:2, :2] @ centre_px + A[:2, 2]
    mats = genes_to_matrix_np(poses[same_turn], xI, xJ)
    return float(np.min(np.linalg.norm(mats[:, :2, :2] @ centre_px + mats[:, :2, 2] - want, axis=1)))


def test_off_centre_scan_starts_reach_cells_on_part_of_the_tissue():
    for corner in [(0, 0), (1, 1), (0, 1), (1, 0)]:
        I, xI, J, xJ, A, centre = _partial_pair(corner)
        space = fill_gene_space(None, xI, xJ, mode="compatible")
        centres = (grid_centre(xI), grid_centre(xJ))
        centred = pose_grid(I, xI, J, xJ, space, centres=centres)
        shifted = pose_grid(I, xI, J, xJ, space, centres=centres, shifts=SCAN_SHIFTS)
        assert len(shifted) == len(SCAN_SHIFTS) * len(centred)
        # the cells' rectangle lies ~11 % of the image's side off the tissue's centre: every centred start puts the
        # cells' centre 110-145 µm (4-5 raster pixels) off, the nearest off-centre start 20-60 µm
        before = _nearest_start_um(centred, xI, xJ, A, centre)
        after = _nearest_start_um(shifted, xI, xJ, A, centre)
        assert before > 100.0, (corner, before)
        assert after < 0.6 * before, (corner, before, after)
