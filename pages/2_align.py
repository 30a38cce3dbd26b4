"""Align page: parameters (from AlignParams) → background job → live curves → run history."""

from __future__ import annotations

import streamlit as st

from gala_engine.errors import GalaInputError
from gala_engine.io import spatial_yx
from gala_engine.params import AlignParams
from ui import figures, state
from ui.budget import check_run
from ui.data import DataError, rasters
from ui.jobs import start_job
from ui.params_form import auto_gene_space, gene_inputs, gene_space, params_inputs
from ui.runs import history_table, next_run_id, record_finished

st.title("2 · Align")
data = state.get(state.DATA)
if data is None:
    st.info("Load data on the Data page first.")
    st.page_link("pages/1_data.py", label="Go to Data", icon=":material/folder_open:")
    st.stop()
try:
    r = rasters(data, state.settings())
except DataError as err:
    st.error(f"The rasters cannot be made with the current Data settings: {err}")
    st.stop()

job = state.get(state.JOB)
running = job is not None and job.running


@st.fragment(run_every=1.0 if running else None)
def live() -> None:
    """The live view of the session's job; redraws itself every second while the job runs."""
    job = state.get(state.JOB)
    if job is None:
        st.caption("No run yet: set the parameters and press **Start alignment**. "
                   "A default run on the MERFISH demo takes about 5–30 s on a 2-core CPU (measured: 6–11 s "
                   "alone, up to 30 s while other sessions share the CPU).")
        return
    snap, job_data = job.snapshot(), job.context
    head = st.columns(3)
    head[0].metric("Run", f"#{job.run_id}: {snap.state}")
    head[1].metric("Elapsed", f"{snap.elapsed_s:.1f} s")
    head[2].metric("Best GA fitness", f"{max(snap.ga_best):.4f}" if snap.ga_best else "–")
    if snap.genes is not None:
        g = snap.genes
        st.markdown(f"**Current best transform:** angle {g[0]:.1f}°, scale (y, x) = ({g[1]:.4g}, {g[2]:.4g}) µm/px, "
                    f"shift (y, x) = ({g[3]:.1f}, {g[4]:.1f}) µm")
    if job.running:
        st.progress(min(1.0, snap.step / max(snap.total, 1)), text=f"{snap.stage or 'starting'}: "
                    f"step {snap.step} of {snap.total}")
        if st.button("Stop", key="stop_job", help="Ends the run within a second; the best so far is kept."):
            job.stop()
    c1, c2, c3 = st.columns([2, 2, 1.3])
    run = (job.run_id, id(job))
    c1.plotly_chart(state.memo("fitness", (run, len(snap.ga_best), tuple(map(len, snap.refine))),
                               lambda: figures.fitness_figure(snap.ga_best, snap.ga_mean, snap.refine)),
                    theme=None, key="fig_fitness")
    c2.plotly_chart(state.memo("energy", (run, len(snap.energy)), lambda: figures.energy_figure(snap.energy)),
                    theme=None, key="fig_energy")
    if snap.genes is not None:
        c3.plotly_chart(state.memo("preview", (run, tuple(snap.genes)), lambda: figures.preview_figure(
            job_data.image, figures.genes_to_image_xy(snap.genes, job.rasters.xI, job.rasters.xJ,
                                                      spatial_yx(job_data.adata)[:, ::-1]))),
                        theme=None, key="fig_preview")
    if snap.state == "error":
        st.error(snap.error)
    if not job.running:
        if not job.reported:
            record_finished(job, job_data)
        if running:  # the page around this fragment was drawn for a running job: redraw it whole (again,
            st.rerun()  # should a redraw have been cut short, e.g. by one of this fragment's own ticks)


live()

with st.form("align_form", border=True):
    values = params_inputs()
    auto = auto_gene_space(r, values.get("gene_space_mode") or "extent")
    genes = gene_inputs(auto)
    start = st.form_submit_button("Start alignment", type="primary", disabled=running)
if start:
    try:
        params = AlignParams.from_dict(values)
        space = gene_space(genes, auto)
        check_run(r, params)  # the session's memory / time budget, before any work
    except (GalaInputError, ValueError) as err:
        st.error(f"Check the parameters: {err}")
    else:
        st.session_state[state.PARAMS] = params.to_dict()
        st.session_state[state.GENES] = genes
        st.session_state[state.JOB] = start_job(r, params, gene_space=space, run_id=next_run_id(),
                                                     context=data)
        st.rerun()

rows = state.history()
if rows:
    st.subheader("Run history")
    table, columns = history_table(rows)  # short headers: fits the page instead of running off its right edge
    st.dataframe(table, column_config=columns, hide_index=True, key="history_table")
    st.page_link("pages/3_viewer.py", label="Open the viewer →", icon=":material/visibility:")
