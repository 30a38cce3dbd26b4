"""Quality report of one alignment: a PNG (overlays, curves, deformation grid) and a JSON of metrics.

Drawn with OpenCV only (no matplotlib). Coordinates: the alignment's ``A`` maps full-resolution
image pixels (row, col) to µm (row, col); cells are drawn at their (x, y) image-pixel positions.
"""

from __future__ import annotations

import json
import os
import platform
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from . import constants
from .io import LoadedImage
from .outputs import json_default
from .search import score_batch
from .section import AlignmentResult, SectionRasters
from .transform import transform_image_source_to_target, transform_points_source_to_target

__all__ = ["centred_affine", "jacobian_det", "jacobian_range", "overlap_score", "quality_metrics", "write_report"]

_PANEL = 420  # panel side, PNG pixels
_MAX_DOTS = 20000  # cells drawn per overlay panel
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_PACKAGES = (
    "gala-studio",
    "numpy",
    "scipy",
    "torch",
    "pygad",
    "anndata",
    "opencv-python-headless",
    "opencv-python",
    "pillow",
    "tifffile",
    "dask",
    "distributed",
)


# ------------------------------------------------------------------------------------- metrics


def centred_affine(rasters: SectionRasters) -> np.ndarray:
    """The "before" pose: image pixels → µm by one isotropic scale (matching the rasters' extents)
    and a shift of the image centre onto the cells' centre; no rotation. (3, 3), (row, col)."""
    ext_i = np.array([a[-1] - a[0] for a in rasters.xI], dtype=np.float64)
    ext_j = np.array([a[-1] - a[0] for a in rasters.xJ], dtype=np.float64)
    s = float(np.sqrt(np.prod(ext_j) / max(np.prod(ext_i), 1e-12)))
    ci = np.array([(a[0] + a[-1]) / 2.0 for a in rasters.xI])
    cj = np.array([(a[0] + a[-1]) / 2.0 for a in rasters.xJ])
    A = np.eye(3)
    A[:2, :2] *= s
    A[:2, 2] = cj - s * ci
    return A


def overlap_score(
    rasters: SectionRasters, A: np.ndarray, v: np.ndarray | None = None, xv: list[np.ndarray] | None = None
) -> float:
    """Normalised cross-correlation (−1…1) of the cell raster ``J`` with the image raster ``I``
    resampled into the cells' µm grid by ``A`` (and the velocity ``v`` on ``xv``, if given)."""
    if v is None or xv is None:
        xv = [np.array([a[0], a[-1]], np.float64) for a in rasters.xI]
        v = np.zeros((1, 2, 2, 2))
    moved = transform_image_source_to_target(
        xv,
        np.asarray(v, np.float64),
        np.asarray(A, np.float64),
        rasters.xI,
        np.asarray(rasters.I, np.float64),
        rasters.xJ,
    )
    return float(score_batch(torch.as_tensor(moved)[None], torch.as_tensor(np.asarray(rasters.J, np.float64)))[0])


def _phi_grid(result: AlignmentResult, n: int = 64) -> tuple[list[np.ndarray], np.ndarray]:
    """Axes of an ``n``-point grid over the velocity grid and φ (the LDDMM flow, pixels → pixels) on it."""
    axes = [np.linspace(a[0], a[-1], n) for a in result.xv]
    rr, cc = np.meshgrid(axes[0], axes[1], indexing="ij")
    pts = np.stack([rr, cc], -1).reshape(-1, 2)
    phi = transform_points_source_to_target(result.xv, np.asarray(result.v, np.float64), np.eye(3), pts)
    return axes, np.asarray(phi).reshape(n, n, 2)


def jacobian_range(result: AlignmentResult, *, n: int = 64) -> tuple[float, float]:
    """Min and max of the Jacobian determinant of the deformation φ (the LDDMM flow, image pixels →
    image pixels; the affine ``A`` is left out, its determinant is separate). Finite differences on an
    ``n``×``n`` grid over the velocity grid. ``min > 0``: the deformation does not fold."""
    axes, phi = _phi_grid(result, n)
    det = jacobian_det(phi, axes)
    return float(det.min()), float(det.max())


def jacobian_det(phi: np.ndarray, axes: list[np.ndarray]) -> np.ndarray:
    """Jacobian determinant of a map sampled on a grid: ``phi`` (n_r, n_c, 2) = (row, col) images of
    the grid with axes ``axes = [rows, cols]``; central finite differences (one-sided at the edges)."""
    d_r = np.gradient(phi, axes[0], axis=0)  # ∂φ/∂row
    d_c = np.gradient(phi, axes[1], axis=1)  # ∂φ/∂col
    return d_r[..., 0] * d_c[..., 1] - d_c[..., 0] * d_r[..., 1]


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return out


def quality_metrics(rasters: SectionRasters, result: AlignmentResult) -> dict[str, Any]:
    """JSON-friendly metrics of one alignment (see :func:`write_report`)."""
    axes, phi = _phi_grid(result)
    det = jacobian_det(phi, axes)
    jmin, jmax = float(det.min()), float(det.max())
    rr, cc = np.meshgrid(axes[0], axes[1], indexing="ij")
    disp = np.hypot(phi[..., 0] - rr, phi[..., 1] - cc)
    return {
        "fitness": float(result.fitness),
        "score": float(result.score),
        "overlap_before": overlap_score(rasters, centred_affine(rasters)),
        "overlap_affine": overlap_score(rasters, result.A_affine),
        "overlap_after": overlap_score(rasters, result.A, result.v, result.xv),
        "jacobian_det_min": jmin,
        "jacobian_det_max": jmax,
        "folding": bool(jmin <= 0.0),
        "max_displacement_px": float(disp.max()),
        "affine_det": float(np.linalg.det(np.asarray(result.A)[:2, :2])),
        "mirrored": bool(np.linalg.det(np.asarray(result.A)[:2, :2]) < 0),
        "runtime_s": float(result.runtime_s),
        "device": result.device,
        "stopped": bool(result.stopped),
        "dx_um": float(rasters.dx),
        "signal": rasters.signal,
        "feature": rasters.feature,
        "signal_info": rasters.aligned_on(result).signal_record(),  # informativeness, channels, count scale (as uns)
        "params": {k: v for k, v in result.params.items()},
        "A": np.asarray(result.A).tolist(),
        "versions": _versions(),
    }


# ------------------------------------------------------------------------------------- drawing


def _text(
    img: np.ndarray, s: str, org: tuple[int, int], *, scale: float = 0.45, color=(30, 30, 30), thick: int = 1
) -> None:
    cv2.putText(img, s.encode("ascii", "replace").decode(), org, _FONT, scale, color, thick, cv2.LINE_AA)


def _panel() -> np.ndarray:
    return np.full((_PANEL, _PANEL, 3), 255, np.uint8)


def _background(image: LoadedImage) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Gray tissue image fitted into a panel; returns (panel, full-res px → panel px factor, offset)."""
    px = image.pixels
    gray = px[..., 0] if px.shape[2] == 1 else px[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)
    h, w = gray.shape
    area = _PANEL - 40
    f = area / max(h, w)
    small = cv2.resize(gray, (max(1, int(round(w * f))), max(1, int(round(h * f)))), interpolation=cv2.INTER_AREA)
    lo, hi = np.percentile(small, [1, 99]) if small.size else (0.0, 1.0)
    small = np.clip((small - lo) / max(hi - lo, 1e-6), 0, 1)
    panel = _panel()
    off = (30, (_PANEL - small.shape[1]) // 2)  # (row, col) of the image's top-left
    tile = (0.35 + 0.45 * small) * 255  # light gray: dots stay visible
    panel[off[0] : off[0] + small.shape[0], off[1] : off[1] + small.shape[1]] = tile[..., None].astype(np.uint8)
    return panel, f / image.scale, off


def _dots(panel: np.ndarray, xy_px: np.ndarray, f: float, off: tuple[int, int], color) -> None:
    xy = np.asarray(xy_px, np.float64)
    if len(xy) > _MAX_DOTS:
        xy = xy[np.random.default_rng(0).choice(len(xy), _MAX_DOTS, replace=False)]
    cols = np.round(xy[:, 0] * f + off[1]).astype(int)
    rows = np.round(xy[:, 1] * f + off[0]).astype(int)
    keep = (rows >= 0) & (rows < _PANEL) & (cols >= 0) & (cols < _PANEL)
    for r, c in zip(rows[keep], cols[keep]):
        cv2.circle(panel, (int(c), int(r)), 2, color, -1, cv2.LINE_AA)


def _overlay(image: LoadedImage, xy_px: np.ndarray, title: str, color) -> np.ndarray:
    panel, f, off = _background(image)
    _dots(panel, xy_px, f, off, color)
    _text(panel, title, (8, 20), scale=0.5, thick=1)
    return panel


def _landmark_marks(panel: np.ndarray, image: LoadedImage, summary: dict[str, Any]) -> None:
    """Numbered landmarks on an overlay panel: a ring at each clicked image point and an arrow from it to
    where the alignment puts the pair's cell point (the residual; drawn at least 6 panel px long)."""
    _, f, off = _background(image)
    for k, pair in enumerate(summary["pairs"]):
        a = np.array([pair["image_x"] * f + off[1], pair["image_y"] * f + off[0]])
        b = np.array([pair["mapped_x"] * f + off[1], pair["mapped_y"] * f + off[0]])
        pa, pb = tuple(int(round(v)) for v in a), tuple(int(round(v)) for v in b)
        cv2.circle(panel, pa, 6, (0, 200, 255), 2, cv2.LINE_AA)
        if np.hypot(*(b - a)) >= 1.0:
            cv2.arrowedLine(panel, pa, pb, (0, 0, 230), 2, cv2.LINE_AA, tipLength=0.3)
        _text(panel, str(pair.get("name", k + 1))[:6], (pa[0] + 7, pa[1] - 7), scale=0.45, color=(0, 90, 160), thick=1)
    _text(panel, f"landmarks: median {summary['median_px']:.1f} px (ring = image point, arrow = residual)",
          (8, _PANEL - 10), scale=0.38, color=(0, 0, 160))


def _grid_panel(image: LoadedImage, result: AlignmentResult, jac: tuple[float, float], disp: float) -> np.ndarray:
    panel, f, off = _background(image)
    n = 17
    axes = [np.linspace(a[0], a[-1], n) for a in result.xv]
    fine = [np.linspace(a[0], a[-1], 120) for a in result.xv]
    v = np.asarray(result.v, np.float64)
    for i, fixed in enumerate(axes):
        for value in fixed:
            other = fine[1 - i]
            pts = (
                np.stack([np.full_like(other, value), other], -1)
                if i == 0
                else np.stack([other, np.full_like(other, value)], -1)
            )
            phi = np.asarray(transform_points_source_to_target(result.xv, v, np.eye(3), pts))
            # φ is in full-res pixels (row, col); scale by f (per full-res pixel)
            line = np.stack([phi[:, 1] * f + off[1], phi[:, 0] * f + off[0]], -1)
            cv2.polylines(panel, [np.round(line).astype(np.int32)], False, (200, 90, 0), 1, cv2.LINE_AA)
    _text(panel, "deformation grid (LDDMM)", (8, 20), scale=0.5)
    _text(
        panel,
        f"det J in [{jac[0]:.3f}, {jac[1]:.3f}]; max shift {disp:.1f} px",
        (8, _PANEL - 10),
        scale=0.45,
        color=(0, 0, 200) if jac[0] <= 0 else (0, 120, 0),
    )
    return panel


def _line_plot(
    series: list[tuple[np.ndarray, tuple[int, int, int], str]], title: str, xlabel: str, empty: str = "no data"
) -> np.ndarray:
    panel = _panel()
    _text(panel, title, (8, 20), scale=0.5)
    left, right, top, bottom = 60, _PANEL - 15, 45, _PANEL - 45
    cv2.rectangle(panel, (left, top), (right, bottom), (120, 120, 120), 1)
    values = [np.asarray(s[0], np.float64) for s in series if len(s[0])]
    values = [v[np.isfinite(v)] for v in values]
    values = [v for v in values if v.size]
    if not values:
        _text(panel, empty, (left + 10, (top + bottom) // 2))
        return panel
    lo = min(float(v.min()) for v in values)
    hi = max(float(v.max()) for v in values)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    n = max(len(s[0]) for s in series)
    _text(panel, f"{hi:.4g}", (4, top + 5), scale=0.38)
    _text(panel, f"{lo:.4g}", (4, bottom), scale=0.38)
    _text(panel, "1", (left - 3, bottom + 16), scale=0.38)
    _text(panel, str(n), (right - 8 * len(str(n)), bottom + 16), scale=0.38)
    _text(panel, xlabel, ((left + right) // 2 - 4 * len(xlabel), bottom + 32), scale=0.42)
    legend_y = top + 16
    for vals, color, label in series:
        vals = np.asarray(vals, np.float64)
        if not vals.size:
            continue
        xs = left + (right - left) * (np.arange(vals.size) / max(n - 1, 1))
        ys = bottom - (bottom - top) * (np.nan_to_num(vals, nan=lo) - lo) / (hi - lo)
        cv2.polylines(panel, [np.stack([xs, ys], -1).round().astype(np.int32)], False, color, 2, cv2.LINE_AA)
        if label:
            cv2.line(panel, (right - 130, legend_y - 4), (right - 110, legend_y - 4), color, 2)
            _text(panel, label, (right - 105, legend_y), scale=0.4)
            legend_y += 16
    return panel


_COLORS = [(200, 60, 20), (20, 140, 40), (30, 30, 200), (160, 20, 160), (0, 140, 180), (90, 90, 90)]


def _fitness_panel(result: AlignmentResult) -> np.ndarray:
    series = []
    for i, h in enumerate(result.ga_history[:6]):
        color = _COLORS[i % len(_COLORS)]
        light = tuple(int(c + (255 - c) * 0.6) for c in color)
        label = f"r{h.get('restart', i)} best"
        series.append((np.asarray(h.get("mean", []), np.float64), light, ""))
        series.append((np.asarray(h.get("best", []), np.float64), color, label))
    return _line_plot(series, f"GA fitness (best; mean light)  final {result.fitness:.4f}", "generation")


def _energy_panel(result: AlignmentResult) -> np.ndarray:
    E = np.asarray(result.energy_history, np.float64).reshape(-1, 3)
    series = [
        (E[:, 0], (30, 30, 30), "total"),
        (E[:, 1], (200, 60, 20), "matching"),
        (E[:, 2], (20, 140, 40), "regular."),
    ]
    return _line_plot(series, "LDDMM energy", "iteration", empty="LDDMM off (num_iterations = 0)")


def _metrics_panel(m: dict[str, Any]) -> np.ndarray:
    panel = _panel()
    _text(panel, "metrics", (8, 20), scale=0.5)
    rows = [
        ("final fitness", f"{m['fitness']:.4f}"),
        ("overlap before (centred)", f"{m['overlap_before']:.4f}"),
        ("overlap affine", f"{m['overlap_affine']:.4f}"),
        ("overlap after", f"{m['overlap_after']:.4f}"),
        ("det J min / max", f"{m['jacobian_det_min']:.3f} / {m['jacobian_det_max']:.3f}"),
        ("folding", "YES" if m["folding"] else "no"),
        ("mirrored", "yes" if m["mirrored"] else "no"),
        ("runtime", f"{m['runtime_s']:.1f} s"),
        ("device", str(m["device"])[:28]),
        ("dx", f"{m['dx_um']:.3g} um"),
        ("signal / feature", f"{m['signal']} / {m['feature']}"[:28]),
        ("generations x restarts", f"{m['params'].get('num_generations')} x {m['params'].get('ga_restarts')}"),
        ("LDDMM iterations", str(m["params"].get("num_iterations"))),
    ]
    if "landmarks" in m:
        rows.append(("landmark error (median)", f"{m['landmarks']['median_px']:.2f} px, n={m['landmarks']['n']}"))
    y = 50
    for k, v in rows:
        _text(panel, k, (10, y), scale=0.45)
        _text(panel, v, (220, y), scale=0.45, color=(0, 0, 0))
        y += 25
    return panel


_VERDICT_COLOURS = {"ok": (0, 130, 0), "check": (0, 140, 230), "likely wrong": (0, 0, 210)}  # BGR
_ASCII = {"µ": "u", "…": "..", "×": "x", "°": " deg", "—": "-", "–": "-", "≤": "<=", "→": "->"}


def _ascii(s: str) -> str:
    for k, v in _ASCII.items():
        s = s.replace(k, v)
    return s


def _wrap(s: str, width: int) -> list[str]:
    words, lines, cur = _ascii(s).split(), [], ""
    for w in words:
        if cur and len(cur) + 1 + len(w) > width:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}".strip()
    return lines + ([cur] if cur else [])


def _confidence_panel(image: LoadedImage, xy_px: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """Cells on the image coloured by their confidence (red 0 → yellow → green 1)."""
    panel, f, off = _background(image)
    conf = np.clip(np.asarray(confidence, np.float64), 0.0, 1.0)
    xy = np.asarray(xy_px, np.float64)
    if len(xy) > _MAX_DOTS:
        keep = np.random.default_rng(0).choice(len(xy), _MAX_DOTS, replace=False)
        xy, conf = xy[keep], conf[keep]
    order = np.argsort(-conf)  # the least confident drawn last, on top
    for (x, y), c in zip(xy[order], conf[order]):
        colour = (0, int(round(255 * min(1.0, 2 * c))), int(round(255 * min(1.0, 2 * (1 - c)))))  # BGR
        cv2.circle(panel, (int(round(x * f + off[1])), int(round(y * f + off[0]))), 2, colour, -1, cv2.LINE_AA)
    _text(panel, f"per-cell confidence (median {np.median(confidence):.2f})" if len(confidence) else
          "per-cell confidence", (8, 20), scale=0.5)
    _text(panel, "red 0 - yellow 0.5 - green 1", (8, _PANEL - 10), scale=0.42)
    return panel


def _qc_panel(qc: dict[str, Any]) -> np.ndarray:
    """The quality flags as text, two panels wide: the verdict, then each flag's verdict and message."""
    panel = np.full((_PANEL, 2 * _PANEL, 3), 255, np.uint8)
    verdict = qc["verdict"]
    _text(panel, f"quality check: {verdict.upper()}", (8, 24), scale=0.65, color=_VERDICT_COLOURS[verdict], thick=2)
    y = 52
    for name, flag in qc["flags"].items():
        colour = _VERDICT_COLOURS[flag["verdict"]]
        for k, line in enumerate(_wrap(f"{name}: {flag['verdict']} - {flag['message']}", 100)):
            _text(panel, ("" if k == 0 else "    ") + line, (10, y), scale=0.42, color=colour)
            y += 17
        if flag["verdict"] != "ok":
            for line in _wrap(f"try: {flag['hint']}", 96):
                _text(panel, "    " + line, (10, y), scale=0.4, color=(90, 90, 90))
                y += 16
        y += 4
        if y > _PANEL - 10:
            break
    return panel


def write_report(
    adata: Any,
    image: LoadedImage,
    rasters: SectionRasters,
    result: AlignmentResult,
    out_dir: str | os.PathLike[str],
    *,
    name: str = "gala_report",
    inputs: dict[str, str] | None = None,
    landmarks: Any = None,
    quality: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``{name}.png`` and ``{name}.json`` into ``out_dir`` (created if missing).

    The PNG: cells on the image before (centred pose, :func:`centred_affine`) and after the alignment,
    the deformation grid, GA fitness and LDDMM energy curves, and the metrics. The JSON: the metrics of
    :func:`quality_metrics` (fitness, overlap NCC before/after, Jacobian determinant range of the
    deformation, runtime, device, parameters, package versions) plus ``inputs`` and the file names.
    With ``landmarks`` (a :class:`gala_engine.landmarks.Landmarks`), the "after" panel marks them with
    their residual arrows and the JSON holds ``"landmarks": {"median_px": …, "pairs": [...]}``
    (:func:`gala_engine.landmarks.landmark_summary`). The quality flags and per-cell confidence
    (:func:`gala_engine.qc.assess`; ``quality``, computed here when not given) add a confidence map and the flags to
    the PNG and ``"qc"`` to the JSON.

    Returns
    -------
    dict
        The metrics written to the JSON, with ``png`` and ``json`` paths added.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = quality_metrics(rasters, result)
    metrics["n_cells"] = int(adata.n_obs)
    metrics["inputs"] = dict(inputs or {})
    xy_um = np.asarray(adata.obsm[constants.SPATIAL_KEY], np.float64)[:, :2]
    A0 = centred_affine(rasters)
    yx_before = (np.linalg.inv(A0) @ np.c_[xy_um[:, ::-1], np.ones(len(xy_um))].T).T[:, :2]
    before = _overlay(
        image, yx_before[:, ::-1], f"before (centred)  NCC {metrics['overlap_before']:.3f}", (40, 40, 220)
    )
    after = _overlay(
        image, result.cells_to_image(xy_um), f"after (GALA)  NCC {metrics['overlap_after']:.3f}", (30, 170, 30)
    )
    if landmarks is not None and len(landmarks):
        from .landmarks import landmark_summary

        metrics["landmarks"] = landmark_summary(result, landmarks)
        _landmark_marks(after, image, metrics["landmarks"])
    grid = _grid_panel(
        image, result, (metrics["jacobian_det_min"], metrics["jacobian_det_max"]), metrics["max_displacement_px"]
    )
    top = np.concatenate([before, after, grid], axis=1)
    bottom = np.concatenate([_fitness_panel(result), _energy_panel(result), _metrics_panel(metrics)], axis=1)
    if quality is None:
        from .qc import assess

        quality = assess(rasters, result, xy_um)
    metrics["qc"] = quality["qc"]
    third = np.concatenate([_confidence_panel(image, result.cells_to_image(xy_um), quality["confidence"]),
                            _qc_panel(quality["qc"])], axis=1)
    canvas = np.concatenate([top, bottom, third], axis=0)
    cv2.line(canvas, (0, _PANEL), (canvas.shape[1], _PANEL), (200, 200, 200), 1)
    cv2.line(canvas, (0, 2 * _PANEL), (canvas.shape[1], 2 * _PANEL), (200, 200, 200), 1)
    for k in (1, 2):  # the flags panel (third row, right) is two panels wide
        cv2.line(canvas, (k * _PANEL, 0), (k * _PANEL, canvas.shape[0] if k == 1 else 2 * _PANEL), (200, 200, 200), 1)
    png = out / f"{name}.png"
    js = out / f"{name}.json"
    if not cv2.imwrite(str(png), canvas):
        raise OSError(f"could not write {png}")
    metrics["png"], metrics["json"] = str(png), str(js)
    tmp = js.with_name(f".{js.name}.tmp")
    tmp.write_text(json.dumps(metrics, indent=2, default=json_default), encoding="utf-8")
    os.replace(tmp, js)
    return metrics

