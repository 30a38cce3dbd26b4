"""The app's per-session compute budget (tighter than the command line's, as sessions share the server).

Each run must fit :func:`session_budget` — memory per job (``GALA_APP_MEMORY_BUDGET_GB``, default the
smaller of 4 GiB and the engine's default) and estimated time per run (``GALA_APP_RUN_BUDGET_S``, default
15 min) — and a session may start runs worth at most ``GALA_APP_SESSION_BUDGET_S`` (default 4 h) of
estimated time in all. Estimates come from :mod:`gala_engine.budget`, before any work.
"""

from __future__ import annotations

import os
from typing import Any

import streamlit as st

from gala_engine.budget import Budget, Estimate, check_align
from gala_engine.errors import GalaInputError

_USED = "gala_budget_used_s"


def _env(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name, "") or default)
    except ValueError:
        return default
    return value if value > 0 else default


def session_budget() -> Budget:
    """What the next job of this session may use."""
    memory = min(int(_env("GALA_APP_MEMORY_BUDGET_GB", 4.0) * 2**30), Budget.default().memory_bytes)
    left = _env("GALA_APP_SESSION_BUDGET_S", 4 * 3600.0) - float(st.session_state.get(_USED, 0.0))
    return Budget(memory, max(0.0, min(_env("GALA_APP_RUN_BUDGET_S", 900.0), left)))


def check_run(rasters: Any, params: Any) -> Estimate:
    """Refuse a run that does not fit the session's budget; otherwise charge its estimated time."""
    budget = session_budget()
    if budget.seconds <= 0:
        raise GalaInputError("this session has used its compute budget; open a new session (reload the page later) "
                             "or run large alignments with the gala-align command line.")
    est = check_align(rasters, params, budget=budget)
    st.session_state[_USED] = float(st.session_state.get(_USED, 0.0)) + est.seconds
    return est
