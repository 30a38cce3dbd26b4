"""Data page: default demo, demo switch, uploads (good and bad), server paths (inside and outside)."""

from __future__ import annotations

import pytest

from ui import state


def _errors(at) -> list[str]:
    return [e.value for e in at.error]


def _metrics(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def _upload(at, cells: tuple, image: tuple) -> None:
    at.file_uploader(key="up_cells").set_value(cells)
    at.file_uploader(key="up_image").set_value(image)
    at.run()
    at.button(key="load_upload").click().run()


def test_first_screen_shows_the_default_demo(app):
    assert _metrics(app)["Cells"] == "504"
    assert _metrics(app)["Image (px)"] == "4,603 × 4,143"
    assert "merfish_mini" in app.sidebar.markdown[1].value
    assert "CPU" in app.sidebar.markdown[0].value or "CUDA" in app.sidebar.markdown[0].value
    assert not _errors(app)
    assert any("raster" in c.value for c in app.caption)


def test_load_other_demo_and_choose_a_gene(app):
    app.selectbox(key="w_demo").select("visium_tiny").run()
    app.button(key="load_demo").click().run()
    assert _metrics(app)["Cells"] == "100"
    gene = [o for o in app.selectbox(key="w_signal").options if not o.startswith("pca")][2]  # the most expressed gene
    app.selectbox(key="w_signal").select(gene).run()
    assert not app.exception and not _errors(app)
    assert app.session_state[state.SETTINGS]["signal"] == gene


def test_manual_dx_and_reduce(app):
    app.checkbox(key="w_dx_auto").uncheck().run()
    app.number_input(key="w_dx").set_value(20.0).run()
    app.checkbox(key="w_reduce_auto").uncheck().run()
    app.number_input(key="w_reduce").set_value(8).run()
    assert not app.exception
    r = app.session_state[state.RASTERS][1]
    assert r.dx == 20.0 and r.image_reduce == 8


def test_upload_good_files(app, demo_h5ad_bytes, png_bytes):
    _upload(app, ("cells.h5ad", demo_h5ad_bytes, "application/octet-stream"), ("he.png", png_bytes, "image/png"))
    assert not _errors(app) and not app.exception
    assert _metrics(app)["Cells"] == "100"
    assert app.session_state[state.DATA].origin == "upload"


@pytest.mark.parametrize(
    ("cells", "image", "needle"),
    [
        (("notes.h5ad", b"just some text, not hdf5\n" * 20, "text/plain"), None, "cells.h5ad"),
        ("no_spatial", None, "spatial"),
        (None, "corrupt", "image"),
    ],
)
def test_bad_uploads_show_an_error_and_keep_the_app_usable(app, demo_h5ad_bytes, no_spatial_h5ad_bytes, png_bytes,
                                                           corrupt_png_bytes, cells, image, needle):
    if cells is None:
        cells = ("cells.h5ad", demo_h5ad_bytes, "application/octet-stream")
    elif cells == "no_spatial":
        cells = ("cells.h5ad", no_spatial_h5ad_bytes, "application/octet-stream")
    image = ("he.png", corrupt_png_bytes if image == "corrupt" else png_bytes, "image/png")
    _upload(app, cells, image)
    assert not app.exception, "a traceback was shown"
    errors = _errors(app)
    assert len(errors) == 1 and needle.lower() in errors[0].lower(), errors
    assert "Traceback" not in errors[0]
    # the previous data stays loaded and the app keeps working
    assert _metrics(app)["Cells"] == "504"
    app.button(key="load_demo").click().run()
    assert not _errors(app)


def test_server_path_inside_the_data_folder(app, tmp_path, monkeypatch, demo_h5ad_bytes, png_bytes):
    monkeypatch.setenv("GALA_DATA_DIR", str(tmp_path))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "cells.h5ad").write_bytes(demo_h5ad_bytes)
    (tmp_path / "he.png").write_bytes(png_bytes)
    app.text_input(key="w_srv_cells").input("sub/cells.h5ad")
    app.text_input(key="w_srv_image").input(str(tmp_path / "he.png"))
    app.button(key="load_server").click().run()
    assert not _errors(app) and _metrics(app)["Cells"] == "100"


@pytest.mark.parametrize("path", ["../outside.h5ad", "/etc/passwd", "sub/../../x.h5ad"])
def test_server_path_outside_is_refused(app, tmp_path, monkeypatch, path):
    root = tmp_path / "data"
    root.mkdir()
    (tmp_path / "outside.h5ad").write_bytes(b"x")
    monkeypatch.setenv("GALA_DATA_DIR", str(root))
    app.text_input(key="w_srv_cells").input(path)
    app.text_input(key="w_srv_image").input("he.png")
    app.button(key="load_server").click().run()
    errors = _errors(app)
    assert errors and "outside the data folder" in errors[0]
    assert _metrics(app)["Cells"] == "504"
