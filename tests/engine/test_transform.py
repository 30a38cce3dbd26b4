"""Point and image transforms: round trips and agreement between directions."""

from __future__ import annotations

import numpy as np
import torch

from gala_engine import (
    transform_image_source_to_target,
    transform_image_target_to_source,
    transform_points_source_to_target,
    transform_points_target_to_source,
)
from gala_engine.affine import genes_to_matrix_np, sample
from gala_engine.lddmm import velocity_grid

XI = [np.arange(0.0, 200.0), np.arange(0.0, 300.0)]
XJ = [np.linspace(-400, 400, 90), np.linspace(-500, 500, 110)]


def _smooth_field(amplitude: float):
    xv = velocity_grid(XI, a=40.0)
    rows, cols = np.meshgrid(xv[0], xv[1], indexing="ij")
    v = np.zeros((3, rows.shape[0], rows.shape[1], 2))
    for t in range(3):
        v[t, ..., 0] = amplitude * np.sin(2 * np.pi * cols / 300.0) * (1 + 0.2 * t)
        v[t, ..., 1] = amplitude * np.cos(2 * np.pi * rows / 200.0)
    return xv, v


def test_source_target_source_round_trip_below_a_tenth_of_a_pixel():
    xv, v = _smooth_field(4.0)
    A = genes_to_matrix_np([31.0, 2.5, -3.0, 20.0, -15.0], XI, XJ)
    rng = np.random.default_rng(0)
    P = rng.uniform([20, 20], [180, 280], (500, 2))
    Q = transform_points_source_to_target(xv, v, A, P)
    back = transform_points_target_to_source(xv, v, A, Q)
    assert np.abs(Q - P).max() > 10  # the map really moves points
    assert np.linalg.norm(back - P, axis=1).max() < 0.1


def test_numpy_in_numpy_out_and_torch_in_torch_out():
    xv, v = _smooth_field(1.0)
    A = genes_to_matrix_np([0, 1, 1, 0, 0], XI, XJ)
    P = np.array([[50.0, 60.0]])
    assert isinstance(transform_points_source_to_target(xv, v, A, P), np.ndarray)
    out = transform_points_source_to_target(xv, torch.tensor(v), torch.tensor(A), torch.tensor(P))
    assert isinstance(out, torch.Tensor)


def test_image_moved_to_target_and_back_matches_the_original():
    xv, v = _smooth_field(2.0)
    A = genes_to_matrix_np([90.0, 3.0, 3.0, 0.0, 0.0], XI, XJ)
    rows, cols = np.meshgrid(XI[0], XI[1], indexing="ij")
    I = (np.sin(rows / 15.0) * np.cos(cols / 20.0))[None]
    xJ = [np.linspace(-250, 250, 200), np.linspace(-250, 250, 200)]
    in_target = transform_image_source_to_target(xv, v, A, XI, I, xJ)
    back = transform_image_target_to_source(xv, v, A, xJ, in_target, XI)
    inner = (slice(None), slice(60, 140), slice(80, 220))
    assert np.abs(back[inner] - I[inner]).mean() < 0.02


def test_backward_map_integrated_on_the_velocity_grid_follows_each_point_through_the_flow():
    """LDDMM and the transforms integrate φ⁻¹ on the velocity grid and interpolate its displacement; stepping
    each point through the nt velocity fields (last time step first) is the same map up to interpolation
    error: below 1 % of a ~4 px displacement at the median."""
    xv, v = _smooth_field(0.0)
    rows, cols = np.meshgrid(xv[0], xv[1], indexing="ij")
    v[0, ..., 1] = 9 * np.cos(2 * np.pi * rows / 200.0)  # first a column shift by row, last a row shift by column:
    v[2, ..., 0] = 9 * np.sin(2 * np.pi * cols / 300.0)  # the order of the two matters
    rng = np.random.default_rng(1)
    P = rng.uniform([40, 40], [140, 240], (400, 2))  # a velocity grid spacing (20 px) and more from its edge

    def stepped(fields):
        Q = torch.tensor(P)
        for t in reversed(range(fields.shape[0])):
            Q = Q - sample(torch.tensor(fields[t]).permute(2, 0, 1), xv, Q).T / fields.shape[0]
        return Q.numpy()

    exact = stepped(v)
    on_grid = transform_points_target_to_source(xv, v, np.eye(3), P)
    moved = np.linalg.norm(exact - P, axis=1)
    assert moved.max() > 4  # the map really moves points
    gap = np.linalg.norm(on_grid - exact, axis=1)
    assert np.median(gap) < 0.01 * moved.max() and gap.max() < 0.05 * moved.max()
    assert np.median(np.linalg.norm(stepped(v[::-1]) - exact, axis=1)) > 4 * np.median(gap)  # the time order is pinned
