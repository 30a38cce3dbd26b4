"""Cells → raster: mass, peak position, dx choice, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from gala_engine import GalaInputError, choose_dx, rasterize


def test_mass_is_conserved_even_at_the_edges():
    rng = np.random.default_rng(1)
    x, y = rng.uniform(0, 500, 300), rng.uniform(0, 300, 300)
    g = rng.uniform(0, 10, 300)
    X, Y, W = rasterize(x, y, g=g, dx=7.0, blur=1.5, expand=1.0)  # no margin: windows get clipped
    weights = (g - g.min()) / np.ptp(g)
    assert W.shape == (1, len(Y), len(X))
    assert W.sum() == pytest.approx(weights.sum(), rel=1e-9)


def test_single_cell_peak_lands_on_its_pixel():
    x = np.array([0.0, 100.0, 37.0])
    y = np.array([0.0, 100.0, 62.0])
    X, Y, W = rasterize(x, y, g=np.array([0.0, 0.0, 1.0]), dx=1.0)
    r, c = np.unravel_index(np.argmax(W[0]), W[0].shape)
    assert abs(Y[r] - 62.0) <= 0.5 and abs(X[c] - 37.0) <= 0.5
    assert W.sum() == pytest.approx(1.0)


def test_grid_spans_the_cells_widened_by_expand():
    x, y = np.array([0.0, 200.0]), np.array([0.0, 100.0])
    X, Y, _ = rasterize(x, y, dx=10.0, expand=1.1)
    assert X[0] == pytest.approx(-10.0) and X[-1] >= 200.0
    assert np.allclose(np.diff(X), 10.0) and np.allclose(np.diff(Y), 10.0)


def test_170k_cells_rasterise_quickly_enough_to_be_vectorised():
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 10_000, 170_000), rng.uniform(0, 8_000, 170_000)
    X, Y, W = rasterize(x, y, dx=30.0)
    assert W.sum() == pytest.approx(170_000, rel=1e-9)


def test_choose_dx_gives_a_few_hundred_pixels():
    x, y = np.array([0.0, 500.0]), np.array([0.0, 450.0])
    dx = choose_dx(x, y)
    assert 1.0 <= dx <= 5.0
    assert 100 <= 550 / dx <= 400


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(x=[np.nan, 1.0], y=[0.0, 1.0]), "NaN or infinite"),
        (dict(x=[], y=[]), "empty"),
        (dict(x=[0.0, 1.0], y=[0.0]), "same length"),
        (dict(x=[0.0, 1.0], y=[0.0, 1.0], dx=0.0), "dx must be a positive"),
        (dict(x=[0.0, 1.0], y=[0.0, 1.0], dx=-3.0), "dx must be a positive"),
        (dict(x=[0.0, 1.0], y=[0.0, 1.0], g=[1.0]), "g has 1 values"),
    ],
)
def test_bad_input_raises_clear_errors(kwargs, message):
    with pytest.raises(GalaInputError, match=message):
        rasterize(**kwargs)
