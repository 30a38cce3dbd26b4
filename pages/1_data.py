"""Data page: load cells + image (demo, upload or server path), check them, preview both rasters."""

from __future__ import annotations

import streamlit as st

from gala_engine.demo import DEMOS
from gala_engine.features import FEATURE_CHOICES
from gala_engine.io import spatial_yx
from gala_engine.signals import FLAT_LEVEL, flat_warning
from ui import figures, state
from ui.data import (
    DataError,
    data_dir,
    demo_dataset,
    raster_warnings,
    rasters,
    server_dataset,
    set_dataset,
    signal_choices,
    signal_previews,
    signal_values,
    upload_dataset,
    upload_problems,
)
from ui.data import summary as data_summary
from ui.data import warnings as data_warnings
from ui.session import session_controls


def _image_options(where: str) -> dict[str, int]:
    """Channel / series / plane of the image to read (empty = automatic)."""
    with st.expander("Image options (multi-channel, several images, Z-stacks)"):
        cols = st.columns(3)
        picks = {
            "channel": cols[0].number_input("Channel", min_value=0, value=None, step=1, key=f"w_{where}_channel",
                                            placeholder="auto", help="0-based channel of a multi-channel image."),
            "series": cols[1].number_input("Series", min_value=0, value=None, step=1, key=f"w_{where}_series",
                                           placeholder="auto (largest)",
                                           help="0-based image of a TIFF holding several (OME series, label, macro)."),
            "plane": cols[2].number_input("Plane", min_value=0, value=None, step=1, key=f"w_{where}_plane",
                                          placeholder="auto", help="0-based Z / time plane of a stack."),
        }
    return {k: int(v) for k, v in picks.items() if v is not None}


def _load(loader, *args) -> None:
    try:
        with st.spinner("Reading files…"):
            set_dataset(loader(*args))
    except DataError as err:
        st.session_state[state.DATA_ERROR] = str(err)
    else:
        st.session_state.pop(state.SESSION_NOTE, None)  # a note about restoring older data is stale now
        st.rerun()  # the sidebar (drawn before this page) shows the new data at once


st.title("1 · Data")
# the open tab is session state (key): a rerun under load (an upload reaching the server) keeps the user on the tab
# they chose; untracked tabs could come back on the first one, hiding the uploaded files' chips and the Load button
demo_tab, upload_tab, server_tab = st.tabs(["Demo data", "Upload files", "Server path"], key="w_data_source",
                                           on_change="rerun")
with demo_tab:
    name = st.selectbox("Demo", list(DEMOS), format_func=lambda n: f"{n} — {DEMOS[n]}", key="w_demo")
    if st.button("Load demo data", type="primary", key="load_demo"):
        _load(demo_dataset, name)
with upload_tab:
    c1, c2 = st.columns(2)
    # no type= filter: the browser's refusal of a wrong type is a bare red "!"; upload_problems says it in words
    cells_up = c1.file_uploader("Cells (.h5ad with obsm['spatial'] in µm)", key="up_cells")
    image_up = c2.file_uploader("Tissue image (PNG, JPEG, TIFF)", key="up_image")
    up_options = _image_options("up")
    problems = upload_problems(cells_up, image_up)
    for problem in problems:
        st.error(problem)
    if st.button("Load uploaded files", disabled=not (cells_up and image_up) or bool(problems), key="load_upload"):
        _load(upload_dataset, cells_up.name, cells_up.getvalue(), image_up.name, image_up.getvalue(), up_options)
with server_tab:
    if data_dir() is None:
        st.caption("Reading files from the server is disabled here (`GALA_DATA_DIR` is empty).")
    else:
        st.caption("Files too big to upload: give paths inside the server's data folder (`GALA_DATA_DIR`).")
    cells_path = st.text_input("Cells file (.h5ad)", key="w_srv_cells")
    image_path = st.text_input("Image file", key="w_srv_image")
    srv_options = _image_options("srv")
    if st.button("Load from server", key="load_server"):
        _load(server_dataset, cells_path, image_path, srv_options)

with st.expander("Save or open a session (settings, landmarks, runs, uploaded files)"):
    session_controls()

if err := state.get(state.DATA_ERROR):
    st.error(err)

data = state.get(state.DATA)
if data is None:
    st.info("Load the demo data or your own files to begin.")
    st.stop()

st.subheader(f"Loaded: {data.name}")
s = data_summary(data)
with st.container(horizontal=True):  # each number as wide as it needs (wraps, never cut off)
    st.metric("Cells", f"{s['cells']:,}", width="content")
    st.metric("Genes", f"{s['genes']:,}", width="content")
    st.metric("Cell extent (µm)", f"{s['extent_um'][0]:,.0f} × {s['extent_um'][1]:,.0f}", width="content")
    st.metric("Image (px)", f"{s['image_px'][0]:,} × {s['image_px'][1]:,}", width="content")
    st.metric("Image type", s["channels"], width="content")
for w in data_warnings(data):
    st.warning(w)

st.subheader("What the engine aligns")
cfg = state.settings()
c1, c2, c3, c4 = st.columns(4)
choices = signal_choices(data)
choices += [cfg["signal"]] if cfg["signal"] not in choices else []
cfg["signal"] = c1.selectbox("Target signal", choices, index=choices.index(cfg["signal"]), accept_new_options=True,
                             help="What the cell raster shows: total counts per cell, cell density, one gene, "
                                  "several genes as channels (type e.g. EPCAM,KRT8), or pca / pca:k (the top k "
                                  "principal components of normalised log expression, as channels).",
                             key="w_signal")
auto_dx = c2.checkbox("automatic dx", value=cfg["dx"] is None, key="w_dx_auto",
                      help="Pick the cell raster's pixel size from the data extent (about 200 pixels a side).")
cfg["dx"] = None if auto_dx else float(c2.number_input("dx (µm per raster pixel)", min_value=0.1,
                                                         value=float(cfg["dx"] or 30.0), key="w_dx"))
features = list(FEATURE_CHOICES) + ([cfg["feature"]] if cfg["feature"] not in FEATURE_CHOICES else [])
cfg["feature"] = c3.selectbox("Image feature", features, index=features.index(cfg["feature"]), key="w_feature",
                              help="What of the image the cells are matched to. auto: for brightfield H&E/IHC the "
                                   "nuclei (hematoxylin, by colour deconvolution) plus the tissue (all stain), for "
                                   "fluorescence such as DAPI the edges (sobel); hematoxylin: nuclei only; tissue: "
                                   "all stain; sobel: edge strength; intensity: brightness; inverted: darkness.")
auto_reduce = c4.checkbox("automatic image downsampling", value=cfg["reduce"] is None, key="w_reduce_auto")
cfg["reduce"] = None if auto_reduce else int(c4.number_input("downsampling factor (loaded px)", min_value=1,
                                                               value=int(cfg["reduce"] or 4), key="w_reduce"))

try:
    r = rasters(data, cfg)
except DataError as err:
    st.error(err)
    st.stop()
for w in raster_warnings():
    st.warning(w)
values = signal_values(data, r.signal)
if r.informativeness < FLAT_LEVEL:  # too flat to align: rank the candidates to name a better one
    st.warning(flat_warning(r.signal, r.informativeness, signal_previews(data, r.signal, r.dx)))
st.caption(f"Cell raster: {r.J.shape[2]} × {r.J.shape[1]} px at dx = {r.dx:g} µm · image raster: "
           f"{r.I.shape[2]} × {r.I.shape[1]} px (downsampling {r.image_reduce}×).")

image_col, image_raster_col = st.columns(2)  # each modality: what was loaded | what the engine compares
image_col.plotly_chart(figures.image_figure(data.image, title="Image"), theme=None, key="fig_image")
image_raster_col.plotly_chart(figures.raster_figure(r.I, r.xI, title=f"Image raster ({r.feature})", unit="px"),
                              theme=None, key="fig_I")
cells_col, cell_raster_col = st.columns(2)
cells_col.plotly_chart(figures.cells_figure(spatial_yx(data.adata)[:, ::-1], values, title=f"Cells: {cfg['signal']}"),
                       theme=None, key="fig_cells")
cell_raster_col.plotly_chart(figures.raster_figure(r.J, r.xJ, title="Cell raster", unit="µm"), theme=None, key="fig_J")
if st.toggle(f"Compare target signals (informativeness of '{r.signal}': {r.informativeness:.2f})",
             key="w_signal_previews", help="Each candidate's cell raster and how much it varies inside the tissue at "
             f"the search's scale; below {FLAT_LEVEL} it is too flat to align."):
    cols = st.columns(4)
    for k, cand in enumerate(signal_previews(data, r.signal, r.dx)):
        title = f"{cand.signal[:24]}: {cand.score:.2f}" + (" (too flat)" if cand.flat else "")
        cols[k % 4].plotly_chart(figures.raster_figure(cand.raster, cand.xJ, title=title, unit="µm", height=260),
                                 theme=None, key=f"fig_signal_{k}")
st.page_link("pages/2_align.py", label="Next: align →", icon=":material/tune:")
