"""Global search of the 5-gene transform: a genetic algorithm (pygad) with batched torch fitness,
followed by a short gradient refinement of the genes on the same score."""

from __future__ import annotations

import math
import random
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pygad
import torch
import torch.nn.functional as F

from .affine import genes_to_theta, grid_centre, normalised_target_points
from .errors import GalaInputError
from .events import ProgressCallback, ProgressEvent, StopPredicate, emit, stopped
from .features import glass_split, stain_total, tissue_mask

GENE_NAMES = ("angle", "sy", "sx", "ty", "tx")


@dataclass
class GeneSpace:
    """Filled per-gene ranges and the smallest allowed |scale| (guards against singular A)."""

    low: np.ndarray
    high: np.ndarray
    scale_floor: float

    def as_dicts(self) -> list[dict]:
        return [{"low": float(lo), "high": float(hi)} for lo, hi in zip(self.low, self.high)]


def fill_gene_space(
    gene_space: list[dict] | None,
    xI: list,
    xJ: list,
    *,
    mode: str = "extent",
    source_extent: tuple[np.ndarray, np.ndarray] | None = None,
) -> GeneSpace:
    """Complete a user ``gene_space`` (5 dicts, optional ``low``/``high``) with data-derived ranges.

    ``mode="compatible"`` reproduces the published defaults (scale range ±(max ratio of axis extents
    + 0.1), shifts ±half the target extent). ``mode="extent"`` (default) expects the source in pixels
    and the target in µm: the scale range is centred on the ratio of tissue extents
    (``source_extent`` = (lo, hi) of the tissue in the source, e.g. from a tissue mask) and shifts
    cover a tissue lying anywhere in the image.
    """
    if gene_space is None:
        gene_space = [{} for _ in GENE_NAMES]
    if not isinstance(gene_space, (list, tuple)) or len(gene_space) != 5:
        raise GalaInputError(
            "gene_space must be a list of 5 dicts for [angle, sy, sx, ty, tx], "
            f"got {type(gene_space).__name__} of length {len(gene_space) if hasattr(gene_space, '__len__') else '?'}."
        )
    rI = np.array([np.ptp(np.asarray(a)) for a in xI])
    rJ = np.array([np.ptp(np.asarray(a)) for a in xJ])
    if (rI <= 0).any() or (rJ <= 0).any():
        raise GalaInputError("Each raster axis needs at least two distinct coordinates.")
    if mode == "compatible":
        ratio = np.maximum(rI / rJ, rJ / rI)
        scale_hi = ratio + 0.1
        shift_hi = rJ / 2.0
        floor = 1e-3 * float(scale_hi.max())
    elif mode == "extent":
        lo, hi = source_extent if source_extent is not None else ([a[0] for a in xI], [a[-1] for a in xI])
        tissue = np.maximum(np.asarray(hi, float) - np.asarray(lo, float), 1e-9)
        s0 = float(np.sqrt(rJ.prod() / tissue.prod()))
        scale_hi = np.array([3.0 * s0, 3.0 * s0])
        floor = 0.3 * s0
        offset = np.abs((np.asarray(lo, float) + np.asarray(hi, float)) / 2.0 - grid_centre(xI))
        shift_hi = np.full(2, 0.5 * rJ.max() + scale_hi.max() * offset.max())
    else:
        raise GalaInputError(f"Unknown gene_space mode {mode!r}; use 'extent' or 'compatible'.")
    default_low = np.array([-180.0, -scale_hi[0], -scale_hi[1], -shift_hi[0], -shift_hi[1]])
    default_high = -default_low
    low, high = default_low.copy(), default_high.copy()
    for i, (name, spec) in enumerate(zip(GENE_NAMES, gene_space)):
        if spec is None:
            spec = {}
        if not isinstance(spec, dict):
            raise GalaInputError(f"gene_space[{i}] ({name}) must be a dict with optional 'low'/'high'.")
        low[i] = float(spec.get("low", low[i]))
        high[i] = float(spec.get("high", high[i]))
        if not (np.isfinite(low[i]) and np.isfinite(high[i])):
            raise GalaInputError(f"gene_space[{i}] ({name}) has a non-finite bound.")
        if low[i] > high[i]:
            raise GalaInputError(f"gene_space[{i}] ({name}): low={low[i]} is greater than high={high[i]}.")
    for i in (1, 2):  # a user range lying entirely on one side of 0 sets its own floor
        if low[i] > 0 or high[i] < 0:
            floor = min(floor, 0.999 * min(abs(low[i]), abs(high[i])))
    if max(abs(low[1]), abs(high[1])) < floor or max(abs(low[2]), abs(high[2])) < floor:
        floor = 0.0
    return GeneSpace(low, high, float(floor))


def space_around(space: GeneSpace, genes: np.ndarray, *, angle: float = 15.0, scale: float = 1.25,
                 shift: float = 0.1) -> GeneSpace:
    """A narrow search space around known genes (e.g. from landmarks or an earlier run): the angle ± ``angle``°,
    each scale within ×/÷ ``scale`` of its value (same sign: a known flip stays), each shift ± ``shift`` of the
    default shift range."""
    g = np.asarray(genes, dtype=np.float64)
    low, high = space.low.copy(), space.high.copy()
    low[0], high[0] = g[0] - angle, g[0] + angle
    for i in (1, 2):
        a, b = sorted((g[i] / scale, g[i] * scale))
        low[i], high[i] = a, b
    for i in (3, 4):
        half = shift * max(space.high[i] - space.low[i], 1e-9) / 2.0
        low[i], high[i] = g[i] - half, g[i] + half
    floor = min(space.scale_floor, 0.999 * float(np.min(np.abs(g[1:3]))) / scale)
    return GeneSpace(low, high, floor)


FITNESS_KINDS = ("tissue", "ncc", "ncc_support", "sse")
GLASS_LEVEL, GLASS_FRACTION = 0.1, 0.1  # ≥ 10 % of the image on empty slide: it shows the tissue's outline


def shows_glass(I: np.ndarray) -> bool:
    """True when the image shows empty slide around the tissue. Only then can the tissue outline be compared with
    the cells' outline (an image filled with tissue has none).

    Where the stain's histogram has a separable empty-slide mode (:func:`~gala_engine.features.glass_split`
    ``"glass"``): at least ``GLASS_FRACTION`` of the source raster at or below its level. Otherwise the earlier
    test: ``GLASS_FRACTION`` of the raster (channels summed) below ``GLASS_LEVEL`` of its 99th percentile. (That
    test also fires on a frame filled with IHC tissue, its pale counterstain below 10 % of the dark DAB; measured on
    such crops, the "tissue" search and whole-raster finish it selects, with the frame's edge as the outline (the
    tissue mask there is the whole frame), land within 0.7-2 raster px where ``ncc_support`` drifts to 1.7-5 px, so
    it is kept there.)"""
    total = stain_total(I)
    kind, level = glass_split(total)
    if kind == "glass":
        return float((total <= level).mean()) >= GLASS_FRACTION
    summed = np.asarray(I, dtype=np.float64).sum(0)
    top = float(np.percentile(summed, 99.0))
    return top > 0 and float((summed < GLASS_LEVEL * top).mean()) >= GLASS_FRACTION


SUPPORT_LEVEL = 0.02  # target pixels above this fraction of the maximum count as the cells' support
OVERLAP_WEIGHT = 0.5  # "tissue": weight of the cells-on-tissue overlap next to the texture correlation


def score_batch(AI: torch.Tensor, J: torch.Tensor, kind: str = "ncc", weights: torch.Tensor | None = None) -> torch.Tensor:
    """Similarity of each resampled source (P, C, H, W) with the target (1, H, W) → (P,).

    All kinds but ``"sse"`` fit the target as a non-negative linear combination of the source channels plus an
    offset (weighted least squares, so any contrast/brightness is allowed) and score the multiple correlation
    ``R = √(explained fraction)``; with one channel that is the normalised cross-correlation. They differ in
    the target pixels they weigh (:func:`pixel_weights`): ``"ncc"`` every pixel equally; ``"ncc_support"``
    the cells' support only (image tissue the cells don't cover costs nothing, but a flat density inside it
    leaves the shift free). ``"tissue"`` (:class:`BatchedFitness` only) adds to the support's correlation
    ``OVERLAP_WEIGHT`` × the density-weighted mean of the image's tissue mask under the cells, divided by
    1 + ``OVERLAP_WEIGHT`` (at most 1, like the others): the cells' footprint must lie on tissue, which pins an
    evenly packed section (its footprint is the tissue's shape) and costs nothing where the image shows more
    tissue than the cells cover.
    ``"sse"``: the published ``1 / (1 + Σ (AI − J)²)`` (needs as many channels as J). ``weights`` (H·W,):
    explicit pixel weights instead of the kind's.
    """
    if kind == "sse":
        return 1.0 / (1.0 + ((AI - J) ** 2).flatten(1).sum(1))
    if kind not in FITNESS_KINDS or kind == "tissue":
        raise GalaInputError(f"score_batch takes 'ncc', 'ncc_support' or 'sse', got {kind!r}.")
    target = _FitTarget.of(J.to(AI.dtype), pixel_weights(J, kind) if weights is None else weights.to(AI.dtype))
    return _fit_score(AI.flatten(2)[:, :, target.index], target)


def pixel_weights(J: torch.Tensor, kind: str) -> torch.Tensor:
    """(H·W,) weight of each target pixel (row-major) in a fitness of ``kind`` (see :func:`score_batch`): the
    cells' support is the pixels above ``SUPPORT_LEVEL`` of the maximum (all pixels if the target is blank)."""
    total = J.sum(0).flatten()
    support = total > SUPPORT_LEVEL * total.max()
    if kind == "ncc" or int(support.sum()) < 2:
        return torch.ones_like(total)
    return support.to(total.dtype)


@dataclass
class _FitTarget:
    """The target side of the contrast-invariant fit, computed once: the scored pixels (flat indices into one
    plane), their weights (summing to 1), the weighted-centred target there and its weighted squared norm."""

    index: torch.Tensor
    w: torch.Tensor
    jc: torch.Tensor
    jj: torch.Tensor
    density: torch.Tensor  # the target's values there, summing to 1 (the overlap's weights)

    @classmethod
    def of(cls, J: torch.Tensor, weights: torch.Tensor) -> _FitTarget:
        if J.shape[0] != 1:
            raise GalaInputError(f"The target raster must have one channel for this fitness, got {J.shape[0]}.")
        index = torch.nonzero(weights > 0).flatten()
        w = weights[index] / weights[index].sum()
        j = J[0].flatten()[index]
        jc = j - (w * j).sum()
        return cls(index, w, jc, (w * jc * jc).sum(), j / j.sum().clamp_min(1e-12))


@lru_cache(maxsize=8)
def _channel_subsets(C: int) -> tuple[tuple[int, ...], ...]:
    """The non-empty subsets of C channels (the candidate active sets of a non-negative fit)."""
    return tuple(tuple(k for k in range(C) if m >> k & 1) for m in range(1, 2**C))


MAX_NNLS_CHANNELS = 4  # up to 2⁴ − 1 active sets are enumerated; more channels are fitted without the sign constraint


def _fit_score(a: torch.Tensor, t: _FitTarget) -> torch.Tensor:
    """(n, C, N) resampled source channels at the scored pixels → (n,) multiple correlation with the target
    under a non-negative fit (exact: the best fit over the active sets whose coefficients are all positive).
    No feasible set (every channel anti-correlated) → the best single channel's (negative) correlation."""
    C = a.shape[1]
    if C == 1:  # the NCC, centred first: no cancellation when a is (nearly) constant
        ac = a[:, 0] - (a[:, 0] @ t.w)[:, None]
        return (ac @ (t.w * t.jc)) / torch.sqrt((ac * ac) @ t.w * t.jj + 1e-24)
    if C == 2:  # the three distinct covariances by element-wise sums: on a CPU, less than half the time of many
        # tiny batched matrix products (forward + backward, a scan's 240 poses)
        aw = a * t.w
        m = aw.sum(-1)  # (n, C) weighted means
        var = (aw * a).sum(-1) - m * m
        cov = (aw[:, 0] * a[:, 1]).sum(-1) - m[:, 0] * m[:, 1]
        S = torch.stack([torch.stack([var[:, 0], cov], -1), torch.stack([cov, var[:, 1]], -1)], -2)  # (n, C, C)
        b = (aw * t.jc).sum(-1)  # (n, C): the target is centred, so no mean correction
    else:
        m = a @ t.w
        S = (a * t.w) @ a.transpose(1, 2) - m[:, :, None] * m[:, None, :]
        b = a @ (t.w * t.jc)
    diag = torch.diagonal(S, dim1=1, dim2=2).clamp_min(1e-12)
    single = b / torch.sqrt(diag * t.jj + 1e-24)  # each channel's NCC
    best = torch.where(single > 0, single, -1.0).max(1).values  # the one-channel active sets
    # a relative ridge (and a floor for poses that see no image at all) keeps every solve well posed in float32
    ridge = 1e-5 * diag.mean(1) + 1e-8
    subsets = [m_ for m_ in _channel_subsets(C) if len(m_) > 1] if C <= MAX_NNLS_CHANNELS else [tuple(range(C))]
    for subset in subsets:
        if len(subset) == 2:  # closed form (the usual two image channels): no batched LAPACK call
            i, j = subset
            s00, s11, s01 = S[:, i, i] + ridge, S[:, j, j] + ridge, S[:, i, j]
            det = (s00 * s11 - s01 * s01).clamp_min(1e-30)
            coef = torch.stack([s11 * b[:, i] - s01 * b[:, j], s00 * b[:, j] - s01 * b[:, i]], 1) / det[:, None]
            b_m = b[:, [i, j]]
        else:
            idx = list(subset)
            S_m = S[:, idx][:, :, idx] + ridge[:, None, None] * torch.eye(len(idx), dtype=a.dtype, device=a.device)
            b_m = b[:, idx]
            coef, info = torch.linalg.solve_ex(S_m, b_m)
            coef = torch.where((info == 0)[:, None], coef, -1.0)  # a failed solve counts as infeasible
        explained = (coef * b_m).sum(1).clamp(0.0, t.jj) / (t.jj + 1e-24)
        ok = (coef > 0).all(1) | (C > MAX_NNLS_CHANNELS)
        best = torch.maximum(best, torch.where(ok, torch.sqrt(explained + 1e-24), -1.0))
    return torch.where(best > -1.0, best, single.max(1).values)


def _chunk_elements(device: torch.device) -> int:
    """Resampled values per chunk: a CPU keeps each chunk's working set in cache; a GPU wants large batches."""
    return 1 << 26 if device.type == "cuda" else 1 << 20


MAX_SCORED_PIXELS = 1 << 16  # a fitness scores at most this many target pixels (a fixed random subset beyond)


def _at_most(weights: torch.Tensor, n: int) -> torch.Tensor:
    """``weights`` with all but a fixed random subset of ``n`` of its non-zero pixels set to 0 (unchanged when it
    has at most ``n``). A correlation over 65,536 pixels spread over the raster differs from the whole raster's by
    ~1/√65,536 of its noise: the sub-pixel levels (a million target pixels at dx/4) keep their precision at a
    fraction of the cost. Seeded: the same pixels on every run."""
    scored = torch.nonzero(weights > 0).flatten()
    if scored.numel() <= n:
        return weights
    # numpy's choice without replacement shuffles only n places (torch.randperm shuffles them all: 25 ms for the
    # million pixels of a fine level)
    pick = np.random.default_rng(0).choice(scored.numel(), n, replace=False)
    keep = scored[torch.as_tensor(pick, device=scored.device)]
    subset = torch.zeros_like(weights)
    subset[keep] = weights[keep]
    return subset


class BatchedFitness:
    """Fitness of a whole population on the rasters' device. Only the target pixels the score looks at are
    resampled (for ``"ncc_support"``, the cells' support: about half the raster): per chunk of solutions, the
    normalised 2×3 matrices straight from the genes (:func:`affine.genes_to_theta`), their sampling points
    (one fused pass), one ``grid_sample`` with the population as its batch (so torch's threads split the
    population), and the score's reductions.

    ``chunk`` (solutions per chunk; default from the device: ~2²⁰ resampled values on a CPU so the
    working set stays in cache, ~2²⁶ on CUDA) bounds memory; the score does not depend on it. ``max_pixels``:
    at most this many target pixels are scored (a fixed random subset of a larger raster, :func:`_at_most`).
    ``padding``: what the image reads beyond its frame (``grid_sample``'s mode): ``"zeros"`` (empty slide; ``"border"``
    for ``"sse"``) unless given, e.g. ``"reflection"`` (the tissue goes on) for a frame filled with tissue.
    """

    def __init__(self, I: torch.Tensor, xI: list, J: torch.Tensor, xJ: list, *, kind: str, scale_floor: float,
                 max_anisotropy: float | None = None, chunk: int | None = None,
                 centres: tuple[np.ndarray, np.ndarray] | None = None, max_pixels: int = MAX_SCORED_PIXELS,
                 padding: str | None = None):
        if kind not in FITNESS_KINDS:
            raise GalaInputError(f"Unknown fitness {kind!r}; use one of {FITNESS_KINDS}.")
        self.I, self.xI, self.J, self.xJ, self.kind = I, xI, J, xJ, kind
        # the (source, target) centres the genes are defined against: the full grids' on a pooled level
        cI, cJ = centres if centres is not None else (grid_centre(xI), grid_centre(xJ))
        self.cI = torch.as_tensor(cI, dtype=I.dtype, device=I.device)
        self.cJ = torch.as_tensor(cJ, dtype=I.dtype, device=I.device)
        self.scale_floor = scale_floor
        self.max_anisotropy = max_anisotropy or None
        self.padding = padding or ("border" if kind == "sse" else "zeros")
        if kind == "sse":
            if I.shape[0] != J.shape[0]:
                raise GalaInputError(f"fitness='sse' compares the rasters directly: it needs as many image as "
                                     f"cell channels ({I.shape[0]} vs {J.shape[0]}); use fitness='tissue'.")
            pixels = torch.arange(J.shape[1] * J.shape[2], device=J.device)
            self._target = None
            self._j = J.flatten(1)[:, pixels][None]
        else:
            weights = _at_most(pixel_weights(J, "ncc_support" if kind == "tissue" else kind), max_pixels)
            self._target = _FitTarget.of(J, weights)
            pixels = self._target.index
        if kind == "tissue":  # the image's tissue mask as an extra channel, read at the same points
            mask = torch.as_tensor(tissue_mask(I.detach().cpu().numpy()), dtype=I.dtype, device=I.device)
            self.I = torch.cat([I, mask[None]])
        self._points = normalised_target_points(xJ, pixels, dtype=I.dtype, device=I.device)  # (2, N)
        per_solution = self.I.shape[0] * pixels.numel()
        self.chunk = chunk or max(1, _chunk_elements(I.device) // per_solution)

    def _score(self, a: torch.Tensor) -> torch.Tensor:
        """(n, C, N) resampled values of one chunk → (n,) scores (the same numbers as :func:`score_batch`)."""
        if self._target is None:
            return 1.0 / (1.0 + ((a - self._j) ** 2).flatten(1).sum(1))
        if self.kind == "tissue":
            # one split (its gradient is one concatenation, not a zero-filled copy per slice)
            image, mask = a.split([a.shape[1] - 1, 1], dim=1)
            overlap = mask[:, 0] @ self._target.density  # the density-weighted share of the cells on tissue
            return (_fit_score(image, self._target) + OVERLAP_WEIGHT * overlap) / (1.0 + OVERLAP_WEIGHT)
        return _fit_score(a, self._target)

    def _resample(self, theta: torch.Tensor) -> torch.Tensor:
        """(n, 2, 3) normalised matrices → (n, C, N) source values at the scored target pixels."""
        n, C = theta.shape[0], self.I.shape[0]
        # one GEMM (K = 2) for all sampling points: (2n, 2) @ (2, N) + offsets → (n, 2, N)
        grid = torch.addmm(theta[:, :, 2].reshape(-1, 1), theta[:, :, :2].reshape(-1, 2), self._points).view(n, 2, -1)
        out = F.grid_sample(self.I[None].expand(n, -1, -1, -1), grid.transpose(1, 2)[:, :, None],
                            mode="bilinear", padding_mode=self.padding, align_corners=True)
        return out.reshape(n, C, self._points.shape[1])

    def __call__(self, genes: torch.Tensor) -> torch.Tensor:
        genes = genes.to(self.I.dtype)
        scales = genes[:, 1:3]
        size = scales.abs()
        ok = (size >= self.scale_floor).all(1)
        if self.max_anisotropy is not None:
            ratio = size[:, 0] / size[:, 1]  # inf / nan where a scale is 0: not ok either way
            ok = ok & (ratio <= self.max_anisotropy) & (ratio >= 1.0 / self.max_anisotropy)
        # invalid scales → 1 (A stays invertible; these solutions get the worst score below), without a
        # boolean-mask assignment: no host sync on a GPU
        safe = torch.cat([genes[:, :1], torch.where(ok[:, None], scales, 1.0), genes[:, 3:]], 1)
        theta = genes_to_theta(safe, self.xI, self.xJ, self.cI, self.cJ)
        score = torch.cat([self._score(self._resample(part)) for part in theta.split(self.chunk)])
        return torch.where(ok, score, 0.0 if self.kind == "sse" else -1.0)  # the worst score of each kind


@contextmanager
def _isolated_global_rng():
    """pygad seeds numpy's and Python's global generators: restore them afterwards."""
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


GA_OPERATORS = ("vectorized", "pygad")


def _vectorized_crossover(parents: np.ndarray, offspring_size: tuple, ga) -> np.ndarray:
    """pygad's single-point crossover with ``crossover_probability``, for the whole offspring at once.

    Per offspring: each parent is eligible with probability ``crossover_probability``; none eligible → a copy
    of parent ``k mod n``; one → that parent crossed with itself; more → two distinct eligible parents at
    random. Genes before a uniform split point come from the first parent. Same distribution as pygad's
    per-offspring Python loop, drawn from the GA's own seeded generator.
    """
    rng = ga.numpy_random_generator
    n_off, n_genes = offspring_size
    n_par = parents.shape[0]
    split = rng.randint(0, n_genes, size=n_off)
    prob = ga.crossover_probability
    if prob is None:
        first = np.arange(n_off) % n_par
        second = (first + 1) % n_par
    else:
        draw = rng.random_sample((n_off, n_par))
        eligible = draw < prob
        # an eligible parent's draw is uniform below prob: the two smallest are two distinct eligible parents
        # in random order (argpartition puts the smallest first, the second smallest next)
        keys = np.where(eligible, draw, 2.0)
        pick = np.argpartition(keys, 1, axis=1)[:, :2] if n_par >= 2 else np.zeros((n_off, 2), dtype=int)
        eligible_count = eligible.sum(1)
        first = np.where(eligible_count == 0, np.arange(n_off) % n_par, pick[:, 0])
        second = np.where(eligible_count >= 2, pick[:, 1], first)
    before = np.arange(n_genes)[None, :] < split[:, None]
    return np.where(before, parents[first], parents[second]).astype(np.float64)


def _vectorized_mutation(offspring: np.ndarray, ga) -> np.ndarray:
    """pygad's mutation by gene space (dict ranges): each gene with probability ``mutation_probability``
    is re-sampled uniformly in [low, high), for the whole offspring at once."""
    rng = ga.numpy_random_generator
    low = np.array([g["low"] for g in ga.gene_space], dtype=np.float64)
    high = np.array([g["high"] for g in ga.gene_space], dtype=np.float64)
    out = np.array(offspring, dtype=np.float64)
    mutate = rng.random_sample(out.shape) < ga.mutation_probability
    fresh = low + (high - low) * rng.random_sample(out.shape)
    return np.where(mutate, fresh, out)


class _PopulationGA(pygad.GA):
    """pygad's GA with the whole population's fitness as one call of the batched fitness per generation.

    pygad's own ``cal_pop_fitness`` looks every solution up in its caches and type-checks every value in
    Python (about as long as the batched fitness itself on a GA-level raster); here the elites are simply
    scored again, which gives the same values (the fitness is deterministic), and the batch is checked
    once.
    """

    def cal_pop_fitness(self) -> np.ndarray:
        values = np.asarray(self.fitness_func(self, self.population, None), dtype=np.float64)
        if values.shape != (len(self.population),) or np.isnan(values).any():
            raise ValueError(f"the batched fitness returned {values.shape} values (NaN: {np.isnan(values).any()}) "
                             f"for {len(self.population)} solutions")
        self.num_fitness_evaluations += len(values)
        return values

    def sort_solutions_nsga2(self, fitness, find_best_solution=False):
        """Best first, as pygad orders one objective (a stable ascending sort, reversed), by one numpy sort."""
        values = np.asarray(fitness)
        if values.ndim == 1 and values.dtype == np.float64:
            return np.argsort(values, kind="stable")[::-1].tolist()
        return super().sort_solutions_nsga2(fitness, find_best_solution=find_best_solution)

    def _validate_population_fitness(self, fitness, source, check_shape=True):
        """Our own batch (finite floats, checked above) needs no per-value check; anything else gets pygad's."""
        if isinstance(fitness, np.ndarray) and fitness.ndim == 1 and fitness.dtype == np.float64:
            return fitness
        return super()._validate_population_fitness(fitness, source, check_shape=check_shape)


@dataclass
class GAResult:
    genes: np.ndarray
    fitness: float
    best_history: list[float]
    mean_history: list[float]
    stopped: bool = False


def run_ga(
    fitness: BatchedFitness,
    space: GeneSpace,
    *,
    num_generations: int = 300,
    sol_per_pop: int = 100,
    num_parents_mating: int = 50,
    mutation_probability: float = 0.2,
    crossover_probability: float = 0.8,
    random_seed: int = 42,
    initial_population: np.ndarray | None = None,
    stop_criteria: str | None = None,
    patience: int | None = None,
    operators: str = "pygad",
    progress: ProgressCallback | None = None,
    should_stop: StopPredicate | None = None,
    repeat: int = 0,
) -> GAResult:
    """Run pygad over the free genes (a gene with low == high is fixed and not searched).

    ``patience``: stop once the best fitness has not improved for this many generations (``None``/0: run
    all ``num_generations``, as published). ``operators``: ``"pygad"`` (pygad as published: its own crossover
    and mutation per offspring in Python, its fitness caches) or ``"vectorized"`` (the same operators on whole
    arrays: same distributions, another random stream; the population scored in one call per generation:
    several times less overhead per generation).
    """
    if operators not in GA_OPERATORS:
        raise GalaInputError(f"Unknown GA operators {operators!r}; use one of {GA_OPERATORS}.")
    free = np.flatnonzero(space.high > space.low)
    fixed = space.low.copy()
    best = {"fitness": -np.inf, "genes": fixed.copy()}
    best_history: list[float] = []
    mean_history: list[float] = []
    state = {"stopped": False, "since": 0, "last": None}

    def full_genes(solutions: np.ndarray) -> np.ndarray:
        out = np.tile(fixed, (solutions.shape[0], 1))
        out[:, free] = solutions
        return out

    def fitness_func(_ga, solutions, _idx):
        genes = full_genes(np.atleast_2d(np.asarray(solutions, dtype=np.float64)))
        with torch.no_grad():
            values = fitness(torch.as_tensor(genes, device=fitness.I.device)).double().cpu().numpy()
        k = int(np.argmax(values))
        if values[k] > best["fitness"]:
            best["fitness"], best["genes"] = float(values[k]), genes[k].copy()
        return values

    def on_generation(ga):
        values = np.asarray(ga.last_generation_fitness, dtype=np.float64)
        best_history.append(best["fitness"])
        mean_history.append(float(values.mean()))
        emit(
            progress,
            ProgressEvent("ga", len(best_history), num_generations, best["fitness"],
                          best["genes"].copy(), repeat, {"mean": mean_history[-1]}),
        )
        if stopped(should_stop):
            state["stopped"] = True
            return "stop"
        if patience:
            last = state["last"]
            improved = last is None or best["fitness"] > last + 1e-9 * max(abs(last), 1.0)
            state["since"] = 0 if improved else state["since"] + 1
            state["last"] = best["fitness"] if improved else last
            if state["since"] >= patience:
                return "stop"
        return None

    if free.size == 0:
        fitness_func(None, np.empty((1, 0)), None)
        return GAResult(best["genes"], best["fitness"], [best["fitness"]], [best["fitness"]])
    with _isolated_global_rng():
        ga = (_PopulationGA if operators == "vectorized" else pygad.GA)(
            num_generations=int(num_generations),
            num_parents_mating=int(num_parents_mating),
            sol_per_pop=None if initial_population is not None else int(sol_per_pop),
            num_genes=int(free.size),
            gene_space=[{"low": float(space.low[i]), "high": float(space.high[i])} for i in free],
            fitness_func=fitness_func,
            fitness_batch_size=int(sol_per_pop),
            mutation_probability=float(mutation_probability),
            crossover_probability=float(crossover_probability),
            on_generation=on_generation,
            random_seed=int(random_seed),
            initial_population=None if initial_population is None else initial_population[:, free],
            stop_criteria=stop_criteria,
            suppress_warnings=True,
            **({"crossover_type": _vectorized_crossover, "mutation_type": _vectorized_mutation}
               if operators == "vectorized" else {}),
        )
        ga.run()
    return GAResult(best["genes"], best["fitness"], best_history, mean_history, state["stopped"])


def _weighted_moments(R: np.ndarray, x: list) -> tuple[np.ndarray, np.ndarray]:
    w = np.asarray(R, dtype=np.float64).sum(0)
    w = np.clip(w - np.median(w), 0.0, None)  # the background level would pull moments to the centre
    w = w / max(w.sum(), 1e-300)
    rows, cols = np.meshgrid(np.asarray(x[0], float), np.asarray(x[1], float), indexing="ij")
    pts = np.stack([rows.ravel(), cols.ravel()], 1)
    mean = w.ravel() @ pts
    d = pts - mean
    cov = (d * w.ravel()[:, None]).T @ d
    return mean, cov


def pose_grid(
    I: np.ndarray, xI: list, J: np.ndarray, xJ: list, space: GeneSpace, *, centres: tuple[np.ndarray, np.ndarray],
    step: float = 10.0,
    scales: tuple[float, ...] = (0.75, 1.0, 1.33),
    shifts: tuple[tuple[float, float], ...] = ((0.0, 0.0),),
) -> np.ndarray:
    """Starting poses every ``step``° of rotation, with and without a flip, at the scale that matches the
    rasters' second moments (times each of ``scales``) and the shift that matches their centroids →
    (P, 5) genes (clipped to the space). ``centres`` are the (source, target) centres the genes are defined against.

    ``shifts``: (row, col) offsets of the matched centroid, in standard deviations of the cells' raster along each
    axis (µm side); every turn and scale is repeated at each (the default: the centroids matched exactly). Cells
    covering only part of the imaged tissue have their centroid off the tissue's: an offset pose starts nearer."""
    mI, cI = _weighted_moments(I, xI)
    mJ, cJ = _weighted_moments(J, xJ)
    s0 = (max(np.linalg.det(cJ), 1e-300) / max(np.linalg.det(cI), 1e-300)) ** 0.25
    sdJ = np.sqrt(np.clip(np.diag(cJ), 0.0, None))
    gI, gJ = centres
    poses = []
    for shift in np.asarray(shifts, dtype=np.float64).reshape(-1, 2):
        for scale in s0 * np.asarray(scales):
            for flip in (1.0, -1.0):
                for angle in np.arange(-180.0, 180.0, step):
                    theta = np.deg2rad(angle)
                    R = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
                    L = R @ np.diag([scale, flip * scale])
                    t = (mJ + shift * sdJ - gJ) - L @ (mI - gI)
                    poses.append([angle, scale, flip * scale, t[0], t[1]])
    return np.clip(np.array(poses), space.low, space.high)


def blur_raster(R: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of a (C, H, W) raster with std ``sigma`` pixels (reflect padding), then rescale to [0, 1]."""
    if sigma <= 0:
        return R
    radius = max(int(math.ceil(3 * sigma)), 1)
    offsets = torch.arange(-radius, radius + 1, dtype=R.dtype, device=R.device)
    k = torch.exp(-0.5 * (offsets / sigma) ** 2)
    k = k / k.sum()
    out = R[:, None]
    pad_r, pad_c = min(radius, R.shape[1] - 1), min(radius, R.shape[2] - 1)
    out = F.pad(out, (0, 0, pad_r, pad_r), mode="reflect")
    out = F.conv2d(out, k[radius - pad_r : radius + pad_r + 1].view(1, 1, -1, 1))
    out = F.pad(out, (pad_c, pad_c, 0, 0), mode="reflect")
    out = F.conv2d(out, k[radius - pad_c : radius + pad_c + 1].view(1, 1, 1, -1))
    out = out[:, 0]
    return (out - out.min()) / (out.max() - out.min()).clamp_min(1e-12)


def pool_raster(R: torch.Tensor, x: list, factor: int) -> tuple[torch.Tensor, list]:
    """Average-pool a (C, H, W) raster by ``factor``; the axes move to the pooled pixel centres."""
    if factor <= 1:
        return R, x
    pooled = F.avg_pool2d(R[None], factor, ceil_mode=False)[0]
    axes = []
    for axis, n in zip(x, pooled.shape[1:]):
        a = np.asarray(axis, dtype=np.float64)[: n * factor].reshape(n, factor).mean(1)
        axes.append(a)
    return pooled, axes


def refine_genes(
    fitness: BatchedFitness,
    genes: np.ndarray,
    space: GeneSpace,
    *,
    iterations: int = 100,
    lr: float = 0.3,
    progress: ProgressCallback | None = None,
    should_stop: StopPredicate | None = None,
    repeat: int = 0,
    stage: str = "refine",
) -> tuple[np.ndarray, float | np.ndarray]:
    """Gradient ascent (Adam) of the score over the free genes, from ``genes``.

    ``genes`` (5,) → ``(genes, score)``; ``genes`` (P, 5) refines P starting poses at once (one batched
    resampling per step) → ``(genes (P, 5), scores (P,))``. Each pose keeps the best it visited.
    """
    single = np.ndim(genes) == 1
    g0 = torch.as_tensor(np.atleast_2d(np.asarray(genes, dtype=np.float64)), dtype=fitness.I.dtype,
                         device=fitness.I.device)
    span = torch.as_tensor(np.asarray(space.high - space.low, dtype=np.float64), dtype=g0.dtype, device=g0.device)
    unit = torch.stack([torch.ones_like(g0[:, 0]), 0.01 * g0[:, 1].abs(), 0.01 * g0[:, 2].abs(),
                        0.01 * span[3].clamp_min(1e-9).expand_as(g0[:, 0]),
                        0.01 * span[4].clamp_min(1e-9).expand_as(g0[:, 0])], 1)
    unit = unit * (span > 0)  # fixed genes stay fixed
    delta = torch.zeros_like(g0, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(int(iterations), 1))
    with torch.no_grad():
        best_score = fitness(g0)
    best_genes = g0.clone()
    # progress rows (best score, its genes) stay on the device and are fetched together: on a GPU one sync
    # per 10 steps instead of one per step
    flush_every = 1 if g0.device.type == "cpu" else 10
    pending: list[torch.Tensor] = []
    for it in range(int(iterations)):
        opt.zero_grad()
        g = g0 + delta * unit
        score = fitness(g)
        (-score.sum()).backward()  # poses are independent: the sum's gradient is each pose's own
        opt.step()
        schedule.step()
        with torch.no_grad():
            better = score > best_score
            best_score = torch.where(better, score, best_score)
            best_genes = torch.where(better[:, None], g, best_genes)
            if progress is not None:
                top = torch.argmax(best_score)
                pending.append(torch.cat([best_score[top, None], best_genes[top]]))
        halt = stopped(should_stop)
        if pending and (len(pending) == flush_every or halt or it + 1 == int(iterations)):
            rows = torch.stack(pending).double().cpu().numpy()
            for k, row in enumerate(rows):
                emit(progress, ProgressEvent(stage, it + 2 - len(rows) + k, int(iterations), float(row[0]),
                                             row[1:], repeat))
            pending.clear()
        if halt:
            break
    genes_out, scores_out = best_genes.detach().double().cpu().numpy(), best_score.detach().double().cpu().numpy()
    return (genes_out[0], float(scores_out[0])) if single else (genes_out, scores_out)
