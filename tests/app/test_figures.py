"""The live charts say what they show: search and fine-tuning on their own charts (no second axis), the
warp's energy on a log axis with the EM re-weighting drawn as its own line after a marked boundary."""

from __future__ import annotations

import numpy as np

from gala_engine.lddmm import ESTEP_START
from ui import figures


def test_search_and_fine_tuning_are_separate_charts_without_a_second_axis():
    fig = figures.search_figure([0.1, 0.5, 0.8], [0.0, 0.2, 0.3])
    assert [t.name for t in fig.data] == ["best pose", "average pose"]
    assert "match score" in fig.layout.yaxis.title.text and "yaxis2" not in fig.to_dict()["layout"]
    ref = figures.refine_figure([[0.9, 0.95], [0.7, 0.72], [0.5, 0.52]])
    assert [t.name for t in ref.data] == ["level 1 (coarser)", "level 2 (coarser)", "full detail"]
    assert list(ref.data[2].x) == [5, 6]  # levels follow one another
    assert all(t.yaxis in (None, "y") for t in ref.data)
    assert len(ref.layout.shapes) == 2  # boundaries between levels


def test_energy_is_on_a_labelled_log_axis_with_the_em_start_marked_and_split():
    energy = list(np.geomspace(80_000, 5_000, ESTEP_START + 10))
    fig = figures.energy_figure(energy)
    assert fig.layout.yaxis.type == "log"
    assert "10k" in fig.layout.yaxis.ticktext and "50k" in fig.layout.yaxis.ticktext
    assert [s.x0 for s in fig.layout.shapes] == [ESTEP_START + 0.5]
    assert [len(t.x) for t in fig.data] == [ESTEP_START, 10]  # before / after the re-weighting: two lines
    assert "not a divergence" in fig.layout.annotations[0].text
    # two warp runs (the check on two halves of the cells): each split, with the run boundary marked
    two = figures.energy_figure(energy + energy, list(range(1, len(energy) + 1)) * 2)
    assert [len(t.x) for t in two.data] == [ESTEP_START, 10, ESTEP_START, 10]
    assert sorted(s.x0 for s in two.layout.shapes) == [ESTEP_START + 0.5, len(energy) + 0.5,
                                                        len(energy) + ESTEP_START + 0.5]
    assert [t.showlegend for t in two.data] == [True, True, False, False]
    labels = [a.text for a in two.layout.annotations]
    assert sum("not a divergence" in t for t in labels) == 1 and any("warp run 2" in t for t in labels)  # no pile-up
    short = figures.energy_figure(energy[:10])
    assert not short.layout.shapes and len(short.data) == 1  # no marker before the E-step starts
    assert figures.energy_figure([-1.0, 2.0]).layout.yaxis.type != "log"  # not positive: linear
