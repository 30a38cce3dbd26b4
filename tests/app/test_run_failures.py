"""An engine exception during a run: a message with the run's parameters, the inputs untouched, and the
session can start another run."""

from __future__ import annotations

import numpy as np
import pytest

import ui.jobs
from gala_engine.section import align_section
from ui import state

from .test_align_viewer import SHORT, _align, _set_short, _submit, _wait


def _exploding_runner(rasters, params, *, gene_space=None, progress=None, should_stop=None):
    """The real engine, made to fail in the middle of the GA (as a CUDA OOM or a bug would)."""

    def boom(event):
        progress(event)
        if event.stage == "ga" and event.step >= 2:
            raise RuntimeError("CUDA out of memory (simulated)")

    return align_section(rasters, params, gene_space=gene_space, progress=boom, should_stop=should_stop)


def _copies(data, rasters):
    X = data.adata.X
    return {
        "spatial": np.array(data.adata.obsm["spatial"], copy=True),
        "X": X.toarray() if hasattr(X, "toarray") else np.array(X, copy=True),
        "obs_names": list(data.adata.obs_names),
        "image": data.image.pixels.copy(),
        "I": rasters.I.copy(),
        "J": rasters.J.copy(),
    }


def test_engine_exception_is_a_message_and_the_session_goes_on(app, monkeypatch: pytest.MonkeyPatch):
    _align(app)
    data = app.session_state[state.DATA]
    rasters = app.session_state[state.RASTERS][1]
    before = _copies(data, rasters)

    monkeypatch.setattr(ui.jobs, "align_section", _exploding_runner)
    _set_short(app)
    _submit(app)
    assert not app.exception
    _wait(app)
    assert not app.exception, app.exception
    errors = [e.value for e in app.error]
    assert len(errors) == 1, errors
    msg = errors[0]
    assert "RuntimeError: CUDA out of memory (simulated)" in msg and "Run #1" in msg
    for name, value in SHORT.items():
        assert f"{name}={value!r}" in msg, (name, msg)
    assert "Your data are unchanged" in msg
    rows = app.session_state[state.HISTORY]
    assert len(rows) == 1 and rows[0]["state"] == "error" and not app.session_state.get(state.RESULTS)

    after = _copies(app.session_state[state.DATA], app.session_state[state.RASTERS][1])
    assert app.session_state[state.DATA] is data
    for key, value in before.items():
        assert np.array_equal(np.asarray(value), np.asarray(after[key])), key

    monkeypatch.setattr(ui.jobs, "align_section", align_section)  # the engine works again
    _submit(app)
    _wait(app)
    assert not app.exception and not app.error
    rows = app.session_state[state.HISTORY]
    assert [r["state"] for r in rows] == ["error", "done"] and 2 in app.session_state[state.RESULTS]


@pytest.mark.timeout(120)
def test_a_stopped_run_leaves_the_session_usable(app):
    _align(app)
    data = app.session_state[state.DATA]
    before = np.array(data.adata.obsm["spatial"], copy=True)
    _set_short(app, num_generations=5000, refine_iterations=0, num_iterations=0)
    _submit(app)
    job = app.session_state[state.JOB]
    job.stop()
    job.join(30)
    assert job.state == "stopped"
    app.run()
    assert not app.exception and not app.error
    _set_short(app)  # a normal run afterwards
    _submit(app)
    _wait(app)
    assert not app.exception and not app.error
    assert [r["state"] for r in app.session_state[state.HISTORY]] == ["stopped", "done"]
    np.testing.assert_array_equal(app.session_state[state.DATA].adata.obsm["spatial"], before)
