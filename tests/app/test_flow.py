"""Issue 14 flows at the AppTest level: plain words and presets on the Align page, results tied to their
dataset, a refresh (a new session with the URL's ?sid=) restoring data, runs and the selected run, and the
parameter TOML round trip."""

from __future__ import annotations

import re

import pytest
from streamlit.testing.v1 import AppTest

from gala_engine.paramfile import dumps_params, loads_params
from gala_engine.params import AlignParams
from ui import session_store, state

from .conftest import APP

SHORT = {"num_generations": 4, "sol_per_pop": 12, "num_parents_mating": 6, "ga_restarts": 1,
         "refine_iterations": 5, "num_iterations": 3}
JARGON = re.compile(r"sigma|gene|epV|ncc|sol per pop|\bsse\b|lddmm|\bGA\b|num_|_", re.IGNORECASE)


@pytest.fixture(autouse=True)
def _store(tmp_path, monkeypatch):
    monkeypatch.setenv(session_store.ROOT_ENV, str(tmp_path / "store"))


def _align(app: AppTest) -> AppTest:
    app.switch_page("pages/2_align.py").run()
    assert not app.exception, app.exception
    return app


def _run_short(app: AppTest) -> None:
    for name, value in SHORT.items():
        app.number_input(key=f"w_p_{name}").set_value(value)
    app.button(key="start_job").click().run()
    assert not app.exception, app.exception
    job = app.session_state[state.JOB]
    job.join(120)
    app.run()
    assert not app.exception and app.session_state[state.HISTORY][-1]["state"] == "done"


def test_align_page_speaks_plain_words_and_starts_from_presets(app):
    _align(app)
    widgets = [*app.number_input, *app.selectbox, *app.checkbox, *app.text_input, *app.radio]
    labels = [w.label for w in widgets]
    assert "how far cells may move (larger = freer warp)" in labels and "smoothness of the warp (image px) (empty = " \
        "automatic)" in labels
    assert not [lab for lab in labels if JARGON.search(lab)], [lab for lab in labels if JARGON.search(lab)]
    assert "`sigmaR`" in app.number_input(key="w_p_sigmaR").help  # the method's name stays in the help
    assert not any("genes" in e.label.lower() for e in app.expander)
    assert [e.label for e in app.expander][0].startswith("Advanced")
    assert app.radio(key="w_preset_1").value == "standard"
    app.radio(key="w_preset_1").set_value("fast check").run()
    assert app.number_input(key="w_p_num_generations").value == AlignParams.fast_check().num_generations
    assert app.radio(key="w_preset_0").value == "fast check"
    app.radio(key="w_preset_0").set_value("thorough (published settings)").run()
    assert app.number_input(key="w_p_num_generations").value == AlignParams.tutorial().num_generations
    assert app.selectbox(key="w_p_fitness").value == "sse"
    app.number_input(key="w_p_num_generations").set_value(77).run()
    assert app.radio(key="w_preset_custom").value is None  # edited: custom
    assert any("Custom settings" in c.value for c in app.caption)


def test_new_data_hides_the_old_runs_and_a_refresh_restores_everything(app):
    _align(app)
    _run_short(app)
    rid = app.session_state[state.SELECTED_RUN]
    assert app.dataframe and app.get("plotly_chart")
    merfish = app.session_state[state.DATA]

    # new data: no stale curves or history, the run kept for its own data
    app.switch_page("pages/1_data.py").run()
    app.selectbox(key="w_demo").set_value("visium_tiny")
    app.button(key="load_demo").click().run()
    assert not app.exception, app.exception
    assert app.session_state[state.DATA].name == "demo: visium_tiny"
    _align(app)
    assert not app.dataframe  # no run table for this data
    assert any("other data" in c.value for c in app.caption)
    assert not any("Run #" in m.value for m in app.markdown) and not app.success
    assert app.session_state[state.SELECTED_RUN] is None

    # back to the first data: its run is there again (same content, same id)
    app.switch_page("pages/1_data.py").run()
    app.selectbox(key="w_demo").set_value("merfish_mini")
    app.button(key="load_demo").click().run()
    assert app.session_state[state.DATA].uid == merfish.uid
    assert app.session_state[state.SELECTED_RUN] == rid
    _align(app)
    assert app.dataframe[0].value.shape[0] == 1

    # a refresh = a new session with the same ?sid=: data, runs, the selected run and the settings come back.
    # (AppTest re-runs only the page after the first run, not app.py's autosave: write the store as it would;
    # the browser test covers the autosave itself.)
    sid = app.session_state[state.SESSION_ID]
    assert session_store.valid_id(sid) and app.query_params["sid"] == sid
    keys = [state.DATA, state.SETTINGS, state.PARAMS, state.GENES, state.HISTORY, state.RESULTS, state.SELECTED_RUN,
            state.RUN_COUNTER]
    session_store.save_dir(session_store.session_dir(sid), {k: app.session_state[k] for k in keys
                                                             if k in app.session_state})
    fresh = AppTest.from_file(APP, default_timeout=60)
    fresh.query_params["sid"] = sid
    fresh.run()
    assert not fresh.exception, fresh.exception
    assert fresh.session_state[state.SESSION_ID] == sid
    assert fresh.session_state[state.DATA].uid == merfish.uid
    assert fresh.session_state[state.SELECTED_RUN] == rid
    assert [r["run"] for r in fresh.session_state[state.HISTORY]] == [rid]
    uid, result = fresh.session_state[state.RESULTS][rid]
    assert uid == merfish.uid
    _, original = app.session_state[state.RESULTS][rid]
    assert (result.A == original.A).all() and (result.v == original.v).all()
    assert fresh.session_state[state.PARAMS]["num_generations"] == SHORT["num_generations"]
    fresh.switch_page("pages/3_viewer.py").run()
    assert not fresh.exception and not fresh.info  # the viewer has the run


def test_a_link_with_a_bad_or_unknown_id_starts_a_new_session(tmp_path):
    for asked in ("../../etc", "0" * 32):
        at = AppTest.from_file(APP, default_timeout=60)
        at.query_params["sid"] = asked
        at.run()
        assert not at.exception
        sid = at.session_state[state.SESSION_ID]
        assert sid != asked and session_store.valid_id(sid)
        assert "expired" in at.session_state[state.SESSION_NOTE]


def test_params_toml_round_trip_and_bad_file(app):
    from ui.params_form import import_toml

    params = AlignParams.fast_check(random_seed=7, sigmaR=1e5)
    assert import_toml(dumps_params(params).encode(), "p.toml") == params
    assert loads_params(dumps_params(AlignParams.tutorial())) == AlignParams.tutorial()
    from gala_engine.errors import GalaInputError

    with pytest.raises(GalaInputError, match="unknown"):
        import_toml(b"bogus = 1\n", "p.toml")
    with pytest.raises(GalaInputError, match="at most"):
        import_toml(b"#" * 70_000, "p.toml")


def test_an_aligned_h5ad_opens_as_a_run_with_its_warp(app, tmp_path):
    import numpy as np

    from gala_engine.demo import load_demo
    from gala_engine.io import read_image
    from gala_engine.section import align_section, prepare_section, write_aligned

    demo = load_demo("visium_tiny")
    r = prepare_section(demo.adata, read_image(demo.image_path))
    res = align_section(r, AlignParams(**{**SHORT, "num_iterations": 10}, seed_population=False,
                                       lddmm_validate=False))
    path = write_aligned(demo.adata, res, tmp_path / "aligned.h5ad")
    suffix = demo.image_path.suffix.lstrip(".")
    app.file_uploader(key="up_cells").set_value(("aligned.h5ad", path.read_bytes(), "application/octet-stream"))
    app.file_uploader(key="up_image").set_value((f"he.{suffix}", demo.image_path.read_bytes(), f"image/{suffix}"))
    app.run()
    app.button(key="load_upload").click().run()
    assert not app.exception, app.exception
    rows = app.session_state[state.HISTORY]
    assert [r["state"] for r in rows] == ["opened from file"]
    uid, back = app.session_state[state.RESULTS][rows[0]["run"]]
    assert uid == app.session_state[state.DATA].uid and back.origin["source"] == "file"
    np.testing.assert_allclose(back.v, res.v)
    assert any("aligned result" in w.value for w in app.warning)
    app.button(key="load_upload").click().run()  # the same file again: no second copy of the run
    assert len(app.session_state[state.HISTORY]) == 1
    app.switch_page("pages/3_viewer.py").run()
    assert not app.exception and not app.info


def test_open_session_file_on_the_data_page_restores_the_runs(app):
    _align(app)
    _run_short(app)
    keys = session_store.state_keys()
    raw = session_store.session_zip({k: app.session_state[k] for k in keys if k in app.session_state})
    rid = app.session_state[state.SELECTED_RUN]
    fresh = AppTest.from_file(APP, default_timeout=60)
    fresh.run()
    assert not fresh.session_state[state.HISTORY] if state.HISTORY in fresh.session_state else True
    fresh.file_uploader(key="up_session").set_value(("mine.zip", raw, "application/zip"))
    fresh.run()
    assert not fresh.exception, fresh.exception
    assert not fresh.error, [e.value for e in fresh.error]
    assert [r["run"] for r in fresh.session_state[state.HISTORY]] == [rid]
    assert fresh.session_state[state.SELECTED_RUN] == rid and rid in fresh.session_state[state.RESULTS]
    # a hostile file: refused with its reason on the Data page, the session unchanged
    fresh.file_uploader(key="up_session").set_value(("evil.zip", b"PK\x05\x06" + b"\0" * 18, "application/zip"))
    fresh.run()
    assert any("evil.zip" in e.value and "cannot be opened" in e.value for e in fresh.error)
    assert [r["run"] for r in fresh.session_state[state.HISTORY]] == [rid]
