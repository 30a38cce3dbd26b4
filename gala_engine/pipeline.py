"""``gala()``: global search (GA + refinement) then LDDMM, ``num_repeats`` times."""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import numpy as np
import torch

from .affine import genes_to_inverse, genes_to_matrix, grid_centre, grid_points, matrix_to_genes, sample
from .device import device_name, resolve_device
from .errors import GalaInputError
from .events import ProgressCallback, ProgressEvent, StopPredicate, stopped
from .features import normalize, tissue_extent, tissue_mask
from .lddmm import default_a, default_epV, fit_contrast, run_lddmm, velocity_grid
from .params import AlignParams
from .scale_match import axis_spacing, match_source_scale
from .search import (
    MAX_SCORED_PIXELS,
    BatchedFitness,
    blur_raster,
    fill_gene_space,
    pixel_weights,
    pool_raster,
    pose_grid,
    refine_genes,
    run_ga,
    score_batch,
    shows_glass,
    space_around,
)
from .transform import transform_image_source_to_target


def _check_raster(name: str, R, x) -> np.ndarray:
    arr = np.asarray(R.detach().cpu() if isinstance(R, torch.Tensor) else R, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise GalaInputError(f"{name} must have shape (C, H, W) (channels first), got {arr.shape}.")
    if arr.shape[1] < 2 or arr.shape[2] < 2:
        raise GalaInputError(f"{name} is empty or too small: shape {arr.shape}; it needs at least 2×2 pixels.")
    if not np.isfinite(arr).all():
        raise GalaInputError(f"{name} contains NaN or infinite values.")
    if np.ptp(arr) <= 0:
        raise GalaInputError(f"{name} is constant (no signal to align); check the input or the chosen signal.")
    if not isinstance(x, (list, tuple)) or len(x) != 2:
        raise GalaInputError(f"The grid of {name} must be [rows, cols] (two 1-D coordinate vectors).")
    for axis, n, label in ((x[0], arr.shape[1], "rows"), (x[1], arr.shape[2], "cols")):
        axis = np.asarray(axis.cpu() if isinstance(axis, torch.Tensor) else axis, dtype=np.float64)
        if axis.ndim != 1 or axis.size != n:
            raise GalaInputError(f"The {label} axis of {name} has {axis.size} values for {n} pixels.")
        if not np.isfinite(axis).all() or np.any(np.diff(axis) <= 0):
            raise GalaInputError(f"The {label} axis of {name} must be finite and strictly increasing.")
    return arr


def _fitness(I, xI_level, J, xJ_level, p: AlignParams, space, xI, xJ, max_pixels: int = MAX_SCORED_PIXELS,
             padding: str | None = None):
    """Fitness on one resolution level; genes stay defined relative to the full grids' centres."""
    return BatchedFitness(I, xI_level, J, xJ_level, kind=p.fitness, scale_floor=space.scale_floor,
                          max_anisotropy=p.max_anisotropy, centres=(grid_centre(xI), grid_centre(xJ)),
                          max_pixels=max_pixels, padding=padding)


def _axes(x) -> list[np.ndarray]:
    return [np.asarray(a.cpu() if isinstance(a, torch.Tensor) else a, dtype=np.float64) for a in x]


def _printer(progress: ProgressCallback | None) -> ProgressCallback:
    def report(event: ProgressEvent) -> None:
        if event.step == event.total or event.step % 50 == 0:
            print(f"[gala] {event.stage} repeat {event.repeat} {event.step}/{event.total}: {event.value:.6g}")
        if progress is not None:
            progress(event)

    return report


def gala(
    xI: list,
    I,
    xJ: list,
    J,
    gene_space: list[dict] | None = None,
    *,
    progress: ProgressCallback | None = None,
    should_stop: StopPredicate | None = None,
    verbose: bool = False,
    source_extent: tuple[np.ndarray, np.ndarray] | None = None,
    init_A=None,
    fine_levels: list | None = None,
    flat_target: bool = False,
    tissue_beyond_frame: bool = False,
    search: bool = True,
    scan_poses: tuple[np.ndarray, np.ndarray] | None = None,
    **params: Any,
) -> dict[str, Any]:
    """Align source ``I`` (image feature raster) to target ``J`` (cell raster).

    Parameters
    ----------
    xI, I
        Source grid ``[rows, cols]`` (image pixels) and raster (C, H, W). A source with more than
        ``scale_match.MATCH_RATIO`` pixels per target pixel (e.g. the tutorial's raw full-resolution Sobel
        magnitude) is first pooled and smoothed to the target's scale (:func:`~gala_engine.scale_match.match_source_scale`;
        the result's ``'source_match'`` says how, None when untouched); the transforms keep the source's coordinates.
    xJ, J
        Target grid ``[rows, cols]`` (µm) and raster (C, H', W').
    gene_space
        Five dicts for ``[angle°, sy, sx, ty, tx]`` with optional ``low``/``high`` (empty → from data).
    init_A
        Optional starting affine (3×3 or 2×3, image pixels (row, col) → µm (row, col), the convention of the
        returned ``'A'``), e.g. from landmarks or an earlier run: the search runs in a narrow space around it
        (angle ± 15°, scales ×/÷ 1.25, shifts ± 10 % of the default range; a shear is dropped) and starts
        from it, then LDDMM refines.
    fine_levels
        Optional finer rasters of the same section, ``[(xI, I, xJ, J), …]`` coarse to fine (e.g. the cells at dx/2
        and the image at the matching working pixel): after the search the pose is refined on each in turn, so
        the error can fall below a pixel of ``J`` (:func:`gala_engine.section.prepare_section` makes them).
    flat_target
        True when the cells' signal is too flat to align by its texture (an evenly packed section; see
        :mod:`gala_engine.flatness`): where the image shows the tissue's outline, LDDMM then fits and validates the
        warp on the outline alone (:func:`_outline_band`), with a smoother field, so the interior follows the outline.
    tissue_beyond_frame
        True: where the image shows no empty slide (a frame filled with tissue) and the cells' density has texture
        (not ``flat_target``), the last refinement on ``J``'s raster reads the image beyond its frame as its mirror
        image (the tissue goes on) instead of zeros (empty slide), which pull the cells' blurred edge out of the
        frame. The CLI and the app set it; ``gala()`` called as in the published tutorial keeps the zeros, and there
        (without ``init_A``) the pose scan and the refinement's choice rank poses that leave clearly more of the cells
        beyond the frame than the others last (:func:`_frame_order`).
    search
        False: ``init_A`` is the pose, as given; no scan, GA or refinement runs, only LDDMM from it (e.g. to warp the
        winner of several searches: :func:`gala_engine.section.align_section`). ``fitness`` and ``score`` are then the
        pose's score on ``J``'s raster.
    scan_poses
        The pose scan's poses of an earlier search of the same section (its result's ``'scan_poses'``: centred and
        off-centre poses), e.g. on another count scale: instead of scanning, they are ranked on this search's sharp
        scan level, and seed the GA and the refinement as the scan's own would.
    progress, should_stop
        Optional callback receiving :class:`~gala_engine.events.ProgressEvent` and a predicate
        polled once per step; stopping keeps the best result so far.
    params
        Any :class:`~gala_engine.params.AlignParams` field (the tutorial's names).

    Returns
    -------
    dict
        ``A`` (3×3, source→target), ``v``, ``xv`` (velocity field and its grid), ``genes``,
        ``A_affine``, ``fitness``, ``score``, histories, ``WM``, ``params``, ``device``, ``runtime_s``,
        ``scan_poses`` (the pose scan's centred and off-centre poses; None without a scan).
    """
    t_start = time.perf_counter()
    p = AlignParams.from_dict(params)
    I_np, J_np = _check_raster("I (source)", I, xI), _check_raster("J (target)", J, xJ)
    # a source far finer than the cells' raster (e.g. the tutorial's raw full-resolution Sobel) is smoothed to the
    # raster's own scale first: everything below (fitness choice, search, LDDMM) compares like with like
    I_np, xI, source_match = match_source_scale(I_np, _axes(xI), J_np, _axes(xJ))
    # fitness "auto": where the image shows empty slide, search with "tissue" (texture + cells on the tissue mask:
    # right for crops too) and, if the pose found puts (nearly) all of the image's tissue under the cells, finish on
    # the whole raster ("ncc": the outline counts). An image filled with tissue has no outline (its tissue mask is the
    # whole frame), so there only the texture: "ncc_support" (unless shows_glass's fallback test fires: pale IHC).
    auto_fitness = p.fitness == "auto"
    outline = auto_fitness and shows_glass(I_np)
    if auto_fitness:
        p.fitness = "tissue" if outline else "ncc_support"
    # And there, with a density that has texture of its own and tissue_beyond_frame, the last refinement reads the
    # image beyond its frame as its mirror image, not as empty slide: zeros there pull the cells' blurred edge out of
    # the frame (CLI: a 2 % larger scale on nuclei-os1_he-r190f-s4, 18 → 8 µm). The search keeps the zeros: the
    # frame is a fair coarse cue, and a flat density has nothing else. (The tutorial's recipe, coarser rasters of a
    # smoothed Sobel, lost with it: MERFISH 0.14 → 1.7 px; it keeps the zeros.)
    textured_frame = tissue_beyond_frame and auto_fitness and not outline and not flat_target
    xI, xJ = _axes(xI), _axes(xJ)
    from .budget import check_arrays  # (local: keeps this edit to two lines)

    check_arrays(I_np.shape, J_np.shape, xI, p)  # memory / time budget (gala_engine.budget) before any work
    device = resolve_device(p.device)
    dtype = torch.float64 if p.dtype == "float64" else torch.float32
    if verbose:
        progress = _printer(progress)
    I_t = torch.as_tensor(np.stack([normalize(plane) for plane in I_np]), dtype=dtype, device=device)
    J_t = torch.as_tensor(np.stack([normalize(plane) for plane in J_np]), dtype=dtype, device=device)
    if p.gene_space_mode == "extent" and source_extent is None:
        source_extent = tissue_extent(I_np, xI)
    space = fill_gene_space(gene_space, xI, xJ, mode=p.gene_space_mode, source_extent=source_extent)
    init_genes = None if init_A is None else _init_genes(init_A, xI, xJ)
    if not search and init_genes is None:
        raise GalaInputError("gala(search=False) warps a given pose: pass it as init_A.")
    if init_genes is not None:
        space = space_around(space, init_genes)

    fI = max(1, math.ceil(max(I_np.shape[1:]) / p.ga_max_pixels))
    fJ = max(1, math.ceil(max(J_np.shape[1:]) / p.ga_max_pixels))
    I_c, xI_c = pool_raster(I_t, xI, fI)
    J_c, xJ_c = pool_raster(J_t, xJ, fJ)
    # coarse-to-fine: the GA scores blurred pooled rasters (a wide basin), refinement sharpens
    # on the blurred GA level the image channels are averaged into one (at that scale nuclei and total stain
    # coincide: the channels' mix matters for the detail the sharper levels see), a third of the resampling
    I_ga = I_c if p.fitness == "sse" else I_c.mean(0, keepdim=True)
    # finer levels follow the full one: it brings the pose near the optimum from fewer target pixels
    full_pixels = FINISH_PIXELS if fine_levels else MAX_SCORED_PIXELS
    levels = [
        _fitness(blur_raster(I_ga, p.ga_blur), xI_c, blur_raster(J_c, p.ga_blur), xJ_c, p, space, xI, xJ),
        _fitness(I_c, xI_c, J_c, xJ_c, p, space, xI, xJ),
        _fitness(I_t, xI, J_t, xJ, p, space, xI, xJ, max_pixels=full_pixels),
    ]
    coarse, full = levels[0], levels[-1]

    ga_history: list[dict] = []
    energy_history: list[list[float]] = []
    validation: dict | None = None
    fitness_used = p.fitness
    xv_full = velocity_grid(xI, p.a if p.a is not None else default_a(xI))  # shared by every LDDMM level
    v = None
    lddmm = None
    was_stopped = False
    best_genes = np.zeros(5)
    fitness = score = float("nan")
    scan_genes = off_centre = np.empty((0, 5))
    scanned = None  # (centred, off-centre) poses of the scan, for the result's 'scan_poses'
    # with the image read as empty slide beyond its frame, the pose scan and the refinement's choice prefer poses that
    # keep the cells inside the frame (:func:`_frame_order`); a user's starting pose is taken as it comes
    frame = None
    if not tissue_beyond_frame and init_genes is None:
        frame = _frame_share(xI, J_c, xJ_c, (full.cI, full.cJ), FRAME_MARGIN * max(map(axis_spacing, xJ)))
    if init_genes is not None:  # the known pose seeds the GA and competes in the refinement
        scan_genes = init_genes[None]
    elif p.seed_population and scan_poses is not None:  # an earlier search's scan, ranked on this section's targets
        scanned = tuple(np.asarray(poses, dtype=np.float64).reshape(-1, 5) for poses in scan_poses)
        with torch.no_grad():
            centred_scores, shifted_scores = (levels[1](torch.as_tensor(poses, dtype=dtype, device=device)).cpu().numpy()
                                              for poses in scanned)
        scan_genes, off_centre = _ranked_scan(*scanned, centred_scores, shifted_scores, frame)
    elif p.seed_population:
        # multi-start: every 10° ± flip from moment-matched poses, all refined at once (blurred, then sharp)
        grids = (I_c.cpu().numpy(), xI_c, J_c.cpu().numpy(), xJ_c, space)
        centres = (grid_centre(xI), grid_centre(xJ))
        poses = pose_grid(*grids, centres=centres)
        # the same turns with the centroids matched off-centre (cells on part of the tissue): the blurred level's
        # SCAN_SHIFTS_REFINED best are refined on it with the others; its SCAN_SHIFTS_KEPT best go on to the sharp level
        n_centred = len(poses)
        shifted = pose_grid(*grids, centres=centres, shifts=SCAN_SHIFTS)
        with torch.no_grad():  # ranked as they start: only the best are refined
            first = levels[0](torch.as_tensor(shifted, dtype=dtype, device=device)).cpu().numpy()
        poses = np.concatenate([poses, shifted[np.argsort(-first)[:SCAN_SHIFTS_REFINED]]])
        poses, blurred_scores = refine_genes(levels[0], poses, space, iterations=p.scan_iterations,
                                             progress=progress, should_stop=should_stop, stage="scan")
        kept = n_centred + np.argsort(-blurred_scores[n_centred:])[:SCAN_SHIFTS_KEPT]
        poses = np.concatenate([poses[:n_centred], poses[kept]])
        # the sharp scan level ranks the poses on the image channels' fitted mix, not their mean: on an IHC image
        # (DAB-dark regions next to the nuclei) ranking on the mean sent two held-out cases 0.7 mm off
        poses, scan_scores = refine_genes(levels[1], poses, space, iterations=p.scan_iterations, progress=progress,
                                          should_stop=should_stop, stage="scan")
        # the centred poses seed the GA as always; an off-centre pose that the sharp level ranks above every centred
        # one (cells on part of the tissue: 257 -> 24 µm on nuclei-os1_he-r100-…-coverage0.6) joins the refinement
        scanned = poses[:n_centred], poses[n_centred:]
        scan_genes, off_centre = _ranked_scan(*scanned, scan_scores[:n_centred], scan_scores[n_centred:], frame)
    for repeat in range(p.num_repeats if search else 0):
        candidates = []
        for restart in range(p.ga_restarts):
            seed = p.random_seed + restart
            population = None
            if len(scan_genes):  # the scanned poses, best first, then uniform samples
                kept = scan_genes[: max(p.sol_per_pop // 2, 1)]
                uniform = np.random.default_rng(seed).uniform(space.low, space.high, (p.sol_per_pop - len(kept), 5))
                population = np.concatenate([kept, uniform])
            result = run_ga(coarse, space, initial_population=population, num_generations=p.num_generations,
                            sol_per_pop=p.sol_per_pop, num_parents_mating=p.num_parents_mating,
                            mutation_probability=p.mutation_probability,
                            crossover_probability=p.crossover_probability, random_seed=seed,
                            stop_criteria=p.stop_criteria, patience=p.ga_patience, operators=p.ga_operators,
                            progress=progress, should_stop=should_stop,
                            repeat=repeat)
            ga_history.append({"repeat": repeat, "restart": restart, "seed": seed,
                               "best": result.best_history, "mean": result.mean_history})
            candidates.append(result)
            if result.stopped:
                was_stopped = True
                break
        best = max(candidates, key=lambda c: c.fitness)
        best_genes, fitness = best.genes, best.fitness
        score = float(full(torch.as_tensor(best_genes[None], dtype=dtype, device=device))[0])
        if p.refine_iterations and not was_stopped:
            # each restart's best and the best scanned poses are refined on the coarse levels; the sharp
            # coarse score picks the winner
            per_level = max(p.refine_iterations // len(levels), 1)
            starts = np.stack([c.genes for c in candidates] + list(scan_genes[: p.ga_restarts])
                              + list(off_centre[: p.ga_restarts]))
            # a GA seeded by the scan often returns a scanned pose itself: each distinct start is refined once
            starts = starts[np.sort(np.unique(starts, axis=0, return_index=True)[1])]
            for level in levels[:-1]:  # all candidates at once
                starts, level_scores = refine_genes(level, starts, space, iterations=per_level, progress=progress,
                                                    should_stop=should_stop, repeat=repeat)
            best_genes = starts[_frame_order(level_scores, None if frame is None else frame(starts))[0]]
            was_stopped = stopped(should_stop)
            finish = p  # the fitness the last refinements use
            start = best_genes
            if outline and not was_stopped and _tissue_covered(I_t, xI, J_t, xJ, best_genes, full) >= FULL_COVERAGE:
                # nearly all the image's tissue lies under the cells: the whole raster decides, from the coarse
                # pose (pooled, then full rasters)
                ncc = dataclasses.replace(p, fitness="ncc")
                ncc_levels = [_fitness(I_l, xI_l, J_l, xJ_l, ncc, space, xI, xJ, max_pixels=n)
                              for I_l, xI_l, J_l, xJ_l, n in ((I_c, xI_c, J_c, xJ_c, MAX_SCORED_PIXELS),
                                                              (I_t, xI, J_t, xJ, full_pixels))]
                # with sub-pixel levels to follow, the finish takes the same steps whichever fitness it uses
                per_ncc = max(per_level // len(ncc_levels), 1) if fine_levels else per_level
                best_genes, score, was_stopped = _finish(ncc_levels, start, space, per_ncc, progress, should_stop,
                                                         repeat)
                # the tissue stage has fixed the section's size (the cells' footprint on the tissue mask); the
                # whole raster only settles the outline. A finish that rescales the section is fitting another
                # structure than the filled tissue (e.g. an edge map's bright outline ring, which ncc pulls inside
                # the cells' density by shrinking the pose, ~9 %): then the tissue fitness finishes instead
                if was_stopped or _rescaled(start, best_genes) <= MAX_FINISH_RESCALE:
                    finish, fitness_used = ncc, "tissue, then ncc"
            finish_padding = "reflection" if finish is p and textured_frame else None
            if finish is p:
                last = full if finish_padding is None else _fitness(I_t, xI, J_t, xJ, p, space, xI, xJ,
                                                                    max_pixels=full_pixels, padding=finish_padding)
                best_genes, score, was_stopped = _finish([last], start, space, per_level, progress, should_stop,
                                                         repeat)
            fine_iterations = max(per_level // FINE_SHARE, 1)
            for xI_f, I_f, xJ_f, J_f in fine_levels or ():  # sub-pixel: finer rasters of the same section
                if was_stopped:
                    break
                I_f = torch.as_tensor(np.stack([normalize(c) for c in np.asarray(I_f)]), dtype=dtype, device=device)
                J_f = torch.as_tensor(np.stack([normalize(c) for c in np.asarray(J_f)]), dtype=dtype, device=device)
                fit_f = _fitness(I_f, _axes(xI_f), J_f, _axes(xJ_f), finish, space, xI, xJ, max_pixels=FINE_PIXELS,
                                 padding=finish_padding)
                best_genes, score = refine_genes(fit_f, best_genes, space, iterations=fine_iterations, progress=progress,
                                                 should_stop=should_stop, repeat=repeat)
                was_stopped = stopped(should_stop)
        A = genes_to_matrix(torch.as_tensor(best_genes, dtype=dtype, device=device), full.cI, full.cJ)
        if p.num_iterations and not was_stopped:
            lddmm, validation, was_stopped = _warp(I_t, xI, J_t, xJ, A, p, v, xv_full, flat_target and outline,
                                                   energy_history, progress, should_stop, repeat)
            v = lddmm.v
        if was_stopped:
            break
    if not search:  # the pose as given; only the warp runs
        best_genes = init_genes
        A = torch.as_tensor(_init_matrix(init_A), dtype=dtype, device=device)
        fitness = score = float(full(torch.as_tensor(best_genes[None], dtype=dtype, device=device))[0])
        if p.num_iterations:
            lddmm, validation, was_stopped = _warp(I_t, xI, J_t, xJ, A, p, None, xv_full, flat_target and outline,
                                                   energy_history, progress, should_stop, 0)
            v = lddmm.v

    if lddmm is None:  # affine only: an identity flow on the velocity grid LDDMM would use
        xv = xv_full
        v = torch.zeros((p.nt, xv[0].size, xv[1].size, 2), dtype=dtype, device=device)
        WM = torch.ones(J_t.shape[1:], dtype=dtype, device=device)
    else:
        xv, WM = lddmm.xv, lddmm.WM
    return {
        "A": A,
        "v": v,
        "xv": [torch.as_tensor(axis, dtype=dtype, device=device) for axis in xv],
        "genes": best_genes,
        "A_affine": A.clone(),
        "fitness": float(fitness),
        "score": float(score),
        "ga_history": ga_history,
        "energy_history": energy_history,
        "WM": WM,
        "gene_space": space.as_dicts(),
        "params": p.to_dict(),
        "device": device_name(device),
        "runtime_s": time.perf_counter() - t_start,
        "stopped": was_stopped,
        "lddmm_validation": validation,
        "fitness_used": fitness_used,
        "source_match": source_match,
        "scan_poses": scanned,
    }


def _ranked_scan(centred: np.ndarray, shifted: np.ndarray, centred_scores: np.ndarray,
                 shifted_scores: np.ndarray, frame=None) -> tuple[np.ndarray, np.ndarray]:
    """The scan's seeds → (the centred poses, best first; the off-centre poses that score above every centred one,
    best first). ``frame``: each pose's share of the cells inside the image's frame (:func:`_frame_share`); poses
    that leave clearly more of them outside than the others rank last (:func:`_frame_order`)."""
    if frame is None:
        above = np.flatnonzero(shifted_scores > centred_scores.max())
        return centred[np.argsort(-centred_scores)], shifted[above[np.argsort(-shifted_scores[above])]]
    inside = frame(np.concatenate([centred, shifted]))
    kept = inside >= inside.max() - FRAME_SLACK
    kept_centred, kept_shifted = kept[: len(centred)], kept[len(centred):]
    best_centred = centred_scores[kept_centred].max() if kept_centred.any() else -np.inf
    above = np.flatnonzero(kept_shifted & (shifted_scores > best_centred))
    order = _frame_order(centred_scores, inside[: len(centred)], kept_centred)
    return centred[order], shifted[above[np.argsort(-shifted_scores[above])]]


# gala() as published reads the image beyond its frame as empty slide (zeros). There the frame's edge is a strong
# outline of its own, and a pose can score by laying the cells' outline on it, a third to a half of the cells off the
# image (the tutorial's Sobel recipe: MERFISH turned 180°, nuclei sections 1.5–2.6 mm off: 52–67 % of the density
# inside), where the true pose keeps 87–95 % inside, the rest the raster's blur (within FRAME_MARGIN, counted as
# inside). Poses that leave more than FRAME_SLACK of the density outside beyond what the best-kept pose does rank
# after the others, whatever their score.
FRAME_SLACK = 0.15
FRAME_MARGIN = 4  # target pixels: the reach of rasterize's default splat (a Gaussian of 2 px, cut at 2 std)


def _frame_share(xI: list, J: torch.Tensor, xJ: list, centres: tuple, margin_um: float):
    """A function: poses (P, 5) → (P,) share of the cells' density ``J`` that each puts inside the image's frame
    (the source grid ``xI`` plus half a pixel all round), counting density up to ``margin_um`` beyond it (the reach
    of the raster's splat: cells at the frame's edge spill over it) as inside. ``centres``: the genes' (cI, cJ)."""
    cI, cJ = (torch.as_tensor(c, dtype=torch.float64, device=J.device) for c in centres)
    weights = J.sum(0).flatten().double()
    weights = weights / weights.sum().clamp_min(1e-30)
    points = grid_points(xJ, dtype=torch.float64, device=J.device).reshape(-1, 2)
    bounds = []
    for axis in xI:
        half = 0.5 * (float(axis[1]) - float(axis[0])) if len(axis) > 1 else 0.5
        bounds.append((float(axis[0]) - half, float(axis[-1]) + half))

    def share(genes: np.ndarray) -> np.ndarray:
        g = torch.as_tensor(np.asarray(genes), dtype=torch.float64, device=J.device)
        shift = genes_to_matrix(g, cI, cJ)[:, None, :2, 2]
        q = (points - shift) @ genes_to_inverse(g).transpose(1, 2)  # µm → image px (a zero scale: outside)
        beyond = [(lo - q[..., d]).clamp_min(0) + (q[..., d] - hi).clamp_min(0) for d, (lo, hi) in enumerate(bounds)]
        um_per_px = (g[:, 1] * g[:, 2]).abs().sqrt()[:, None]
        inside = torch.hypot(*beyond) * um_per_px <= margin_um
        return (inside.double() @ weights).cpu().numpy()

    return share


def _frame_order(scores: np.ndarray, inside: np.ndarray | None, kept: np.ndarray | None = None) -> np.ndarray:
    """Indices of poses best first by score, those whose share of the cells inside the image's frame (``inside``)
    is more than ``FRAME_SLACK`` below the best share after the others (``inside`` None: by score alone)."""
    scores = np.asarray(scores, dtype=np.float64)
    if inside is None:
        return np.argsort(-scores, kind="stable")
    if kept is None:
        kept = inside >= inside.max() - FRAME_SLACK
    return np.lexsort((-scores, ~kept))


def _init_matrix(init_A) -> np.ndarray:
    """A user's starting affine (3×3 or 2×3, image px → µm, row/col) as a checked 3×3."""
    A = np.asarray(init_A.detach().cpu() if isinstance(init_A, torch.Tensor) else init_A, dtype=np.float64)
    if A.shape == (2, 3):
        A = np.vstack([A, [0.0, 0.0, 1.0]])
    if A.shape != (3, 3) or not np.isfinite(A).all() or abs(np.linalg.det(A[:2, :2])) < 1e-12:
        raise GalaInputError(f"init_A must be a finite, invertible 3×3 (or 2×3) affine, got shape {A.shape}.")
    return A


def _init_genes(init_A, xI: list, xJ: list) -> np.ndarray:
    """Genes of a user's starting affine (3×3 or 2×3, image px → µm, row/col)."""
    return matrix_to_genes(_init_matrix(init_A), xI, xJ)


def _warp(I_t, xI, J_t, xJ, A, p: AlignParams, v, xv_full, outline_only: bool, energy_history: list, progress,
          should_stop, repeat: int):
    """LDDMM from the affine ``A`` (``v``: an earlier repeat's field to start from, or None), cross-validated on two
    checkerboard folds (``p.lddmm_validate``); ``outline_only``: a flat section whose image shows its outline, the warp
    fitted and validated on the outline band alone → (the LDDMM result, the validation record, stopped)."""
    validation = None
    I_warp = _mixed_channels(I_t, xI, J_t, xJ, A, xv_full) if p.contrast else I_t
    folds = _checkerboard_folds(J_t.shape[1:], J_t.device) if p.lddmm_validate else [None]
    # an evenly packed section's density only says where its outline is: inside, the image's texture has
    # nothing to match and, matched anyway, drags the interior (an unwarped flat section: 2 → 11 µm). Its
    # warp is fitted and validated on the outline band alone, smoother, so the interior follows the outline
    band = _outline_band(J_t) if outline_only else None
    warp_p, xv_warp, fit_folds = p, xv_full, folds
    if band is not None:
        fit_folds = [band if fold is None else fold * band for fold in folds]
        if p.a is None:
            warp_p, xv_warp = _smoother(p, xI)
    v0 = v if v is not None and tuple(v.shape[1:3]) == (xv_warp[0].size, xv_warp[1].size) else None
    fits, was_stopped = _fold_fits(I_warp, xI, J_t, xJ, A, warp_p, v0, xv_warp, fit_folds, energy_history,
                                   progress, should_stop, repeat, band)
    lddmm = fits[-1]
    if p.lddmm_validate and not was_stopped:
        validation = _validate_warp(I_warp, xI, J_t, xJ, A, fits, folds, band)
        if validation["accepted"] and not validation["inside"] and p.a is None:
            # only the tissue outline (just outside the cells' support) carries the warp: inside, the
            # image explains none of the cells' density, so the warp there is the outline's, interpolated.
            # A smoother field carries the outline's displacement further in; it must pass the same check
            smooth, xv_smooth = _smoother(p, xI)
            smooth_fits, was_stopped = _fold_fits(I_warp, xI, J_t, xJ, A, smooth, None, xv_smooth, folds,
                                                  energy_history, progress, should_stop, repeat)
            if not was_stopped:
                check = _validate_warp(I_warp, xI, J_t, xJ, A, smooth_fits, folds)
                validation["smoothed_a"] = float(smooth.a) if check["accepted"] else 0.0
                if check["accepted"]:
                    fits, lddmm = smooth_fits, smooth_fits[-1]
        lddmm.v = (fits[0].v + fits[1].v) / 2.0 if validation["accepted"] else torch.zeros_like(fits[0].v)
    return lddmm, validation, was_stopped


# off-centre starts of the pose scan: the matched centroid moved by half a standard deviation of the cells' raster
# along rows, columns and both (cells covering ~60 % of the tissue sit up to ~0.5 sd off its centroid). The blurred
# level scores them once; its SCAN_SHIFTS_REFINED best (refining all eight times as many as the centred poses cost
# +3.5 s a run on one thread, as many as the centred +0.4 s; a sixth of them finds the partial-coverage case as well:
# 24.3 µm with 36, 72 or 216) are refined with the centred poses, and its SCAN_SHIFTS_KEPT best after that are
# refined on the sharp scan level with the centred poses (the same case with 12 or 24)
SCAN_SHIFTS = tuple((0.5 * r, 0.5 * c) for r in (-1, 0, 1) for c in (-1, 0, 1) if r or c)
SCAN_SHIFTS_REFINED, SCAN_SHIFTS_KEPT = 36, 12
# the sub-pixel levels start next to the optimum: a quarter of a level's refinement steps on at most 2¹⁴ of their
# target pixels (a fixed random subset) suffice
FINE_SHARE, FINE_PIXELS = 4, 1 << 14
FINISH_PIXELS = 1 << 15  # target pixels the full level scores when sub-pixel levels follow it
FULL_COVERAGE = 0.8  # share of the image's tissue under the cells above which the whole raster is compared
# largest relative change of either scale the whole-raster finish may make to the tissue stage's pose (measured on
# the fast validation set: ≤ 1.6 % where it helps, CLI and tutorial recipe; 8.5–9.7 % where a Sobel ring shrinks it)
MAX_FINISH_RESCALE = 0.05


def _finish(levels: list, genes: np.ndarray, space, iterations: int, progress, should_stop, repeat: int):
    """Refine ``genes`` on each fitness level in turn → (genes, score, stopped). A stop request ends each level
    after one step: the score stays its pose's."""
    score = float("nan")
    for level in levels:
        genes, score = refine_genes(level, genes, space, iterations=iterations, progress=progress,
                                    should_stop=should_stop, repeat=repeat)
    return genes, score, stopped(should_stop)


def _rescaled(before: np.ndarray, after: np.ndarray) -> float:
    """Largest relative change of the two scale genes (1, 2) from ``before`` to ``after``."""
    return float(max(abs(after[k] / before[k] - 1.0) if before[k] else math.inf for k in (1, 2)))


def _tissue_covered(I, xI, J, xJ, genes, fit: BatchedFitness) -> float:
    """Share of the image's tissue mask that the pose ``genes`` puts inside the cells' support."""
    A = genes_to_matrix(torch.as_tensor(genes, dtype=I.dtype, device=I.device), fit.cI, fit.cJ)
    mask = torch.as_tensor(tissue_mask(I.cpu().numpy()), dtype=I.dtype, device=I.device)
    support = pixel_weights(J, "ncc_support").reshape(1, *J.shape[1:])
    points = grid_points(xI, dtype=I.dtype, device=I.device) @ A[:2, :2].T + A[:2, 2]
    under_cells = sample(support, xJ, points)[0]
    return float((mask * under_cells).sum() / mask.sum().clamp_min(1e-12))


def _mixed_channels(I: torch.Tensor, xI: list, J: torch.Tensor, xJ: list, A: torch.Tensor, xv: list) -> torch.Tensor:
    """The image's channels mixed into one by the least-squares contrast fit at the affine pose ``A`` (over the
    cells' support), for LDDMM: it then warps one channel instead of C, and its per-step contrast fit keeps the
    scale and offset free. The warp moves the image little, so the mix found at the affine pose holds."""
    if I.shape[0] == 1:
        return I
    still = torch.zeros((1, xv[0].size, xv[1].size, 2), dtype=I.dtype, device=I.device)
    affine_only = transform_image_source_to_target(xv, still, A, xI, I, xJ)
    support = pixel_weights(J, "ncc_support").reshape(J.shape[1:])
    _, mix = fit_contrast(affine_only, J, support)  # (1, C)
    return torch.einsum("jk,khw->jhw", mix, I)


def _fold_fits(I, xI, J, xJ, A, p: AlignParams, v0, xv, folds, energy_history: list, progress, should_stop, repeat,
               band=None):
    """One LDDMM fit per fold (:func:`_fit_lddmm`; the folds share the iterations and the early stop's patience,
    each seeing half the pixels: cross-validation costs one run) → (the fits, whether a stop was requested). With
    two folds each fit keeps the field that its held-out half (scored as :func:`_validate_warp` does, over the
    outline ``band`` where given) scores best, checked every ``CHECK_EVERY`` iterations."""
    per_fold = dataclasses.replace(p, num_iterations=max(p.num_iterations // len(folds), 1),
                                   lddmm_patience=p.lddmm_patience and max(p.lddmm_patience // len(folds), 1))
    outer = _held_out_region(J, band) if len(folds) == 2 else None
    fits = []
    for mask in folds:
        check = None
        if outer is not None:
            weights = (outer * (1.0 - mask)).flatten()

            def check(vel: torch.Tensor, _w=weights) -> float:
                warped = transform_image_source_to_target(xv, vel, A, xI, I, xJ)
                return float(score_batch(warped[None], J, weights=_w)[0])

        lddmm, fold_energy = _fit_lddmm(I, xI, J, xJ, A, per_fold, v0, xv, mask, progress, should_stop, repeat,
                                        check)
        energy_history.extend(fold_energy)
        fits.append(lddmm)
        if lddmm.stopped:
            return fits, True
    return fits, False


def _fit_lddmm(I, xI, J, xJ, A, p: AlignParams, v0, xv, mask, progress, should_stop, repeat, check=None):
    """LDDMM over its levels (:func:`_lddmm_levels`) from ``v0``, matching only the target pixels of ``mask``
    (None: all), keeping the field ``check`` scores best (None: the last) → (the last level's result, the energy
    history)."""
    history: list[list[float]] = []
    lddmm = None
    epV = p.epV if p.epV is not None else default_epV(xI)  # the full raster's: a pooled level keeps the same step
    for I_l, xI_l, J_l, xJ_l, iterations, noise, mask_l in _lddmm_levels(I, xI, J, xJ, p, mask):
        lddmm = run_lddmm(I_l, xI_l, J_l, xJ_l, A, num_iterations=iterations, a=p.a, nt=p.nt, epV=epV,
                          sigmaR=p.sigmaR, sigmaM=noise[0], sigmaB=noise[1], muB=p.muB, contrast=p.contrast,
                          v0=v0, xv=xv, patience=p.lddmm_patience, tol=p.lddmm_tol, progress=progress,
                          should_stop=should_stop, repeat=repeat, pixel_mask=mask_l, checkpoint=check,
                          checkpoint_every=CHECK_EVERY, extend_to=EXTEND * iterations, extend_gain=MIN_HELD_OUT_GAIN)
        v0 = lddmm.v
        history.extend(lddmm.energy_history)
        if lddmm.stopped:
            break
    return lddmm, history


CHECK_EVERY = 10  # LDDMM iterations between two scores of a fold's fit on its held-out half (:func:`_fold_fits`)
# a fold's fit still raising its held-out fit by more than MIN_HELD_OUT_GAIN per CHECK_EVERY iterations when its share of
# the iterations is spent goes on, up to this many times that share (a large warp still converging: the MERFISH DAPI
# reduced 2× under a 25 µm warp 4.3 -> 2.4 µm, the corner's spots 5.8 -> 3.3 µm; an unwarped flat tile whose outline
# keeps fitting 5.7 -> 8.7 µm, 0.87 raster px; the 37 cases' summed error 173.1 -> 171.3 µm, their CPU time +3 %)
EXTEND = 4
VALIDATION_BLOCK = 8  # target pixels per side of the checkerboard squares that split the warp's data in two
# a warp must raise the held-out correlation by more than this on each half: smaller gains are fitting noise. Measured
# on the validation suite: a spurious warp on an unwarped IHC look-alike gained 0.0018 / 0.0008 and moved the cells
# 4.4 → 7.0 µm; the warps that helped gained 0.0013 (the tutorial's recipe, uniform-os2_ki67-r45) to 0.05 (MERFISH).
# Refused as well: spots-os2_ki67-r170f (0.0009; 8.5 µm, was 8.1)
MIN_HELD_OUT_GAIN = 0.001
# the held-out correlation is scored over the cells' support widened by this many target pixels: the tissue outline
# lies just outside the support, and a flat density inside leaves the outline the only evidence of a warp
VALIDATION_RIM = 3
# a warp that only the outline supports (and a flat section's warp) is fitted with a smoothness scale this many times
# the default (a / 8 of the image): the interior, where the image explains none of the cells' density, follows the
# outline further in
OUTLINE_SMOOTHING = 1.5


def _smoother(p: AlignParams, xI: list) -> tuple[AlignParams, list[np.ndarray]]:
    """``p`` with the smoothness scale ``OUTLINE_SMOOTHING`` × the default, and that scale's velocity grid."""
    smooth = dataclasses.replace(p, a=default_a(xI) * OUTLINE_SMOOTHING)
    return smooth, velocity_grid(xI, smooth.a)


def _widened(mask: torch.Tensor, rim: int = VALIDATION_RIM) -> torch.Tensor:
    """(H, W) ``mask`` (0/1) grown by ``rim`` pixels in every direction (a square neighbourhood)."""
    return torch.nn.functional.max_pool2d(mask[None, None], 2 * rim + 1, stride=1, padding=rim)[0, 0]


def _checkerboard_folds(shape, device) -> list[torch.Tensor]:
    """Two complementary 0/1 masks of the target raster: squares of ``VALIDATION_BLOCK`` pixels, alternating."""
    rows = torch.arange(shape[0], device=device)[:, None] // VALIDATION_BLOCK
    cols = torch.arange(shape[1], device=device)[None, :] // VALIDATION_BLOCK
    first = ((rows + cols) % 2 == 0).float()
    return [first, 1.0 - first]


def _outline_band(J: torch.Tensor) -> torch.Tensor:
    """(H, W) 0/1: the target pixels within ``VALIDATION_RIM`` pixels of the edge of the cells' support."""
    support = pixel_weights(J, "ncc_support").reshape(J.shape[1:])
    return _widened(support) - (1.0 - _widened(1.0 - support))


def _held_out_region(J: torch.Tensor, band=None) -> torch.Tensor:
    """(H, W) 0/1: where a warp's held-out fit is scored: the cells' support widened by ``VALIDATION_RIM`` pixels (the
    tissue outline counts), or the outline ``band`` of a flat section."""
    return _widened(pixel_weights(J, "ncc_support").reshape(J.shape[1:])) if band is None else band


def _validate_warp(I, xI, J, xJ, A, fits, folds, band=None) -> dict:
    """Is the warp real? Each fold's warp, fitted on its half of the target pixels, must raise the image–cells
    correlation (the contrast-invariant fitness) on the OTHER half, which it never saw, by more than
    ``MIN_HELD_OUT_GAIN`` over what the affine alone gives there; fitting noise lowers it. The correlation is scored
    over the cells' support widened by ``VALIDATION_RIM`` pixels (the tissue outline counts: ``held_out_fitness``)
    and, to tell where the evidence lies, over the support alone (``held_out_inside``; ``inside``: that too rises);
    with an outline ``band`` (:func:`_outline_band`, a flat section), both over the band alone. Accepted warps are
    averaged by the caller."""
    outer = _held_out_region(J, band)
    inner = pixel_weights(J, "ncc_support").reshape(J.shape[1:]) if band is None else None
    affine_only = transform_image_source_to_target(fits[0].xv, torch.zeros_like(fits[0].v), A, xI, I, xJ)
    rows, inside = [], []
    for fit, mask in zip(fits, folds):
        warped = torch.stack([affine_only, transform_image_source_to_target(fit.xv, fit.v, A, xI, I, xJ)])
        rows.append(score_batch(warped, J, weights=(outer * (1.0 - mask)).flatten()).tolist())
        inside.append(rows[-1] if inner is None else
                      score_batch(warped, J, weights=(inner * (1.0 - mask)).flatten()).tolist())
    return {"accepted": all(after > before + MIN_HELD_OUT_GAIN for before, after in rows), "held_out_fitness": rows,
            "inside": all(after > before for before, after in inside), "held_out_inside": inside}


def _lddmm_levels(I: torch.Tensor, xI: list, J: torch.Tensor, xJ: list, p: AlignParams, mask=None):
    """(I, xI, J, xJ, iterations, (sigmaM, sigmaB), mask) per LDDMM level: with ``lddmm_coarse`` = f > 1, first
    both rasters (and the pixel mask) pooled f× for ``lddmm_coarse_fraction`` of the iterations, with the noise
    levels divided by f (the matching energy sums f² fewer pixels: its weight against the regulariser is
    kept), then the full rasters for the rest."""
    sigmas = (p.sigmaM if p.sigmaM is not None else float(J.std()),
              p.sigmaB if p.sigmaB is not None else float(J.std()))
    f = int(p.lddmm_coarse)
    coarse_iterations = int(round(p.num_iterations * p.lddmm_coarse_fraction)) if f > 1 else 0
    if coarse_iterations:
        I_c, xI_c = pool_raster(I, xI, f)
        J_c, xJ_c = pool_raster(J, xJ, f)
        mask_c = None if mask is None else pool_raster(mask[None], xJ, f)[0][0]
        yield I_c, xI_c, J_c, xJ_c, coarse_iterations, (sigmas[0] / f, sigmas[1] / f), mask_c
    if p.num_iterations - coarse_iterations:
        yield I, xI, J, xJ, p.num_iterations - coarse_iterations, sigmas, mask


def to_cpu(result: dict[str, Any]) -> dict[str, Any]:
    """Move every tensor (also inside lists) of a result dict to the CPU."""

    def move(value):
        if isinstance(value, torch.Tensor):
            return value.detach().cpu()
        if isinstance(value, list):
            return [move(item) for item in value]
        return value

    return {key: move(value) for key, value in result.items()}
