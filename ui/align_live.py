"""The Align page's first screen: the run of the loaded data (progress, Stop, live curves, current pose).

Everything here belongs to the dataset on screen: a job started on other data is not drawn (its results
stay with that data's history). Two fragments redraw themselves every second while a job runs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from gala_engine.io import spatial_yx

from . import figures, state
from .data import Dataset
from .jobs import Job
from .runs import record_finished

STAGE_WORDS = {"": "starting", "scan": "scanning rotations", "ga": "searching for the pose",
               "refine": "fine-tuning the pose", "lddmm": "warping (local deformation)"}
CURVES = ("search", "fine-tuning", "warp")
_STAGE_CURVE = {"scan": "search", "ga": "search", "refine": "fine-tuning", "lddmm": "warp"}
# the run history's columns in plain words (the rows keep the engine's names, as exported)
HISTORY_WORDS = {"run": "run", "state": "state", "fitness": "match score", "runtime_s": "time (s)",
                 "error_px (vs truth)": "error vs truth (px)", "generations": "search rounds",
                 "population": "poses per round", "restarts": "searches", "lddmm_iters": "warp steps",
                 "seed": "seed", "device": "device", "genes": "pose (rotation, scale y, scale x, shift y, shift x)"}


def current_job(data: Dataset | None) -> Job | None:
    """The session's job if it aligns ``data`` (else None: a run on other data is not shown here)."""
    job = state.get(state.JOB)
    if job is None or data is None or getattr(job.context, "uid", None) != data.uid:
        return None
    return job


def pose_words(genes: np.ndarray) -> str:
    """The 5 pose values in words: rotation, scale (µm per pixel), mirror, shift (µm)."""
    angle, sy, sx, ty, tx = (float(g) for g in genes[:5])
    mirrored = "yes" if sy * sx < 0 else "no"
    return (f"rotation **{angle:.1f}°** · scale **{abs(sy):.3g} × {abs(sx):.3g}** µm per pixel (y × x) · "
            f"mirrored **{mirrored}** · shift **{tx:.0f}, {ty:.0f}** µm (x, y)")


def _curve_figure(name: str, snap: Any, run: tuple) -> Any:
    if name == "search":
        return state.memo("curve_search", (run, len(snap.ga_best)),
                          lambda: figures.search_figure(snap.ga_best, snap.ga_mean))
    if name == "fine-tuning":
        return state.memo("curve_refine", (run, tuple(map(len, snap.refine))),
                          lambda: figures.refine_figure(snap.refine))
    return state.memo("curve_energy", (run, len(snap.energy)),
                      lambda: figures.energy_figure(snap.energy, snap.energy_steps))


def status_panel(data: Dataset, *, every: float | None, drawn_running: bool) -> None:
    """Progress, Stop, the current pose in words and one live curve (follows the run's stage, or chosen)."""

    @st.fragment(run_every=every)
    def _draw() -> None:
        job = current_job(data)
        if job is None:
            st.caption("No run on this data yet: choose the settings and press **Start alignment**.")
            return
        snap = job.snapshot()
        if job.running:
            stage = STAGE_WORDS.get(snap.stage, snap.stage)
            if snap.state == "waiting":
                stage = "waiting for another session's run to finish"
            bar, stop = st.columns([2.2, 1], vertical_alignment="bottom")
            bar.progress(min(1.0, snap.step / max(snap.total, 1)),
                         text=f"Run #{job.run_id}: {stage} · step {snap.step} of {snap.total} · {snap.elapsed_s:.0f} s")
            stop.button("Stop", key="stop_job", on_click=job.stop,
                        help="Ends the run within a second; the best pose so far is kept.")
        elif snap.state == "error":
            st.error(snap.error)
        else:
            word = "stopped (best so far kept)" if snap.state == "stopped" else "finished"
            st.success(f"Run #{job.run_id} {word} in {snap.elapsed_s:.1f} s.")
        available = [c for c, n in zip(CURVES, (len(snap.ga_best), len(snap.refine), len(snap.energy)), strict=True)
                     if n]
        if available:
            picked = None
            if not job.running:  # while it runs, the curve follows the stage
                picked = st.segmented_control("Curve", list(CURVES), key="w_curve", label_visibility="collapsed")
            follow = _STAGE_CURVE.get(snap.stage, available[-1]) if job.running else available[-1]
            name = picked if picked in available else (follow if follow in available else available[-1])
            st.plotly_chart(_curve_figure(name, snap, (job.run_id, id(job))), theme=None, key="fig_curve")
        if snap.genes is not None:
            st.caption(pose_words(snap.genes))
        if not job.running:
            if not job.reported:
                record_finished(job, data)
            if drawn_running:  # the page around this fragment was drawn for a running job: redraw it whole
                st.rerun()

    _draw()


def pose_panel(data: Dataset, *, every: float | None) -> None:
    """The image with the cells at the current best pose (the final pose once the run is over)."""

    @st.fragment(run_every=every)
    def _draw() -> None:
        job = current_job(data)
        xy_um = spatial_yx(data.adata)[:, ::-1]
        if job is None:
            fig = state.memo("pose", ("image", data.uid), lambda: figures.preview_figure(
                data.image, np.zeros((0, 2)), title="The image (the cells appear here while a run goes)"))
        else:
            snap = job.snapshot()
            run = (job.run_id, id(job))
            if snap.result is not None and not job.running:
                fig = state.memo("pose", (run, "final"), lambda: figures.preview_figure(
                    data.image, snap.result.cells_to_image(xy_um),
                    title=f"Run #{job.run_id}: final pose (after the warp)"))
            elif snap.genes is not None:
                fig = state.memo("pose", (run, tuple(snap.genes)), lambda: figures.preview_figure(
                    data.image, figures.genes_to_image_xy(snap.genes, job.rasters.xI, job.rasters.xJ, xy_um),
                    title=f"Run #{job.run_id}: current best pose"))
            else:
                fig = state.memo("pose", ("image", data.uid), lambda: figures.preview_figure(
                    data.image, np.zeros((0, 2)), title="The image (the cells appear here while a run goes)"))
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
        df = pd.DataFrame(mine)
        df = df[[c for c in HISTORY_WORDS if c in df.columns]].rename(columns=HISTORY_WORDS)
        st.dataframe(df, hide_index=True, key="history_table", width="stretch")
        st.page_link("pages/3_viewer.py", label="Open the viewer →", icon=":material/visibility:")
    if others:
        st.caption(f"{others} run(s) on other data are kept with that data: load it again to see them.")
