"""The corpus of bad and awkward inputs uploaded on the Data page (AppTest).

One app session takes every upload in turn, as a user would: a bad file shows one specific error on
the page (no exception) and the session stays usable; a legitimate one loads (with its warning).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from gala_engine import constants
from gala_engine.params import AlignParams
from tests.corpus import Case, build_pair
from tests.corpus_security import (
    ALL_CASES,
    PARAM_CASES,
    SECURITY_CASES,
    ParamCase,
    assert_server_files_unread,
    hashes,
)
from ui import state

from .conftest import APP

APP_CASES = [c for c in ALL_CASES if c.app]
APP_PARAM_CASES = [c for c in PARAM_CASES if c.app]


@pytest.fixture(scope="module")
def session() -> AppTest:
    """One app session shared by all the uploads of this module."""
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception
    return at


def _upload(at: AppTest, cells: Path, image: Path) -> None:
    at.file_uploader(key="up_cells").set_value((cells.name, cells.read_bytes(), "application/octet-stream"))
    at.file_uploader(key="up_image").set_value((image.name, image.read_bytes(), "application/octet-stream"))
    at.run()
    at.button(key="load_upload").click().run()


def _cells_metric(at: AppTest) -> str:
    return next(m.value for m in at.metric if m.label == "Cells")


@pytest.mark.parametrize("case", APP_CASES, ids=[c.name for c in APP_CASES])
def test_app_upload(case: Case, session: AppTest, tmp_path: Path) -> None:
    at = session
    cells, image = build_pair(case, tmp_path)
    inputs = hashes([cells, image])
    before = at.session_state[state.DATA] if state.DATA in at.session_state else None
    _upload(at, cells, image)
    assert not at.exception, at.exception
    assert hashes([cells, image]) == inputs
    assert_server_files_unread(tmp_path)
    errors = [e.value for e in at.error]
    shown = errors + [w.value for w in at.warning]
    assert not any(str(tmp_path) in m or "/tmp/" in m for m in shown), shown  # no server paths on the page
    warnings = [w.value for w in at.warning]
    if not case.ok:
        assert len(errors) == 1 and re.search(case.expect, errors[0]), errors
        assert "Traceback" not in errors[0]
        data = at.session_state[state.DATA]
        if data is before:  # refused at load time: the previous data stay loaded, no upload spooled
            assert _cells_metric(at)
        else:  # loaded, but the chosen signal cannot be used: cell density can
            at.selectbox(key="w_signal").select(constants.SIGNAL_DENSITY).run()
            assert not at.exception and not at.error
            assert at.session_state[state.RASTERS][1].signal == constants.SIGNAL_DENSITY
            at.selectbox(key="w_signal").select(constants.SIGNAL_TOTAL_COUNTS).run()
        at.button(key="load_demo").click().run()  # the session goes on
        assert not at.exception and not at.error and _cells_metric(at) == "504"
        return
    assert not errors, errors
    data = at.session_state[state.DATA]
    assert data is not before and data.origin == "upload"
    assert _cells_metric(at) == f"{data.adata.n_obs:,}"
    if case.warn:
        assert any(re.search(case.warn, w) for w in warnings), warnings
    if case.check:
        case.check(data.image if case.kind == "image" else data.adata)


def test_every_case_that_the_app_can_produce_is_covered() -> None:
    assert len(APP_CASES) >= len(ALL_CASES) - 1
    assert {c.name for c in ALL_CASES} - {c.name for c in APP_CASES} == {"cells_unknown_gene"}
    assert {c.name for c in SECURITY_CASES} <= {c.name for c in APP_CASES}
    assert len(APP_PARAM_CASES) >= 3


@pytest.mark.parametrize("case", APP_PARAM_CASES, ids=[c.name for c in APP_PARAM_CASES])
def test_app_refuses_bad_parameters_before_any_work(case: ParamCase, session: AppTest) -> None:
    at = session
    at.button(key="load_demo").click().run()
    at.switch_page("pages/2_align.py").run()
    for name, value in case.app.items():
        at.number_input(key=f"w_p_{name}").set_value(value)
    next(b for b in at.button if b.label == "Start alignment").click().run()
    assert not at.exception, at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and errors[0].startswith("Check the parameters:"), errors
    assert re.search(case.expect, errors[0]), errors[0]
    assert state.JOB not in at.session_state or at.session_state[state.JOB] is None  # no job was started
    for name in case.app:  # back to the defaults for the next case (run: the Align page keeps what was entered)
        at.number_input(key=f"w_p_{name}").set_value(AlignParams().to_dict()[name]).run()
    at.switch_page("pages/1_data.py").run()


def test_app_dx_beyond_the_budget_is_refused(session: AppTest) -> None:
    """dx = 1000 µm in the Data page's box: refused at once with what to do (it once took 12–16 GB)."""
    at = session
    at.switch_page("pages/1_data.py").run()
    at.button(key="load_demo").click().run()
    at.checkbox(key="w_dx_auto").uncheck().run()
    at.number_input(key="w_dx").set_value(1e6).run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and re.search(r"dx=1e\+06 µm is larger than the tissue.*smaller dx", errors[0]), errors
    at.checkbox(key="w_dx_auto").check().run()
    assert not at.error
