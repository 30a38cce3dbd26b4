"""How to turn several target channels into what the fitness scores — measured on real bundled data.

Case: one informative channel (the best-ranked gene of the dataset) and one flat channel (a constant "gene",
whose raster is just the cell density) — or a noise channel (Poisson counts at random). For each way of
matching several target channels to the image feature, the fitness landscape around the TRUE pose (known for
the bundled sets) is scanned: shifts on a grid of ±3 spot pitches / cell spacings and rotations ±10°. Reported:
the distance (µm) from the truth to the best-scoring pose of the grid, and the margin = score at the truth
minus the best score at least one pitch away (> 0: the truth wins; larger: a sharper, safer optimum).

Ways compared:
- ``informative`` — the informative channel alone (the reference);
- ``weighted`` — channels scaled to max 1 and summed with weights ∝ their structure (``Splatter.structure``);
- ``equal`` — channels scaled to max 1 and summed with equal weights (``signals.combine_channels``: the engine);
- ``mean-R`` — each channel scored on its own by the fitness, the scores averaged.

Also, for ``pca:1`` and ``pca:3``: each component split into its positive and negative parts as two channels (the
engine) against each component's sign fixed by its correlation with log total counts, shifted to start at 0.

With ``--align``: full default alignments (affine only) of the bundled sets from their true positions with
``total counts``, ``pca`` and ``pca:1``, and the median error against the truth (pixels; several minutes).

Measured (2-core CPU, main at 9647761 + this branch):

- channels, one flat: MERFISH (fitness 'tissue') margin of the true pose: informative gene alone 0.037,
  structure-weighted 0.037 (the flat channel gets weight 0), equal mix 0.140 (CONST) / 0.113 (NOISE), mean of
  per-channel R 0.100 / 0.084 — the flat channel still carries the outline, so the engine mixes equally.
  Visium DG ('ncc_support'): no way lets the truth win (the top-structure gene Prkcd does not show in the H&E).
- pca sign: margin signed → +/- split: Visium pca:1 −0.096 → +0.019, pca:3 −0.294 → −0.160; MERFISH pca:1
  +0.057 → +0.134, pca:3 +0.117 → +0.172 (PC1 vs log totals r = 0.035 on Visium: the sign was a coin toss).
- --align (median error, px): Visium DG ('inverted') total counts 1.41, pca 71.0, pca:1 14.9 (signed: 99.5 / 113.2);
  MERFISH total counts 3.12, pca 3.35, pca:1 3.50 (signed: 3.25 / 41.4).

Run: ``OMP_NUM_THREADS=1 .venv/bin/python bench/signals.py [--align] [dataset ...]`` (the landscapes take about a
minute on a 2-core CPU).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import anndata as ad  # noqa: E402
from scipy import sparse  # noqa: E402

from gala_engine.affine import matrix_to_genes  # noqa: E402
from gala_engine.demo import load_demo  # noqa: E402
from gala_engine.features import normalize  # noqa: E402
from gala_engine.flatness import Splatter  # noqa: E402
from gala_engine.io import read_image, spatial_yx  # noqa: E402
from gala_engine.raster import cell_spacing  # noqa: E402
from gala_engine.search import BatchedFitness, shows_glass  # noqa: E402
from gala_engine.section import prepare_section  # noqa: E402
from gala_engine.signals import combine_channels, pca_scores, rank_signals, signal_channels  # noqa: E402


def true_A(M: np.ndarray) -> np.ndarray:
    """µm → px (x, y) 2×3 truth → the engine's A: image px (row, col) → µm (row, col), 3×3."""
    P = np.array([[0.0, 1.0], [1.0, 0.0]])
    L, t = M[:, :2], M[:, 2]
    Linv = np.linalg.inv(L)
    A = np.eye(3)
    A[:2, :2] = P @ Linv @ P
    A[:2, 2] = -P @ Linv @ t
    return A


def with_extra_genes(adata, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = sparse.hstack([sparse.csr_matrix(adata.X), sparse.csr_matrix(np.full((adata.n_obs, 1), 3.0)),
                       sparse.csr_matrix(rng.poisson(3, (adata.n_obs, 1)).astype(float))]).tocsr()
    out = ad.AnnData(X=X, obsm={"spatial": np.asarray(adata.obsm["spatial"])})
    out.var_names = [str(v) for v in adata.var_names] + ["CONST", "NOISE"]
    return out


def landscape(name: str) -> None:
    demo = load_demo(name)
    adata = with_extra_genes(demo.adata)
    image = read_image(demo.image_path)
    best_gene = next(s.signal for s in rank_signals(adata) if s.signal in adata.var_names)
    r = prepare_section(adata, image, signal="cell density", fine_levels=0)
    yx = spatial_yx(adata)
    blur = max(1.0, 0.5 * cell_spacing(yx) / (2.0 * r.dx))
    sp = Splatter(yx, r.dx, blur)
    kind = "tissue" if shows_glass(r.I) else "ncc_support"
    I_t = torch.as_tensor(np.stack([normalize(c) for c in r.I]), dtype=torch.float64)
    A = true_A(demo.um_to_px)
    g0 = matrix_to_genes(A, r.xI, r.xJ)
    pitch = cell_spacing(yx)
    steps = np.linspace(-3, 3, 13) * pitch
    genes = np.array([[g0[0] + da, g0[1], g0[2], g0[3] + sy, g0[4] + sx]
                      for da in (-10.0, 0.0, 10.0) for sy in steps for sx in steps])
    dist = np.hypot(genes[:, 3] - g0[3], genes[:, 4] - g0[4]) + 1e9 * (genes[:, 0] != g0[0]) * 0
    far = (dist >= pitch) | (genes[:, 0] != g0[0])
    truth = int(np.flatnonzero((dist == 0) & (genes[:, 0] == g0[0]))[0])

    def scores(J: np.ndarray) -> np.ndarray:
        J_t = torch.as_tensor(normalize(np.asarray(J, np.float64)), dtype=torch.float64)
        fit = BatchedFitness(I_t, r.xI, J_t, r.xJ, kind=kind, scale_floor=0.0)
        with torch.no_grad():
            return fit(torch.as_tensor(genes)).numpy()

    print(f"\n== {name}: fitness '{kind}', pitch {pitch:.1f} µm, informative gene {best_gene!r}")
    print(f"{'flat channel':>12} {'way':>12} {'best-pose error µm':>19} {'margin':>8} {'R at truth':>10}")
    for flat in ("CONST", "NOISE"):
        weights, names = signal_channels(adata, f"{best_gene},{flat}")
        ch = combine_channels(sp, weights, names)
        chans = [c / c.max() for c in ch.channels]
        mix = np.clip(ch.structure, 0.0, None)
        mix = mix / mix.sum() if mix.sum() > 0 else np.full(len(mix), 0.5)
        ways = {
            "informative": scores(chans[0][None]),
            "weighted": scores(mix[0] * chans[0][None] + mix[1] * chans[1][None]),
            "equal": scores(ch.raster),
            "mean-R": (scores(chans[0][None]) + scores(chans[1][None])) / 2.0,
        }
        for way, s in ways.items():
            k = int(np.argmax(s))
            err = float(np.hypot(genes[k, 3] - g0[3], genes[k, 4] - g0[4])) + (999.0 if genes[k, 0] != g0[0] else 0)
            print(f"{flat:>12} {way:>12} {err:>19.1f} {s[truth] - s[far].max():>8.3f} {s[truth]:>10.3f}"
                  + (f"   (weights {np.round(mix, 3).tolist()})" if way == "weighted" else ""))
    adata = demo.adata  # the PCA of the data as they are (without the two extra genes)
    pcs = pca_scores(adata, 3)  # signed so that each correlates positively with log total counts
    tot = np.log1p(np.asarray(adata.X.sum(1)).ravel())
    print("PC correlation with log total counts: " + ", ".join(
        f"PC{j + 1} {np.corrcoef(pcs[:, j], tot)[0, 1]:.3f}" for j in range(3)))
    for k in (1, 3):
        signed = []
        for j in range(k):  # the alternative: sign fixed by the totals, clipped to 1-99 %, shifted to start at 0
            lo, hi = np.percentile(pcs[:, j], [1, 99])
            c = sp.raster(np.clip(pcs[:, j], lo, hi) - lo)
            signed.append(c / c.max())
        weights, names = signal_channels(adata, f"pca:{k}")  # the engine: + and - parts as channels
        for way, J in (("signed", sum(signed)[None] / k), ("+/- split", combine_channels(sp, weights, names).raster)):
            s = scores(J)
            print(f"pca:{k} {way:>10}: R at truth {s[truth]:.3f}, margin {s[truth] - s[far].max():+.3f}")


def align_errors(name: str, signals: tuple[str, ...] = ("total counts", "pca", "pca:1")) -> None:
    from gala_engine import AlignParams
    from gala_engine.demo import truth_px_xy
    from gala_engine.section import align_section, median_error_px

    demo = load_demo(name)
    image = read_image(demo.image_path)
    feature = "inverted" if name == "visium_dg" else "auto"  # as tests/engine/test_real_data.py
    for signal in signals:
        r = prepare_section(demo.adata, image, signal=signal, feature=feature)
        res = align_section(r, AlignParams(num_iterations=0))
        xy = res.cells_to_image(np.asarray(demo.adata.obsm["spatial"]), deformed=False)
        print(f"{name} {signal!r}: median error {median_error_px(xy, truth_px_xy(demo)):.2f} px, fitness "
              f"{res.fitness:.3f}, informativeness {r.informativeness:.3f}", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(1)
    names = [a for a in sys.argv[1:] if not a.startswith("--")] or ["visium_dg", "merfish_mini"]
    for dataset in names:
        align_errors(dataset) if "--align" in sys.argv else landscape(dataset)
