"""``AlignParams``: the one source of truth for alignment parameters (defaults, help, validation)."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import GalaInputError


def _p(default: Any, help: str, group: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, "group": group, **extra})


@dataclass
class AlignParams:
    """Parameters of :func:`gala_engine.gala`, with the published tutorial's names.

    Defaults are tuned for interactive use; :meth:`tutorial` gives the published settings.
    """

    # genetic algorithm (global search)
    num_generations: int = _p(150, "GA generations per restart.", "ga", min=1)
    sol_per_pop: int = _p(100, "GA population size (solutions per generation).", "ga", min=4)
    num_parents_mating: int = _p(50, "Parents selected for mating each generation.", "ga", min=2)
    mutation_probability: float = _p(0.2, "Probability that a gene mutates (re-sampled in its range).", "ga", min=0.0, max=1.0)
    crossover_probability: float = _p(0.8, "Probability that two parents cross over.", "ga", min=0.0, max=1.0)
    fitness: str = _p("auto", "How well a pose fits: the cells' raster is fitted as a non-negative mix of the image channels plus an offset (any contrast) and scored by the correlation R. 'ncc': over the whole cell raster (texture and tissue outline: an evenly packed section still has one best pose); 'tissue': where the cells are, plus how much of the cells lie on the image's tissue (for an image filled with tissue beyond the cells, e.g. a crop); 'auto': where the image shows empty slide, search with 'tissue', then, if the pose found puts nearly all of the image's tissue under the cells, finish on the whole raster ('ncc'); where tissue fills the image (no tissue outline to use), 'ncc_support'; 'ncc_support': only where the cells are (a flat density leaves the shift free); 'sse': the published 1/(1+SSE).", "ga", choices=("auto", "tissue", "ncc", "ncc_support", "sse"))
    ga_restarts: int = _p(3, "Independent GA runs with seeds seed, seed+1, …; the best is kept.", "ga", min=1)
    ga_max_pixels: int = _p(64, "The GA works on rasters pooled to at most this many pixels a side.", "ga", min=8)
    max_anisotropy: float | None = _p(1.5, "Largest allowed ratio |sy|/|sx| (None = any, as published).", "ga", min=1.0)
    ga_blur: float = _p(1.5, "Gaussian blur (pooled pixels) of both rasters during the GA: widens the basin of the true pose.", "ga", min=0.0)
    refine_iterations: int = _p(300, "Gradient steps refining the GA's best transform (0 = off).", "ga", min=0)
    gene_space_mode: str = _p("extent", "Default ranges: 'extent' (from the tissue's size, pixels vs µm) or 'compatible' (published).", "ga", choices=("extent", "compatible"))
    seed_population: bool = _p(True, "Before the GA, refine moment-matched poses every 10° (with and without flip) by gradient ascent; the best seed the GA population and compete with its result.", "ga")
    scan_iterations: int = _p(40, "Gradient steps per level for the pose scan (seed_population).", "ga", min=1)
    stop_criteria: str | None = _p(None, "pygad stop criteria, e.g. 'saturate_50' (None = run all generations).", "ga")
    ga_patience: int = _p(100, "Early stop: end a GA run once its best fitness has not improved for this many generations (0 = off: all generations run, as published). With the tutorial's 1000 generations the GA typically settles within a few hundred (bench/README.md).", "ga", min=0)
    ga_operators: str = _p("vectorized", "How pygad runs each generation: 'vectorized' (steady-state selection, single-point crossover and gene-space mutation on whole arrays — the same distributions, another random stream — and the whole population scored in one call: several times less GA overhead per generation) or 'pygad' (pygad's own per-offspring loops and per-solution fitness bookkeeping, as published).", "ga", choices=("vectorized", "pygad"))
    # LDDMM (local deformation)
    num_iterations: int = _p(200, "LDDMM gradient iterations (0 = affine only).", "lddmm", min=0)
    a: float | None = _p(None, "Smoothness scale of the deformation, in image pixels (None = 1/8 of the image extent).", "lddmm", gt=0.0)
    epV: float | None = _p(None, "LDDMM step size (halved automatically whenever a step raises the energy). None = 10 for a source pixel of 2 image pixels, scaled with the source pixel's area: the same physical step whatever the image's resolution (the warp's velocity is in image pixels, so a fixed step moves a 2× finer image 4× less); a number is used as given (published).", "lddmm", gt=0.0)
    sigmaR: float = _p(5e4, "Regularisation: larger allows larger deformations.", "lddmm", gt=0.0)
    sigmaM: float | None = _p(None, "Noise level of matched pixels (None = the target raster's std).", "lddmm", gt=0.0)
    sigmaB: float | None = _p(None, "Noise level of background pixels (None = the target raster's std).", "lddmm", gt=0.0)
    muB: float | None = _p(None, "Background intensity of the target (None = estimated).", "lddmm")
    nt: int = _p(3, "Time steps integrating the velocity field.", "lddmm", min=1)
    contrast: bool = _p(True, "Fit a linear contrast between the rasters at each LDDMM step.", "lddmm")
    lddmm_patience: int = _p(100, "Early stop: end LDDMM once the energy fell by less than lddmm_tol (relative) over this many iterations (0 = off: all iterations run, as published). On the seed-sized benchmark with the tutorial's 2000 iterations, stopping at the plateau was 10× faster and closer to the true warp (1.3 vs 2.3 px): the last iterations only fit noise.", "lddmm", min=0)
    lddmm_coarse: int = _p(1, "Coarse-to-fine LDDMM: run the first lddmm_coarse_fraction of the iterations on rasters pooled by this factor (matching noise scaled so the data term keeps its weight), then the rest at full resolution on the same velocity grid (1 = off, as published).", "lddmm", min=1)
    lddmm_coarse_fraction: float = _p(0.75, "Share of the LDDMM iterations run at the coarse level (only with lddmm_coarse > 1).", "lddmm", min=0.0, max=1.0)
    lddmm_validate: bool = _p(True, "Keep the warp only if the data support it: LDDMM runs twice with half the iterations each, each time on one half of the cells' raster (a checkerboard of 8-pixel squares), keeping the field the other half scores best (checked every 10 iterations), and each warp must improve the image–cells correlation on the half it never saw (over the cells' support widened by 3 pixels: the tissue outline counts); then the two are averaged (a warp that only the outline supports, the density inside being flat, is first refitted 1.5× smoother so that the interior follows the outline), otherwise the result stays affine (a warp that only fits noise makes cells land worse). Off: one LDDMM run on all pixels, as published.", "lddmm")
    nuclei_fit: bool = _p(True, "After LDDMM (section pipeline: CLI, app, batch), refine the field by the cells themselves: each cell scored by the image's nuclear stain where it lands, smoothed at the nuclei's own size (measured at the cells), with a displacement as smooth as LDDMM's; kept only if each random half of the cells, fitted on the other half, scores better with it (cross-validation). Skipped where the cells do not sit on blobs of their own size (evenly filled tissue, spot lattices) and on flat sections. Off: as published.", "lddmm")
    lddmm_tol: float = _p(1e-4, "Relative energy decrease over lddmm_patience iterations below which LDDMM stops (only with lddmm_patience > 0).", "lddmm", min=0.0)
    # general
    num_repeats: int = _p(1, "Repeats of GA → LDDMM (the published method's restarts).", "general", min=1)
    count_scale: str = _p("auto", "How the cells' total counts weigh the cell raster (section pipeline: CLI, app, batch): 'linear' (as published), 'log' (log(1 + counts): library-size noise compressed) or 'auto': the section is searched with both (the second search reuses the first one's pose scan) and the one the image explains better (higher final fitness) is kept and warped. A second pose search where the counts vary.", "general", choices=("auto", "linear", "log"))
    random_seed: int = _p(42, "Seed of the GA (runs with the same seed on CPU give the same result).", "general", min=0, max=2**32 - 1)
    dtype: str = _p("float32", "Floating point precision: 'float32' or 'float64'.", "general", choices=("float32", "float64"))
    device: str | None = _p(None, "'cpu', 'cuda' or None (CUDA when available).", "general")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = _coerce(f, getattr(self, f.name))
            setattr(self, f.name, value)
            if value is None:
                continue
            meta = f.metadata
            if "choices" in meta and value not in meta["choices"]:
                raise GalaInputError(f"{f.name} must be one of {meta['choices']}, got {value!r}.")
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if "min" in meta and value < meta["min"]:
                raise GalaInputError(f"{f.name} must be ≥ {meta['min']}, got {value}. ({meta['help']})")
            if "gt" in meta and value <= meta["gt"]:
                raise GalaInputError(f"{f.name} must be > {meta['gt']}, got {value}. ({meta['help']})")
            if "max" in meta and value > meta["max"]:
                raise GalaInputError(f"{f.name} must be ≤ {meta['max']}, got {value}. ({meta['help']})")
        if self.device is not None and not _DEVICE.fullmatch(self.device):
            raise GalaInputError(f"device must be 'cpu', 'cuda', 'cuda:<n>' or None (automatic), got {self.device!r}.")
        if self.stop_criteria is not None and not _STOP.fullmatch(self.stop_criteria):
            raise GalaInputError(
                f"stop_criteria must be one of 'reach_<fitness>' or 'saturate_<generations>' (e.g. 'saturate_50'), "
                f"or None, got {self.stop_criteria!r}."
            )
        if self.num_parents_mating > self.sol_per_pop:
            raise GalaInputError("num_parents_mating cannot exceed sol_per_pop.")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> AlignParams:
        """Build from a dict (e.g. a TOML file or ``uns['gala']['params']``); unknown names are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise GalaInputError(f"Unknown parameter(s) {unknown}; known: {sorted(names)}.")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON/TOML-friendly, ``None`` kept)."""
        return dataclasses.asdict(self)

    @classmethod
    def tutorial(cls, **overrides: Any) -> AlignParams:
        """The published tutorial's settings (slow: 1000 generations, 2000 iterations, 2 repeats)."""
        base = dict(num_generations=1000, num_iterations=2000, num_repeats=2, epV=10.0, a=20.0,
                    sigmaR=5e4, ga_restarts=1, seed_population=False,
                    gene_space_mode="compatible", fitness="sse", refine_iterations=0, contrast=False,
                    max_anisotropy=None, ga_blur=0.0, ga_operators="pygad", ga_patience=0, lddmm_patience=0,
                    lddmm_validate=False, count_scale="linear", nuclei_fit=False)
        base.update(overrides)
        return cls(**base)

    @classmethod
    def fast_check(cls, **overrides: Any) -> AlignParams:
        """A quick first look (seconds on a small section): one short search and its fine-tuning, no warp."""
        base = dict(num_generations=60, sol_per_pop=60, num_parents_mating=30, ga_restarts=1, ga_patience=30,
                    refine_iterations=100, num_iterations=0, count_scale="linear", nuclei_fit=False)
        base.update(overrides)
        return cls(**base)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> AlignParams:
        """The settings of one of :data:`PRESETS` ('fast check', 'standard' = the defaults, 'thorough
        (published settings)' = :meth:`tutorial`)."""
        makers = {"fast check": cls.fast_check, "standard": cls, "thorough (published settings)": cls.tutorial}
        if name not in makers:
            raise GalaInputError(f"unknown preset {name!r}; choose one of {list(makers)}.")
        return makers[name](**overrides)

    @staticmethod
    def help(name: str) -> str:
        """Help text of one parameter."""
        return {f.name: f.metadata["help"] for f in dataclasses.fields(AlignParams)}[name]

    @staticmethod
    def group(name: str) -> list[str]:
        """Names of the parameters of one group ('ga', 'lddmm', 'general')."""
        return [f.name for f in dataclasses.fields(AlignParams) if f.metadata["group"] == name]


PRESETS = ("fast check", "standard", "thorough (published settings)")  # names of AlignParams.preset

_DEVICE = re.compile(r"cpu|cuda(:\d+)?")
_STOP = re.compile(r"reach_-?\d+(\.\d+)?([eE][-+]?\d+)?|saturate_[1-9]\d*")


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    """``value`` as the field's type (bool, int, float or str; or None where allowed), strictly.

    Whole floats (``30.0``) are accepted for integers; text is never converted ("30", "yes"), nor are
    booleans taken as numbers; NaN and infinities are refused.
    """
    kind = str(f.type).replace(" ", "").replace("|None", "")
    if value is None:
        if "None" in str(f.type):
            return None
        raise GalaInputError(f"{f.name} cannot be empty (None); give a {kind} (default {f.default!r}).")
    got = f"{value!r} ({type(value).__name__})"
    if kind == "bool":
        if isinstance(value, bool | np.bool_):
            return bool(value)
        raise GalaInputError(f"{f.name} must be true or false, got {got}. ({f.metadata['help']})")
    if kind == "str":
        if isinstance(value, str):
            return value
        raise GalaInputError(f"{f.name} must be text, got {got}. ({f.metadata['help']})")
    numeric = isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool | np.bool_)
    if not numeric:
        raise GalaInputError(f"{f.name} must be a number (not text or true/false), got {got}. ({f.metadata['help']})")
    if not math.isfinite(float(value)):
        raise GalaInputError(f"{f.name} must be a finite number, got {value}. ({f.metadata['help']})")
    if kind == "int":
        if isinstance(value, int | np.integer):
            return int(value)
        if float(value).is_integer():
            return int(value)
        raise GalaInputError(f"{f.name} must be a whole number, got {value}. ({f.metadata['help']})")
    return float(value)
