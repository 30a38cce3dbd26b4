"""The app's side of issue 15: GALA_DATA_DIR="" disables server paths, the per-session budget, image selectors."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tifffile

from tests.corpus import base_rgb
from ui import budget as ui_budget
from ui.data import DataError, data_dir, resolve_server_path


@pytest.mark.parametrize("value", ["", "   "])
def test_empty_data_dir_disables_server_paths(app, monkeypatch, tmp_path, value) -> None:
    monkeypatch.setenv("GALA_DATA_DIR", value)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cells.h5ad").write_bytes(b"x")  # in the working folder: must not become readable
    assert data_dir() is None
    with pytest.raises(DataError, match="disabled"):
        resolve_server_path("cells.h5ad")
    app.run()
    app.text_input(key="w_srv_cells").input("cells.h5ad")
    app.text_input(key="w_srv_image").input("cells.h5ad")
    app.button(key="load_server").click().run()
    errors = [e.value for e in app.error]
    assert len(errors) == 1 and "disabled" in errors[0] and str(tmp_path) not in errors[0]


def test_server_path_errors_do_not_show_the_server_folder(app, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("GALA_DATA_DIR", str(tmp_path))
    app.text_input(key="w_srv_cells").input("/etc/passwd")
    app.text_input(key="w_srv_image").input("x.png")
    app.button(key="load_server").click().run()
    errors = [e.value for e in app.error]
    assert errors and "outside the data folder" in errors[0] and str(tmp_path) not in errors[0]
    assert all(str(tmp_path) not in c.value for c in app.caption)


def test_session_budget_runs_out(app, monkeypatch) -> None:
    monkeypatch.setenv("GALA_APP_SESSION_BUDGET_S", "3600")
    app.switch_page("pages/2_align.py").run()
    for name, value in {"num_generations": 3, "sol_per_pop": 8, "num_parents_mating": 4, "ga_restarts": 1,
                        "refine_iterations": 0, "num_iterations": 0}.items():
        app.number_input(key=f"w_p_{name}").set_value(value)
    next(b for b in app.button if b.label == "Start alignment").click().run()
    assert not app.exception and not app.error
    from ui import state

    app.session_state[state.JOB].join(60)
    used = app.session_state[ui_budget._USED]
    assert 0 < used < 60  # the run's estimate was charged to the session
    app.session_state[ui_budget._USED] = 3600.0  # as after many runs
    app.run()
    next(b for b in app.button if b.label == "Start alignment").click().run()
    errors = [e.value for e in app.error]
    assert len(errors) == 1 and "used its compute budget" in errors[0], errors


def test_image_selectors_pick_the_plane(app, tmp_path) -> None:
    z = np.stack([np.zeros((96, 128), np.uint8), base_rgb()[..., 0], base_rgb()[..., 1]])
    buf = io.BytesIO()
    tifffile.imwrite(buf, z, photometric="minisblack", metadata={"axes": "ZYX"})
    from tests.corpus import good_cells

    cells = good_cells(tmp_path)
    app.file_uploader(key="up_cells").set_value(("c.h5ad", cells.read_bytes(), "application/octet-stream"))
    app.file_uploader(key="up_image").set_value(("z.tif", buf.getvalue(), "image/tiff"))
    app.run()
    app.number_input(key="w_up_plane").set_value(2).run()
    app.button(key="load_upload").click().run()
    assert not app.exception and not app.error
    from ui import state

    data = app.session_state[state.DATA]
    np.testing.assert_allclose(data.image.pixels[..., 0], base_rgb()[..., 1] / 255.0, atol=1e-6)
    assert any("using plane 2" in w.value for w in app.warning)
