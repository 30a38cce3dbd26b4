"""Landmarks page helpers: the pairs store, turning chart clicks into pairs, the table, and the runs made
from landmarks or manual nudges. The numerics are the engine's (:mod:`gala_engine.landmarks`,
:mod:`gala_engine.manual`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from gala_engine.errors import GalaInputError
from gala_engine.io import spatial_yx
from gala_engine.landmarks import Landmarks, fit_landmarks, landmark_errors, landmarks_csv, read_landmarks
from gala_engine.manual import affine_result, nudge, refine_from_landmarks
from gala_engine.section import AlignmentResult, median_error_px

from . import state
from .data import Dataset

COLUMNS = ["name", "image_x", "image_y", "cells_x", "cells_y"]
PAIRS = "gala_lm_pairs"  # dataset uid → list of pair dicts (the table's base data)
VERSION = "gala_lm_version"  # bumped whenever the pairs change outside the table (redraws table and charts)
PENDING = "gala_lm_pending"  # {"image": (x, y) | None, "cells": (x, y) | None}
MESSAGE = "gala_lm_message"  # (kind, text) shown once after an action


# ------------------------------------------------------------------------------------- store


def pairs(data: Dataset) -> list[dict[str, Any]]:
    """The pairs of the loaded dataset (a list of dicts with :data:`COLUMNS`)."""
    return st.session_state.setdefault(PAIRS, {}).setdefault(data.uid, [])


def set_pairs(data: Dataset, rows: list[dict[str, Any]]) -> None:
    """Replace the pairs (e.g. from an import) and redraw the table and charts."""
    st.session_state.setdefault(PAIRS, {})[data.uid] = [_clean(r, i) for i, r in enumerate(rows)]
    bump()


def version() -> int:
    return int(st.session_state.get(VERSION, 0))


def bump() -> None:
    st.session_state[VERSION] = version() + 1


def pending() -> dict[str, tuple[float, float] | None]:
    return st.session_state.setdefault(PENDING, {"image": None, "cells": None})


def _clean(row: dict[str, Any], i: int) -> dict[str, Any]:
    out = {"name": str(row.get("name") or f"{i + 1}")}
    for c in COLUMNS[1:]:
        v = row.get(c)
        try:
            out[c] = float(v) if v is not None and v == v else None
        except (TypeError, ValueError):
            out[c] = None
    return out


def to_landmarks(rows: list[dict[str, Any]]) -> Landmarks:
    """The table rows as engine :class:`Landmarks` (rows with an empty value are kept: the engine says so)."""
    arr = np.array([[np.nan if r.get(c) is None else r[c] for c in COLUMNS[1:]] for r in rows], dtype=np.float64)
    arr = arr.reshape(-1, 4)
    return Landmarks(arr[:, :2], arr[:, 2:], [str(r.get("name", i + 1)) for i, r in enumerate(rows)])


def from_landmarks(lm: Landmarks) -> list[dict[str, Any]]:
    return [{"name": n, "image_x": float(a[0]), "image_y": float(a[1]), "cells_x": float(b[0]), "cells_y": float(b[1])}
            for n, a, b in zip(lm.names, lm.image_xy, lm.cells_xy)]


# ------------------------------------------------------------------------------------- clicks


def clicked_point(selection: Any) -> tuple[float, float] | None:
    """The point of a plotly selection: the centre of a drawn box (precise), else the first clicked point."""
    if not selection:
        return None
    boxes = selection.get("box") or []
    for box in boxes:
        xs, ys = box.get("x") or [], box.get("y") or []
        if len(xs) >= 2 and len(ys) >= 2:
            return (float(np.mean(xs[:2])), float(np.mean(ys[:2])))
    points = selection.get("points") or []
    for p in points:
        if p.get("x") is not None and p.get("y") is not None:
            return (float(p["x"]), float(p["y"]))
    return None


def add_click(data: Dataset, side: str, xy: tuple[float, float]) -> str:
    """Record a click on ``side`` ("image" px or "cells" µm); a pair is made once both sides have one.
    Returns a one-line status for the page."""
    p = pending()
    p[side] = (float(xy[0]), float(xy[1]))
    bump()  # the charts are redrawn without their selection, so the same click is not taken twice
    if p["image"] is not None and p["cells"] is not None:
        rows = pairs(data)
        used = {r["name"] for r in rows}
        n = len(rows) + 1
        while str(n) in used:
            n += 1
        rows.append({"name": str(n), "image_x": p["image"][0], "image_y": p["image"][1],
                     "cells_x": p["cells"][0], "cells_y": p["cells"][1]})
        p["image"] = p["cells"] = None
        return f"Pair {n} added."
    other = "cells" if side == "image" else "image"
    unit = "px" if side == "image" else "µm"
    return f"{side.capitalize()} point ({xy[0]:.1f}, {xy[1]:.1f}) {unit} picked: now click the same point on the {other}."


def edited(data: Dataset, table: pd.DataFrame) -> bool:
    """Take the table's edits into the store; True when they changed it (the page then redraws)."""
    rows = [_clean(r, i) for i, r in enumerate(table[COLUMNS].to_dict("records"))] if len(table) else []
    if rows != pairs(data):
        st.session_state.setdefault(PAIRS, {})[data.uid] = rows
        bump()
        return True
    return False


def table(data: Dataset, result: AlignmentResult | None) -> pd.DataFrame:
    """The table to edit: the pairs, and each pair's landmark error under ``result`` (read-only column)."""
    rows = pairs(data)
    df = pd.DataFrame(rows, columns=COLUMNS)
    errors = [None] * len(rows)
    if result is not None and rows:
        lm = to_landmarks(rows)
        ok = np.isfinite(lm.image_xy).all(1) & np.isfinite(lm.cells_xy).all(1)
        if ok.any():
            e = landmark_errors(result, Landmarks(lm.image_xy[ok], lm.cells_xy[ok]))
            for i, v in zip(np.flatnonzero(ok), e):
                errors[int(i)] = round(float(v), 2)
    df["error_px"] = pd.Series(errors, dtype="float64")
    return df


# ------------------------------------------------------------------------------------- runs


def record_result(result: AlignmentResult, data: Dataset, *, label: str) -> int:
    """Store a result made without a job (landmarks, a nudge) as a new run; returns its run id."""
    from .runs import next_run_id, truth_xy

    rid = next_run_id()
    state.results()[rid] = (data.uid, result)
    st.session_state[state.SELECTED_RUN] = rid
    truth = truth_xy(data)
    err = None if truth is None else median_error_px(result.cells_to_image(spatial_yx(data.adata)[:, ::-1]), truth)
    state.history().append({
        "run": rid, "state": label, "fitness": None, "score": None, "runtime_s": 0.0, "device": None,
        "error_px (vs truth)": None if err is None else round(err, 1),
        "genes": None,
    })
    return rid


def align_from_landmarks(data: Dataset, *, kind: str) -> tuple[int, float]:
    """The landmark affine as a new run; returns (run id, median landmark residual in px)."""
    lm = to_landmarks(pairs(data))
    fit = fit_landmarks(lm, kind=kind, image_shape=data.image.full_shape)  # type: ignore[arg-type]
    note = f"{kind} fit to {len(lm)} pairs, median residual {fit.median_px:.2f} px" + (", mirrored" if fit.mirrored else "")
    res = affine_result(fit.A, image_shape=data.image.full_shape, source="landmarks", note=note)
    rid = record_result(res, data, label="landmarks" + (" (mirrored)" if fit.mirrored else ""))
    return rid, fit.median_px


def refine_runner(lm: Landmarks, kind: str):
    """A job runner (:class:`ui.jobs.Job`) doing "landmarks then refine" (the engine's guarded refinement)."""
    def run(rasters, params, *, gene_space=None, progress=None, should_stop=None) -> AlignmentResult:
        out = refine_from_landmarks(rasters, lm, params, kind=kind, progress=progress,  # type: ignore[arg-type]
                                    should_stop=should_stop)
        return out.result

    return run


def check_refine(data: Dataset, kind: str) -> Landmarks:
    """The pairs, checked as the engine will use them (raises GalaInputError with a message)."""
    lm = to_landmarks(pairs(data))
    fit_landmarks(lm, kind=kind, image_shape=data.image.full_shape)  # type: ignore[arg-type]
    return lm


def nudge_run(data: Dataset, result: AlignmentResult, **step: Any) -> int:
    """A manual correction of ``result`` as a new run (the input run is kept)."""
    xy = spatial_yx(data.adata)[:, ::-1]
    new = nudge(result, cells_xy=xy, image_shape=data.image.full_shape, **step)
    return record_result(new, data, label="manual")


NUDGES: dict[str, dict[str, Any]] = {
    "↺ 90°": {"rotate_deg": -90.0}, "↺ 1°": {"rotate_deg": -1.0}, "↻ 1°": {"rotate_deg": 1.0},
    "↻ 90°": {"rotate_deg": 90.0}, "Flip ↔": {"flip_x": True}, "Flip ↕": {"flip_y": True},
}  # button label → nudge step (rotations clockwise on screen; flips about the cells' centre)


def nudge_callback(data: Dataset, result: AlignmentResult, step: dict[str, Any] | None) -> None:
    """Button callback: the nudged run becomes the viewer's run (set before the page redraws). ``step``
    None: the shift / scale inputs' current values."""
    if step is None:
        ss = st.session_state
        step = {"shift_xy": (float(ss.get("w_nudge_dx", 0.0)), float(ss.get("w_nudge_dy", 0.0))),
                "scale": float(ss.get("w_nudge_scale", 1.0))}
    try:
        rid = nudge_run(data, result, **step)
    except GalaInputError as err:
        st.session_state[MESSAGE] = ("error", str(err))
        return
    st.session_state["w_view_run"] = rid


def complete(data: Dataset) -> Landmarks | None:
    """The pairs with all four coordinates, or None (for the aligned .h5ad's uns['gala']['landmarks'])."""
    rows = [r for r in pairs(data) if all(r.get(c) is not None for c in COLUMNS[1:])]
    return to_landmarks(rows) if rows else None


def import_csv(data: Dataset, raw: bytes) -> int:
    """Replace the pairs with an uploaded CSV (ours or Xenium Explorer's keypoints); returns the count."""
    lm = read_landmarks(raw, image_shape=data.image.full_shape)
    set_pairs(data, from_landmarks(lm))
    return len(lm)


def export_csv(data: Dataset, fmt: str) -> bytes:
    """The pairs as GALA's CSV or Xenium Explorer's keypoints CSV."""
    return landmarks_csv(to_landmarks(pairs(data)), fmt=fmt).encode("utf-8")  # type: ignore[arg-type]


def overlay(data: Dataset, result: AlignmentResult, run_id: int, *, max_points: int = 20_000) -> np.ndarray:
    """The cells where run ``run_id`` puts them on the image (x, y px), at most ``max_points`` of them."""
    from .runs import layer_positions

    xy = np.asarray(layer_positions(run_id, result, data)["after LDDMM"])
    return xy if len(xy) <= max_points else xy[np.random.default_rng(0).choice(len(xy), max_points, replace=False)]


def result_landmark_error(data: Dataset, result: AlignmentResult) -> float | None:
    """Median landmark error of ``result`` (px) over the complete pairs, or None without pairs."""
    rows = pairs(data)
    if not rows:
        return None
    lm = to_landmarks(rows)
    ok = np.isfinite(lm.image_xy).all(1) & np.isfinite(lm.cells_xy).all(1)
    if not ok.any():
        return None
    return float(np.median(landmark_errors(result, Landmarks(lm.image_xy[ok], lm.cells_xy[ok]))))


def refine_status(*, every: float | None) -> None:
    """Progress of a "Refine from landmarks" run (a fragment redrawn every ``every`` s); records it when it ends."""
    from .runs import record_finished

    @st.fragment(run_every=every)
    def _draw() -> None:
        job = state.get(state.JOB)
        if job is None or job.reported:
            return
        snap = job.snapshot()
        st.progress(min(1.0, snap.step / max(snap.total, 1)), text=f"Run #{job.run_id}: {snap.stage or snap.state}")
        if not job.running:
            record_finished(job, job.context)
            if job.error:
                st.session_state[MESSAGE] = ("error", job.error)
            elif job.result is not None:
                st.session_state[MESSAGE] = ("success", f"Run #{job.run_id}: {job.result.origin.get('note', '')}")
            st.rerun()

    _draw()


def files_panel(data: Dataset, rows: list[dict[str, Any]]) -> None:
    """Import (GALA / Xenium keypoints CSV) and export of the pairs."""
    with st.expander("Import / export landmark files"):
        up = st.file_uploader("Import pairs (GALA CSV or Xenium Explorer keypoints CSV)", type=["csv"],
                              key="lm_upload")
        if up is not None and st.session_state.get("gala_lm_uploaded") != up.file_id:
            st.session_state["gala_lm_uploaded"] = up.file_id
            try:
                st.session_state[MESSAGE] = ("success", f"Imported {import_csv(data, up.getvalue())} pairs.")
            except GalaInputError as err:
                st.session_state[MESSAGE] = ("error", f"Not imported: {err}")
            st.rerun()
        e1, e2 = st.columns(2)
        gala_csv, xenium_csv = (export_csv(data, "gala"), export_csv(data, "xenium")) if rows else (b"", b"")
        e1.download_button("Download pairs (GALA CSV)", data=gala_csv, disabled=not rows, file_name="landmarks.csv",
                           mime="text/csv", on_click="ignore", key="lm_dl_gala")
        e2.download_button("Download Xenium Explorer keypoints CSV", data=xenium_csv, disabled=not rows,
                           file_name="keypoints.csv", mime="text/csv", on_click="ignore", key="lm_dl_xenium")


__all__ = ["GalaInputError", "NUDGES", "add_click", "align_from_landmarks", "check_refine", "clicked_point", "complete",
           "edited",
           "export_csv", "files_panel", "import_csv", "nudge_callback", "nudge_run", "overlay", "pairs", "pending", "record_result", "refine_runner", "refine_status",
           "result_landmark_error", "set_pairs", "table", "to_landmarks", "version"]
