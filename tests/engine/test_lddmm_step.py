"""The automatic LDDMM step (``AlignParams.epV=None``): the same physical warp whatever the image's resolution."""

from __future__ import annotations

import numpy as np
import torch

from gala_engine import gala, transform_points_target_to_source
from gala_engine.lddmm import REFERENCE_PIXEL, REFERENCE_STEP, default_epV

from .synth import make_pair


def test_the_default_step_is_the_reference_step_at_the_reference_pixel_and_grows_with_its_area():
    grid = [np.arange(10) * REFERENCE_PIXEL, np.arange(12) * REFERENCE_PIXEL]
    assert default_epV(grid) == REFERENCE_STEP
    assert np.isclose(default_epV([grid[0] * 3, grid[1] * 3]), 9 * REFERENCE_STEP)


def _mean_warp_um(pair, xI, I, A, **params) -> float:
    """Mean length (µm) of the warp LDDMM fits from the pose ``A`` (image px → µm), measured in µm."""
    out = gala(xI, I, pair.xJ, pair.J, init_A=A, search=False, num_iterations=8, lddmm_patience=0,
               lddmm_validate=False, **params)
    cells = torch.as_tensor(pair.cells_um, dtype=out["A"].dtype)
    warped = transform_points_target_to_source(out["xv"], out["v"], out["A"], cells)
    affine = transform_points_target_to_source(out["xv"], torch.zeros_like(out["v"]), out["A"], cells)
    um_per_px = float(np.sqrt(abs(np.linalg.det(np.asarray(A)[:2, :2]))))
    return float(np.linalg.norm(np.asarray(warped) - np.asarray(affine), axis=1).mean()) * um_per_px


def test_the_same_image_at_twice_the_resolution_gets_the_same_warp(dapi_small):
    """The image's pixels as they are, and as if the file were 2× finer (coordinates doubled, the pose halved):
    with the automatic step LDDMM moves the cells the same µm; a fixed step (published) moves the finer one less
    (measured after 8 iterations: 7.8 vs 3.6 µm; its velocity is in image pixels, so each step moves it 4× less)."""
    pair = make_pair(dapi_small, 30, 0.8, 0.8, warp=12.0, kind="intensity")
    finer_xI = [2.0 * np.asarray(axis) for axis in pair.xI]
    finer_A = pair.A @ np.diag([0.5, 0.5, 1.0])
    auto, auto_finer = (_mean_warp_um(pair, xI, pair.I, A) for xI, A in ((pair.xI, pair.A), (finer_xI, finer_A)))
    assert auto > 1.0  # a real warp (the case has 12 µm of it)
    assert 0.8 < auto_finer / auto < 1.25, (auto, auto_finer)
    fixed, fixed_finer = (_mean_warp_um(pair, xI, pair.I, A, epV=10.0) for xI, A in ((pair.xI, pair.A),
                                                                                      (finer_xI, finer_A)))
    assert fixed_finer < 0.5 * fixed, (fixed, fixed_finer)
