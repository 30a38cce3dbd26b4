"""LDDMM's iteration control: the step check holds through the EM weights (an exactly matched pair stays matched),
and a fit still improving on its held-out pixels goes on past its budget."""

from __future__ import annotations

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from gala_engine.affine import grid_points, sample
from gala_engine.lddmm import ESTEP_START, backward_shift, run_lddmm


def _exact_pair(step_px: float = 2.0):
    """A smooth random image (pixels at integers) and the cells' raster made from it by a known affine (another
    contrast, 1 % noise)."""
    rng = np.random.default_rng(3)
    I = gaussian_filter(rng.random((96, 96)), 3.0)
    I = torch.as_tensor((I - I.min()) / np.ptp(I), dtype=torch.float64)[None]
    xI = [np.arange(96.0), np.arange(96.0)]
    turn = np.deg2rad(20.0)
    A = np.eye(3)
    A[:2, :2] = 2.0 * np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])  # 2 µm per image px
    A[:2, 2] = [40.0, -30.0]
    A = torch.as_tensor(A)
    centre = A[:2, :2] @ torch.tensor([47.5, 47.5], dtype=torch.float64) + A[:2, 2]
    xJ = [float(centre[0]) + np.arange(-60.0, 60.0, 2.0 * step_px), float(centre[1]) + np.arange(-60.0, 60.0, 2.0 * step_px)]
    points = grid_points(xJ, dtype=torch.float64)
    Ainv = torch.linalg.inv(A)
    J = sample(I, xI, points @ Ainv[:2, :2].T + Ainv[:2, 2])
    J = 0.2 + 0.5 * J + 0.01 * torch.as_tensor(rng.standard_normal(J.shape))  # another contrast, a little noise
    return I, xI, J, xJ, A


def test_an_exactly_matched_pair_stays_matched_after_the_em_weights_start():
    """From the true affine there is nothing to warp. Once the EM weights update every iteration (ESTEP_START on),
    each step must still be checked against the energy under the weights it is scored with; unchecked, a step near
    the stability limit (the matched pixels' weight doubles from 0.5 to ~1) diverged: this pair's energy grew from 2.9
    to 57–428 (its reweighting alone doubles it) and the field moved up to 1.5–4 image px (checked: 0.07–0.18 px)."""
    I, xI, J, xJ, A = _exact_pair()
    iterations = ESTEP_START + 70
    out = run_lddmm(I, xI, J, xJ, A, num_iterations=iterations, a=12.0, epV=40.0, sigmaR=5e4)
    assert len(out.energy_history) == iterations
    shift = backward_shift(out.v, out.xv)  # φ⁻¹ − id on the velocity grid, source px
    assert float(shift.norm(dim=0).max()) < 0.5, float(shift.norm(dim=0).max())
    start = out.energy_history[ESTEP_START][0]
    assert max(e[0] for e in out.energy_history[ESTEP_START:]) <= 3.0 * start


def _rising(step: float):
    """A checkpoint whose score rises by ``step`` at every call (a held-out fit still improving, or not: 0)."""
    calls = []

    def score(v: torch.Tensor) -> float:
        calls.append(1)
        return step * len(calls)

    return score


def test_a_fit_still_improving_on_its_held_out_pixels_goes_on_past_its_budget():
    """With a held-out checkpoint, the budget (num_iterations) ends the fit only once the checkpoint's score stops
    rising by more than extend_gain per check; it goes on up to extend_to iterations while it does (a large warp still
    converging: the MERFISH DAPI under a 25 µm warp, 4.3 -> 2.4 µm), and the energy plateau does not end it then."""
    I, xI, J, xJ, A = _exact_pair()
    # tol=1: the energy-plateau rule stops the first time it may look (30 iterations on, here just past the budget)
    common = dict(num_iterations=30, a=12.0, epV=40.0, checkpoint_every=10, extend_to=80, extend_gain=1e-3,
                  patience=30, tol=1.0)
    still_rising = run_lddmm(I, xI, J, xJ, A, checkpoint=_rising(0.01), **common)
    settled = run_lddmm(I, xI, J, xJ, A, checkpoint=_rising(0.0), **common)
    assert len(still_rising.energy_history) == 80
    assert len(settled.energy_history) == 30
    # without a checkpoint nothing is extended and the plateau rule stops as before
    plateau = run_lddmm(I, xI, J, xJ, A, **{**common, "num_iterations": 80})
    assert len(plateau.energy_history) == 31


def test_progress_past_the_budget_counts_towards_the_extension_with_one_total():
    """Events past the budget report ``extend_to`` as their total (a progress bar keyed on the total restarts once,
    not at every step)."""
    I, xI, J, xJ, A = _exact_pair()
    events = []
    run_lddmm(I, xI, J, xJ, A, num_iterations=30, a=12.0, epV=40.0, checkpoint=_rising(0.01), extend_to=80,
              extend_gain=1e-3, progress=events.append)
    totals = [e.total for e in events if e.stage == "lddmm"]
    assert totals[:30] == [30] * 30 and set(totals[30:]) == {80} and len(totals) == 80
