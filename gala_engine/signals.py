"""Target signals: what each cell contributes to the cell raster, and how informative that raster is.

A signal is a string (the same in the app, the CLI, batch manifests and ``uns['gala']``):

- ``"total counts"`` / ``"cell density"`` — one channel (see :func:`gala_engine.io.cell_signal`);
- a gene, ``"Slc17a7"`` — its ``X`` column;
- several genes, ``"EPCAM,KRT8"`` — one channel per gene;
- ``"pca"`` / ``"pca:k"`` — the top ``k`` (default :data:`DEFAULT_PCS`) principal components of normalised,
  log-transformed expression (scanpy: ``normalize_total`` → ``log1p`` → ``pca``), two channels each (below).

Several channels become ONE target raster (the fitness fits a non-negative mix of the image's channels to one
target, and LDDMM, the warp's validation and the quality checks all compare one target): each channel is
rasterised, scaled to a maximum of 1, and the channels are summed with equal weights
(:func:`combine_channels`; ``bench/signals.py`` measures this against weighting by structure and against
averaging per-channel fitness scores, on real data with one informative and one flat or noise channel).

Principal components are signed, and their sign is arbitrary; a raster weight must be ≥ 0. Each component is
split into two channels, its positive part ``PCk+`` and its negative part ``PCk−`` (each clipped at its 99th
percentile), so neither side is dropped and no sign has to be guessed. Measured on the bundled sets
(``bench/signals.py``), the split gave the true pose a larger margin over wrong poses than fixing each
component's sign by its correlation with the cells' total counts and shifting it to start at 0, in all four
cases (pca:1 and pca:3 on MERFISH and on Visium): on Visium PC1 hardly correlates with the totals
(r = 0.03), so that sign was a coin toss.
"""

from __future__ import annotations

import difflib
import re
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import sparse

from . import constants
from .errors import GalaInputError
from .flatness import FLAT_LEVEL, Splatter

__all__ = [
    "DEFAULT_PCS",
    "FLAT_LEVEL",
    "SignalScore",
    "SignalSpec",
    "candidate_signals",
    "ChannelRasters",
    "combine_channels",
    "flat_warning",
    "parse_signal",
    "pca_scores",
    "rank_signals",
    "signal_channels",
    "signal_warning",
]

DEFAULT_PCS = 3  # "pca" = "pca:3"
MAX_PCS = 20
_PCA = re.compile(r"pca(?::(\d+))?", re.IGNORECASE)


@dataclass(frozen=True)
class SignalSpec:
    """A parsed signal: ``kind`` is ``"total"``, ``"density"``, ``"genes"`` (``genes`` the names) or ``"pca"``
    (``n_pcs`` components)."""

    kind: str
    genes: tuple[str, ...] = ()
    n_pcs: int = 0

    @property
    def n_channels(self) -> int:
        """Channels of the target: one per gene, two per principal component (its + and − parts), else one."""
        return len(self.genes) if self.kind == "genes" else (2 * self.n_pcs if self.kind == "pca" else 1)


def parse_signal(signal: str, var_names: Any = None) -> SignalSpec:
    """Parse a signal string (see the module docstring); syntax only, genes are checked by :func:`signal_channels`.

    A name found in ``var_names`` (when given) is always that one gene, so a gene called ``"pca"`` or one
    with a comma in its name stays usable.

    Raises
    ------
    GalaInputError
        An empty signal, an empty gene in a list, a gene listed twice, or ``pca:k`` with k outside 1–20.
    """
    text = str(signal).strip()
    if not text:
        raise GalaInputError(f"The signal is empty; use '{constants.SIGNAL_TOTAL_COUNTS}', "
                             f"'{constants.SIGNAL_DENSITY}', a gene, genes joined by ',' or 'pca[:k]'.")
    if text == constants.SIGNAL_TOTAL_COUNTS:
        return SignalSpec("total")
    if text == constants.SIGNAL_DENSITY:
        return SignalSpec("density")
    if var_names is not None and text in var_names:
        return SignalSpec("genes", (text,))
    if m := _PCA.fullmatch(text):
        k = int(m.group(1)) if m.group(1) else DEFAULT_PCS
        if not 1 <= k <= MAX_PCS:
            raise GalaInputError(f"'{text}': the number of principal components must be 1–{MAX_PCS}, e.g. 'pca:3'.")
        return SignalSpec("pca", n_pcs=k)
    genes = tuple(g.strip() for g in text.split(","))
    if any(not g for g in genes):
        raise GalaInputError(f"'{text}' has an empty gene name; list genes as 'EPCAM,KRT8'.")
    twice = sorted({g for g in genes if genes.count(g) > 1})
    if twice:
        raise GalaInputError(f"'{text}' lists {twice} more than once; give each gene once.")
    return SignalSpec("genes", genes)


def _check_genes(adata: Any, genes: tuple[str, ...]) -> None:
    """All of ``genes`` in ``var_names``, else one error naming every missing gene and its close matches."""
    names = adata.var_names
    missing = [g for g in genes if g not in names]
    if not missing:
        return
    pool = [str(g) for g in names]
    lower = {g.lower(): g for g in pool}
    parts = []
    for gene in missing:
        close = difflib.get_close_matches(gene, pool, n=5, cutoff=0.6)
        if gene.lower() in lower and lower[gene.lower()] not in close:
            close.insert(0, lower[gene.lower()])
        parts.append(f"'{gene}' (close matches: {close})" if close else f"'{gene}' (no close match)")
    raise GalaInputError(
        f"{len(missing)} of {len(genes)} genes not in var_names ({len(pool)} genes): {', '.join(parts)}; "
        f"or use '{constants.SIGNAL_TOTAL_COUNTS}', '{constants.SIGNAL_DENSITY}' or 'pca'."
    )


def pca_scores(adata: Any, n_pcs: int = DEFAULT_PCS) -> np.ndarray:
    """Per-cell scores (N, ``n_pcs``) on the top principal components of normalised, log-transformed expression.

    ``X`` with raw counts (≥ 0) is normalised to the median total (``sc.pp.normalize_total``), log1p-transformed
    and reduced by ``sc.pp.pca`` (seeded: the same on every run); an ``X`` with negative values is taken as
    already normalised and scaled, and goes to the PCA as it is. Each component's sign is fixed so that it
    correlates positively with log1p of the cells' total counts (when they vary), else so that its score of
    largest magnitude is positive.

    Raises
    ------
    GalaInputError
        No ``X``, fewer than two genes or three cells, more components than the data have, or NaN/inf in ``X``.
    """
    import anndata as ad

    X = adata.X
    if X is None or adata.n_vars < 2 or adata.n_obs < 3:
        raise GalaInputError("'pca' needs expression in adata.X (at least 3 cells × 2 genes); use "
                             f"'{constants.SIGNAL_DENSITY}' instead.")
    k_max = min(adata.n_obs, adata.n_vars) - 1
    if n_pcs > k_max:
        raise GalaInputError(f"'pca:{n_pcs}' asks for more components than {adata.n_obs} cells × {adata.n_vars} "
                             f"genes allow; use pca:{k_max} or fewer.")
    X = sparse.csr_matrix(X, dtype=np.float32) if sparse.issparse(X) else np.array(X, dtype=np.float32)
    values = X.data if sparse.issparse(X) else X
    if not np.isfinite(values).all():
        raise GalaInputError("adata.X has NaN or inf values, so 'pca' cannot be computed; fix X first.")
    import scanpy as sc

    work = ad.AnnData(X=X)
    counts = values.size == 0 or float(values.min()) >= 0
    totals = np.asarray(X.sum(axis=1), dtype=np.float64).ravel()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "some cells have zero counts": they stay at 0
        if counts:
            sc.pp.normalize_total(work)
            sc.pp.log1p(work)
        sc.pp.pca(work, n_comps=int(n_pcs), random_state=0)
    scores = np.asarray(work.obsm["X_pca"][:, :n_pcs], dtype=np.float64)
    ref = np.log1p(np.clip(totals, 0.0, None)) if counts else totals
    for j in range(scores.shape[1]):
        col = scores[:, j]
        r = np.corrcoef(col, ref)[0, 1] if np.ptp(ref) > 0 and np.ptp(col) > 0 else 0.0
        sign = np.sign(r) if np.isfinite(r) and r != 0 else np.sign(col[np.argmax(np.abs(col))]) or 1.0
        scores[:, j] = sign * col
    return scores


def _split_signs(scores: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """(N, k) signed scores → (N, 2k) raster weights ≥ 0: per component its positive part and its negative part
    (as a magnitude), each clipped at its 99th percentile so a few extreme cells do not flatten the rest."""
    cols, names = [], []
    for j in range(scores.shape[1]):
        for sign, tag in ((1.0, "+"), (-1.0, "−")):
            part = np.clip(sign * scores[:, j], 0.0, None)
            top = np.percentile(part[part > 0], 99.0) if np.any(part > 0) else 0.0
            cols.append(np.minimum(part, top))
            names.append(f"PC{j + 1}{tag}")
    return np.stack(cols, 1), names


def signal_channels(adata: Any, signal: str = constants.SIGNAL_TOTAL_COUNTS) -> tuple[np.ndarray, list[str]]:
    """Per-cell raster weights (N, K) ≥ 0 for the ``K`` channels of ``signal``, and the channels' names.

    Raises
    ------
    GalaInputError
        A malformed signal, unknown genes (every one named, with close matches), or data the signal cannot use
        (see :func:`gala_engine.io.cell_signal` and :func:`pca_scores`).
    """
    from .io import cell_signal

    spec = parse_signal(signal, adata.var_names)
    if spec.kind == "pca":
        return _split_signs(pca_scores(adata, spec.n_pcs))
    if spec.kind != "genes":
        return cell_signal(adata, str(signal).strip())[:, None], [str(signal).strip()]
    _check_genes(adata, spec.genes)
    return np.stack([cell_signal(adata, g) for g in spec.genes], 1), list(spec.genes)


@dataclass
class ChannelRasters:
    """A signal's channels on one grid: per-channel rasters (K, H, W) (each weight scaled to [0, 1] as
    :func:`gala_engine.raster.rasterize` does), their structure scores, the combining weights and the combined
    (1, H, W) target raster, and its informativeness."""

    names: list[str]
    channels: np.ndarray
    structure: np.ndarray
    weights: np.ndarray
    raster: np.ndarray
    score: float


def combine_channels(sp: Splatter, weights: np.ndarray, names: list[str],
                     mix: np.ndarray | None = None) -> ChannelRasters:
    """Rasterise the (N, K) per-cell ``weights`` on ``sp``'s grid and combine them into one target raster.

    Each channel is min–max scaled per cell (as ``rasterize`` does) and rasterised; the target is
    ``Σ_k a_k · channel_k / max(channel_k)`` with equal ``a_k = 1/K`` — measured better than weighting the
    channels by their structure (``bench/signals.py``: a flat or noise channel still carries the cells'
    outline, which the fitness uses; dropping it lowered the margin of the true pose on MERFISH from 0.14 to
    0.04). ``mix``: other ``a_k`` (e.g. the coarse level's, so finer levels show the same combination). Each
    channel's :meth:`Splatter.structure` is kept for display, and the target's informativeness (both NaN when
    ``mix`` is given).
    """
    W = np.asarray(weights, np.float64).reshape(len(weights), -1)
    K = W.shape[1]
    lo, span = W.min(0), np.ptp(W, axis=0)
    Wn = np.where(span > 0, (W - lo) / np.where(span > 0, span, 1.0), 1.0)
    chans = np.stack([sp.raster(Wn[:, k]) for k in range(K)])
    if mix is None:
        structure = np.array([sp.structure(Wn[:, k], chans[k]) for k in range(K)])
        a = np.full(K, 1.0 / K)
    else:
        structure = np.full(K, np.nan)
        a = np.asarray(mix, np.float64) / max(float(np.sum(mix)), 1e-300)
    peak = chans.reshape(K, -1).max(1)
    coef = a / np.where(peak > 0, peak, 1.0)
    J = np.tensordot(coef, chans, axes=1)
    # the target is linear in each cell's combined weight; a given mix (finer levels) is not scored again
    score = sp.informativeness(Wn @ coef, J) if mix is None else float("nan")
    return ChannelRasters(list(names), chans, structure, a, J[None], score)


# ------------------------------------------------------------------------------------------- candidates


def candidate_signals(adata: Any, *, n_genes: int = 5) -> list[str]:
    """Signals worth comparing for ``adata``: total counts (raw counts in X), cell density, ``pca`` and the
    ``n_genes`` genes with the most variable log-normalised expression among those in ≥ 10 % of cells."""
    out = [constants.SIGNAL_DENSITY]
    X = adata.X
    if X is None or adata.n_vars == 0:
        return out
    Xc = sparse.csr_matrix(X, dtype=np.float64) if sparse.issparse(X) else np.asarray(X, dtype=np.float64)
    vals = Xc.data if sparse.issparse(Xc) else Xc
    if vals.size == 0 or not np.isfinite(vals).all():
        return out
    if float(vals.min()) >= 0:
        out.insert(0, constants.SIGNAL_TOTAL_COUNTS)
        totals = np.asarray(Xc.sum(axis=1)).ravel()
        scale = np.median(totals[totals > 0]) / np.where(totals > 0, totals, 1.0) if np.any(totals > 0) else 1.0
        Xn = (sparse.diags(scale) @ Xc).log1p() if sparse.issparse(Xc) else np.log1p(Xc * np.asarray(scale)[:, None])
    else:
        Xn = Xc
    if min(adata.n_obs, adata.n_vars) > 3:
        out.append("pca")
    mean = np.asarray(Xn.mean(axis=0)).ravel()
    sq = Xn.multiply(Xn).mean(axis=0) if sparse.issparse(Xn) else (Xn * Xn).mean(axis=0)
    var = np.asarray(sq).ravel() - mean**2
    present = np.asarray((Xc != 0).sum(axis=0)).ravel() >= 0.1 * adata.n_obs
    order = [int(i) for i in np.argsort(-np.where(present, var, -np.inf), kind="stable") if present[i]]
    names = [str(n) for n in adata.var_names]
    out += [names[i] for i in order[:n_genes] if names[i] not in out]
    return out


@dataclass
class SignalScore:
    """One candidate signal: its combined raster (1, H, W) on the µm grid ``xJ`` and its informativeness."""

    signal: str
    raster: np.ndarray
    xJ: list[np.ndarray]
    score: float
    channels: list[str]

    @property
    def flat(self) -> bool:
        return self.score < FLAT_LEVEL


def rank_signals(adata: Any, signals: list[str] | None = None, *, dx: float | None = None,
                 blur: float | None = None) -> list[SignalScore]:
    """Rasterise each signal (default: :func:`candidate_signals`) as the alignment would, score it
    (:meth:`Splatter.informativeness`) and return them best first. A signal the data cannot give is left out."""
    from .io import spatial_yx
    from .raster import cell_spacing, choose_dx, spacing_blur

    yx = spatial_yx(adata)
    dx = choose_dx(yx[:, 1], yx[:, 0]) if dx is None else float(dx)
    blur = spacing_blur(cell_spacing(yx), dx) if blur is None else float(blur)
    sp = Splatter(yx, dx, blur)
    out = []
    for signal in dict.fromkeys(signals if signals is not None else candidate_signals(adata)):
        try:
            weights, names = signal_channels(adata, signal)
        except GalaInputError:
            continue
        if signal == constants.SIGNAL_DENSITY:
            out.append(SignalScore(signal, sp.density[None], sp.xJ, sp.density_contrast, names))
            continue
        ch = combine_channels(sp, weights, names)
        out.append(SignalScore(str(signal), ch.raster, sp.xJ, ch.score, names))
    return sorted(out, key=lambda s: -s.score)


def flat_warning(signal: str, score: float, ranked: list[SignalScore] | None = None) -> str | None:
    """A "too flat to align" warning for ``signal`` scoring ``score`` (None when it is informative enough).

    Suggests, from ``ranked``, the best non-flat signal that pools many genes (total counts, pca), and names the
    most structured single genes as well: a gene's pattern scores high but need not show in the stain (on the
    bundled Visium section the top-scoring gene does not place the spots, total counts does: ``bench/signals.py``),
    while many genes together track how many cells there are, which the stain shows.
    """
    if score >= FLAT_LEVEL:
        return None
    msg = (f"The signal '{signal}' is too flat to align (informativeness {score:.3f} < {FLAT_LEVEL}): its cell "
           "raster hardly varies inside the tissue, so only the outline can place the cells.")
    better = [s for s in ranked or [] if s.signal != signal and not s.flat]
    pooled = [s for s in better if s.signal == constants.SIGNAL_TOTAL_COUNTS or _PCA.fullmatch(s.signal)]
    genes = [s for s in better if s not in pooled and s.signal != constants.SIGNAL_DENSITY]
    if pooled:
        msg += f" Try the signal '{pooled[0].signal}' (informativeness {pooled[0].score:.3f})"
        if genes:
            msg += "; or a gene with a pattern: " + ", ".join(f"'{g.signal}' ({g.score:.2f})" for g in genes[:3])
        msg += "."
    elif better:
        msg += f" Try the signal '{better[0].signal}' (informativeness {better[0].score:.3f})."
    return msg


def signal_warning(adata: Any, rasters: Any) -> str | None:
    """:func:`flat_warning` for prepared :class:`~gala_engine.section.SectionRasters` (``signal``,
    ``informativeness``, ``dx``); the candidates are ranked only when the signal is too flat."""
    score = float(rasters.informativeness)
    if not score < FLAT_LEVEL:
        return None
    return flat_warning(rasters.signal, score, rank_signals(adata, dx=rasters.dx))
