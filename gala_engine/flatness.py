"""How informative a cell raster is for alignment: its contrast inside the cells' footprint, at the scale the
global search sees it, beyond what a random arrangement of the same per-cell weights gives."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import binary_erosion, gaussian_filter

from .raster import rasterize

__all__ = ["FLAT_LEVEL", "Splatter", "contrast", "footprint", "informativeness"]

FLAT_LEVEL = 0.1  # informativeness below this: "too flat to align" (bundled data: an evenly packed Visium grid
# scores 0.04 for density or a constant gene; MERFISH density 0.2; total counts 0.2–0.3; spatially patterned genes ≥ 0.3)


def _smoothing(shape: tuple[int, ...]) -> float:
    """The blur (raster pixels) at which the global search sees the raster: pooled to ≤ 64 pixels a side, then
    blurred 1.5 pooled pixels (``AlignParams.ga_max_pixels`` / ``ga_blur`` defaults)."""
    return 1.5 * max(1.0, max(shape[-2:]) / 64.0)


def footprint(density: np.ndarray) -> np.ndarray:
    """(H, W) bool: the inside of the cells' footprint — the smoothed cell-density raster above half its 95th
    percentile, eroded by the smoothing width so the footprint's own edge does not count as contrast."""
    d = gaussian_filter(np.asarray(density, np.float64).reshape(density.shape[-2:]), _smoothing(density.shape))
    inside = d > 0.5 * np.percentile(d[d > 0], 95) if np.any(d > 0) else np.zeros(d.shape, bool)
    eroded = binary_erosion(inside, iterations=max(int(np.ceil(_smoothing(density.shape))), 1))
    return eroded if eroded.sum() >= 4 else inside


def contrast(raster: np.ndarray, inside: np.ndarray) -> float:
    """Coefficient of variation (std / mean) of ``raster`` smoothed as the global search smooths it
    (:func:`_smoothing`), over the pixels ``inside`` the footprint; 0 when there is nothing there."""
    R = gaussian_filter(np.asarray(raster, np.float64).reshape(raster.shape[-2:]), _smoothing(raster.shape))
    values = R[inside]
    if values.size < 4 or values.mean() <= 0:
        return 0.0
    return float(values.std() / values.mean())


class Splatter:
    """Rasterises per-cell weights of one section on one grid (as :func:`gala_engine.raster.rasterize`) and
    scores how informative they are.

    ``yx`` cell centres (N, 2) in µm (row, col); ``dx`` the raster pixel (µm); ``blur`` the splat's blur (raster
    pixels, Gaussian std 2·blur). ``xJ`` the grid ``[rows, cols]`` (µm), ``density`` the cell-density raster,
    ``inside`` the footprint (:func:`footprint`).
    """

    N_PERMUTATIONS = 4

    def __init__(self, yx: np.ndarray, dx: float, blur: float):
        self.yx, self.dx, self.blur = np.asarray(yx, np.float64), float(dx), float(blur)
        X, Y, D = rasterize(self.yx[:, 1], self.yx[:, 0], dx=self.dx, blur=self.blur)
        self.xJ, self.density = [Y, X], D[0]
        self.inside = footprint(self.density)
        self.density_contrast = contrast(self.density, self.inside)

    def raster(self, g: np.ndarray) -> np.ndarray:
        """(H, W) raster of the weights ``g`` as given (no normalisation: linear in ``g``)."""
        g = np.asarray(g, np.float64)
        lo, span = float(g.min()), float(np.ptp(g))
        out = lo * self.density
        if span > 0:
            out = out + span * rasterize(self.yx[:, 1], self.yx[:, 0], g=g, dx=self.dx, blur=self.blur)[2][0]
        return out

    def structure(self, g: np.ndarray, raster: np.ndarray | None = None) -> float:
        """The contrast the weights' arrangement adds beyond chance: ``√(c² − c₀²)`` (signed; ≤ 0 when none),
        ``c`` the raster's contrast and ``c₀`` the mean over a few random reassignments of the same weights to
        the same cells (seeded). 0 for a constant weight; about 0 for noise or a weight that is high in scattered
        cells only; large when neighbouring cells share high or low values."""
        g = np.asarray(g, np.float64)
        if np.ptp(g) <= 0:
            return 0.0
        c = contrast(self.raster(g) if raster is None else raster, self.inside)
        rng = np.random.default_rng(0)
        c0 = np.mean([contrast(self.raster(rng.permutation(g)), self.inside) ** 2
                      for _ in range(self.N_PERMUTATIONS)])
        d = c * c - c0
        return float(np.sign(d) * np.sqrt(abs(d)))

    def informativeness(self, g: np.ndarray | None, raster: np.ndarray | None = None) -> float:
        """How informative the weights' raster is for alignment: ``√(s₊² + d²)``, ``s₊`` the weights' own
        :meth:`structure` (clipped at 0) and ``d`` the cell-density raster's contrast (what any signal inherits
        from where the cells are). A constant signal or noise on evenly packed spots scores about 0 — below
        :data:`FLAT_LEVEL` it is "too flat to align" (only the outline can place it)."""
        s = 0.0 if g is None else max(self.structure(g, raster), 0.0)
        return float(np.hypot(s, self.density_contrast))


def informativeness(yx: np.ndarray, g: np.ndarray | None, *, dx: float, blur: float = 1.0) -> float:
    """:meth:`Splatter.informativeness` of per-cell weights ``g`` (None: cell density) at cells ``yx`` (µm,
    (row, col)) rasterised at pixel ``dx`` (µm) with ``blur``."""
    return Splatter(yx, dx, blur).informativeness(g)
