"""Viewer: the quality verdict of a run, the "alignment confidence" colour, and both in the aligned .h5ad download
(issue 13). Runs are put in the session directly (a right and a deliberately wrong affine of the MERFISH demo)."""

from __future__ import annotations

import io

import anndata
import numpy as np

from gala_engine.affine import swap_xy
from gala_engine.manual import affine_result
from gala_engine.section import prepare_section
from ui import figures, state
from ui.runs import aligned_h5ad_bytes


def _truth_affine(data) -> np.ndarray:
    """The demo's µm → px truth as the engine's image px (row, col) → µm (row, col) 3×3."""
    return swap_xy(np.linalg.inv(np.r_[data.truth, [[0.0, 0.0, 1.0]]])[:2])


def test_viewer_shows_the_verdict_and_colours_by_confidence(app):
    data = app.session_state[state.DATA]
    A = _truth_affine(data)
    spread = np.diag([1 / 2.5, 1 / 2.5, 1.0])  # the cells spread 2.5× wider than the tissue (µm per px / 2.5)
    right = affine_result(A, image_shape=data.image.full_shape, source="test")
    wrong = affine_result(A @ spread, image_shape=data.image.full_shape, source="test")
    app.session_state[state.RESULTS] = {1: (data.uid, right), 2: (data.uid, wrong)}
    app.session_state[state.SELECTED_RUN] = 1
    app.switch_page("pages/3_viewer.py").run()
    assert not app.exception, app.exception
    assert any("Quality check: ok" in s.value for s in app.success)
    assert figures.CONFIDENCE_COLOUR in app.selectbox(key="w_view_colour").options
    app.selectbox(key="w_view_colour").select(figures.CONFIDENCE_COLOUR).run()
    assert not app.exception, app.exception
    app.selectbox(key="w_view_run").select(2).run()
    assert not app.exception, app.exception
    assert any("Quality check: likely wrong" in e.value for e in app.error)


def test_download_carries_qc_and_confidence(app):
    data = app.session_state[state.DATA]
    result = affine_result(_truth_affine(data), image_shape=data.image.full_shape, source="test")
    app.session_state[state.RESULTS] = {1: (data.uid, result)}
    app.switch_page("pages/3_viewer.py").run()
    assert not app.exception
    quality = app.session_state["gala_quality"][(1, data.uid)]
    rasters = prepare_section(data.adata, data.image)  # as a job keeps them per run (ui.runs.run_rasters)
    out = anndata.read_h5ad(io.BytesIO(aligned_h5ad_bytes(result, data, quality=quality, rasters=rasters)))
    assert out.uns["gala"]["qc"]["verdict"] == quality["qc"]["verdict"] == "ok"
    info = out.uns["gala"]["signal_info"]
    assert info["signal"] == rasters.signal and np.isclose(info["informativeness"], rasters.informativeness)
    conf = np.asarray(out.obs["gala_confidence"])
    assert conf.shape == (data.adata.n_obs,) and conf.min() >= 0 and conf.max() <= 1
