"""The sidebar every page shows: device, loaded data, run state."""

from __future__ import annotations

import streamlit as st

from gala_engine.device import device_name, share_cpu_with_server

from . import state
from .runs import record_finished


@st.cache_resource(show_spinner=False)
def engine_device() -> str:
    """Name of the device the engine runs on ('CPU · n threads' or 'CUDA: <card>'), resolved once per
    process; on CPU, one core is left to the web server."""
    name = device_name()
    if name == "CPU":
        threads = share_cpu_with_server()
        name = f"CPU · {threads} thread{'s' if threads > 1 else ''}"
    return name


def sidebar() -> None:
    """Draw the shared sidebar."""
    with st.sidebar:
        st.markdown(f"**Engine device:** {engine_device()}")
        data = state.get(state.DATA)
        if data is None:
            st.markdown("**Data:** none loaded")
        else:
            st.markdown(f"**Data:** {data.name}")
            h, w = data.image.full_shape
            st.caption(f"{data.adata.n_obs:,} cells × {data.adata.n_vars:,} genes · image {w:,} × {h:,} px")
        if note := state.get(state.SESSION_NOTE):
            st.warning(note)
        job = state.get(state.JOB)
        run_state(every=1.0 if job is not None and job.running else None)


def run_state(*, every: float | None) -> None:
    """The run line; refreshes itself every second while a job runs."""

    @st.fragment(run_every=every)
    def _draw() -> None:
        job = state.get(state.JOB)
        if job is None:
            st.markdown("**Run:** none running" if state.history() else "**Run:** none yet")
        else:
            snap = job.snapshot()
            from .align_live import stage_words

            stage = stage_words(snap.stage)
            label = {"waiting": "waiting for the engine", "running": f"running ({stage})"}
            data = state.get(state.DATA)
            other = "" if data is None or getattr(job.context, "uid", None) == data.uid else \
                f" (on {getattr(job.context, 'name', 'other data')})"
            st.markdown(f"**Run #{job.run_id}{other}:** {label.get(snap.state, snap.state)} · {snap.elapsed_s:.0f} s")
            if not job.running and not job.reported:  # finished while the user was on another page
                record_finished(job, job.context)
                st.rerun()
        st.caption(f"{len(state.history())} finished run(s) in this session")

    _draw()
