"""Landmarks page and the Viewer's manual correction (AppTest): the pairs table, Align / Refine from
landmarks, undo, import, nudges as new runs, and the downloads with landmarks and the Xenium matrix."""

from __future__ import annotations

import io

import anndata
import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from gala_engine.demo import load_demo, truth_px_xy
from gala_engine.landmarks import Landmarks, landmarks_csv, read_xenium_matrix
from ui import landmarks as lm
from ui import state
from ui.runs import aligned_h5ad_bytes, xenium_matrix_bytes

SHORT = {"num_generations": 4, "sol_per_pop": 12, "num_parents_mating": 6, "ga_restarts": 1,
         "refine_iterations": 5, "num_iterations": 3, "seed_population": False}


def _tiny(app: AppTest, n_pairs: int = 3, noise: float = 0.5) -> AppTest:
    """visium_tiny loaded, ``n_pairs`` pairs near the truth in the store, on the Landmarks page."""
    app.selectbox(key="w_demo").select("visium_tiny").run()
    app.button(key="load_demo").click().run()
    data = app.session_state[state.DATA]
    demo = load_demo("visium_tiny")
    um = np.asarray(demo.adata.obsm["spatial"], np.float64)
    truth = truth_px_xy(demo)
    idx = [int(np.argmin(um.sum(1))), int(np.argmax(um.sum(1))), int(np.argmax(um[:, 0] - um[:, 1])),
           int(np.argmin(um[:, 0] - um[:, 1]))][:n_pairs]
    rng = np.random.default_rng(1)
    rows = lm.from_landmarks(Landmarks(truth[idx] + rng.normal(0, noise, (n_pairs, 2)), um[idx]))
    app.session_state[lm.PAIRS] = {data.uid: rows}
    app.switch_page("pages/4_landmarks.py").run()
    assert not app.exception, app.exception
    return app


def _button(app: AppTest, label: str):
    return next(b for b in app.button if b.label == label)


def test_landmarks_page_without_pairs_explains_and_disables(app):
    app.switch_page("pages/4_landmarks.py").run()
    assert not app.exception
    assert "Click a point on the **image**" in app.caption[0].value
    assert _button(app, "Align from landmarks").disabled
    assert _button(app, "Refine from landmarks").disabled


def test_align_from_three_pairs_then_undo(app):
    _tiny(app)
    assert not _button(app, "Align from landmarks").disabled
    _button(app, "Align from landmarks").click().run()
    assert not app.exception and not app.error
    assert any("landmark affine, median residual" in s.value for s in app.success)
    results = app.session_state[state.RESULTS]
    assert len(results) == 1
    row = app.session_state[state.HISTORY][-1]
    assert row["state"] == "landmarks (mirrored)" or row["state"] == "landmarks"
    assert row["error_px (vs truth)"] <= 3.0  # the section the images alone cannot align
    assert app.metric[0].label == "Median landmark error"
    _button(app, "Undo last").click().run()
    data = app.session_state[state.DATA]
    assert len(app.session_state[lm.PAIRS][data.uid]) == 2
    assert _button(app, "Align from landmarks").disabled


def test_bad_pairs_show_the_engines_message(app):
    _tiny(app)
    data = app.session_state[state.DATA]
    rows = app.session_state[lm.PAIRS][data.uid]
    for r in rows:  # all three on one line
        r["image_x"], r["image_y"] = 10.0, 10.0
    app.run()
    _button(app, "Align from landmarks").click().run()
    assert any("one line" in e.value for e in app.error)
    assert not app.session_state[state.RESULTS]


def test_import_xenium_keypoints(app):
    _tiny(app)
    demo = load_demo("visium_tiny")
    um = np.asarray(demo.adata.obsm["spatial"], np.float64)[[5, 50, 95, 20]]
    text = landmarks_csv(Landmarks(truth_px_xy(demo)[[5, 50, 95, 20]], um), fmt="xenium").encode()
    app.file_uploader(key="lm_upload").set_value(("keypoints.csv", text, "text/csv")).run()
    assert not app.exception
    assert any("Imported 4 pairs" in s.value for s in app.success)
    data = app.session_state[state.DATA]
    assert len(app.session_state[lm.PAIRS][data.uid]) == 4
    app.file_uploader(key="lm_upload").set_value(("bad.csv", b"a,b\n1,2\n", "text/csv")).run()
    assert any("Not imported" in e.value and "header" in e.value for e in app.error)
    assert len(app.session_state[lm.PAIRS][data.uid]) == 4  # kept


@pytest.mark.timeout(300)
def test_refine_from_landmarks_runs_a_job_and_keeps_a_good_result(app):
    _tiny(app, n_pairs=4)
    app.session_state[state.PARAMS] = SHORT
    _button(app, "Refine from landmarks").click().run()
    assert not app.exception, app.exception
    job = app.session_state[state.JOB]
    job.join(240)
    assert not job.running and job.error is None, job.error
    app.run()
    assert not app.exception
    row = app.session_state[state.HISTORY][-1]
    assert row["state"] == "done" and row["error_px (vs truth)"] <= 3.0  # guarded: never worse than the landmarks
    assert "Kept" in job.result.origin["note"]


def test_viewer_nudges_make_new_runs_and_downloads_carry_landmarks(app):
    _tiny(app, n_pairs=4)
    _button(app, "Align from landmarks").click().run()
    app.switch_page("pages/3_viewer.py").run()
    assert not app.exception, app.exception
    assert any(m.label == "Median landmark error" for m in app.metric)
    data = app.session_state[state.DATA]
    first = app.session_state[state.RESULTS][1][1]
    xy = np.asarray(data.adata.obsm["spatial"], np.float64)
    before = first.cells_to_image(xy)

    app.button(key="nudge_↻ 90°").click().run()
    assert not app.exception, app.exception
    results = app.session_state[state.RESULTS]
    assert sorted(results) == [1, 2] and results[1][1] is first  # the earlier run is kept as it was
    assert app.selectbox(key="w_view_run").value == 2
    rotated = results[2][1].cells_to_image(xy)
    c = (before.min(0) + before.max(0)) / 2
    np.testing.assert_allclose(rotated - c, np.c_[-(before - c)[:, 1], (before - c)[:, 0]], atol=1e-6)

    app.number_input(key="w_nudge_dx").set_value(4.0)
    app.button(key="nudge_apply").click().run()
    assert sorted(app.session_state[state.RESULTS]) == [1, 2, 3]
    np.testing.assert_allclose(app.session_state[state.RESULTS][3][1].cells_to_image(xy), rotated + (4.0, 0.0),
                               atol=1e-6)
    app.selectbox(key="w_view_run").select(1).run()  # any earlier run can be reopened
    assert app.session_state[state.SELECTED_RUN] == 1

    pairs = lm.to_landmarks(app.session_state[lm.PAIRS][data.uid])
    out = anndata.read_h5ad(io.BytesIO(aligned_h5ad_bytes(first, data, landmarks=pairs)))
    assert len(out.uns["gala"]["landmarks"]["error_px"]) == 4
    A = read_xenium_matrix(xenium_matrix_bytes(first, data))
    np.testing.assert_allclose(A, first.A, atol=1e-9)


def test_clicked_point_prefers_a_drawn_box_centre():
    assert lm.clicked_point(None) is None
    assert lm.clicked_point({"points": [], "box": [], "lasso": []}) is None
    assert lm.clicked_point({"points": [{"x": 3.0, "y": 4.0, "curve_number": 1}], "box": []}) == (3.0, 4.0)
    box = {"points": [{"x": 1.0, "y": 1.0}], "box": [{"x": [10.0, 14.0], "y": [20.0, 30.0]}]}
    assert lm.clicked_point(box) == (12.0, 25.0)
