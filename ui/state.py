"""Session-state keys (one place for the magic strings) and small accessors.

Values the user chose live in keys no widget owns, so they survive page switches; widget keys are
prefixed ``w_`` and re-seeded from these stores.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import streamlit as st

DATA = "gala_data"  # ui.data.Dataset currently loaded
DATA_ERROR = "gala_data_error"  # last loading error message (str) to show on the Data page
SETTINGS = "gala_settings"  # dict: signal, dx, feature, reduce (raster choices)
RASTERS = "gala_rasters"  # (settings key, SectionRasters)
PARAMS = "gala_params"  # dict of AlignParams values chosen in the form
GENES = "gala_gene_ranges"  # dict: angle_low, angle_high, flips, custom ranges
JOB = "gala_job"  # ui.jobs.Job of this session (running or finished)
HISTORY = "gala_history"  # list of dicts, one per finished run
RESULTS = "gala_results"  # dict run id → (dataset uid, AlignmentResult)
SELECTED_RUN = "gala_selected_run"  # run id shown in the viewer
TMPDIR = "gala_tmpdir"  # ui.session_files.SessionFolder: per-session spool folder, removed with the session
RUN_COUNTER = "gala_run_counter"  # last run number given out
AUTOLOADED = "gala_autoloaded"  # the default demo was loaded once on the first screen
FORM_ERROR = "gala_form_error"  # a message about the Align page's settings (bad import), shown until fixed
SESSION_NOTE = "gala_session_note"  # a message about restoring the session (shown in the sidebar until data load)
SESSION_ID = "gala_session_id"  # id of this session's server-side store (also in the URL: ?sid=…)
MEMO = "gala_memo"  # name → (signature, value): live figures rebuilt only when their data changed

T = TypeVar("T")

DEFAULT_SETTINGS: dict[str, Any] = {"signal": "total counts", "dx": None, "feature": "auto", "reduce": None}


def get(key: str, default: Any = None) -> Any:
    """``st.session_state[key]`` or ``default``."""
    return st.session_state.get(key, default)


def settings() -> dict[str, Any]:
    """The raster settings store (created with defaults)."""
    if SETTINGS not in st.session_state:
        st.session_state[SETTINGS] = dict(DEFAULT_SETTINGS)
    return st.session_state[SETTINGS]


def history() -> list[dict[str, Any]]:
    """The run history list (created empty)."""
    return st.session_state.setdefault(HISTORY, [])


def results() -> dict[int, Any]:
    """Finished results by run id (created empty)."""
    return st.session_state.setdefault(RESULTS, {})


def memo(name: str, signature: tuple, build: Callable[[], T]) -> T:
    """This session's ``build()``, rebuilt only when ``signature`` changes: the live view redraws every
    second while a run goes, and rebuilding unchanged figures costs every session's server time."""
    store = st.session_state.setdefault(MEMO, {})
    hit = store.get(name)
    if hit is None or hit[0] != signature:
        hit = store[name] = (signature, build())
    return hit[1]
