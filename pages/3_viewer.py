"""Viewer page: the image with the cells on top (before / after affine / after LDDMM / truth), report, downloads."""

from __future__ import annotations

import json

import numpy as np
import streamlit as st

from ui import landmarks as lm
from ui import report, state
from ui import runs as run_store
from ui.exports import cells_csv_bytes, spatialdata_zip_bytes
from ui.runs import (
    LDDMM,
    TRUTH,
    aligned_h5ad_bytes,
    file_stem,
    image_record,
    layer_positions,
    run_rasters,
    runtime_help,
    transform_npz_bytes,
    xenium_matrix_bytes,
)
from ui.viewer import viewer

st.title("3 · Viewer")
data = state.get(state.DATA)
runs = {rid: res for rid, (uid, res) in state.results().items() if data is not None and uid == data.uid}
if not runs:
    st.info("No finished alignment for the loaded data yet: run one on the Align page.")
    st.page_link("pages/2_align.py", label="Go to Align", icon=":material/tune:")
    st.stop()

ids = sorted(runs, reverse=True)
chosen = state.get(state.SELECTED_RUN)
run_col, metrics_col = st.columns([1, 5], vertical_alignment="bottom")
rid = run_col.selectbox("Run", ids, index=ids.index(chosen) if chosen in ids else 0, key="w_view_run",
                   format_func=lambda i: f"#{i}" + (f" · {runs[i].origin['source']}" if runs[i].origin.get("source")
                                                    else ""))
st.session_state[state.SELECTED_RUN] = rid
result = runs[rid]
layers = layer_positions(rid, result, data)

with metrics_col.container(horizontal=True):
    st.metric("Fitness (GA)", f"{result.fitness:.4f}" if result.fitness == result.fitness else "–", width="content")
    st.metric("Runtime", f"{result.runtime_s:.1f} s", help=runtime_help(result), width="content")
    st.metric("Device", result.device, help=runtime_help(result), width="content")
    if TRUTH in layers:
        d = np.linalg.norm(layers[LDDMM] - layers[TRUTH], axis=1)
        st.metric("Median distance to truth", f"{np.median(d):.1f} px", width="content")
    if (lm_err := lm.result_landmark_error(data, result)) is not None:
        st.metric("Median landmark error", f"{lm_err:.2f} px", help="Over the pairs on the Landmarks page.",
                  width="content")
quality = run_store.run_quality(rid, result, data)
if quality:
    kind, text = run_store.quality_message(quality["qc"])
    getattr(st, kind)(text)
if (note := result.origin.get("note")):
    st.caption(f"Run #{rid} ({result.origin.get('source', 'GALA')}): {note}")

with st.expander("Manual correction: rotate, flip, shift, scale (each step makes a new run; earlier runs stay)",
                 expanded=result.origin.get("source") == "manual"):
    n = st.columns(len(lm.NUDGES))
    for col, (label, step) in zip(n, lm.NUDGES.items()):
        col.button(label, key=f"nudge_{label}", on_click=lm.nudge_callback, args=(data, result, step),
                   width="stretch")
    s1, s2, s3, s4 = st.columns([1, 1, 1, 1])
    s1.number_input("shift x (px)", value=0.0, step=1.0, key="w_nudge_dx")
    s2.number_input("shift y (px)", value=0.0, step=1.0, key="w_nudge_dy")
    s3.number_input("scale", value=1.0, min_value=0.01, step=0.01, format="%.3f", key="w_nudge_scale")
    s4.button("Apply shift / scale", key="nudge_apply", on_click=lm.nudge_callback, args=(data, result, None))
if (message := st.session_state.pop(lm.MESSAGE, None)):
    getattr(st, message[0])(message[1])

viewer(data, rid, result, quality)
st.caption("Axes in full-resolution image pixels (x = column, y = row, row 0 at the top). 'before' lays the cells' "
           "µm coordinates on the tissue (same centre and spread, no rotation): how far the section starts from "
           "aligned.")

stem = f"{file_stem(data)}"
pairs = lm.complete(data)  # read now: the download's callable runs outside this script run
record = image_record(data)
run_section = run_rasters().get(rid)  # the rasters this run aligned (None for an opened or landmark run)
d1, d2, d3 = st.columns(3)
d1.download_button("Download aligned .h5ad",
                   data=lambda: aligned_h5ad_bytes(result, data, landmarks=pairs, quality=quality, image=record,
                                                         rasters=run_section),
                   file_name=f"{stem}_aligned_run{rid}.h5ad", mime="application/x-hdf5", on_click="ignore",
                   type="primary", key="dl_h5ad")
d2.download_button("Download transform .npz", data=lambda: transform_npz_bytes(result),
                   file_name=f"{stem}_transform_run{rid}.npz", mime="application/octet-stream",
                   on_click="ignore", key="dl_npz")
pixel_size = d3.number_input("Xenium pixel size (µm)", value=0.2125, min_value=1e-4, format="%.4f",
                             key="w_view_xenium_px", help="'pixel_size' in experiment.xenium")
d3.download_button("Download Xenium Explorer matrix .csv",
                   data=lambda: xenium_matrix_bytes(result, data, pixel_size=pixel_size),
                   file_name=f"{stem}_xenium_matrix_run{rid}.csv", mime="text/csv", on_click="ignore", key="dl_xenium",
                   help="Image pixels → Xenium pixels (Xenium Explorer's image alignment file); for a warped run, "
                   "the affine closest to it over the cells.")
e1, e2, _ = st.columns(3)
e1.download_button("Download cells .csv", data=lambda: cells_csv_bytes(result, data, quality),
                   file_name=f"{stem}_cells_run{rid}.csv", mime="text/csv", on_click="ignore", key="dl_csv",
                   help="cell_id, x_um, y_um, x_px, y_px (full-resolution image pixels) and, when computed, "
                   "confidence.")
e2.download_button("Download SpatialData .zarr (zip)",
                   data=lambda: spatialdata_zip_bytes(result, data, name=f"{stem}_run{rid}", quality=quality),
                   file_name=f"{stem}_run{rid}.zarr.zip", mime="application/zip", on_click="ignore", key="dl_zarr",
                   help="Image, cells, table and the alignment as coordinate transformations; unzip, then "
                   "spatialdata.read_zarr(...) or open in napari-spatialdata.")

st.subheader("Quality report")
made = report.cached(data, rid)
if made is None:
    st.caption("The command line's report for this run: cells on the image before and after, the deformation "
               "grid, the fitness and energy curves, and the numbers (overlap before / after, folding).")
    if st.button("Make the quality report", key="make_report", icon=":material/summarize:"):
        with st.spinner("Drawing the report…"):
            made = report.make(data, rid, result, landmarks=pairs, quality=quality)
if made is not None:
    png, text = made
    st.image(png, caption=f"Quality report of run #{rid}", width="stretch")
    r1, r2 = st.columns(2)
    r1.download_button("Download report .png", data=png, file_name=f"{stem}_report_run{rid}.png", mime="image/png",
                       on_click="ignore", key="dl_report_png")
    r2.download_button("Download report .json", data=text, file_name=f"{stem}_report_run{rid}.json",
                       mime="application/json", on_click="ignore", key="dl_report_json")
    with st.expander("Report numbers (JSON)"):
        st.json(json.loads(text), expanded=1)
