"""Viewer page: the image with the cells on top (before / after affine / after LDDMM / truth), downloads."""

from __future__ import annotations

import re

import streamlit as st

from gala_engine import constants
from ui import figures, state
from ui.data import colour_values
from ui.runs import aligned_h5ad_bytes, grid_lines, layer_positions, transform_npz_bytes

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
rid = c1.selectbox("Run", ids, index=ids.index(chosen) if chosen in ids else 0, format_func=lambda i: f"#{i}",
                   key="w_view_run")
st.session_state[state.SELECTED_RUN] = rid
result = runs[rid]
layers = layer_positions(rid, result, data)
options = list(layers)
show = c2.multiselect("Show cells", options, default=["after LDDMM"] + (["ground truth"] if data.truth is not None
                                                                         else []), key="w_view_layers")
colour_options = [constants.SIGNAL_TOTAL_COUNTS, *map(str, data.adata.var_names)]
colour = c3.selectbox("Colour by", colour_options, key="w_view_colour")
opacity = c4.slider("Opacity", 0.05, 1.0, 0.7, 0.05, key="w_view_opacity")
grid = c4.checkbox("deformation grid", value=False, key="w_view_grid")

m = st.columns(4)
m[0].metric("Fitness (GA)", f"{result.fitness:.4f}")
m[1].metric("Runtime", f"{result.runtime_s:.1f} s", help=result.device)
m[2].metric("Device", result.device)
if "ground truth" in layers:
    import numpy as np

    d = np.linalg.norm(layers["after LDDMM"] - layers["ground truth"], axis=1)
    m[3].metric("Median distance to truth", f"{np.median(d):.1f} px")

fig = figures.overlay_figure(data.image, {k: layers[k] for k in show}, colour_values(data, colour),
                             colour_label=colour, opacity=opacity,
                             grid=grid_lines(result, data) if grid else None)
st.plotly_chart(fig, theme=None, key="fig_overlay")
st.caption("Axes in full-resolution image pixels (x = column, y = row, row 0 at the top). "
           "'before' plots the raw µm coordinates as if they were pixels.")

stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", data.name)[:60].strip("_")
d1, d2 = st.columns(2)
d1.download_button("Download aligned .h5ad", data=lambda: aligned_h5ad_bytes(result, data),
                   file_name=f"{stem}_aligned_run{rid}.h5ad", mime="application/x-hdf5", on_click="ignore",
                   type="primary", key="dl_h5ad")
d2.download_button("Download transform .npz", data=lambda: transform_npz_bytes(result),
                   file_name=f"{stem}_transform_run{rid}.npz", mime="application/octet-stream",
                   on_click="ignore", key="dl_npz")
