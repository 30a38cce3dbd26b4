"""Quality flags of a finished alignment: is it plausibly right? Computed after the fact from the result and
the section's rasters (nothing here changes an alignment).

Each flag measures one thing, gets a verdict ``"ok"`` / ``"check"`` / ``"likely wrong"`` and, unless ok, what
to try; the overall verdict is the worst. The thresholds (:data:`THRESHOLDS`) were set from the measurements
of ``bench/qc_calibration.py`` (validation cases and bundled demos at their true pose, deliberately wrong poses,
and the engine's own results): see that script's docstring for the numbers. A pose the fitness prefers over the
truth that also sits on the tissue (a mirrored, nearly symmetric section) reads "check" (the pose margin: its
re-optimised mirror scores as well), never "likely wrong": the data cannot tell which of the two is right.

Geometry: ``A`` maps full-resolution image pixels (row, col) to µm (row, col); cells come as (x, y) µm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

from .affine import genes_to_matrix_np, grid_centre, matrix_to_genes
from .features import normalize, tissue_mask
from .landmarks import apply_matrix
from .search import OVERLAP_WEIGHT, BatchedFitness, fill_gene_space, pool_raster, refine_genes, score_batch, shows_glass
from .section import AlignmentResult, SectionRasters
from .transform import transform_image_source_to_target

__all__ = ["CHECK", "OK", "THRESHOLDS", "VERDICTS", "WRONG", "Geometry", "alternative_poses", "assess",
           "pose_score", "pose_terms", "quality_flags", "reoptimised", "section_geometry", "verdict_lines", "worst"]

OK, CHECK, WRONG = "ok", "check", "likely wrong"
VERDICTS: tuple[str, ...] = (OK, CHECK, WRONG)

# (check, likely wrong) limits of each flag; see bench/qc_calibration.py for the measurements behind them
THRESHOLDS: dict[str, tuple[float, float]] = {
    "outside_image": (0.05, 0.20),  # share of cells mapped outside the image
    "outside_tissue": (0.25, 0.40),  # share of cells off the (dilated) tissue mask
    "dice": (0.55, 0.35),  # overlap of the cells' footprint with the tissue mask (low is bad)
    "footprint_vs_tissue": (1.8, 2.5),  # footprint area / tissue area, too large
    "footprint_vs_tissue_low": (0.35, 0.0),  # the same, too small: "check" only (part of a section is normal)
    "footprint_vs_image": (0.10, 0.005),  # footprint area / image area (low is bad)
    "margin": (0.03, -np.inf),  # pose score at the result − the best turned/mirrored alternative: "check" only
    "texture": (0.15, -np.inf),  # below: the image texture does not confirm the pose (then the outline must)
    "outline_margin": (0.01, -np.inf),  # share on tissue at the result − the best alternative's
    "deformation": (0.08, 0.20),  # largest LDDMM displacement of a cell / the section's size
    "jacobian_min": (0.2, 0.0),  # smallest Jacobian determinant of the warp (≤ 0: folds)
}


def worst(verdicts: list[str]) -> str:
    """The worst of some verdicts (``"ok"`` when there are none)."""
    return max(verdicts, key=VERDICTS.index, default=OK)


def _grade(value: float, check: float, wrong: float, *, low_is_bad: bool = False) -> str:
    if low_is_bad:
        return WRONG if value <= wrong else CHECK if value < check else OK
    return WRONG if value >= wrong else CHECK if value > check else OK


@dataclass
class Geometry:
    """The section seen through the result: cells in image pixels, the image's tissue mask and the cells'
    footprint on the source raster's grid."""

    xy_px: np.ndarray  # (N, 2) cells (x, y) in full-resolution image pixels, after the whole transform
    xy_affine_px: np.ndarray  # the same after the affine only
    um_per_px: float  # from the affine's determinant
    spacing_um: float  # median nearest-neighbour distance of the cells
    extent_um: float  # sqrt of the cells' bounding-box area
    tissue: np.ndarray  # (h, w) bool tissue mask on the source raster grid
    footprint: np.ndarray  # (h, w) bool area the cells cover on that grid
    glass: bool  # the image shows empty slide around the tissue (an outline to compare with)
    step_px: float  # full-resolution pixels per source-raster pixel


def _to_grid(xy_px: np.ndarray, xI: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) full-res pixels → fractional (row, col) indices on the grid ``xI``."""
    r = (xy_px[:, 1] - xI[0][0]) / (xI[0][1] - xI[0][0])
    c = (xy_px[:, 0] - xI[1][0]) / (xI[1][1] - xI[1][0])
    return r, c


def cell_footprint(xy_px: np.ndarray, xI: list[np.ndarray], shape: tuple[int, int], radius_px: float) -> np.ndarray:
    """Bool mask of the grid ``xI`` covered by cells at ``xy_px`` (full-res pixels): the cells' counts per grid
    pixel blurred by ``radius_px`` grid pixels, above 40 % of its typical value at the cells."""
    r, c = _to_grid(xy_px, xI)
    hist = np.zeros(shape, np.float32)
    inside = (r > -0.5) & (r < shape[0] - 0.5) & (c > -0.5) & (c < shape[1] - 0.5)
    np.add.at(hist, (np.round(r[inside]).astype(int), np.round(c[inside]).astype(int)), 1.0)
    if not inside.any():
        return np.zeros(shape, bool)
    blur = cv2.GaussianBlur(hist, (0, 0), sigmaX=max(radius_px, 0.7))
    at_cells = blur[np.round(r[inside]).astype(int), np.round(c[inside]).astype(int)]
    return blur > 0.4 * float(np.median(at_cells))


def section_geometry(rasters: SectionRasters, result: AlignmentResult, xy_um: np.ndarray) -> Geometry:
    """Map the cells through ``result`` and make the masks the flags compare (see :class:`Geometry`)."""
    xy_um = np.asarray(xy_um, np.float64)[:, :2]
    xy_px = result.cells_to_image(xy_um)
    xy_aff = result.cells_to_image(xy_um, deformed=False)
    um_per_px = float(np.sqrt(abs(np.linalg.det(np.asarray(result.A_affine)[:2, :2]))))
    spacing = rasters.cell_spacing(xy_um)
    extent = float(np.sqrt(max(np.ptp(xy_um[:, 0]) * np.ptp(xy_um[:, 1]), 1e-12)))
    step = float(rasters.xI[0][1] - rasters.xI[0][0])
    shape = rasters.I.shape[1:]
    tissue = tissue_mask(rasters.I) > 0.5
    # the cells' own scale (their spacing) in grid pixels, at least 1/40 of the section so sparse cells merge
    radius = max(spacing, extent / 40.0) / max(um_per_px, 1e-12) / step
    footprint = cell_footprint(xy_px, rasters.xI, shape, radius)
    return Geometry(xy_px, xy_aff, um_per_px, spacing, extent, tissue, footprint, shows_glass(rasters.I), step)


def _flag(value: dict[str, Any], verdict: str, message: str, hint: str) -> dict[str, Any]:
    return {**value, "verdict": verdict, "message": message, "hint": "" if verdict == OK else hint}


def _outside_image(g: Geometry, shape: tuple[int, int]) -> dict[str, Any]:
    h, w = shape
    x, y = g.xy_px[:, 0], g.xy_px[:, 1]
    frac = float(np.mean((x < -0.5) | (x > w - 0.5) | (y < -0.5) | (y > h - 0.5))) if len(x) else 0.0
    v = _grade(frac, *THRESHOLDS["outside_image"])
    return _flag({"fraction": frac}, v, f"{100 * frac:.1f} % of the cells fall outside the image",
                 "the section may be scaled or shifted wrongly: try --signal 'cell density', a different --feature, "
                 "or 3+ landmarks (--landmarks)")


def _dilated(mask: np.ndarray, radius: float) -> np.ndarray:
    k = int(np.ceil(max(radius, 0.0)))
    if k < 1:
        return mask
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1))
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)


def _tissue_flags(g: Geometry, rasters: SectionRasters) -> list[tuple[str, dict[str, Any]]]:
    """Cells outside the tissue mask, footprint/tissue Dice and the footprint's size (only with an outline)."""
    shape = g.tissue.shape
    area_image = float(np.prod(shape))
    foot, tissue = g.footprint, g.tissue
    fp_image = float(foot.sum()) / area_image
    out: list[tuple[str, dict[str, Any]]] = []
    low, wrong_low = THRESHOLDS["footprint_vs_image"]
    out.append(("footprint_vs_image", _flag(
        {"fraction": fp_image, "um_per_px": g.um_per_px}, _grade(fp_image, low, wrong_low, low_is_bad=True),
        f"the cells cover {100 * fp_image:.1f} % of the image at {g.um_per_px:.3g} µm/px",
        "the cells cover a small part of the image: fine for a small region of a large slide, otherwise the scale "
        "is off (check that the cells are in µm), or give 3+ landmarks")))
    if not g.glass or tissue.sum() < 4:
        note = "the image is filled with tissue (no empty slide): no outline to compare the cells with"
        for name in ("outside_tissue", "dice", "scale"):
            out.append((name, _flag({"skipped": True}, OK, note, "")))
        return out
    r, c = _to_grid(g.xy_px, rasters.xI)
    ri, ci = np.round(r).astype(int), np.round(c).astype(int)
    inside = (ri >= 0) & (ri < shape[0]) & (ci >= 0) & (ci < shape[1])
    # a cell within half a spacing (at least one grid pixel) of the mask counts as on it
    near = _dilated(tissue, max(0.5 * g.spacing_um / max(g.um_per_px, 1e-12) / g.step_px, 1.0))
    on = np.zeros(len(ri), bool)
    on[inside] = near[ri[inside], ci[inside]]
    frac_out = float(1.0 - on.mean()) if len(on) else 0.0
    out.append(("outside_tissue", _flag(
        {"fraction": frac_out}, _grade(frac_out, *THRESHOLDS["outside_tissue"]),
        f"{100 * frac_out:.1f} % of the cells lie off the image's tissue",
        "the cells spread beyond the tissue: the scale or position is likely off; try --signal 'cell density', "
        "--feature tissue, or landmarks")))
    inter = float((foot & tissue).sum())
    dice = 2.0 * inter / max(float(foot.sum() + tissue.sum()), 1.0)
    ratio = float(foot.sum()) / max(float(tissue.sum()), 1.0)
    check_d, wrong_d = THRESHOLDS["dice"]
    verdict = _grade(dice, check_d, wrong_d, low_is_bad=True)
    if verdict == WRONG and frac_out <= THRESHOLDS["outside_tissue"][0]:
        verdict = CHECK  # the cells sit on tissue but cover only part of it: a partial section, not an error
    out.append(("dice", _flag(
        {"dice": dice, "footprint_over_tissue": ratio}, verdict,
        f"the cells' footprint overlaps the tissue mask with Dice {dice:.2f}",
        "the cells' outline does not match the tissue's; if the cells cover only part of the section this is "
        "expected; if the image shows only part of the section the cells come from, crop the cells to the imaged "
        "region first (the image must show every cell); otherwise try --signal 'cell density' or landmarks")))
    rv = worst([_grade(ratio, *THRESHOLDS["footprint_vs_tissue"]),
                OK if ratio >= THRESHOLDS["footprint_vs_tissue_low"][0] else CHECK])  # small: maybe part of a section
    out.append(("scale", _flag(
        {"footprint_over_tissue": ratio, "um_per_px": g.um_per_px}, rv,
        f"the cells' footprint is {ratio:.2f}× the image's tissue area at {g.um_per_px:.3g} µm/px",
        "the implied scale (µm per pixel) looks wrong: check the cells' units and the image's resolution, or give "
        "3+ landmarks")))
    return out


ALTERNATIVE_STEP = 30  # degrees between the turned / mirrored alternatives of a pose (mirror axes every 15°)
ALTERNATIVE_POOL = 96  # the alternatives are re-optimised on rasters pooled to at most this many pixels a side
ALTERNATIVE_ITERATIONS = 40  # gradient steps of that re-optimisation (all poses at once)
DISTINCT = 0.1  # an alternative ending within this share of the section's size of the pose itself is not one


def alternative_poses(A: np.ndarray, xy_um: np.ndarray, step: int = ALTERNATIVE_STEP) -> list[tuple[str, np.ndarray]]:
    """The result's affine with the cells turned every ``step``° about their centre, and mirrored (at each of
    those turns, so mirror axes every ``step``/2°): the poses a symmetric-looking section confuses."""
    yx = np.asarray(xy_um, np.float64)[:, ::-1]
    centre = yx.mean(0)
    out = []
    for mirror in (False, True):
        for deg in range(0, 360, step):
            if deg == 0 and not mirror:
                continue
            t = np.deg2rad(deg)
            R = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
            if mirror:
                R = R @ np.diag([1.0, -1.0])
            T = np.eye(3)  # µm → µm about the centre; the alternative affine is T⁻¹ A
            T[:2, :2] = R
            T[:2, 2] = centre - R @ centre
            out.append((f"{'mirror + ' if mirror else ''}{deg}°", np.linalg.inv(T) @ np.asarray(A, np.float64)))
    return out


def reoptimised(rasters: SectionRasters, poses: list[np.ndarray], *, glass: bool) -> list[np.ndarray]:
    """Each affine pose moved to the nearest optimum of the alignment's fitness (the ``"tissue"`` kind where the
    image shows an outline, else the texture fit), all at once on pooled rasters: an alternative pose is only
    a fair competitor at its own optimum, as the result is at its."""
    I = torch.as_tensor(np.stack([normalize(c) for c in np.asarray(rasters.I, np.float64)]))
    J = torch.as_tensor(np.stack([normalize(c) for c in np.asarray(rasters.J, np.float64)]))
    xI = [np.asarray(a, np.float64) for a in rasters.xI]
    xJ = [np.asarray(a, np.float64) for a in rasters.xJ]
    I_p, xI_p = pool_raster(I, xI, max(1, math.ceil(max(I.shape[1:]) / ALTERNATIVE_POOL)))
    J_p, xJ_p = pool_raster(J, xJ, max(1, math.ceil(max(J.shape[1:]) / ALTERNATIVE_POOL)))
    fit = BatchedFitness(I_p, xI_p, J_p, xJ_p, kind="tissue" if glass else "ncc_support", scale_floor=0.0,
                         centres=(grid_centre(xI), grid_centre(xJ)))
    genes = np.stack([matrix_to_genes(A, xI, xJ) for A in poses])
    genes, _ = refine_genes(fit, genes, fill_gene_space(None, xI, xJ, mode="compatible"),
                            iterations=ALTERNATIVE_ITERATIONS)
    return list(genes_to_matrix_np(genes, xI, xJ))


def pose_terms(rasters: SectionRasters, A: np.ndarray) -> tuple[float, float]:
    """The two terms of the alignment's ``"tissue"`` fitness at an affine pose: ``(texture, outline)`` = the
    contrast-invariant fit of the image channels to the cells over their support (−1…1), and the cells' density-
    weighted share on the image's tissue mask (0…1)."""
    I = np.asarray(rasters.I, np.float64)
    stack = np.concatenate([I, tissue_mask(I)[None].astype(np.float64)])
    xv = [np.array([a[0], a[-1]], np.float64) for a in rasters.xI]
    moved = transform_image_source_to_target(xv, np.zeros((1, 2, 2, 2)), np.asarray(A, np.float64), rasters.xI,
                                             stack, rasters.xJ)
    J = np.asarray(rasters.J, np.float64)
    texture = float(score_batch(torch.as_tensor(moved[:-1])[None], torch.as_tensor(J), "ncc_support")[0])
    density = J[0] / max(float(J[0].sum()), 1e-12)
    return texture, float((moved[-1] * density).sum())


def pose_score(rasters: SectionRasters, A: np.ndarray, *, glass: bool | None = None) -> float:
    """The alignment's kind of score at an affine pose: the texture fit (:func:`pose_terms`) plus, when the image
    shows an outline (``glass``), the outline term weighted as the ``"tissue"`` fitness weighs it."""
    glass = shows_glass(np.asarray(rasters.I)) if glass is None else glass
    return _combined(*pose_terms(rasters, A), glass)


def _combined(texture: float, outline: float, glass: bool) -> float:
    """The two pose terms as the alignment's fitness weighs them (the outline only where the image shows one)."""
    return (texture + OVERLAP_WEIGHT * outline) / (1.0 + OVERLAP_WEIGHT) if glass else texture


def _margin(rasters: SectionRasters, result: AlignmentResult, xy_um: np.ndarray, glass: bool) -> dict[str, Any]:
    """Is the pose unambiguous? Its score against the turned/mirrored alternatives, each re-optimised, as the pose
    itself, to its nearest optimum (:func:`reoptimised`: a mirrored section lands a few degrees off the plain
    mirror of the result), and whether either term of the score (the image texture, the tissue outline) singles
    it out. Alternatives that end on the pose itself are dropped."""
    named = alternative_poses(result.A_affine, xy_um)
    own_A, *alt_As = reoptimised(rasters, [result.A_affine] + [A for _, A in named], glass=glass)
    yx_um = np.asarray(xy_um, np.float64)[:, ::-1]
    own_px = apply_matrix(np.linalg.inv(own_A), yx_um)  # cells in image (row, col)
    size = max(float(np.sqrt(np.ptp(own_px[:, 0]) * np.ptp(own_px[:, 1]))), 1e-12)
    distinct = [(name, A) for (name, _), A in zip(named, alt_As)
                if np.median(np.linalg.norm(apply_matrix(np.linalg.inv(A), yx_um) - own_px, axis=1)) > DISTINCT * size]
    texture, outline = pose_terms(rasters, result.A_affine)
    tex_re, out_re = pose_terms(rasters, own_A)
    own_re = max(_combined(texture, outline, glass), _combined(tex_re, out_re, glass))  # at its own optimum
    alts = [(name, *pose_terms(rasters, A)) for name, A in distinct] or [("none", -1.0, 0.0)]
    scored = [(name, _combined(t, o, glass)) for name, t, o in alts]
    best_name, best = max(scored, key=lambda a: a[1])
    margin = own_re - best
    outline_margin = max(outline, out_re) - max(o for _, _, o in alts) if glass else 0.0
    check = THRESHOLDS["margin"][0]
    textured = texture >= THRESHOLDS["texture"][0]
    verdict = CHECK if margin < check or (not textured and outline_margin < THRESHOLDS["outline_margin"][0]) else OK
    text = (f"pose score {own_re:.3f}; the best turned/mirrored alternative ({best_name}, re-optimised) scores "
            f"{best:.3f} (margin {margin:+.3f}); texture correlation {texture:.2f}"
            + (f", outline margin {outline_margin:+.3f}" if glass else ""))
    if not textured and verdict == CHECK:
        text += ": neither the image's texture nor the tissue outline singles out this pose"
    return _flag({"texture": texture, "outline": outline, "score": own_re, "best_alternative": best_name,
                  "alternative_score": best, "margin": margin, "outline_margin": outline_margin},
                 verdict, text, f"the pose is ambiguous (e.g. turned {best_name}): confirm the orientation by eye or "
                 "with 3+ landmarks, or try another --signal ('cell density', or a gene with a clear pattern)")


def _deformation(result: AlignmentResult, g: Geometry) -> dict[str, Any]:
    from .report import jacobian_range

    disp = np.linalg.norm(g.xy_px - g.xy_affine_px, axis=1) * g.um_per_px
    dmax = float(disp.max()) if disp.size else 0.0
    dmed = float(np.median(disp)) if disp.size else 0.0
    if np.any(result.v):
        jmin, jmax = jacobian_range(result)
    else:
        jmin = jmax = 1.0
    rel = dmax / max(g.extent_um, 1e-12)
    v = worst([_grade(rel, *THRESHOLDS["deformation"]),
               _grade(jmin, *THRESHOLDS["jacobian_min"], low_is_bad=True)])
    text = (f"LDDMM moves cells by up to {dmax:.1f} µm (median {dmed:.1f} µm, {100 * rel:.1f} % of the section); "
            f"Jacobian determinant {jmin:.2f}…{jmax:.2f}" + (" — the warp folds" if jmin <= 0 else ""))
    return _flag({"max_um": dmax, "median_um": dmed, "relative": rel, "jacobian_min": jmin, "jacobian_max": jmax,
                  "folds": bool(jmin <= 0)}, v, text,
                 "the deformation is large or folds: compare with the affine-only positions (obsm['spatial_he_affine']); "
                 "try fewer LDDMM iterations or a larger sigmaR, or landmarks")


def quality_flags(rasters: SectionRasters, result: AlignmentResult, xy_um: np.ndarray) -> dict[str, Any]:
    """All quality flags of one alignment and the overall verdict.

    Parameters
    ----------
    rasters
        The section's rasters (:func:`gala_engine.section.prepare_section`); any feature of the same image works.
    result
        The finished alignment.
    xy_um
        The cells, (N, 2) (x, y) in µm (``obsm['spatial']``).

    Returns
    -------
    dict
        ``{"verdict": "ok" | "check" | "likely wrong", "summary": str, "flags": {name: {…, "verdict",
        "message", "hint"}}}`` (JSON-friendly: floats, str, bool).
    """
    g = section_geometry(rasters, result, xy_um)
    flags: dict[str, dict[str, Any]] = {"outside_image": _outside_image(g, tuple(rasters.image_full_shape))}
    flags.update(_tissue_flags(g, rasters))
    flags["margin"] = _margin(rasters, result, xy_um, g.glass)
    flags["deformation"] = _deformation(result, g)
    verdict = worst([f["verdict"] for f in flags.values()])
    bad = [f["message"] for f in flags.values() if f["verdict"] == verdict and verdict != OK]
    summary = "no problem found" if verdict == OK else "; ".join(bad)
    return {"verdict": verdict, "summary": summary, "flags": flags}


def assess(rasters: SectionRasters, result: AlignmentResult, xy_um: np.ndarray) -> dict[str, Any]:
    """Quality flags and per-cell confidence of one alignment, as :func:`gala_engine.section.aligned_adata` and
    :func:`gala_engine.report.write_report` take them: ``{"qc": quality_flags(…), "confidence": (N,) array}``."""
    from .confidence import cell_confidence

    return {"qc": quality_flags(rasters, result, xy_um), "confidence": cell_confidence(rasters, result, xy_um)}


def verdict_lines(qc: dict[str, Any]) -> list[str]:
    """Plain-text lines for a user: the verdict, then each flag that is not ok with what to try."""
    lines = [f"quality: {qc['verdict']}" + ("" if qc["verdict"] == OK else f" ({qc['summary']})")]
    for name, flag in qc["flags"].items():
        if flag["verdict"] != OK:
            lines.append(f"  {name}: {flag['verdict']}: {flag['message']}; try: {flag['hint']}")
    return lines
