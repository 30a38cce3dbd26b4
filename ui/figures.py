"""Plotly figures of the app. Axes in full-resolution image pixels (x = column, y = row, row 0 at top)
or in µm for the cell side; no numerics beyond display scaling and point mapping."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from PIL import Image

from gala_engine.affine import genes_to_matrix_np
from gala_engine.display import screen_image
from gala_engine.io import LoadedImage
from gala_engine.lddmm import ESTEP_START

LAYER_COLOURS = {  # one colour per layer, light enough for dark (DAPI) images, distinct from Viridis
    "after LDDMM": "#39d353",
    "after affine": "#ffa31a",
    "before (centred)": "#ff4fd8",
    "ground truth": "#00e5ff",
}
CONFIDENCE_COLOUR = "alignment confidence"  # the viewer's colour option for obs['gala_confidence'] (0–1)
GRID = "deformation grid"
_MARGIN = dict(l=60, r=10, t=40, b=45)  # room for the tick labels
_CHART_MARGIN = dict(l=60, r=10, t=40, b=40)


_THUMBS: dict[tuple[int, int], tuple[np.ndarray, tuple[str, float, float, int, int]]] = {}


def _make_thumbnail(image: LoadedImage, max_side: int) -> tuple[str, float, float, int, int]:
    shot = screen_image(image, max_side=max_side)  # area-averaged: no aliasing bands
    buf = io.BytesIO()
    Image.fromarray(shot.rgb).save(buf, format="JPEG", quality=85)
    uri = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    return uri, shot.dx, shot.dy, shot.rgb.shape[1], shot.rgb.shape[0]


def thumbnail(image: LoadedImage, max_side: int = 1200) -> tuple[str, float, float, int, int]:
    """JPEG data URI of a screen-size copy, and full-res pixels per thumbnail pixel (sx, sy), size."""
    key = (id(image.pixels), max_side)
    hit = _THUMBS.get(key)
    if hit is not None and hit[0] is image.pixels:
        return hit[1]
    out = _make_thumbnail(image, max_side)
    if len(_THUMBS) > 16:
        _THUMBS.clear()
    _THUMBS[key] = (image.pixels, out)  # holding the array keeps its id unique
    return out


def image_trace(image: LoadedImage, max_side: int = 1200) -> go.Image:
    """The image as a ``go.Image`` placed in full-resolution pixel coordinates (pixel centres)."""
    uri, sx, sy, _, _ = thumbnail(image, max_side)
    return go.Image(source=uri, x0=sx / 2 - 0.5, y0=sy / 2 - 0.5, dx=sx, dy=sy, hoverinfo="skip", name="image")


def _image_axes(fig: go.Figure, height: int) -> go.Figure:
    fig.update_yaxes(autorange="reversed", scaleanchor="x", scaleratio=1, title="row (px)")
    fig.update_xaxes(title="column (px)")
    fig.update_layout(height=height, margin=_MARGIN)
    return fig


def image_figure(image: LoadedImage, *, title: str = "Image", height: int = 380) -> go.Figure:
    """The image thumbnail with full-resolution axes."""
    fig = go.Figure(image_trace(image, max_side=800))
    fig.update_layout(title=title)
    return _image_axes(fig, height)


def cells_figure(xy_um: np.ndarray, values: np.ndarray, *, title: str = "Cells (µm)", height: int = 380,
                 max_points: int = 20_000) -> go.Figure:
    """Cell centroids in µm (y down, like the raster), coloured by ``values``."""
    idx = np.arange(len(xy_um))
    if len(idx) > max_points:
        idx = np.random.default_rng(0).choice(idx, max_points, replace=False)
    fig = go.Figure(go.Scatter(
        x=xy_um[idx, 0], y=xy_um[idx, 1], mode="markers",
        marker=dict(size=4, color=values[idx], colorscale="Viridis", showscale=False), hoverinfo="skip",
    ))
    fig.update_yaxes(autorange="reversed", scaleanchor="x", scaleratio=1, title="y (µm)")
    fig.update_xaxes(title="x (µm)")
    fig.update_layout(title=title, height=height, margin=_MARGIN)
    return fig


def raster_figure(R: np.ndarray, x: Sequence[np.ndarray], *, title: str, unit: str, height: int = 380) -> go.Figure:
    """A (1, H, W) raster on grid ``x = [rows, cols]`` (row 0 at the top)."""
    fig = go.Figure(go.Heatmap(z=np.asarray(R)[0], x=np.asarray(x[1]), y=np.asarray(x[0]),
                               colorscale="Gray", showscale=False, hoverinfo="skip"))
    fig.update_yaxes(autorange="reversed", scaleanchor="x", scaleratio=1, title=f"row ({unit})")
    fig.update_xaxes(title=f"column ({unit})")
    fig.update_layout(title=title, height=height, margin=_MARGIN)
    return fig


_LIVE_MARGIN = dict(l=55, r=10, t=35, b=80)
_LEGEND = dict(orientation="h", x=0, y=-0.3, yanchor="top", font=dict(size=11))  # under the axis title: any width


def search_figure(best: Sequence[float], mean: Sequence[float], *, height: int = 300) -> go.Figure:
    """The search (GA): best and average match score per round, all independent searches in sequence."""
    rounds = list(range(1, len(best) + 1))
    fig = go.Figure([
        go.Scatter(x=rounds, y=list(best), mode="lines", name="best pose"),
        go.Scatter(x=rounds, y=list(mean), mode="lines", name="average pose", line=dict(dash="dot")),
    ])
    fig.update_layout(title=dict(text="Search", font=dict(size=14)), xaxis_title="search round",
                      yaxis_title="match score (1 = perfect)", height=height, margin=_LIVE_MARGIN, legend=_LEGEND)
    return fig


def refine_figure(levels: Sequence[Sequence[float]], *, height: int = 300) -> go.Figure:
    """Fine-tuning after the search: the match score per step, one line per level (coarse → full resolution).

    Each level compares finer pictures, whose score starts lower: only the rise within a level counts."""
    fig = go.Figure()
    start = 0
    for k, level in enumerate(levels):
        last = k == len(levels) - 1 and len(levels) > 1
        name = "full detail" if last else (f"level {k + 1} (coarser)" if len(levels) > 1 else "fine-tuning")
        fig.add_trace(go.Scatter(x=list(range(start + 1, start + len(level) + 1)), y=list(level), mode="lines",
                                 name=name, line=dict(color="#2ca02c", dash=None if last or len(levels) == 1
                                                      else "dash")))
        if k:
            fig.add_vline(x=start + 0.5, line=dict(color="#bbb", dash="dot", width=1))
        start += len(level)
    fig.update_layout(title=dict(text="Fine-tuning", font=dict(size=14)), xaxis_title="fine-tuning step",
                      yaxis_title="match score (1 = perfect)", height=height, margin=dict(_LIVE_MARGIN, b=45),
                      showlegend=False)  # (levels named on hover; the page's caption says dashed = coarser)
    return fig


def _log_ticks(values: Sequence[float]) -> tuple[list[float], list[str]]:
    """1-2-5 ticks spanning ``values`` (all > 0), labelled like 2k, 50k, 1M."""
    lo, hi = min(values), max(values)
    ticks = [m * 10.0**k for k in range(int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi))) + 1)
             for m in (1, 2, 5)]
    ticks = [t for t in ticks if lo / 1.5 <= t <= hi * 1.5] or [lo, hi]
    return ticks, [_si(t) for t in ticks]


def _si(value: float) -> str:
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:g}{suffix}"
    return f"{value:g}"


def energy_figure(energy: Sequence[float], steps: Sequence[int] | None = None, *, height: int = 300) -> go.Figure:
    """The warp (LDDMM): its energy (mismatch + bending, lower is better) per step, on a log axis when positive.

    ``steps``: each value's step within its warp run (it restarts at 1 when the warp runs again, e.g. the two
    halves of the check that keeps a warp only if it helps); each run is drawn on its own, after a marked
    boundary. From step ``ESTEP_START + 1`` of a run the weights of matching vs background pixels are
    re-estimated (EM), which puts the energy on a new scale: drawn in another colour after a marked boundary,
    so the jump there does not read as a divergence."""
    steps = list(steps) if steps is not None and len(steps) == len(energy) else list(range(1, len(energy) + 1))
    runs: list[list[int]] = []
    for i, step in enumerate(steps):
        if not runs or step <= steps[i - 1]:
            runs.append([])
        runs[-1].append(i)
    fig = go.Figure()
    shown: set[str] = set()
    for r, idx in enumerate(runs):
        if r:
            fig.add_vline(x=idx[0] + 0.5, line=dict(color="#888", width=1),
                          annotation_text=f"warp run {r + 1} (check)", annotation_position="bottom right",
                          annotation_font=dict(size=10, color="#666"))
        for phase, colour, keep in (("fixed weights", "#1f77b4", lambda s: s <= ESTEP_START),
                                    ("re-weighted (new scale)", "#9467bd", lambda s: s > ESTEP_START)):
            part = [i for i in idx if keep(steps[i])]
            if not part:
                continue
            fig.add_trace(go.Scatter(x=[i + 1 for i in part], y=[energy[i] for i in part], mode="lines", name=phase,
                                     line=dict(color=colour), legendgroup=phase, showlegend=phase not in shown))
            shown.add(phase)
            if phase != "fixed weights":  # explained once: repeated, the labels overlap (four runs, count scale)
                label = {} if r else dict(annotation_text="weights re-estimated:<br>new scale, not a divergence",
                                          annotation_position="top right", annotation_font=dict(size=10, color="#666"))
                fig.add_vline(x=part[0] + 0.5, line=dict(color="#bbb", dash="dot", width=1), **label)
    fig.update_layout(title=dict(text="Warp", font=dict(size=14)), xaxis_title="warp step",
                      yaxis_title="energy (lower = better)", height=height, margin=_LIVE_MARGIN, legend=_LEGEND)
    if energy and min(energy) > 0:
        tickvals, ticktext = _log_ticks(energy)
        fig.update_yaxes(type="log", tickvals=tickvals, ticktext=ticktext)
    return fig


def genes_to_image_xy(genes: np.ndarray, xI: Sequence[np.ndarray], xJ: Sequence[np.ndarray],
                      xy_um: np.ndarray) -> np.ndarray:
    """Cells (x, y) µm → (x, y) full-res image pixels through the affine of 5 GA genes."""
    A = genes_to_matrix_np(genes, list(xI), list(xJ))
    yx1 = np.c_[np.asarray(xy_um, np.float64)[:, ::-1], np.ones(len(xy_um))]
    rc = (np.linalg.inv(A) @ yx1.T).T[:, :2]
    return rc[:, ::-1]


def preview_figure(image: LoadedImage, xy_px: np.ndarray, *, title: str = "Current best pose", height: int = 460,
                   max_points: int = 4000) -> go.Figure:
    """Overlay of the cells at the current best pose on the image, big enough to judge (SVG markers, no WebGL)."""
    xy = xy_px[:: max(1, len(xy_px) // max_points)]
    fig = go.Figure([image_trace(image, max_side=700),
                     go.Scatter(x=xy[:, 0], y=xy[:, 1], mode="markers", hoverinfo="skip",
                                marker=dict(size=3, color="#ff7f0e", opacity=0.7), name="cells")])
    fig.update_layout(title=dict(text=title, font=dict(size=14)), showlegend=False)
    _image_axes(fig, height)
    fig.update_layout(margin=dict(l=50, r=5, t=35, b=40))
    return fig


def colour_scale(colour_label: str) -> dict:
    """Marker colour-scale settings for a colour option: red (0) → yellow → green (1) on a fixed 0–1 range for the
    alignment confidence, Viridis on the values' own range otherwise."""
    if colour_label == CONFIDENCE_COLOUR:
        return dict(colorscale="RdYlGn", cmin=0.0, cmax=1.0)
    return dict(colorscale="Viridis")


ScreenUri = tuple  # (data URI, x0, y0, dx, dy, mean brightness) as ui.viewer.screen_uri returns


def _uri_trace(shot: ScreenUri, name: str) -> go.Image:
    return go.Image(source=shot[0], x0=shot[1], y0=shot[2], dx=shot[3], dy=shot[4], hoverinfo="skip", name=name,
                    uid=name)


def _joined(lines: list[np.ndarray]) -> np.ndarray:
    """Polylines as one (M, 2) array with NaN rows between them (one trace draws them all)."""
    gap = np.full((1, 2), np.nan, np.float32)
    return np.concatenate([p for line in lines for p in (np.asarray(line, np.float32), gap)]) if lines else gap


def overlay_figure(image: ScreenUri, layers: dict[str, np.ndarray], values: np.ndarray, *, colour_label: str,
                   shown: Sequence[str] = ("after LDDMM", "ground truth"), colour_layer: str = "after LDDMM",
                   opacity: float = 0.8, grid: list[np.ndarray] | None = None, detail: ScreenUri | None = None,
                   view: tuple[float, float, float, float] | None = None, dark: bool = False,
                   height: int = 720) -> go.Figure:
    """Image + cells in full-resolution pixels, every layer in the figure so the legend shows and hides them
    in the browser without a round trip (``shown``: visible at first; the choice survives redraws).

    One WebGL ``Scattergl`` per layer: ``colour_layer`` coloured by ``values`` (:func:`colour_scale`), the others one light
    colour each, every marker outlined so it shows on dark and light images. ``grid``: warped grid lines (one
    trace, hidden at first unless in ``shown``). ``detail``: a full-resolution crop drawn over the image and
    ``view`` = (x0, x1, y0, y1) the axis ranges to show (None: the whole image)."""
    fig = go.Figure(_uri_trace(image, "image"))
    if detail is not None:
        fig.add_trace(_uri_trace(detail, "detail"))
    edge = "rgba(255,255,255,0.75)" if dark else "rgba(0,0,0,0.6)"
    if grid is not None:
        g = _joined(grid)
        fig.add_trace(go.Scattergl(x=g[:, 0], y=g[:, 1], mode="lines", hoverinfo="skip", name=GRID, uid=GRID,
                                   visible=True if GRID in shown else "legendonly",
                                   line=dict(color="rgba(255,255,255,0.7)" if dark else "rgba(30,30,30,0.7)",
                                             width=1)))
    for name, xy in layers.items():
        xy = np.asarray(xy, np.float32)
        if name == colour_layer:
            marker = dict(size=7, color=np.asarray(values, np.float32), **colour_scale(colour_label),
                          opacity=opacity,
                          showscale=True, colorbar=dict(title=dict(text=colour_label, side="right"), len=0.6,
                                                        thickness=14),
                          line=dict(width=0.8, color=edge))
        elif name == "ground truth":  # rings, so the aligned cells stay visible inside them
            marker = dict(size=11, symbol="circle-open", color=LAYER_COLOURS[name], opacity=opacity,
                          line=dict(width=1.5))
        else:
            marker = dict(size=6, color=LAYER_COLOURS.get(name, "#ffffff"), opacity=opacity,
                          line=dict(width=0.6, color=edge))
        fig.add_trace(go.Scattergl(x=xy[:, 0], y=xy[:, 1], mode="markers", name=name, uid=name, marker=marker,
                                   visible=True if name in shown else "legendonly",
                                   selected=dict(marker=dict(opacity=opacity)),
                                   unselected=dict(marker=dict(opacity=opacity)),
                                   hovertemplate="x=%{x:.0f} px<br>y=%{y:.0f} px<extra>" + name + "</extra>"))
    fig.update_layout(legend=dict(orientation="h", y=1.01, x=0, yanchor="bottom", font=dict(size=12)),
                      modebar=dict(orientation="v"),  # on the right, clear of the legend above the image
                      dragmode="zoom", uirevision="overlay")  # keeps zoom and legend choices across redraws
    _image_axes(fig, height)
    fig.update_yaxes(constrain="domain", constraintoward="top")  # a wide window: the image under the legend
    fig.update_xaxes(constrain="domain", constraintoward="left")
    if view is not None:
        rev = f"detail {view}"  # a new box sets the axes; the legend's choices stay (legend.uirevision)
        fig.update_xaxes(range=[view[0], view[1]], autorange=False, uirevision=rev)
        fig.update_yaxes(range=[view[3], view[2]], autorange=False, uirevision=rev)
    return fig


# ------------------------------------------------------------------------------------- landmarks

_PAIR_COLOUR = "#ffd400"
_PENDING_COLOUR = "#ff2d95"


def _click_grid(x0: float, x1: float, y0: float, y1: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """An n × n grid of points over a rectangle (invisible click targets: a click anywhere returns a point)."""
    xs, ys = np.linspace(x0, x1, n, dtype=np.float32), np.linspace(y0, y1, n, dtype=np.float32)
    gx, gy = np.meshgrid(xs, ys)
    return gx.ravel(), gy.ravel()


def _pair_markers(fig: go.Figure, xy: np.ndarray, names: list[str], pending: tuple[float, float] | None,
                  unit: str) -> None:
    if len(xy):
        fig.add_trace(go.Scatter(
            x=xy[:, 0], y=xy[:, 1], mode="markers+text", text=names, textposition="top right", name="pairs",
            textfont=dict(color=_PAIR_COLOUR, size=15), hovertemplate="pair %{text}<extra></extra>",
            marker=dict(size=13, symbol="circle-open", color=_PAIR_COLOUR, line=dict(width=3))))
    if pending is not None:
        fig.add_trace(go.Scatter(
            x=[pending[0]], y=[pending[1]], mode="markers", name="picked", hoverinfo="skip",
            marker=dict(size=16, symbol="x-thin-open", color=_PENDING_COLOUR, line=dict(width=3))))
    fig.update_layout(showlegend=False, dragmode="zoom", clickmode="event+select",
                      margin=dict(l=50, r=10, t=40, b=40))


def landmark_image_figure(image: LoadedImage, pairs_xy: np.ndarray, names: list[str],
                          pending: tuple[float, float] | None, *, overlay_xy: np.ndarray | None = None,
                          height: int = 520, grid: int = 220) -> go.Figure:
    """The image (full-resolution pixel axes) with numbered landmark rings, the point picked so far, an
    optional overlay of the cells, and an invisible grid of click targets (``grid`` × ``grid``)."""
    h, w = image.full_shape
    fig = go.Figure(image_trace(image))
    gx, gy = _click_grid(0.0, w - 1.0, 0.0, h - 1.0, grid)
    fig.add_trace(go.Scattergl(x=gx, y=gy, mode="markers", marker=dict(size=6, opacity=0.0), name="click",
                               hovertemplate="x=%{x:.0f} px<br>y=%{y:.0f} px<extra></extra>"))
    if overlay_xy is not None and len(overlay_xy):
        xy = np.asarray(overlay_xy, np.float32)
        fig.add_trace(go.Scattergl(x=xy[:, 0], y=xy[:, 1], mode="markers", hoverinfo="skip", name="cells",
                                   marker=dict(size=4, color="#00e5ff", opacity=0.6)))
    _pair_markers(fig, np.asarray(pairs_xy, np.float64).reshape(-1, 2), names, pending, "px")
    fig.update_layout(title="Image: click a point (or drag a small box)")
    return _image_axes(fig, height)


def landmark_cells_figure(xy_um: np.ndarray, values: np.ndarray, pairs_xy: np.ndarray, names: list[str],
                          pending: tuple[float, float] | None, *, height: int = 520,
                          max_points: int = 20_000) -> go.Figure:
    """The cells in µm (y down, like the image), with numbered landmark rings and the point picked so far;
    a click selects a cell (a drawn box: its centre)."""
    idx = np.arange(len(xy_um))
    if len(idx) > max_points:
        idx = np.random.default_rng(0).choice(idx, max_points, replace=False)
    xy = np.asarray(xy_um, np.float32)[idx]
    v = np.asarray(values, np.float32)[idx]
    trace = go.Scattergl if len(xy) > 5000 else go.Scatter
    fig = go.Figure(trace(x=xy[:, 0], y=xy[:, 1], mode="markers", name="cells",
                          marker=dict(size=6, color=v, colorscale="Viridis", showscale=False),
                          hovertemplate="x=%{x:.1f} µm<br>y=%{y:.1f} µm<extra></extra>"))
    _pair_markers(fig, np.asarray(pairs_xy, np.float64).reshape(-1, 2), names, pending, "µm")
    fig.update_yaxes(autorange="reversed", scaleanchor="x", scaleratio=1, title="y (µm)")
    fig.update_xaxes(title="x (µm)")
    fig.update_layout(title="Cells: click the matching cell", height=height)
    return fig
