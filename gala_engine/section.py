"""One tissue section end to end: AnnData + image → rasters → alignment → cells in image pixels.

This is the path the app, the CLI and batch runs share.
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import constants
from .budget import check_prepare
from .errors import GalaInputError
from .events import ProgressCallback, ProgressEvent, StopPredicate
from .features import FeatureKind, feature_planes, image_feature, resolve_feature
from .flatness import FLAT_LEVEL, Splatter
from .io import LoadedImage, spatial_yx, write_h5ad_atomic
from .nuclei_fit import NucleiMap, fit_to_nuclei, nuclei_map
from .params import AlignParams
from .pipeline import gala, to_cpu
from .raster import cell_spacing, choose_dx, rasterize, spacing_blur
from .signals import ChannelRasters, combine_channels, signal_channels
from .transform import transform_points_target_to_source


@dataclass
class SectionRasters:
    """The two rasters of one section, ready for :func:`align_section`.

    ``I`` (1, h, w) on grid ``xI = [rows, cols]`` in full-resolution image pixels;
    ``J`` (1, h', w') on grid ``xJ`` in µm; ``dx`` the cell raster's pixel size (µm).
    """

    I: np.ndarray
    xI: list[np.ndarray]
    J: np.ndarray
    xJ: list[np.ndarray]
    dx: float
    image_reduce: int
    image_full_shape: tuple[int, int]
    signal: str
    feature: str
    fine: list = field(default_factory=list)  # finer (xI, I, xJ, J) of the same section, for sub-pixel refinement
    # how informative J is for alignment (gala_engine.flatness; < flatness.FLAT_LEVEL: too flat to align)
    informativeness: float = float("nan")
    channels: ChannelRasters | None = None  # a signal of several channels (genes, pca): each one and how J mixes them
    spacing_um: float = float("nan")  # the cells' median nearest-neighbour distance (raster.cell_spacing); NaN: not known
    count_scale: str = "linear"  # how total counts weigh J: "linear" or "log" (log(1 + counts))
    # the same section with total counts on the log scale (same image rasters), when the counts vary; the CLI, app and
    # batch align both where AlignParams.count_scale is "auto" (:func:`align_section`)
    log_counts: SectionRasters | None = None
    # the image's nuclear stain and the cells' (row, col) µm, for the cell-level refinement after LDDMM
    # (gala_engine.nuclei_fit); None on flat sections
    nuclei: NucleiMap | None = None
    cells_yx: np.ndarray | None = None

    def cell_spacing(self, xy_um: np.ndarray) -> float:
        """The cells' spacing (µm): the one measured when the rasters were made, else measured on ``xy_um``."""
        return self.spacing_um if np.isfinite(self.spacing_um) else cell_spacing(np.asarray(xy_um)[:, ::-1])

    def signal_record(self) -> dict[str, Any]:
        """The target signal as plain data for ``uns['gala']['signal_info']`` and the report's JSON: ``signal``,
        ``informativeness`` (:mod:`gala_engine.flatness`) and ``flat`` (below :data:`~gala_engine.flatness.FLAT_LEVEL`)
        and, for a signal of several channels (genes, ``pca:k``), ``channels`` (their names) and
        ``channel_weights`` (the mix's weights ``a_k``, :func:`gala_engine.signals.combine_channels`)."""
        score = float(self.informativeness)
        rec: dict[str, Any] = {"signal": str(self.signal), "informativeness": score, "flat": self.flat_target}
        if self.signal == constants.SIGNAL_TOTAL_COUNTS:
            rec["count_scale"] = self.count_scale
        if self.channels is not None:
            rec["channels"] = [str(n) for n in self.channels.names]
            rec["channel_weights"] = [float(a) for a in np.asarray(self.channels.weights, np.float64).ravel()]
        return rec

    def aligned_on(self, result: AlignmentResult) -> SectionRasters:
        """The rasters ``result`` was aligned on: these, or their log-count twin where the count scale chose it."""
        log = result.diagnostics.get("count_scale") == "log" and self.log_counts is not None
        return self.log_counts if log else self

    @property
    def flat_target(self) -> bool:
        """True when the signal is too flat to align (informativeness below :data:`FLAT_LEVEL`; e.g. an evenly
        packed section's total counts): only the tissue outline can place the cells."""
        return bool(float(self.informativeness) < FLAT_LEVEL)  # NaN (not scored): False


def matched_image_blur(image: LoadedImage, yx: np.ndarray, sigma_um: float) -> float:
    """The cells' Gaussian blur ``sigma_um`` (µm) seen in loaded image pixels, taking the image's scale
    (µm per pixel) as the ratio of the cells' extent to the image's extent — a rough guess that only
    sets how much the image feature is smoothed."""
    um_extent = float(np.sqrt(max(np.ptp(yx[:, 0]) * np.ptp(yx[:, 1]), 1e-12)))
    px_extent = float(np.sqrt(image.pixels.shape[0] * image.pixels.shape[1]))
    return sigma_um / (um_extent / px_extent)


def default_image_reduce(image: LoadedImage, J_shape: tuple[int, ...], *, ratio: float = 1.5) -> int:
    """Working-pixel size (in loaded pixels) giving a source raster ~``ratio``× the target's long side."""
    long_I = max(image.pixels.shape[:2])
    long_J = max(J_shape[-2:])
    return max(1, int(round(long_I / (ratio * long_J))))


def _min_max(w: np.ndarray) -> np.ndarray:
    """Per-cell weights scaled to [0, 1], as :func:`gala_engine.raster.rasterize` scales them."""
    return (w - w.min()) / max(np.ptp(w), 1e-300)


def prepare_section(
    adata: Any,
    image: LoadedImage,
    *,
    signal: str = constants.SIGNAL_TOTAL_COUNTS,
    dx: float | None = None,
    feature: FeatureKind = "auto",
    image_reduce: int | None = None,
    target_pixels: int = 200,
    blur: float | None = None,
    match_blur: bool = True,
    fine_levels: int = 2,
) -> SectionRasters:
    """Rasterise the cells (µm grid of pixel ``dx``, chosen from the data when None) and the image.

    ``blur`` (raster pixels, Gaussian std = 2·blur) defaults to half the median nearest-neighbour
    spacing of the cells (at least 1), so sparse spots (Visium) merge into tissue rather than dots.
    ``fine_levels`` (0–2): finer raster pairs at dx/2 and dx/4 (while that stays above the cell spacing and the
    image has the pixels) for the sub-pixel refinement after the search.
    """
    yx = spatial_yx(adata)
    spacing = cell_spacing(yx)
    check_prepare(yx, image, dx=dx, image_reduce=image_reduce, spacing=spacing)  # memory / time budget first
    weights, names = signal_channels(adata, signal)  # (N, K) ≥ 0: one channel per gene / principal component
    if signal != constants.SIGNAL_DENSITY and not np.any(weights > 0):
        raise GalaInputError(f"Every cell has zero {signal}; choose 'cell density' or a gene as the signal.")
    if dx is None:
        dx = choose_dx(yx[:, 1], yx[:, 0], target_pixels=target_pixels)
    if blur is None:
        blur = spacing_blur(spacing, dx)
    g = None if signal == constants.SIGNAL_DENSITY else weights[:, 0]
    feature = resolve_feature(feature, image.pixels)
    planes = feature_planes(image.pixels, feature)  # once: every level blurs and reduces the same planes
    mixed: list[ChannelRasters] = []  # several channels: the coarse level's combination, reused by finer levels

    def pair(dx_l: float, blur_l: float, reduce_l: int | None):
        if weights.shape[1] > 1:  # one target raster from the channels (gala_engine.signals.combine_channels)
            sp = Splatter(yx, dx_l, blur_l)
            mixed.append(combine_channels(sp, weights, names, mix=mixed[0].weights if mixed else None))
            (YJ, XJ), J = sp.xJ, mixed[-1].raster
        else:
            XJ, YJ, J = rasterize(yx[:, 1], yx[:, 0], g=g, dx=dx_l, blur=blur_l)
        reduce_l = default_image_reduce(image, J.shape) if reduce_l is None else reduce_l
        smooth = matched_image_blur(image, yx, 2.0 * blur_l * dx_l) if match_blur else 0.0
        YI, XI, I = image_feature(image.pixels, reduce=reduce_l, scale=image.scale, kind=feature, smooth=smooth,
                                  planes=planes)
        return [YI, XI], I, [YJ, XJ], J.astype(np.float32), reduce_l

    xI, I, xJ, J, reduce = pair(dx, blur, None if image_reduce is None else int(image_reduce))
    fine, fine_blurs = [], []
    for factor in (2, 4)[:fine_levels]:  # finer rasters down to the cell spacing (finer than that is dots)
        if dx / factor < spacing or reduce // factor < 1:
            break
        fine_blurs.append((dx / factor, spacing_blur(spacing, dx / factor)))
        fine.append(pair(*fine_blurs[-1], reduce // factor)[:4])
    if mixed:
        score = mixed[0].score
    else:  # the score of what rasterize splats: the weights min–max scaled
        sp = Splatter(yx, dx, blur)
        score = sp.density_contrast if g is None else sp.informativeness(_min_max(g))
    log_counts = None
    if signal == constants.SIGNAL_TOTAL_COUNTS and np.ptp(weights[:, 0]) > 0:
        # the same section with log(1 + counts) as the weights (same grids and image rasters): library-size noise is
        # multiplicative, so its heavy tail dominates the linear raster where the counts are mostly noise
        log_g = np.log1p(weights[:, 0])

        def log_raster(dx_l: float, blur_l: float) -> np.ndarray:
            return rasterize(yx[:, 1], yx[:, 0], g=log_g, dx=dx_l, blur=blur_l)[2].astype(np.float32)

        log_fine = [(xI_f, I_f, xJ_f, log_raster(*b)) for (xI_f, I_f, xJ_f, _), b in zip(fine, fine_blurs)]
        log_counts = SectionRasters(I, xI, log_raster(dx, blur), xJ, float(dx), reduce, tuple(image.full_shape),
                                    signal, feature, log_fine, informativeness=sp.informativeness(_min_max(log_g)),
                                    spacing_um=float(spacing), count_scale="log")
    out = SectionRasters(I, xI, J, xJ, float(dx), reduce, tuple(image.full_shape), signal, feature, fine,
                         informativeness=score, channels=mixed[0] if mixed else None, spacing_um=float(spacing),
                         log_counts=log_counts)
    if not out.flat_target:
        out.nuclei = nuclei_map(image.pixels, image.scale, planes=dict(zip(feature.split("+"), planes)))
        out.cells_yx = yx
    return out


@dataclass
class AlignmentResult:
    """A finished alignment as plain data (numpy + floats + dicts); saved as ``.npz``, never pickled.

    ``A`` maps image pixels (row, col) to µm (row, col); ``v``/``xv`` the LDDMM velocity field.
    """

    A: np.ndarray
    A_affine: np.ndarray
    v: np.ndarray
    xv: list[np.ndarray]
    genes: np.ndarray
    fitness: float
    score: float
    params: dict
    ga_history: list[dict] = field(default_factory=list)
    energy_history: list[list[float]] = field(default_factory=list)
    device: str = "CPU"
    runtime_s: float = 0.0
    stopped: bool = False
    dx: float = 0.0
    version: str = ""
    origin: dict = field(default_factory=dict)  # not from a search: {"source": "landmarks" | "manual" | …, "note": …}
    # how the run decided: {"fitness_used": "tissue, then ncc" | …, "lddmm_validation": {"accepted", "held_out_fitness",
    # "inside", "held_out_inside"[, "smoothed_a"]}}
    diagnostics: dict = field(default_factory=dict)

    @classmethod
    def from_gala(cls, result: dict, *, dx: float = 0.0) -> AlignmentResult:
        """From the dict :func:`gala` returns."""
        from . import __version__

        r = to_cpu(result)
        return cls(
            A=r["A"].double().numpy(), A_affine=r["A_affine"].double().numpy(), v=r["v"].double().numpy(),
            xv=[axis.double().numpy() for axis in r["xv"]], genes=np.asarray(r["genes"], dtype=np.float64),
            fitness=float(r["fitness"]), score=float(r["score"]), params=dict(r["params"]),
            ga_history=list(r["ga_history"]), energy_history=list(r["energy_history"]), device=r["device"],
            runtime_s=float(r["runtime_s"]), stopped=bool(r["stopped"]), dx=float(dx), version=__version__,
            diagnostics={"fitness_used": str(r.get("fitness_used", "")),
                         "lddmm_validation": dict(r.get("lddmm_validation") or {})},
        )

    def cells_to_image(self, xy_um: np.ndarray, *, deformed: bool = True) -> np.ndarray:
        """Cell positions (N, 2) as (x, y) µm → (N, 2) (x, y) in full-resolution image pixels."""
        yx = np.asarray(xy_um, dtype=np.float64)[:, ::-1]
        v = self.v if deformed else np.zeros_like(self.v)
        A = self.A if deformed else self.A_affine
        return np.ascontiguousarray(
            transform_points_target_to_source(self.xv, torch.as_tensor(v), torch.as_tensor(A), yx)[:, ::-1]
        )

    def metadata(self) -> dict[str, Any]:
        """JSON-friendly summary (no arrays but the small matrices) for ``uns['gala']`` and reports."""
        return {
            "version": self.version, "device": self.device, "runtime_s": self.runtime_s, "origin": dict(self.origin),
            "diagnostics": dict(self.diagnostics),
            "fitness": self.fitness, "score": self.score, "stopped": self.stopped, "dx_um": self.dx,
            "genes": self.genes.tolist(), "A": self.A.tolist(), "A_affine": self.A_affine.tolist(),
            "params": self.params, "python": platform.python_version(), "torch": str(torch.__version__),
        }

    def save_npz(self, path: str | Path) -> Path:
        """Write arrays + a JSON header to ``.npz`` (readable with ``allow_pickle=False``)."""
        path = Path(path)
        header = {k: v for k, v in asdict(self).items() if k not in ("A", "A_affine", "v", "xv", "genes")}
        np.savez_compressed(path, A=self.A, A_affine=self.A_affine, v=self.v, xv_rows=self.xv[0],
                            xv_cols=self.xv[1], genes=self.genes, header=np.array(json.dumps(header)))
        return path

    @classmethod
    def load_npz(cls, path: str | Path) -> AlignmentResult:
        """Read what :meth:`save_npz` wrote (no pickle: object arrays are refused).

        Raises
        ------
        GalaInputError
            Not a GALA transform ``.npz``, one holding pickled objects, a zip bomb, or a header of the wrong
            shape (see :mod:`gala_engine.npzsafe`).
        """
        from .npzsafe import read_transform_npz

        z, header = read_transform_npz(path)  # sizes, dtypes and header schema checked before decompressing
        return cls(A=z["A"].astype(np.float64), A_affine=z["A_affine"].astype(np.float64), v=z["v"].astype(np.float64),
                   xv=[z["xv_rows"].astype(np.float64), z["xv_cols"].astype(np.float64)],
                   genes=z["genes"].astype(np.float64), **header)


def align_section(
    rasters: SectionRasters,
    params: AlignParams | None = None,
    *,
    gene_space: list[dict] | None = None,
    progress: ProgressCallback | None = None,
    should_stop: StopPredicate | None = None,
    init_A: np.ndarray | None = None,
) -> AlignmentResult:
    """Run :func:`gala` on a prepared section and return a plain-data result.

    ``init_A``: a starting affine (3×3, image px (row, col) → µm (row, col)), e.g. from landmarks; see :func:`gala`.
    Where the rasters carry log-count targets (``rasters.log_counts``: total counts that vary), ``params.count_scale``
    says which to align: ``"auto"`` aligns with both and keeps the better fit (:func:`choose_count_scale`); the
    second search's progress events carry ``extra["count_scale"] = "log"``.
    """
    params = params or AlignParams()
    options = [rasters]
    if rasters.log_counts is not None and params.count_scale != "linear":
        options = [rasters, rasters.log_counts] if params.count_scale == "auto" else [rasters.log_counts]
    # with two count scales, each is searched for its pose (affine only) and only the winner is warped: LDDMM does not
    # change the score that decides (−35 % CPU on a 600-cell section). Repeats (GA → LDDMM → GA …) keep the full runs
    warp_winner = len(options) > 1 and params.num_iterations > 0 and params.num_repeats == 1
    search_params = replace(params, num_iterations=0) if warp_winner else params
    results = []
    scanned = None  # the first search's scan poses: the second search ranks them on its own targets, no new scan
    for option in options:
        tagged = progress
        if progress is not None and option.count_scale == "log":  # the events say which count scale is searched

            def tagged(event: ProgressEvent, _send=progress) -> None:
                _send(replace(event, extra={**event.extra, "count_scale": "log"}))

        r = _gala_on(option, search_params, gene_space=gene_space, progress=tagged, should_stop=should_stop,
                     init_A=init_A, scan_poses=scanned)
        scanned = r.get("scan_poses")
        results.append(AlignmentResult.from_gala(r, dx=option.dx))
        results[-1].diagnostics["count_scale"] = option.count_scale
        if results[-1].stopped:
            break
    best = choose_count_scale(results)
    if warp_winner and not best.stopped:  # LDDMM from the winner's pose, on the rasters it was found on
        on = rasters.aligned_on(best)
        warp = AlignmentResult.from_gala(_gala_on(on, params, gene_space=gene_space, progress=progress,
                                                  should_stop=should_stop, init_A=best.A_affine, search=False),
                                         dx=on.dx)
        best = replace(best, A=warp.A, v=warp.v, xv=warp.xv, energy_history=warp.energy_history, params=warp.params,
                       runtime_s=best.runtime_s + warp.runtime_s, stopped=warp.stopped,
                       diagnostics={**best.diagnostics, "lddmm_validation": warp.diagnostics["lddmm_validation"]})
    if params.nuclei_fit and rasters.nuclei is not None and rasters.cells_yx is not None and not best.stopped:
        v, record = fit_to_nuclei(best.A, best.v, best.xv, rasters.cells_yx, rasters.nuclei, seed=params.random_seed,
                                  progress=progress, should_stop=should_stop, device=params.device,
                                  spacing_um=rasters.spacing_um)
        best = replace(best, v=v, stopped=record["stopped"], diagnostics={**best.diagnostics, "nuclei_fit": record})
    return best


def _gala_on(rasters: SectionRasters, params: AlignParams, **options: Any) -> dict[str, Any]:
    """:func:`gala` on one prepared section's rasters (its fine levels, flatness, the image read beyond its frame)."""
    return gala(rasters.xI, rasters.I, rasters.xJ, rasters.J, fine_levels=rasters.fine,
                flat_target=rasters.flat_target, tissue_beyond_frame=True, **options, **params.to_dict())


def choose_count_scale(results: list[AlignmentResult]) -> AlignmentResult:
    """The alignment on linear total counts, or the one on log counts where the image explains that better: a
    higher final fitness (``score``, the same kind of fitness: the log raster may change the route, e.g. flat or
    not) on a run nobody stopped. Measured (issue 11): the real Visium dentate-gyrus spots score 0.67 / 0.69 on the
    linear scale against 0.47 / 0.43 on the log scale (and land 1.5-2.2 against 13-15 px); synthetic cells whose
    library sizes are lognormal noise score higher on the log scale in every case tried, and land closer."""
    best = results[0]
    for other in results[1:]:
        same_kind = other.diagnostics.get("fitness_used") == best.diagnostics.get("fitness_used")
        if same_kind and not other.stopped and other.score > best.score:
            best = other
    if len(results) > 1:
        best.diagnostics["count_scale_scores"] = {r.diagnostics["count_scale"]: float(r.score) for r in results}
        best.runtime_s = float(sum(r.runtime_s for r in results))  # both searches
    return best


def aligned_adata(adata: Any, result: AlignmentResult, *, landmarks: Any = None,
                  quality: dict[str, Any] | None = None, image: dict[str, Any] | None = None,
                  rasters: SectionRasters | None = None) -> Any:
    """A copy of ``adata`` with ``obsm['spatial_he']`` (x, y full-resolution pixels), the affine-only
    positions and ``uns['gala']``; the input's own fields are untouched. With ``landmarks`` (a
    :class:`gala_engine.landmarks.Landmarks`), ``uns['gala']['landmarks']`` holds the pairs and their
    errors under this result (:func:`gala_engine.landmarks.landmarks_uns`). With ``quality``
    (:func:`gala_engine.qc.assess`), ``uns['gala']['qc']`` holds the quality flags and ``obs['gala_confidence']``
    the per-cell confidence. ``image``: the record of the image used
    (:func:`gala_engine.provenance.image_record`), kept as ``uns['gala']['image']``. ``rasters``: the section the
    result was aligned on; its target signal's score and channels (:meth:`SectionRasters.signal_record`) are kept as
    ``uns['gala']['signal_info']``."""
    out = adata.copy()
    xy = np.asarray(out.obsm[constants.SPATIAL_KEY], dtype=np.float64)[:, :2]
    out.obsm[constants.ALIGNED_KEY] = result.cells_to_image(xy)
    out.obsm[constants.ALIGNED_AFFINE_KEY] = result.cells_to_image(xy, deformed=False)
    meta = result.metadata()
    meta["params"] = {k: ("" if v is None else v) for k, v in meta["params"].items()}  # h5ad has no None
    meta["A"], meta["A_affine"], meta["genes"] = result.A, result.A_affine, result.genes
    meta["v"], meta["xv_rows"], meta["xv_cols"] = result.v, result.xv[0], result.xv[1]  # the warp: reopenable
    best = [h["best"] for h in result.ga_history]
    meta["fitness_history"] = np.asarray(best[-1] if best else [], dtype=np.float64)
    meta["energy_history"] = np.asarray(result.energy_history, dtype=np.float64).reshape(-1, 3)
    meta["created"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    if landmarks is not None and len(landmarks):
        from .landmarks import landmarks_uns

        meta["landmarks"] = landmarks_uns(result, landmarks)
    if quality is not None:
        meta["qc"] = quality["qc"]
        out.obs[constants.CONFIDENCE_KEY] = np.asarray(quality["confidence"], dtype=np.float64)
    if image:
        meta["image"] = dict(image)
    if rasters is not None:
        meta["signal_info"] = rasters.aligned_on(result).signal_record()
    out.uns[constants.UNS_KEY] = meta
    return out


def write_aligned(adata: Any, result: AlignmentResult, path: str | Path, *, protect=(), landmarks: Any = None,
                  quality: dict[str, Any] | None = None, image: dict[str, Any] | None = None,
                  rasters: SectionRasters | None = None) -> Path:
    """Write the aligned ``.h5ad`` atomically (never over a path in ``protect``); ``landmarks``, ``quality``,
    ``image``, ``rasters``: see :func:`aligned_adata`."""
    return write_h5ad_atomic(aligned_adata(adata, result, landmarks=landmarks, quality=quality, image=image,
                                           rasters=rasters), path, protect=protect)


def median_error_px(predicted_xy: np.ndarray, truth_xy: np.ndarray) -> float:
    """Median Euclidean distance between predicted and true positions (pixels)."""
    d = np.linalg.norm(np.asarray(predicted_xy) - np.asarray(truth_xy), axis=1)
    return float(np.median(d)) if d.size else math.nan
