"""The live charts say what they show: per-level refinement on its own axis, energy on a log axis with
the EM-weights start marked."""

from __future__ import annotations

import numpy as np

from gala_engine.lddmm import ESTEP_START
from ui import figures


def test_refinement_levels_are_separate_traces_on_a_right_hand_axis():
    fig = figures.fitness_figure([0.1, 0.5, 0.8], [0.0, 0.2, 0.3], [[0.9, 0.95], [0.7, 0.72], [0.5, 0.52]])
    names = [t.name for t in fig.data]
    assert names == ["GA best", "GA mean", "refine, level 1", "refine, level 2", "refine, full res."]
    assert [t.yaxis for t in fig.data[2:]] == ["y2"] * 3 and fig.layout.yaxis2.side == "right"
    assert list(fig.data[4].x) == [8, 9]  # levels follow one another after the generations


def test_energy_is_on_a_labelled_log_axis_with_the_em_start_marked():
    energy = list(np.geomspace(80_000, 5_000, ESTEP_START + 10))
    fig = figures.energy_figure(energy)
    assert fig.layout.yaxis.type == "log"
    assert "10k" in fig.layout.yaxis.ticktext and "50k" in fig.layout.yaxis.ticktext
    assert [s.x0 for s in fig.layout.shapes] == [ESTEP_START + 0.5]
    short = figures.energy_figure(energy[:10])
    assert not short.layout.shapes  # no marker before the E-step starts
    assert figures.energy_figure([-1.0, 2.0]).layout.yaxis.type != "log"  # not positive: linear
