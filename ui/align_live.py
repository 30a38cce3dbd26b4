"""The Align page's first screen: the run of the loaded data (progress, Stop, live curves, current pose).

Everything here belongs to the dataset on screen: a job started on other data is not drawn (its results
stay with that data's history). Two fragments redraw themselves every second while a job runs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import streamlit as st

from gala_engine.io import spatial_yx

from . import figures, state
from .data import Dataset
from .jobs import LOG_COUNTS_STAGE, Job, Snapshot, pose_words
from .runs import history_table as runs_table
from .runs import record_finished

STAGE_WORDS = {"": "preparing", "scan": "scanning rotations", "ga": "searching for the pose",
               "refine": "fine-tuning the pose", "lddmm": "warping",
               "nuclei": "moving each cell onto its nucleus"}


def stage_words(stage: str) -> str:
    """The engine's stage in words; the second search of the count scale (``LOG_COUNTS_STAGE``) says so."""
    base = stage.removesuffix(LOG_COUNTS_STAGE)
    words = STAGE_WORDS.get(base, base)
    return f"{words}, again on log(1 + counts)" if base != stage else words


CURVES = ("search", "fine-tuning", "warp")
CURVE_NOTES = {
    "search": "The match score (1 = perfect) of the best and the average candidate pose in each search round "
              "(several independent searches follow one another).",
    "fine-tuning": "The best pose fine-tuned on finer and finer pictures (dashed: coarser levels, solid: full "
                   "detail). Each level starts lower, as finer pictures match less well: only the rise within a "
                   "level counts.",
    "warp": "The warp's energy (mismatch + bending; lower is better). Where the weights of matching vs background "
            "pixels are re-estimated the energy is on a new scale: a jump there is not a divergence.",
}
_STAGE_CURVE = {"scan": "search", "ga": "search", "refine": "fine-tuning", "lddmm": "warp"}


def current_job(data: Dataset | None) -> Job | None:
    """The session's job if it aligns ``data`` (else None: a run on other data is not shown here)."""
    job = state.get(state.JOB)
    if job is None or data is None or getattr(job.context, "uid", None) != data.uid:
        return None
    return job


def _curve_figure(name: str, snap: Any, run: tuple) -> Any:
    if name == "search":
        return state.memo("curve_search", (run, len(snap.ga_best)),
                          lambda: figures.search_figure(snap.ga_best, snap.ga_mean))
    if name == "fine-tuning":
        return state.memo("curve_refine", (run, tuple(map(len, snap.refine))),
                          lambda: figures.refine_figure(snap.refine))
    return state.memo("curve_energy", (run, len(snap.energy)),
                      lambda: figures.energy_figure(snap.energy, snap.energy_steps))


def result_snapshot(result: Any) -> Snapshot:
    """A finished run's curves and pose as a :class:`Snapshot` (after a refresh, or for a run made without a job)."""
    best = [v for h in result.ga_history for v in h.get("best", [])]
    mean = [v for h in result.ga_history for v in h.get("mean", [])]
    energy = [float(e[0]) for e in result.energy_history if len(e)]
    return Snapshot(state="stopped" if result.stopped else "done", elapsed_s=float(result.runtime_s), stage="",
                    ga_best=best, ga_mean=mean, refine=[], energy=energy, genes=np.asarray(result.genes), step=0,
                    total=0, error=None, result=result)


def shown_run(data: Dataset) -> tuple[Job | None, int, Snapshot] | None:
    """What the first screen shows: the running (or just finished) job of this data, else the selected run of
    this data (its latest when the selection is another data's), else None."""
    job = current_job(data)
    selected = state.get(state.SELECTED_RUN)
    if job is not None and (job.running or not job.reported or job.run_id == selected or job.result is None):
        return job, job.run_id, job.snapshot()
    mine = {rid: res for rid, (uid, res) in state.results().items() if uid == data.uid}
    if not mine:
        return None
    rid = selected if selected in mine else max(mine)
    return None, rid, state.memo("result_snapshot", (rid, id(mine[rid])), lambda: result_snapshot(mine[rid]))


def status_panel(data: Dataset, *, every: float | None, drawn_running: bool) -> None:
    """Progress, Stop, one live curve (follows the run's stage, or chosen) and the current pose in words."""

    @st.fragment(run_every=every)
    def _draw() -> None:
        shown = shown_run(data)
        if shown is None:
            st.caption("No run on this data yet: choose the settings and press **Start alignment**.")
            return
        job, rid, snap = shown
        running = job is not None and job.running
        if running:
            stage = stage_words(snap.stage)
            if snap.state == "waiting":
                stage = "waiting for another session's run to finish"
            bar, stop = st.columns([2.2, 1], vertical_alignment="bottom")
            bar.progress(min(1.0, snap.step / max(snap.total, 1)),
                         text=f"Run #{rid}: {stage} · step {snap.step} of {snap.total} · {snap.elapsed_s:.0f} s")
            stop.button("Stop", key="stop_job", on_click=job.stop,
                        help="Ends the run within a second; the best pose so far is kept.")
        elif snap.state == "error":
            st.error(snap.error)
        else:
            source = snap.result.origin.get("source") if snap.result is not None else None
            word = "stopped (best so far kept)" if snap.state == "stopped" else "finished"
            st.markdown(f":green[:material/check_circle: Run #{rid} ({source}) is shown.]" if source else
                        f":green[:material/check_circle: Run #{rid} {word} in {snap.elapsed_s:.1f} s.]")
        available = [c for c, n in zip(CURVES, (len(snap.ga_best), len(snap.refine), len(snap.energy)), strict=True)
                     if n]
        if available:
            picked = None
            if not running:  # while it runs, the curve follows the stage
                picked = st.segmented_control("Curve", list(CURVES), key="w_curve", label_visibility="collapsed")
            stage_now = snap.stage.removesuffix(LOG_COUNTS_STAGE)
            follow = _STAGE_CURVE.get(stage_now, available[-1]) if running else available[-1]
            name = picked if picked in available else (follow if follow in available else available[-1])
            st.plotly_chart(_curve_figure(name, snap, (rid, id(job or snap.result))), theme=None, key="fig_curve")
            st.caption(CURVE_NOTES[name])
        if snap.genes is not None and snap.genes.size >= 5 and (snap.result is None or not snap.result.origin):
            st.caption(pose_words(snap.genes))
        if job is not None and not running:
            if not job.reported:
                record_finished(job, data)
            if drawn_running:  # the page around this fragment was drawn for a running job: redraw it whole
                st.rerun()

    _draw()


def pose_panel(data: Dataset, *, every: float | None) -> None:
    """The image with the cells at the current best pose (the final pose once the run is over)."""

    @st.fragment(run_every=every)
    def _draw() -> None:
        shown = shown_run(data)
        xy_um = spatial_yx(data.adata)[:, ::-1]
        blank = ("image", data.uid), lambda: figures.preview_figure(
            data.image, np.zeros((0, 2)), title="The image (the cells appear here while a run goes)")
        if shown is None:
            fig = state.memo("pose", *blank)
        else:
            job, rid, snap = shown
            run = (rid, id(job or snap.result))
            if snap.result is not None and not (job is not None and job.running):
                fig = state.memo("pose", (run, "final"), lambda: figures.preview_figure(
                    data.image, snap.result.cells_to_image(xy_um), title=f"Run #{rid}: final pose"))
            elif snap.genes is not None and job is not None:
                fig = state.memo("pose", (run, tuple(snap.genes)), lambda: figures.preview_figure(
                    data.image, figures.genes_to_image_xy(snap.genes, job.rasters.xI, job.rasters.xJ, xy_um),
                    title=f"Run #{rid}: current best pose"))
            else:
                fig = state.memo("pose", *blank)
        st.plotly_chart(fig, theme=None, key="fig_preview")

    _draw()


def run_data_id(row: dict[str, Any]) -> str | None:
    """The dataset id a history row belongs to (rows recorded before ids were kept: through its result)."""
    if row.get("data_id"):
        return str(row["data_id"])
    hit = state.results().get(row.get("run"))
    return None if hit is None else hit[0]


def history_table(data: Dataset) -> None:
    """The runs of the loaded data, in plain column names; runs on other data are counted, not shown."""
    rows = state.history()
    mine = [r for r in rows if run_data_id(r) == data.uid]
    others = len(rows) - len(mine)
    if mine:
        st.subheader("Runs on this data")
        table, columns = runs_table(mine)  # key numbers, then settings and pose in one column each: fits the page
        st.dataframe(table, column_config=columns, hide_index=True, key="history_table")
        st.page_link("pages/3_viewer.py", label="Open the viewer →", icon=":material/visibility:")
    if others:
        st.caption(f"{others} run(s) on other data are kept with that data: load it again to see them.")
