"""Viewer page helpers: the cell layers of a run, the cached screen image (and full-resolution crops), the
controls + figure drawn as one fragment so a toggle redraws only the chart. Numerics: gala_engine.display,
gala_engine.placement."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import streamlit as st
from PIL import Image

from gala_engine import constants
from gala_engine.display import ScreenImage, crop_for_screen, native_crop, screen_image
from gala_engine.errors import GalaInputError
from gala_engine.io import LoadedImage

from . import figures, state
from .data import Dataset, colour_values
from .runs import LDDMM, TRUTH, grid_lines, layer_positions

SCREEN_SIDE = 1200  # screen copy of the whole image, pixels a side (about 2× the chart on a laptop screen)
DETAIL = "gala_view_detail"  # (dataset uid, x_range, y_range): the box shown at full resolution
DISPLAY = "gala_view_display"  # dict brightness / contrast / gamma (kept across pages)
_COLOURS = "gala_view_colours"  # (dataset uid, colour) → per-cell values
_GRID = "gala_view_grid"  # ((run id, dataset uid), grid lines)
DISPLAY_DEFAULTS = {"brightness": 0.0, "contrast": 1.0, "gamma": 1.0}


def cell_colours(data: Dataset, colour: str) -> np.ndarray:
    """Per-cell values of ``colour`` (float32), kept for the last few choices."""
    store = st.session_state.setdefault(_COLOURS, {})
    key = (data.uid, colour)
    if key not in store:
        if len(store) > 8:
            store.clear()
        store[key] = np.asarray(colour_values(data, colour), dtype=np.float32)
    return store[key]


def run_grid(run_id: int, result: Any, data: Dataset) -> list[np.ndarray]:
    """The run's deformation grid lines in image pixels (once per run)."""
    key = (run_id, data.uid)
    hit = st.session_state.get(_GRID)
    if hit is None or hit[0] != key:
        hit = st.session_state[_GRID] = (key, grid_lines(result, data))
    return hit[1]


def _uri(shot: ScreenImage) -> str:
    buf = io.BytesIO()
    rgb = shot.rgb
    gray = bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())
    # a grey image (DAPI) as a one-channel JPEG: a third of the bytes sent on every redraw
    Image.fromarray(rgb[..., 0] if gray else rgb).save(buf, format="JPEG", quality=90, subsampling=0)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


@st.cache_data(max_entries=32, ttl=3600, show_spinner=False)
def screen_uri(uid: str, display: tuple[float, float, float], _image: LoadedImage,
               box: tuple[float, float, float, float] | None = None,
               _options: dict | None = None) -> tuple[str, float, float, float, float, float]:
    """A JPEG data URI of the whole image (``box`` None) or of the crop ``box`` = (x0, x1, y0, y1) at full
    resolution (the file re-read when the loaded copy is reduced, :func:`gala_engine.display.native_crop`;
    ``_options`` the channel/series/plane it was read with), its placement (x0, y0, dx, dy) and mean
    brightness (0–1). Cached by dataset uid, display settings and box, so a toggle that changes neither
    costs nothing."""
    adjust = dict(zip(("brightness", "contrast", "gamma"), display))
    if box is None:
        shot = screen_image(_image, max_side=SCREEN_SIDE, **adjust)
    else:
        shot = None
        if _image.scale > 1:
            try:
                shot = native_crop(_image.source, box[:2], box[2:], full_shape=_image.full_shape, options=_options,
                                   max_side=SCREEN_SIDE, **adjust)
            except (GalaInputError, OSError, ValueError):  # the file changed or went away: use the loaded copy
                shot = None
        if shot is None:
            shot = crop_for_screen(_image, box[:2], box[2:], max_side=SCREEN_SIDE, **adjust)
        if shot is None:
            return "", 0.0, 0.0, 1.0, 1.0, 0.5
    return _uri(shot), shot.x0, shot.y0, shot.dx, shot.dy, float(shot.rgb.mean() / 255.0)


def display_settings() -> dict[str, float]:
    """The image display store (brightness, contrast, gamma)."""
    return st.session_state.setdefault(DISPLAY, dict(DISPLAY_DEFAULTS))


def _reset_display() -> None:
    st.session_state[DISPLAY] = dict(DISPLAY_DEFAULTS)
    for k in DISPLAY_DEFAULTS:  # the sliders are made again from the store (setting their keys would warn)
        st.session_state.pop(f"w_view_{k}", None)


def _display_controls() -> tuple[float, float, float]:
    cfg = display_settings()
    with st.popover("Image display", icon=":material/contrast:", width="content",
                    help="Brightness, contrast and gamma of the image"):
        cfg["brightness"] = st.slider("Brightness", -0.5, 0.5, float(cfg["brightness"]), 0.05, key="w_view_brightness")
        cfg["contrast"] = st.slider("Contrast", 0.2, 4.0, float(cfg["contrast"]), 0.1, key="w_view_contrast")
        cfg["gamma"] = st.slider("Gamma", 0.2, 3.0, float(cfg["gamma"]), 0.05, key="w_view_gamma",
                                 help="Below 1 lightens dark areas (a dim DAPI stain); above 1 darkens them.")
        st.button("Reset", key="w_view_display_reset", on_click=_reset_display)
    return float(cfg["brightness"]), float(cfg["contrast"]), float(cfg["gamma"])


def _on_select(chart_key: str, uid: str) -> None:
    """Chart selection callback: a drawn box becomes the full-resolution detail view."""
    event = st.session_state.get(chart_key)
    boxes = (event or {}).get("selection", {}).get("box") or []
    if boxes:
        b = boxes[-1]
        xs, ys = sorted(map(float, b["x"])), sorted(map(float, b["y"]))
        if xs[1] - xs[0] > 2 and ys[1] - ys[0] > 2:
            st.session_state[DETAIL] = (uid, tuple(xs), tuple(ys))


def _clear_detail() -> None:
    st.session_state.pop(DETAIL, None)


def detail_box(data: Dataset) -> tuple[float, float, float, float] | None:
    """The detail box (x0, x1, y0, y1) of the loaded dataset, or None (whole image)."""
    d = state.get(DETAIL)
    if d is None or d[0] != data.uid:
        return None
    return (*d[1], *d[2])


def viewer(data: Dataset, run_id: int, result: Any, quality: dict | None = None) -> None:
    """Controls and the overlay figure as one fragment: a toggle reruns only this part of the page. With
    ``quality`` (:func:`ui.runs.run_quality`) the cells can be coloured by their alignment confidence."""

    @st.fragment
    def _draw() -> None:
        layers = layer_positions(run_id, result, data)
        names = list(layers)
        colour_options = [constants.SIGNAL_TOTAL_COUNTS, *([figures.CONFIDENCE_COLOUR] if quality else []),
                          *map(str, data.adata.var_names)]
        coloured = [n for n in names if n != TRUTH]
        c1, c2, c3 = st.columns(3, vertical_alignment="bottom")
        colour = c1.selectbox("Colour by", colour_options, key="w_view_colour")
        colour_on = c2.selectbox("Coloured layer", coloured, index=coloured.index(LDDMM), key="w_view_colour_on",
                                 help="This layer shows the chosen value; the other layers keep one colour each.")
        opacity = c3.slider("Opacity", 0.05, 1.0, 0.8, 0.05, key="w_view_opacity")
        box = detail_box(data)
        with st.container(horizontal=True, vertical_alignment="center"):
            display = _display_controls()
            if box is not None:
                st.button("Show the whole image", key="w_view_whole", on_click=_clear_detail,
                          icon=":material/zoom_out_map:")
            st.caption("Click a name in the legend to show or hide that layer (instantly). For full-resolution "
                       "detail, pick **Box Select** in the chart's toolbar (right) and draw a box.")
        whole = screen_uri(data.uid, display, data.image)
        detail = None
        if box is not None:
            with st.spinner("Loading the detail at full resolution…"):
                detail = screen_uri(data.uid, display, data.image, box, data.image_options)
        fig = figures.overlay_figure(
            whole, layers, quality["confidence"] if quality and colour == figures.CONFIDENCE_COLOUR
            else cell_colours(data, colour), colour_label=colour, shown=(LDDMM, TRUTH),
            colour_layer=colour_on, opacity=opacity, grid=run_grid(run_id, result, data),
            detail=detail if detail and detail[0] else None, view=box, dark=whole[5] < 0.45)
        key = "fig_overlay"
        st.plotly_chart(fig, theme=None, key=key, on_select=lambda: _on_select(key, data.uid),
                        selection_mode="box", config={"displaylogo": False})

    _draw()

