"""Recording finished jobs: history row, result store, viewer selection."""

from __future__ import annotations

import streamlit as st

from gala_engine.io import spatial_yx
from gala_engine.section import median_error_px

from . import state
from .data import Dataset
from .jobs import Job, history_row


def truth_xy(data: Dataset):
    """True (x, y) full-res pixel positions of the cells for demo data, else None."""
    if data.truth is None:
        return None
    xy = spatial_yx(data.adata)[:, ::-1]
    return xy @ data.truth[:, :2].T + data.truth[:, 2]


def record_finished(job: Job, data: Dataset) -> None:
    """Put a finished job into the history (once) and make its result the viewer's choice."""
    if job.reported:
        return
    job.reported = True
    err = None
    if job.result is not None:
        state.results()[job.run_id] = (data.uid, job.result)
        run_rasters()[job.run_id] = job.rasters  # the report's overlap scores use the run's own rasters
        st.session_state[state.SELECTED_RUN] = job.run_id
        truth = truth_xy(data)
        if truth is not None:
            err = median_error_px(job.result.cells_to_image(spatial_yx(data.adata)[:, ::-1]), truth)
    row = history_row(job, truth_error_px=err)
    row["data_id"], row["data"] = data.uid, data.name  # the run belongs to this dataset
    state.history().append(row)



def import_aligned(data: Dataset) -> int | None:
    """If the loaded cells are an aligned ``.h5ad`` (ours: ``uns['gala']``), add their alignment as a run (once per
    dataset), so it can be viewed, corrected and downloaded again; returns its run id."""
    from gala_engine.errors import GalaInputError
    from gala_engine.reopen import aligned_result

    from .landmarks import record_result

    try:
        result = aligned_result(data.adata)
    except GalaInputError as err:
        data.notes.append(f"The file holds an alignment that cannot be used: {err}")
        return None
    if result is None or any(uid == data.uid and res.origin.get("source") == "file"
                             for uid, res in state.results().values()):
        return None
    rid = record_result(result, data, label="opened from file")
    data.notes.append(f"This file is an aligned result: its alignment is run #{rid} (see the Viewer); align again "
                      "or correct it on the Landmarks page to continue.")
    return rid


_RUN_RASTERS = "gala_run_rasters"  # run id → SectionRasters the run aligned (for its quality report)


def run_rasters() -> dict:
    """Rasters of the runs made by a job in this session, by run id (kept for the last few runs)."""
    store = st.session_state.setdefault(_RUN_RASTERS, {})
    while len(store) > 8:
        store.pop(min(store))
    return store


def next_run_id() -> int:
    """A new run number for this session."""
    n = int(st.session_state.get(state.RUN_COUNTER, 0)) + 1
    st.session_state[state.RUN_COUNTER] = n
    return n


_POSITIONS = "gala_positions"  # cache: (run id, layer) → (N, 2) pixel positions
_PLACEMENT = "gala_placement"  # dataset uid → (2, 3) µm → px affine of the "before" layer

LDDMM, AFFINE, BEFORE, TRUTH = "after LDDMM", "after affine", "before (centred)", "ground truth"


def before_xy(data: Dataset):
    """The cells' µm coordinates laid on the image's tissue by centroid and spread, no rotation
    (:func:`gala_engine.placement.placement_affine`, once per dataset): the viewer's "before" layer."""
    from gala_engine.placement import apply_placement, placement_affine

    store = st.session_state.setdefault(_PLACEMENT, {})
    xy = spatial_yx(data.adata)[:, ::-1]
    if data.uid not in store:
        store.clear()
        store[data.uid] = placement_affine(xy, data.image)
    return apply_placement(store[data.uid], xy)


def layer_positions(run_id: int, result, data: Dataset) -> dict[str, object]:
    """Cells in full-res pixels (x, y; float32) for each viewer layer of one run (computed once per run)."""
    import numpy as np

    cache = st.session_state.setdefault(_POSITIONS, {})
    key = (run_id, data.uid)
    if key not in cache:
        xy = spatial_yx(data.adata)[:, ::-1]
        layers = {LDDMM: result.cells_to_image(xy, deformed=True), AFFINE: result.cells_to_image(xy, deformed=False),
                  BEFORE: before_xy(data)}
        truth = truth_xy(data)
        if truth is not None:
            layers[TRUTH] = truth
        cache.clear()
        cache[key] = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in layers.items()}
    return cache[key]


def grid_lines(result, data: Dataset, *, n: int = 12, samples: int = 80) -> list:
    """A regular µm grid over the cells, warped into image pixels (lines as (M, 2) x, y arrays)."""
    import numpy as np

    xy = spatial_yx(data.adata)[:, ::-1]
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    xs, ys = np.linspace(lo[0], hi[0], n), np.linspace(lo[1], hi[1], n)
    t = np.linspace(0.0, 1.0, samples)
    lines = [np.c_[np.full(samples, x), lo[1] + t * (hi[1] - lo[1])] for x in xs]
    lines += [np.c_[lo[0] + t * (hi[0] - lo[0]), np.full(samples, y)] for y in ys]
    pts = result.cells_to_image(np.concatenate(lines))
    return np.split(pts, len(lines))


_QUALITY = "gala_quality"  # cache: (run id, data uid) → gala_engine.qc.assess(...) of that run
_VERDICT_BOX = {"ok": "success", "check": "warning", "likely wrong": "error"}  # streamlit message kind per verdict


def run_quality(run_id: int, result, data: Dataset) -> dict | None:
    """Quality flags and per-cell confidence of one run (:func:`gala_engine.qc.assess`), computed once per run on the
    current rasters of the data (or the default ones); None when the rasters cannot be made."""
    cache = st.session_state.setdefault(_QUALITY, {})
    key = (run_id, data.uid)
    if key not in cache:
        from gala_engine.errors import GalaInputError
        from gala_engine.qc import assess
        from gala_engine.section import prepare_section

        cached = state.get(state.RASTERS)
        try:
            rasters = cached[1] if cached is not None and cached[0][0] == data.uid else prepare_section(data.adata,
                                                                                                         data.image)
            cache[key] = assess(rasters, result, spatial_yx(data.adata)[:, ::-1])
        except GalaInputError:
            cache[key] = None
    return cache[key]


def quality_message(qc: dict) -> tuple[str, str]:
    """(streamlit message kind, markdown) for a run's quality flags: the verdict, then each flag not ok with its hint."""
    lines = [f"**Quality check: {qc['verdict']}**" + ("" if qc["verdict"] == "ok" else f" — {qc['summary']}")]
    for name, flag in qc["flags"].items():
        if flag["verdict"] != "ok":
            lines.append(f"- *{name.replace('_', ' ')}* ({flag['verdict']}): {flag['message']}. Try: {flag['hint']}")
    return _VERDICT_BOX[qc["verdict"]], "\n".join(lines)


def file_stem(data: Dataset) -> str:
    """A clean base name for downloads: the cells file's stem (``upload_ihc.h5ad`` → ``upload_ihc``), or the
    demo's name."""
    import re
    from pathlib import Path

    base = Path(data.cells_file).stem if data.cells_file else data.name.split(":", 1)[-1]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", base).strip("._-")[:60] or "cells"


_IMAGE_RECORD = "gala_image_record"  # dataset uid → uns['gala']['image'] record


def image_record(data: Dataset) -> dict:
    """Which image the dataset's runs used (file name, bytes, SHA-256, pixels; once per dataset)."""
    from pathlib import Path

    from gala_engine.provenance import image_record as record

    store = st.session_state.setdefault(_IMAGE_RECORD, {})
    if data.uid not in store:
        src = data.image.source
        path = Path(src) if src and src != "<bytes>" else None
        store.clear()
        store[data.uid] = record(path, name=data.image_file or (path.name if path else ""),
                                 full_shape=data.image.full_shape)
    return store[data.uid]


def aligned_h5ad_bytes(result, data: Dataset, *, landmarks=None, quality: dict | None = None,
                       image: dict | None = None, rasters=None) -> bytes:
    """The aligned ``.h5ad`` (input + obsm['spatial_he'] + uns['gala'], with ``landmarks`` their pairs and
    errors in uns['gala']['landmarks'], with ``quality`` (:func:`run_quality`) uns['gala']['qc'] and
    obs['gala_confidence'], ``image`` the :func:`image_record` in uns['gala']['image'], + the image for
    scanpy/squidpy in uns['spatial']['gala_he'], with ``rasters`` (the run's, :func:`run_rasters`) its target
    signal's score and channels in uns['gala']['signal_info']) as bytes, via a temp file."""
    import tempfile
    from pathlib import Path

    from gala_engine.exports import add_spatial_image, write_aligned_h5ad
    from gala_engine.section import aligned_adata

    from .data import session_tmpdir

    aligned = aligned_adata(data.adata, result, landmarks=landmarks, quality=quality, image=image, rasters=rasters)
    add_spatial_image(aligned, data.image, result.A)
    with tempfile.TemporaryDirectory(dir=session_tmpdir()) as tmp:
        return write_aligned_h5ad(aligned, Path(tmp) / "aligned.h5ad").read_bytes()


def transform_npz_bytes(result) -> bytes:
    """The transform (``AlignmentResult.save_npz``) as bytes, via a temp file."""
    import tempfile
    from pathlib import Path

    from .data import session_tmpdir

    with tempfile.TemporaryDirectory(dir=session_tmpdir()) as tmp:
        return result.save_npz(Path(tmp) / "transform.npz").read_bytes()


def xenium_matrix_bytes(result, data: Dataset, *, pixel_size: float = 0.2125) -> bytes:
    """The run as Xenium Explorer's transformation-matrix CSV (image px → Xenium px of ``pixel_size`` µm)."""
    from gala_engine.landmarks import result_affine, xenium_matrix_text

    A = result_affine(result, spatial_yx(data.adata)[:, ::-1])
    return xenium_matrix_text(A, pixel_size=pixel_size).encode("utf-8")


def runtime_help(result) -> str:
    """Tooltip of the run's runtime / device: what it ran on and why (not just 'CPU')."""
    import os

    from .sidebar import engine_device

    here = engine_device()
    if result.device.startswith("CUDA"):
        why = "torch found a CUDA GPU, so the engine uses it (one job at a time)."
    else:
        why = (f"torch found no CUDA GPU, so the engine runs on the CPU: {here} of {os.cpu_count() or 1} core(s), "
               "one core being left to the web server"
               + (" (OMP_NUM_THREADS is set and decides)." if os.environ.get("OMP_NUM_THREADS") else ".")
               + " Runs of all sessions take turns.")
    return f"Ran on {result.device} ({here} on this server). {why} Wall time of the run, loading excluded."


def history_table(rows: list[dict]) -> tuple:
    """The run history as (DataFrame, column_config): the key numbers, then the settings and the pose found
    in one column each, so the table fits the page instead of running off its right edge."""
    import pandas as pd

    def settings(r: dict) -> str:
        if r.get("generations") is None:  # a run made without a search (landmarks, a nudge, a file)
            return ""
        return (f"{r.get('generations')} rounds × {r.get('population')} poses × {r.get('restarts')} searches · "
                f"{r.get('lddmm_iters')} warp steps · seed {r.get('seed')}")

    frame = pd.DataFrame([{"#": r.get("run"), "state": r.get("state"), "match score": r.get("fitness"),
                           "time (s)": r.get("runtime_s"), "vs truth (px)": r.get("error_px (vs truth)"),
                           "settings": settings(r), "pose": r.get("pose") or r.get("genes")} for r in rows])
    if frame["vs truth (px)"].isna().all():
        frame = frame.drop(columns="vs truth (px)")
    col = st.column_config
    config = {
        "#": col.NumberColumn(width="small", pinned=True), "state": col.TextColumn(width="small"),
        "match score": col.NumberColumn(width="small", format="%.4f", help="The search's best score (1 = perfect; "
                                        "method: GA fitness)"),
        "time (s)": col.NumberColumn(width="small", format="%.1f"),
        "vs truth (px)": col.NumberColumn(width="small", format="%.1f",
                                                help="Median distance to the demo's true positions"),
        "settings": col.TextColumn(width="large", help="Search rounds × candidate poses × independent searches, "
                                   "warp steps, seed (method: num_generations × sol_per_pop × ga_restarts, "
                                   "num_iterations, random_seed)"),
        "pose": col.TextColumn(width="large", help="The pose found: rotation, scale (µm per image pixel), whether "
                               "the section is mirrored, shift (method: the 5 GA genes angle, sy, sx, ty, tx)"),
    }
    return frame, config
