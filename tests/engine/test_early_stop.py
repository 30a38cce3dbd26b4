"""Early stopping (GA patience, LDDMM energy plateau): on by default, off (the tutorial preset) runs every step."""

from __future__ import annotations

import numpy as np
import torch

from gala_engine import AlignParams, gala
from gala_engine.lddmm import run_lddmm

from .synth import make_pair


def test_early_stops_are_on_by_default_and_off_in_the_tutorial_preset():
    assert AlignParams().ga_patience == 100 and AlignParams().lddmm_patience == 100
    tutorial = AlignParams.tutorial()
    assert tutorial.ga_patience == 0 and tutorial.lddmm_patience == 0 and tutorial.ga_operators == "pygad"
    assert "0 = off" in AlignParams.help("ga_patience") and "0 = off" in AlignParams.help("lddmm_patience")


def test_lddmm_plateau_stops_before_the_last_iteration(dapi_small):
    pair = make_pair(dapi_small, 0, 1.0, 1.0, n_cells=2000)
    I = torch.as_tensor(pair.I / pair.I.max(), dtype=torch.float32)
    J = torch.as_tensor(pair.J / pair.J.max(), dtype=torch.float32)
    A = torch.as_tensor(pair.A, dtype=torch.float32)
    full = run_lddmm(I, pair.xI, J, pair.xJ, A, num_iterations=40)
    early = run_lddmm(I, pair.xI, J, pair.xJ, A, num_iterations=40, patience=5, tol=0.05)
    assert len(full.energy_history) == 40
    assert 5 < len(early.energy_history) < 40
    assert early.energy_history == full.energy_history[: len(early.energy_history)]  # same path until the stop


def test_gala_passes_ga_patience_to_each_ga_run(dapi_small):
    pair = make_pair(dapi_small, 20, 1.0, 1.0, n_cells=2000)
    kw = dict(num_iterations=0, num_generations=400, ga_restarts=1, refine_iterations=0, seed_population=False)
    result = gala(pair.xI, pair.I, pair.xJ, pair.J, ga_patience=10, **kw)
    best = result["ga_history"][0]["best"]
    assert len(best) < 400
    assert np.all(np.array(best[-10:]) == best[-1])
