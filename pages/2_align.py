"""Align page: settings preset + Start, progress and the current pose in the first screen; every number
below under "Advanced"; the runs of the loaded data."""

from __future__ import annotations

import streamlit as st

from gala_engine.errors import GalaInputError
from gala_engine.params import AlignParams
from ui import align_live, state
from ui.budget import check_run
from ui.data import DataError, rasters
from ui.howto import how_it_works
from ui.jobs import start_job
from ui.params_form import (
    auto_gene_space,
    gene_inputs,
    gene_space,
    mirror_checkbox,
    params_inputs,
    preset_picker,
    toml_controls,
)
from ui.runs import next_run_id

st.title("2 · Align")
data = state.get(state.DATA)
if data is None:
    st.info("Load data on the Data page first.")
    st.page_link("pages/1_data.py", label="Go to Data", icon=":material/folder_open:")
    st.stop()
try:
    r = rasters(data, state.settings())
except DataError as err:
    st.error(f"The pictures to compare cannot be made with the current Data settings: {err}")
    st.stop()

job = align_live.current_job(data)
running = job is not None and job.running
every = 1.0 if running else None

left, right = st.columns([1, 1.7], gap="small")
with left:
    preset_picker()
    mirror_checkbox()
    start = False if running else st.button("Start alignment", type="primary", key="start_job",  # Stop takes its place
                                            icon=":material/play_arrow:")
    messages = st.container()
    align_live.status_panel(data, every=every, drawn_running=running)
with right:
    align_live.pose_panel(data, every=every)

with st.expander("Advanced: every number (search, warp, search ranges, settings files)"):
    toml_controls()
    values = params_inputs()
    genes = gene_inputs(auto_gene_space(r, values.get("gene_space_mode") or "extent"))
with st.expander("How it works"):
    how_it_works()
align_live.history_table(data)

if err := state.get(state.FORM_ERROR):
    messages.error(err)
if start:
    try:
        params = AlignParams.from_dict(values)
        space = gene_space(genes, auto_gene_space(r, params.gene_space_mode))
        check_run(r, params)  # the session's memory / time budget, before any work
    except (GalaInputError, ValueError) as err:
        messages.error(f"Check the parameters: {err}")
    else:
        st.session_state.pop(state.FORM_ERROR, None)
        st.session_state[state.JOB] = start_job(r, params, gene_space=space, run_id=next_run_id(), context=data)
        st.rerun()
