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


def next_run_id() -> int:
    """A new run number for this session."""
    n = int(st.session_state.get(state.RUN_COUNTER, 0)) + 1
    st.session_state[state.RUN_COUNTER] = n
    return n


_POSITIONS = "gala_positions"  # cache: (run id, layer) → (N, 2) pixel positions


def layer_positions(run_id: int, result, data: Dataset) -> dict[str, object]:
    """Cells in full-res pixels for each viewer layer of one run (computed once per run)."""
    cache = st.session_state.setdefault(_POSITIONS, {})
    key = (run_id, data.uid)
    if key not in cache:
        xy = spatial_yx(data.adata)[:, ::-1]
        layers = {
            "after LDDMM": result.cells_to_image(xy, deformed=True),
            "after affine": result.cells_to_image(xy, deformed=False),
            "before (µm as px)": xy,
        }
        truth = truth_xy(data)
        if truth is not None:
            layers["ground truth"] = truth
        cache.clear()
        cache[key] = layers
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


def aligned_h5ad_bytes(result, data: Dataset, *, landmarks=None) -> bytes:
    """The aligned ``.h5ad`` (input + obsm['spatial_he'] + uns['gala'], with ``landmarks`` their pairs and
    errors in uns['gala']['landmarks']) as bytes, via a temp file."""
    import tempfile
    from pathlib import Path

    from gala_engine.section import write_aligned

    from .data import session_tmpdir

    with tempfile.TemporaryDirectory(dir=session_tmpdir()) as tmp:
        return write_aligned(data.adata, result, Path(tmp) / "aligned.h5ad", landmarks=landmarks).read_bytes()


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
