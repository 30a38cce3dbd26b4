"""The share of the cells' density a pose keeps inside the image's frame, and the ranking that puts poses leaving
clearly more of it outside last (gala_engine.pipeline: ``_frame_share``, ``_frame_order``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gala_engine.affine import grid_centre
from gala_engine.pipeline import FRAME_SLACK, _frame_order, _frame_share


def _setup():
    xI = [np.arange(100, dtype=np.float64), np.arange(100, dtype=np.float64)]  # image px
    xJ = [np.arange(0.0, 400.0, 10.0), np.arange(0.0, 400.0, 10.0)]  # µm, 40×40 px of 10 µm
    J = torch.zeros((1, 40, 40), dtype=torch.float64)
    J[0, 10:30, 10:30] = 1.0  # cells on the middle half of the raster
    return xI, J, xJ, (grid_centre(xI), grid_centre(xJ))


def test_share_inside_and_half_beyond_the_frame():
    xI, J, xJ, centres = _setup()
    share = _frame_share(xI, J, xJ, centres, margin_um=0.0)
    # genes [angle, sy, sx, ty, tx]: 4 µm per image px, centres matched -> the cells' 200 µm square sits on the
    # middle 50 image px (24.5…74.5); shifted by 200 µm (50 px) along columns, half of it lies beyond the frame
    centred = np.array([0.0, 4.0, 4.0, 0.0, 0.0])
    shifted = np.array([0.0, 4.0, 4.0, 0.0, -200.0])
    mirrored = np.array([180.0, -4.0, 4.0, 0.0, 0.0])
    out = share(np.stack([centred, shifted, mirrored]))
    assert out[0] == pytest.approx(1.0) and out[2] == pytest.approx(1.0)
    assert 0.45 < out[1] < 0.55, out
    # the margin counts density just beyond the frame as inside
    assert _frame_share(xI, J, xJ, centres, margin_um=400.0)(shifted[None])[0] == pytest.approx(1.0)


def test_order_puts_poses_off_the_frame_last_whatever_their_score():
    scores = np.array([0.9, 0.5, 0.8, 0.7])
    inside = np.array([0.6, 0.95, 0.99, 0.99 - FRAME_SLACK - 0.01])
    assert list(_frame_order(scores, inside)) == [2, 1, 0, 3]
    assert list(_frame_order(scores, None)) == [0, 2, 3, 1]
