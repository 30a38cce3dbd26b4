"""Landmarks page: click matching points on the image and the cells, align from them, refine, check any run."""

from __future__ import annotations

import streamlit as st

from gala_engine.errors import GalaInputError
from gala_engine.io import spatial_yx
from gala_engine.params import AlignParams
from ui import figures, state
from ui import landmarks as lm
from ui.data import DataError, colour_values, rasters
from ui.jobs import start_job
from ui.runs import next_run_id

st.title("4 · Landmarks")
data = state.get(state.DATA)
if data is None:
    st.info("Load data on the Data page first.")
    st.page_link("pages/1_data.py", label="Go to Data", icon=":material/folder_open:")
    st.stop()
st.caption("Click a point on the **image**, then the same tissue point among the **cells** (either order); drag a "
           "small box for a precise point. Three or more pairs spread over the tissue align the section at once; "
           "a flipped section is detected. Edit or delete pairs in the table.")

runs = {rid: res for rid, (uid, res) in state.results().items() if uid == data.uid}
rid = state.get(state.SELECTED_RUN) if state.get(state.SELECTED_RUN) in runs else (max(runs) if runs else None)
result = runs.get(rid)
rows, pend, v = lm.pairs(data), lm.pending(), lm.version()
xy_um = spatial_yx(data.adata)[:, ::-1]
message = st.session_state.pop(lm.MESSAGE, None)

c_img, c_cells = st.columns(2)
img_rows = [r for r in rows if r["image_x"] is not None and r["image_y"] is not None]
cell_rows = [r for r in rows if r["cells_x"] is not None and r["cells_y"] is not None]
ev_img = c_img.plotly_chart(
    figures.landmark_image_figure(data.image, [[r["image_x"], r["image_y"]] for r in img_rows],
                                  [r["name"] for r in img_rows], pend["image"],
                                  overlay_xy=None if result is None else lm.overlay(data, result, rid)),
    key=f"lm_image_{v}", on_select="rerun", selection_mode=("points", "box"), theme=None)
ev_cells = c_cells.plotly_chart(
    figures.landmark_cells_figure(xy_um, colour_values(data, "total counts"),
                                  [[r["cells_x"], r["cells_y"]] for r in cell_rows], [r["name"] for r in cell_rows],
                                  pend["cells"]),
    key=f"lm_cells_{v}", on_select="rerun", selection_mode=("points", "box"), theme=None)
for side, event in (("image", ev_img), ("cells", ev_cells)):
    point = lm.clicked_point(event.selection if event else None)
    if point is not None:
        st.session_state[lm.MESSAGE] = ("info", lm.add_click(data, side, point))
        st.rerun()
if message:
    getattr(st, message[0])(message[1])
if result is not None:
    st.caption(f"Cyan dots on the image and the error column: run #{rid} (choose the run on the Viewer page).")

table = st.data_editor(lm.table(data, result), key=f"lm_table_{v}", num_rows="dynamic", hide_index=True,
                       disabled=["error_px"], width="stretch",
                       column_config={"error_px": st.column_config.NumberColumn("error (px)", help="Landmark error "
                                      "under the run shown: distance from the image point to where the run puts "
                                      "the cell point.")})
if lm.edited(data, table):
    st.rerun()

b = st.columns([1.3, 1.3, 1.2, 0.8, 0.8])
kind = b[2].selectbox("Fit", ["similarity", "affine"], key="w_lm_kind", label_visibility="collapsed",
                      help="similarity: rotation, one scale, shift (and a flip); affine: also shear (≥ 4 pairs).")
job = state.get(state.JOB)
busy = job is not None and job.running
if b[0].button("Align from landmarks", type="primary", disabled=len(rows) < 3, key="lm_align"):
    try:
        rid, res_px = lm.align_from_landmarks(data, kind=kind)
        st.session_state[lm.MESSAGE] = ("success", f"Run #{rid}: landmark affine, median residual {res_px:.2f} px.")
    except GalaInputError as err:
        st.session_state[lm.MESSAGE] = ("error", str(err))
    st.rerun()
if b[1].button("Refine from landmarks", disabled=len(rows) < 3 or busy, key="lm_refine",
               help="Search + LDDMM starting at the landmark affine; kept only while it agrees with the landmarks."):
    try:
        pairs_lm = lm.check_refine(data, kind)
        params = AlignParams.from_dict(state.get(state.PARAMS) or {})
        st.session_state[state.JOB] = start_job(rasters(data, state.settings()), params, run_id=next_run_id(),
                                                runner=lm.refine_runner(pairs_lm, kind), context=data)
    except (GalaInputError, DataError) as err:
        st.session_state[lm.MESSAGE] = ("error", str(err))
    st.rerun()
if b[3].button("Undo last", disabled=not rows, key="lm_undo"):
    lm.set_pairs(data, rows[:-1])
    st.rerun()
if b[4].button("Clear", disabled=not rows and pend["image"] is None and pend["cells"] is None, key="lm_clear"):
    lm.set_pairs(data, [])
    pend["image"] = pend["cells"] = None
    st.rerun()


lm.refine_status(every=1.0 if busy else None)
if result is not None and rows and (err := lm.result_landmark_error(data, result)) is not None:
    st.metric("Median landmark error", f"{err:.2f} px", help=f"Of run #{rid}, over the complete pairs.")
if result is not None and result.origin.get("note"):
    st.caption(f"Run #{rid} ({result.origin.get('source')}): {result.origin['note']}")

lm.files_panel(data, rows)
