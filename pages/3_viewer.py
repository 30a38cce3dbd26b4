"""Viewer page: the image with the cells on top (before / after affine / after LDDMM / truth), downloads."""

from __future__ import annotations

import re

import streamlit as st

from gala_engine import constants
from ui import figures, state
from ui import landmarks as lm
from ui import runs as run_store
from ui.data import colour_values
from ui.runs import aligned_h5ad_bytes, grid_lines, layer_positions, transform_npz_bytes, xenium_matrix_bytes

st.title("3 · Viewer")
data = state.get(state.DATA)
runs = {rid: res for rid, (uid, res) in state.results().items() if data is not None and uid == data.uid}
if not runs:
    st.info("No finished alignment for the loaded data yet: run one on the Align page.")
    st.page_link("pages/2_align.py", label="Go to Align", icon=":material/tune:")
    st.stop()

ids = sorted(runs, reverse=True)
chosen = state.get(state.SELECTED_RUN)
c1, c2, c3, c4 = st.columns([1, 2, 2, 1.5])
rid = c1.selectbox("Run", ids, index=ids.index(chosen) if chosen in ids else 0, key="w_view_run",
                   format_func=lambda i: f"#{i}" + (f" · {runs[i].origin['source']}" if runs[i].origin.get("source")
                                                    else ""))
st.session_state[state.SELECTED_RUN] = rid
result = runs[rid]
layers = layer_positions(rid, result, data)
options = list(layers)
show = c2.multiselect("Show cells", options, default=["after LDDMM"] + (["ground truth"] if data.truth is not None
                                                                         else []), key="w_view_layers")
quality = run_store.run_quality(rid, result, data)
colour_options = [constants.SIGNAL_TOTAL_COUNTS, *([figures.CONFIDENCE_COLOUR] if quality else []),
                  *map(str, data.adata.var_names)]
colour = c3.selectbox("Colour by", colour_options, key="w_view_colour")
opacity = c4.slider("Opacity", 0.05, 1.0, 0.7, 0.05, key="w_view_opacity")
grid = c4.checkbox("deformation grid", value=False, key="w_view_grid")

m = st.columns(5)
m[0].metric("Fitness (GA)", f"{result.fitness:.4f}" if result.fitness == result.fitness else "–")
m[1].metric("Runtime", f"{result.runtime_s:.1f} s", help=result.device)
m[2].metric("Device", result.device)
if "ground truth" in layers:
    import numpy as np

    d = np.linalg.norm(layers["after LDDMM"] - layers["ground truth"], axis=1)
    m[3].metric("Median distance to truth", f"{np.median(d):.1f} px")
lm_err = lm.result_landmark_error(data, result)
if lm_err is not None:
    m[4].metric("Median landmark error", f"{lm_err:.2f} px", help="Over the pairs on the Landmarks page.")
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

values = quality["confidence"] if colour == figures.CONFIDENCE_COLOUR and quality else colour_values(data, colour)
fig = figures.overlay_figure(data.image, {k: layers[k] for k in show}, values,
                             colour_label=colour, opacity=opacity,
                             grid=grid_lines(result, data) if grid else None)
st.plotly_chart(fig, theme=None, key="fig_overlay")
st.caption("Axes in full-resolution image pixels (x = column, y = row, row 0 at the top). "
           "'before' plots the raw µm coordinates as if they were pixels.")

stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", data.name)[:60].strip("_")
d1, d2, d3 = st.columns(3)
pairs = lm.complete(data)  # read now: the download's callable runs outside this script run
d1.download_button("Download aligned .h5ad", data=lambda: aligned_h5ad_bytes(result, data, landmarks=pairs, quality=quality),
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
