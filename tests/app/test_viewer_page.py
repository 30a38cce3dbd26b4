"""Viewer page (AppTest): every layer in the figure, the before view on the image, the report, clean names."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from types import SimpleNamespace

import anndata
import numpy as np

from gala_engine.manual import affine_result
from ui import report, state
from ui.data import upload_problems
from ui.runs import BEFORE, aligned_h5ad_bytes, file_stem, image_record


def _truth_run(app) -> None:
    """The demo's true pose as run #1 (an affine result: no search needed)."""
    data = app.session_state[state.DATA]
    P = np.vstack([data.truth, [0.0, 0.0, 1.0]])  # (x, y) µm → (x, y) px
    swap = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    A = swap @ np.linalg.inv(P) @ swap  # image px (row, col) → µm (row, col)
    app.session_state[state.RESULTS] = {1: (data.uid, affine_result(A, image_shape=data.image.full_shape,
                                                                    source="test"))}


def _figure(app) -> dict:
    charts = app.get("plotly_chart")
    assert charts, "no chart drawn"
    return json.loads(charts[-1].proto.spec)


def test_viewer_layers_before_view_and_report(app):
    _truth_run(app)
    app.switch_page("pages/3_viewer.py").run()
    assert not app.exception, app.exception
    fig = _figure(app)
    traces = {t.get("name"): t for t in fig["data"]}
    assert {"image", "after LDDMM", "after affine", BEFORE, "ground truth", "deformation grid"} <= set(traces)
    assert traces["after affine"]["visible"] == "legendonly" and traces[BEFORE]["visible"] == "legendonly"
    assert traces["after LDDMM"].get("visible", True) is True
    assert traces["after LDDMM"]["type"] == "scattergl"
    assert traces["image"]["source"].startswith("data:image/jpeg;base64,")
    assert any(m.label == "Median distance to truth" and m.value == "0.0 px" for m in app.metric)
    runtime = next(m for m in app.metric if m.label == "Runtime")
    assert "CUDA" in runtime.help and "thread" in runtime.help  # says what it ran on and why

    # colour on another layer, brighter image: one fragment run, no error
    app.selectbox(key="w_view_colour_on").select(BEFORE).run()
    app.slider(key="w_view_gamma").set_value(0.5).run()
    assert not app.exception
    fig2 = _figure(app)
    app.button(key="w_view_display_reset").click().run()
    assert not app.exception and not app.warning and app.slider(key="w_view_gamma").value == 1.0
    assert _figure(app)["data"][0]["source"] == fig["data"][0]["source"]  # back to the plain image (cached)
    assert fig2["data"][0]["source"] != fig["data"][0]["source"]  # the image was redrawn with γ = 0.5
    before = next(t for t in fig2["data"] if t.get("name") == BEFORE)
    assert before["marker"].get("colorscale")  # the coloured layer follows the choice

    next(b for b in app.button if b.key == "make_report").click().run()
    assert not app.exception, app.exception
    data = app.session_state[state.DATA]
    png, text = app.session_state[report.REPORTS][(1, data.uid)]
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads(text)
    assert metrics["overlap_after"] > metrics["overlap_before"]  # the true pose overlaps better than centred
    assert metrics["png"] == "merfish_mini_report_run1.png" and "/tmp" not in text
    assert metrics["image"]["file"] and len(metrics["image"]["sha256"]) == 64
    uid, result = app.session_state[state.RESULTS][1]
    out = anndata.read_h5ad(io.BytesIO(aligned_h5ad_bytes(result, data, image=image_record(data))))
    rec = dict(out.uns["gala"]["image"])
    assert rec["file"] == data.image_file and rec["width_px"] == 4603 and rec["height_px"] == 4143
    assert rec["sha256"] == hashlib.sha256(Path(data.image.source).read_bytes()).hexdigest()
    labels = [b.proto.label for b in app.get("download_button")]
    assert "Download report .png" in labels and "Download report .json" in labels


def test_clean_download_stem():
    data = SimpleNamespace(cells_file="upload_ihc_rot90_scale.h5ad", name="upload: upload_ihc_rot90_scale.h5ad + "
                           "ihc.png")
    assert file_stem(data) == "upload_ihc_rot90_scale"
    assert file_stem(SimpleNamespace(cells_file="", name="demo: merfish_mini")) == "merfish_mini"
    assert file_stem(SimpleNamespace(cells_file="my cells (1).h5ad", name="")) == "my_cells_1"


def test_wrong_upload_types_are_said_in_words(app, png_bytes):
    app.file_uploader(key="up_cells").set_value(("cells.csv", b"x,y\n1,2\n", "text/csv"))
    app.file_uploader(key="up_image").set_value(("section.h5ad", b"\x89HDF\r\n", "application/octet-stream"))
    app.run()
    assert not app.exception
    errors = [e.value for e in app.error]
    assert any("'cells.csv' is not a cells file" in e and ".h5ad" in e for e in errors), errors
    assert any("'section.h5ad' is not an image" in e and "box on the left" in e for e in errors), errors
    assert app.button(key="load_upload").disabled
    assert upload_problems(SimpleNamespace(name="a.H5AD"), SimpleNamespace(name="b.TIFF")) == []
