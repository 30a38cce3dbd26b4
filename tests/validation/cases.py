"""Validation cases from real tissue images, several generators, known truth (issue 11).

Every case is a real image plus cells whose true image position is known, moved into µm by a known
transform (rotation all round, with/without flip, a scale in µm per image pixel, a shift, optionally
a smooth random warp). Four generator families:

- ``nuclei``: cells = nuclei detected on the image (hematoxylin optical density from colour
  deconvolution, plus DAB for IHC, or DAPI intensity), library sizes lognormal and tied to the local
  stain; a few genes with negative-binomial counts.
- ``uniform``: cells filling the image's tissue mask evenly (jittered grid): flat density, counts
  independent of the image (the hard case for a support-only fitness).
- ``spots``: a Visium-like hexagonal lattice (55 or 100 µm pitch) inside the tissue mask, counts
  weakly tied to tissue darkness.
- ``merfish``: the real MERFISH cells on their DAPI (the bundled demo, exact ground truth).

Images: see ``tests/validation/data/README.md`` (sources and licences). Cases with ``heldout=True``
(the scikit-image IHC image, and local-only images that may not be committed) are skipped by the
default table and tests.

Coordinates: image positions are (x, y) = (column, row) in pixels of ``Case.image`` (pixel centres at
integers); ``obsm['spatial']`` is (x, y) in µm; ``Case.transform.forward`` maps the first to the second.

Scale: ``CaseSpec.um_per_px`` is the known transform's scale, not the slide's physical pixel size
(``SourceImage.real_um_per_px``). Above the physical size the tissue is stretched (a 1101-px tile at
3 µm/px is a 3.3 mm section whose nuclei lie 30-90 µm apart), as in issue 11's held-out cases (an IHC
tile at 2.75-3.6 µm/px); near it (0.5 µm/px on the Ki67 tile) spacing and size are physical. MERFISH
cases keep their real µm.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anndata
import numpy as np
import pandas as pd

from gala_engine.demo import DEMO_DIR, load_demo, truth_px_xy

DATA_DIR = Path(__file__).resolve().parent / "data"
# images that may be used locally but not committed (unclear licence); see data/README.md
LOCAL_DIR = Path(os.environ.get("GALA_HELDOUT_DATA", "/work/heldout_data"))
FAMILIES = ("nuclei", "uniform", "spots", "merfish")
GENES = ["GeneA", "GeneB", "GeneC", "GeneD", "GeneE"]
MERFISH_PX_PER_UM = 9.2059  # full-resolution DAPI (data/README.md of the shared data)


# ----------------------------------------------------------------------------------- transforms


@dataclass
class SmoothWarp:
    """A smooth random displacement field in µm: a sum of Gaussian RBF modes minus its best affine fit.

    ``w(u) = Σ_k coef_k · exp(-|u - c_k|² / 2σ²) - (u @ lin[:, :2].T + lin[:, 2])``; scaled so that the
    largest displacement over the cells it was made for equals the requested amplitude.
    """

    centres: np.ndarray  # (K, 2) µm
    coef: np.ndarray  # (K, 2) µm
    sigma: float  # µm
    lin: np.ndarray  # (2, 3) affine part removed

    def __call__(self, u: np.ndarray) -> np.ndarray:
        u = np.asarray(u, dtype=np.float64)
        d2 = ((u[:, None, :] - self.centres[None]) ** 2).sum(-1)
        return np.exp(-d2 / (2 * self.sigma**2)) @ self.coef - (u @ self.lin[:, :2].T + self.lin[:, 2])


def make_warp(points_um: np.ndarray, amplitude: float, rng: np.random.Generator, *, modes: int = 6,
              sigma_frac: float = 0.3) -> SmoothWarp:
    """A random smooth warp whose maximum displacement over ``points_um`` is ``amplitude`` µm.

    ``modes`` Gaussian bumps of width ``sigma_frac`` × the points' larger extent, centres uniform in their
    bounding box; the affine part (least squares over the points) is removed so an affine cannot undo it.
    """
    pts = np.asarray(points_um, dtype=np.float64)
    lo, hi = pts.min(0), pts.max(0)
    sigma = sigma_frac * float((hi - lo).max())
    centres = lo + rng.random((modes, 2)) * (hi - lo)
    coef = rng.normal(size=(modes, 2))
    raw = SmoothWarp(centres, coef, sigma, np.zeros((2, 3)))(pts)
    design = np.c_[pts, np.ones(len(pts))]
    lin = np.linalg.lstsq(design, raw, rcond=None)[0].T  # (2, 3)
    warp = SmoothWarp(centres, coef, sigma, lin)
    scale = amplitude / np.linalg.norm(warp(pts), axis=1).max()
    return SmoothWarp(centres, coef * scale, sigma, lin * scale)


@dataclass
class KnownTransform:
    """Image pixels (x, y) → µm (x, y): the affine ``M`` (2×3), then the optional warp (in µm)."""

    M: np.ndarray
    warp: SmoothWarp | None = None

    def affine(self, px_xy: np.ndarray) -> np.ndarray:
        return np.asarray(px_xy, dtype=np.float64) @ self.M[:, :2].T + self.M[:, 2]

    def forward(self, px_xy: np.ndarray) -> np.ndarray:
        q = self.affine(px_xy)
        return q + self.warp(q) if self.warp is not None else q

    def inverse(self, um_xy: np.ndarray, iterations: int = 200) -> np.ndarray:
        """µm → image pixels (the warp inverted by fixed-point iteration: it is a small contraction)."""
        u = np.asarray(um_xy, dtype=np.float64)
        q = u.copy()
        if self.warp is not None:
            for _ in range(iterations):
                q_new = u - self.warp(q)
                if np.abs(q_new - q).max() < 1e-10:
                    q = q_new
                    break
                q = q_new
        return (q - self.M[:, 2]) @ np.linalg.inv(self.M[:, :2]).T

    @property
    def um_per_px(self) -> float:
        return float(np.sqrt(abs(np.linalg.det(self.M[:, :2]))))


def pose_matrix(angle_deg: float, flip: bool, um_per_px: float, centre_px: np.ndarray,
                shift_um: tuple[float, float], origin_um: tuple[float, float] = (3000.0, 2000.0)) -> np.ndarray:
    """2×3 px → µm: mirror x (flip), rotate by ``angle_deg``, scale, centre on ``origin_um + shift_um``."""
    t = np.deg2rad(angle_deg)
    R = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    L = um_per_px * R @ (np.diag([-1.0, 1.0]) if flip else np.eye(2))
    b = np.asarray(origin_um) + np.asarray(shift_um) - L @ np.asarray(centre_px, dtype=np.float64)
    return np.c_[L, b]


# ----------------------------------------------------------------------------------- images


@dataclass(frozen=True)
class SourceImage:
    """A real tissue image the generators can use."""

    name: str
    kind: str  # 'brightfield' or 'fluorescence'
    loader: Callable[[], np.ndarray]
    source: str
    licence: str
    stains: str = "H"  # nuclear stains for brightfield: 'H' (H&E) or 'HD' (IHC: hematoxylin + DAB)
    nucleus_radius_px: float | None = None  # None: nuclei not resolved (no 'nuclei' family)
    real_um_per_px: float | None = None
    heldout: bool = False
    committed: bool = True  # False: local-only (licence unclear); the case is skipped when absent
    mask: str = "otsu"  # tissue mask method (:func:`tissue_mask`)


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _merfish_dapi(k: int = 4) -> np.ndarray:
    import cv2
    from PIL import Image

    with Image.open(DEMO_DIR / "merfish_mini" / "mini_dataset_dapi_z1.jpg") as im:
        full = np.asarray(im.convert("L"))
    h, w = full.shape[0] // k, full.shape[1] // k
    return cv2.resize(full[: h * k, : w * k], (w, h), interpolation=cv2.INTER_AREA)


def _restained_dab(k: float = 2.0) -> np.ndarray:
    """os1_he re-coloured as a hematoxylin–DAB IHC with cytoplasmic DAB: colour deconvolution (skimage ``rgb2hed``),
    the eosin amount re-coloured brown (× ``k``), hematoxylin × 0.8, then ``hed2rgb``."""
    from skimage.color import hed2rgb, rgb2hed

    hed = rgb2hed(load_image("os1_he"))
    out = np.zeros_like(hed)
    out[..., 0] = 0.8 * hed[..., 0]
    out[..., 2] = k * hed[..., 1]
    return (np.clip(hed2rgb(out), 0.0, 1.0) * 255).astype(np.uint8)


def _skimage_ihc() -> np.ndarray:
    from skimage import data

    return np.asarray(data.immunohistochemistry())


def _ki67_crop(name: str, rows: slice, cols: slice, what: str) -> SourceImage:
    """A crop of the os2_ki67 image (same stains, scale and licence)."""
    return SourceImage(name, "brightfield", lambda: np.ascontiguousarray(load_image("os2_ki67")[rows, cols]),
                       f"the os2_ki67 image's {what}", "as os2_ki67", stains="HD", nucleus_radius_px=7,
                       real_um_per_px=0.454, mask="glass")


IMAGES: dict[str, SourceImage] = {
    img.name: img
    for img in [
        SourceImage("os1_he", "brightfield", lambda: _read_rgb(DATA_DIR / "openslide_os1_he.jpg"),
                    "OpenSlide test data Hamamatsu OS-1.ndpi (H&E), crop via petebankhead/2022-qupath-cell-detection",
                    "free to use and distribute, with or without modification (OpenSlide test data)",
                    nucleus_radius_px=14, real_um_per_px=0.227),
        SourceImage("os2_ki67", "brightfield", lambda: _read_rgb(DATA_DIR / "openslide_os2_ki67.jpg"),
                    "OpenSlide test data Hamamatsu OS-2.ndpi (Ki67 IHC), crop via petebankhead/2022-qupath-cell-detection, "
                    "downscaled 2x", "free to use and distribute, with or without modification (OpenSlide test data)",
                    stains="HD", nucleus_radius_px=7, real_um_per_px=0.454, mask="glass"),
        # a tile inside the Ki67 section: tissue (and a few lumens) up to the frame's edge, no empty slide around it
        _ki67_crop("os2_ki67_tile", slice(500, None), slice(450, None), "lower-right 601×651 pixels"),
        # small sections: 512-pixel crops, so the CLI rasterises at 5-10 µm with a few hundred nuclei or spots
        _ki67_crop("os2_ki67_small", slice(400, 912), slice(350, 862), "512×512 pixels from row 400, column 350"),
        _ki67_crop("os2_ki67_corner", slice(589, None), slice(589, None), "lower-right 512×512 pixels"),
        # an IHC look-alike filled with tissue: brown (DAB-like) cytoplasm and stroma next to the nuclei
        SourceImage("os1_dab", "brightfield", _restained_dab,
                    "os1_he re-coloured: eosin as cytoplasmic DAB (cases.py _restained_dab)", "as os1_he",
                    nucleus_radius_px=14, real_um_per_px=0.227),
        SourceImage("visium_tiny_he", "brightfield",
                    lambda: _read_rgb(DEMO_DIR / "visium_tiny" / "tissue_lowres_image.png"),
                    "squidpy tests/_data Visium low-res H&E (bundled demo)", "BSD-3-Clause (squidpy)"),
        SourceImage("visium_dg_he", "brightfield", lambda: _read_rgb(DEMO_DIR / "visium_dg" / "deg_image2.png"),
                    "GiottoData Visium dentate gyrus H&E (bundled demo)", "MIT (GiottoData)", real_um_per_px=14.0),
        SourceImage("merfish_dapi", "fluorescence", _merfish_dapi,
                    "GiottoData Vizgen MERFISH mini DAPI z1 (bundled demo), reduced 4x", "MIT (GiottoData)",
                    nucleus_radius_px=8, real_um_per_px=4 / MERFISH_PX_PER_UM),
        SourceImage("skimage_ihc", "brightfield", _skimage_ihc,
                    "scikit-image skimage.data.immunohistochemistry() (Human Protein Atlas, colon, FHL2 / DAB)",
                    "no known copyright restrictions (scikit-image data README)", stains="H",
                    nucleus_radius_px=6, heldout=True, mask="glass"),
        SourceImage("torchstain_source", "brightfield",
                    lambda: _read_rgb(LOCAL_DIR / "torchstain" / "source.png"),
                    "EIDOSLAB/torchstain data/source.png (H&E)", "repository MIT; image provenance not stated: local only",
                    nucleus_radius_px=5, heldout=True, committed=False),
        SourceImage("torchstain_target", "brightfield",
                    lambda: _read_rgb(LOCAL_DIR / "torchstain" / "target.png"),
                    "EIDOSLAB/torchstain data/target.png (H&E)", "repository MIT; image provenance not stated: local only",
                    nucleus_radius_px=5, heldout=True, committed=False),
    ]
}


@functools.lru_cache(maxsize=16)
def load_image(name: str) -> np.ndarray:
    """The image's pixels, uint8 (H, W, 3) RGB or (H, W) gray (cached; read-only)."""
    pixels = np.ascontiguousarray(IMAGES[name].loader())
    pixels.setflags(write=False)
    return pixels


def image_available(name: str) -> bool:
    img = IMAGES[name]
    if img.committed:
        return True
    try:
        load_image(name)
        return True
    except (FileNotFoundError, OSError):
        return False


# ----------------------------------------------------------------------------------- image measures


def nuclear_density(image: np.ndarray, stains: str = "H") -> np.ndarray:
    """Per-pixel nuclear stain in [0, ~1]: hematoxylin (+ DAB for IHC) optical density by colour
    deconvolution (Ruifrok & Johnston, skimage ``rgb2hed``), or the gray intensity of a fluorescence image."""
    if image.ndim == 2:
        g = image.astype(np.float64)
        return g / max(np.percentile(g, 99.5), 1e-9)
    from skimage.color import rgb2hed

    hed = rgb2hed(image)
    H = np.clip(hed[..., 0], 0, None)
    out = H / max(np.percentile(H, 99.5), 1e-9)
    if "D" in stains:
        D = np.clip(hed[..., 2], 0, None)
        out = np.maximum(out, D / max(np.percentile(D, 99.5), 1e-9))
    return out


def darkness(image: np.ndarray) -> np.ndarray:
    """Tissue signal per pixel: summed optical density (brightfield) or intensity (fluorescence), in [0, 1]."""
    if image.ndim == 2:
        g = image.astype(np.float64)
    else:
        g = -np.log((image.astype(np.float64) + 1.0) / 256.0).sum(-1)
    return g / max(np.percentile(g, 99.5), 1e-9)


def detect_nuclei(image: np.ndarray, radius_px: float, stains: str = "H") -> np.ndarray:
    """Nuclei centres (x, y) in pixels: band-pass (difference of Gaussians) of the nuclear stain,
    Otsu threshold, local maxima at least ~a radius apart, refined to sub-pixel by a 3×3 centroid."""
    from skimage.feature import peak_local_max
    from skimage.filters import gaussian, threshold_otsu

    od = nuclear_density(image, stains)
    dog = gaussian(od, sigma=radius_px / 2) - gaussian(od, sigma=2 * radius_px)
    peaks = peak_local_max(dog, min_distance=max(2, int(0.9 * radius_px)), threshold_abs=threshold_otsu(dog),
                           exclude_border=False)
    # sub-pixel: centroid of the positive DoG in the 3×3 neighbourhood
    pad = np.pad(np.clip(dog, 0, None), 1)
    r, c = peaks[:, 0] + 1, peaks[:, 1] + 1
    offs = np.array([(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)])
    w = np.stack([pad[r + dr, c + dc] for dr, dc in offs], 1) + 1e-12
    dy = (w * offs[:, 0]).sum(1) / w.sum(1)
    dxx = (w * offs[:, 1]).sum(1) / w.sum(1)
    return np.c_[peaks[:, 1] + dxx, peaks[:, 0] + dy].astype(np.float64)


def tissue_mask(image: np.ndarray, method: str = "otsu") -> np.ndarray:
    """Boolean tissue mask, small objects and small holes removed.

    ``"otsu"``: Otsu's threshold on the smoothed log optical density (tissue against a gray/dark
    background, e.g. Visium low-res images); ``"glass"``: everything but bright glass (smallest channel
    optical density below 0.12 after smoothing), for tiles whose only background is empty glass/lumen."""
    from skimage.filters import gaussian, threshold_otsu
    from skimage.morphology import remove_small_holes, remove_small_objects

    rgb = image[..., None] if image.ndim == 2 else image
    od = -np.log((rgb.astype(np.float64) + 1.0) / 256.0)
    if image.ndim == 2:  # fluorescence: bright = tissue
        od = rgb.astype(np.float64) / max(float(rgb.max()), 1.0)
    sigma = max(1.0, (0.006 if method == "glass" else 0.004) * max(od.shape[:2]))
    if method == "glass":
        m = gaussian(od.min(-1), sigma=sigma) > 0.12
    else:
        sm = gaussian(np.log(od.sum(-1) + 0.02), sigma=sigma)
        m = sm > threshold_otsu(sm)
    n = m.size
    m = remove_small_objects(m, max_size=int(0.002 * n))
    return remove_small_holes(m, max_size=int(0.001 * n))


def sample_at(field2d: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Bilinear sample of a 2-D array at (x, y) pixel positions (edges clamped)."""
    from scipy.ndimage import map_coordinates

    return map_coordinates(field2d, [xy[:, 1], xy[:, 0]], order=1, mode="nearest")


# ----------------------------------------------------------------------------------- counts


def make_counts(rng: np.random.Generator, library: np.ndarray, modulation: np.ndarray | None = None,
                dispersion: float = 4.0) -> np.ndarray:
    """Cells × len(GENES) negative-binomial counts with means ``library × p_g``.

    GeneA's share rises with ``modulation`` (e.g. local stain, in [0, 1]); the others share the rest with
    fixed proportions and a per-cell Dirichlet wobble."""
    n = len(library)
    base = np.array([0.30, 0.25, 0.20, 0.15, 0.10])
    p = rng.dirichlet(base * 50, size=n)
    if modulation is not None:
        m = np.clip(np.asarray(modulation, dtype=np.float64), 0, None)
        m = m / max(m.mean(), 1e-12)
        p[:, 0] *= 0.5 + m
    p /= p.sum(1, keepdims=True)
    mean = library[:, None] * p
    lam = rng.gamma(dispersion, mean / dispersion)
    return rng.poisson(lam).astype(np.float32)


def make_adata(xy_um: np.ndarray, counts: np.ndarray, uns: dict) -> anndata.AnnData:
    obs = pd.DataFrame(index=[f"cell{i}" for i in range(len(xy_um))])
    var = pd.DataFrame(index=GENES)
    ad = anndata.AnnData(X=counts, obs=obs, var=var)
    ad.obsm["spatial"] = np.asarray(xy_um, dtype=np.float64)
    ad.uns["validation"] = uns
    return ad


# ----------------------------------------------------------------------------------- cases


@dataclass
class Case:
    name: str
    family: str  # 'nuclei', 'uniform', 'spots', 'merfish'
    image: np.ndarray  # full-res image, (H, W, 3) uint8 RGB or (H, W) uint8 gray
    adata: anndata.AnnData  # obsm['spatial'] (x, y) µm; X counts (cells × genes)
    truth_xy_px: np.ndarray  # (N, 2) each cell's true (x, y) position in image pixels
    um_per_px: float  # for reporting errors in µm
    warp_um: float = 0.0  # amplitude (max displacement) of the smooth warp (0 = pure affine)
    heldout: bool = False
    transform: KnownTransform | None = None  # truth px → obsm['spatial'] µm
    spec: CaseSpec | None = None


@dataclass(frozen=True)
class CaseSpec:
    """Recipe of one case (cheap to list; :func:`build_case` makes the data)."""

    family: str
    image: str
    um_per_px: float  # scale of the known transform (µm per image pixel); merfish: set by the image
    angle: float
    flip: bool
    shift: tuple[float, float] = (250.0, -400.0)
    warp_um: float = 0.0
    seed: int = 0
    fast: bool = False  # in the test subset (each case a few seconds)
    options: tuple[tuple[str, float], ...] = ()  # family options, e.g. (('pitch_um', 100.0),)

    @property
    def heldout(self) -> bool:
        return IMAGES[self.image].heldout

    @property
    def name(self) -> str:
        opts = "".join(f"-{k.split('_')[0]}{v:g}" for k, v in self.options)
        warp = f"-w{self.warp_um:g}" if self.warp_um else ""
        scale = "" if self.family == "merfish" else f"-s{self.um_per_px:g}"
        return f"{self.family}-{self.image}-r{self.angle:g}{'f' if self.flip else ''}{scale}{warp}{opts}"

    def option(self, key: str, default: float) -> float:
        return dict(self.options).get(key, default)


def _finish(spec: CaseSpec, image: np.ndarray, truth: np.ndarray, M: np.ndarray, rng: np.random.Generator,
            counts: np.ndarray, uns: dict) -> Case:
    transform = KnownTransform(M)
    if spec.warp_um:
        transform.warp = make_warp(transform.affine(truth), spec.warp_um, rng)
    xy_um = transform.forward(truth)
    uns = {**uns, "family": spec.family, "image": spec.image, "angle": spec.angle, "flip": spec.flip,
           "um_per_px": transform.um_per_px, "warp_um": spec.warp_um, "seed": spec.seed}
    return Case(spec.name, spec.family, image, make_adata(xy_um, counts, uns), truth, transform.um_per_px,
                spec.warp_um, spec.heldout, transform, spec)


def _nuclei(spec: CaseSpec, rng: np.random.Generator) -> Case:
    src = IMAGES[spec.image]
    image = load_image(spec.image)
    r = float(src.nucleus_radius_px)
    nuclei = detect_nuclei(image, r, src.stains)
    jitter_um = spec.option("jitter_um", 0.4)
    truth = nuclei + rng.normal(scale=jitter_um / spec.um_per_px, size=nuclei.shape)
    truth = _realism(truth, spec, rng, image)
    stain = sample_at(_smoothed(nuclear_density(image, src.stains), r), truth)
    stain = np.clip(stain / max(stain.mean(), 1e-12), 0.05, None)
    library = 300.0 * np.exp(rng.normal(scale=0.5, size=len(truth))) * stain**0.5
    counts = make_counts(rng, library, modulation=stain)
    M = pose_matrix(spec.angle, spec.flip, spec.um_per_px, _centre(image), spec.shift)
    return _finish(spec, image, truth, M, rng, counts, {"generator": "nuclei (DoG peaks of the nuclear stain)"})


def _realism(truth: np.ndarray, spec: CaseSpec, rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Options that make cells differ from the image's nuclei as in real pairs: ``dropout`` (share of
    nuclei without a transcriptomics cell), ``extra`` (share of cells added at random in the tissue mask:
    cells whose nucleus the image does not show) and ``coverage`` (the cells cover only a rectangle of
    this share of the image, placed at random: an assay region smaller than the slide image)."""
    dropout, extra, coverage = spec.option("dropout", 0.0), spec.option("extra", 0.0), spec.option("coverage", 1.0)
    if dropout:
        truth = truth[rng.random(len(truth)) >= dropout]
    if extra:
        mask = tissue_mask(image, IMAGES[spec.image].mask)
        rows, cols = np.nonzero(mask)
        pick = rng.integers(0, len(rows), size=int(round(extra * len(truth))))
        add = np.c_[cols[pick], rows[pick]] + rng.uniform(-0.5, 0.5, size=(len(pick), 2))
        truth = np.r_[truth, add]
    if coverage < 1.0:
        h, w = image.shape[:2]
        side = np.sqrt(coverage)
        bw, bh = side * w, side * h
        x0, y0 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
        inside = (truth[:, 0] >= x0) & (truth[:, 0] < x0 + bw) & (truth[:, 1] >= y0) & (truth[:, 1] < y0 + bh)
        truth = truth[inside]
    return truth


def _smoothed(a: np.ndarray, sigma: float) -> np.ndarray:
    from skimage.filters import gaussian

    return gaussian(a, sigma=sigma)


def _centre(image: np.ndarray) -> np.ndarray:
    return np.array([(image.shape[1] - 1) / 2.0, (image.shape[0] - 1) / 2.0])


def uniform_points(mask: np.ndarray, spacing_px: float, rng: np.random.Generator, jitter: float = 0.3) -> np.ndarray:
    """Jittered grid (x, y) inside ``mask``: one point per ``spacing_px`` square, moved by ±jitter·spacing."""
    h, w = mask.shape
    gx = np.arange(spacing_px / 2, w, spacing_px)
    gy = np.arange(spacing_px / 2, h, spacing_px)
    X, Y = np.meshgrid(gx, gy)
    pts = np.c_[X.ravel(), Y.ravel()] + rng.uniform(-jitter, jitter, size=(X.size, 2)) * spacing_px
    pts[:, 0] = np.clip(pts[:, 0], 0, w - 1)
    pts[:, 1] = np.clip(pts[:, 1], 0, h - 1)
    keep = mask[np.round(pts[:, 1]).astype(int), np.round(pts[:, 0]).astype(int)]
    return pts[keep]


def _uniform(spec: CaseSpec, rng: np.random.Generator) -> Case:
    image = load_image(spec.image)
    mask = tissue_mask(image, IMAGES[spec.image].mask)
    spacing_um = spec.option("spacing_um", 12.0)
    truth = uniform_points(mask, spacing_um / spec.um_per_px, rng)
    library = 250.0 * np.exp(rng.normal(scale=0.5, size=len(truth)))
    counts = make_counts(rng, library)
    M = pose_matrix(spec.angle, spec.flip, spec.um_per_px, _centre(image), spec.shift)
    return _finish(spec, image, truth, M, rng, counts,
                   {"generator": "uniform (jittered grid in the tissue mask)", "spacing_um": spacing_um})


def hex_lattice(mask: np.ndarray, pitch_px: float, rng: np.random.Generator) -> np.ndarray:
    """Hexagonal lattice (x, y) of pitch ``pitch_px``, random orientation and offset, centres in ``mask``."""
    h, w = mask.shape
    n = int(np.ceil(1.5 * max(h, w) / pitch_px)) + 2
    i, j = np.meshgrid(np.arange(-n, n + 1), np.arange(-n, n + 1))
    lat = np.c_[(i + 0.5 * (j % 2)).ravel() * pitch_px, j.ravel() * pitch_px * np.sqrt(3) / 2]
    t = rng.uniform(0, np.pi / 3)
    R = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    pts = lat @ R.T + np.array([w / 2, h / 2]) + rng.uniform(0, pitch_px, size=2)
    inside = (pts[:, 0] >= 0) & (pts[:, 0] <= w - 1) & (pts[:, 1] >= 0) & (pts[:, 1] <= h - 1)
    pts = pts[inside]
    return pts[mask[np.round(pts[:, 1]).astype(int), np.round(pts[:, 0]).astype(int)]]


def _spots(spec: CaseSpec, rng: np.random.Generator) -> Case:
    image = load_image(spec.image)
    mask = tissue_mask(image, IMAGES[spec.image].mask)
    pitch_um = spec.option("pitch_um", 100.0)
    truth = hex_lattice(mask, pitch_um / spec.um_per_px, rng)
    spot_radius_px = 27.5 / spec.um_per_px  # 55 µm spots
    dark = sample_at(_smoothed(darkness(image), max(1.0, spot_radius_px / 2)), truth)
    dark = np.clip(dark / max(dark.mean(), 1e-12), 0.05, None)
    library = 3000.0 * np.exp(rng.normal(scale=0.6, size=len(truth))) * dark**0.3
    counts = make_counts(rng, library, modulation=dark)
    M = pose_matrix(spec.angle, spec.flip, spec.um_per_px, _centre(image), spec.shift)
    return _finish(spec, image, truth, M, rng, counts,
                   {"generator": "spots (hexagonal lattice in the tissue mask)", "pitch_um": pitch_um})


def _merfish(spec: CaseSpec, rng: np.random.Generator) -> Case:
    k = int(spec.option("reduce", 4))
    demo = load_demo("merfish_mini")
    image = load_image(spec.image) if k == 4 else _merfish_dapi(k)
    if spec.option("bits", 8.0) == 16:  # a 16-bit DAPI, as microscopes write them (same content × 257)
        image = image.astype(np.uint16) * 257
    truth = (truth_px_xy(demo) + 0.5) / k - 0.5  # in the reduced image's pixels
    G = demo.um_to_px  # µm → full-res px
    # reduced px → original µm (affine), then the case's rotation/flip/shift about the cells' centre (µm)
    to_um = np.linalg.inv(G[:, :2])
    P = np.c_[k * to_um, to_um @ ((k - 1) / 2.0 - G[:, 2])]  # 2×3 reduced px → µm
    u0 = np.asarray(demo.adata.obsm["spatial"], dtype=np.float64)
    c = u0.mean(0)
    t = np.deg2rad(spec.angle)
    R = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]) @ (np.diag([-1.0, 1.0]) if spec.flip else np.eye(2))
    M = np.c_[R @ P[:, :2], R @ (P[:, 2] - c) + c + np.asarray(spec.shift)]
    X = demo.adata.X
    X = X.toarray() if hasattr(X, "toarray") else np.asarray(X)
    case = _finish(spec, image, truth, M, rng, np.zeros((len(truth), len(GENES)), np.float32),
                   {"generator": "merfish (real cells, exact ground truth)", "reduce": k})
    # keep the real counts and genes
    ad = anndata.AnnData(X=X.astype(np.float32), obs=demo.adata.obs.copy(), var=demo.adata.var.copy())
    ad.obsm["spatial"] = case.adata.obsm["spatial"]
    ad.uns["validation"] = case.adata.uns["validation"]
    case.adata = ad
    return case


BUILDERS: dict[str, Callable[[CaseSpec, np.random.Generator], Case]] = {
    "nuclei": _nuclei, "uniform": _uniform, "spots": _spots, "merfish": _merfish,
}


def build_case(spec: CaseSpec) -> Case:
    """Make the case's data (deterministic given the spec)."""
    rng = np.random.default_rng(_stable_seed(spec))
    return BUILDERS[spec.family](spec, rng)


def _stable_seed(spec: CaseSpec) -> int:
    import zlib

    return zlib.crc32(f"{spec.name}/{spec.seed}".encode())


# ----------------------------------------------------------------------------------- registry

_S = CaseSpec
SPECS: list[CaseSpec] = [
    # nuclei-derived cells on brightfield H&E / IHC (and DAPI)
    _S("nuclei", "os2_ki67", 2.0, 137.0, True, fast=True),
    _S("nuclei", "os1_he", 1.0, -60.0, False, shift=(-120.0, 300.0), warp_um=20.0, fast=True),
    _S("nuclei", "os2_ki67", 2.5, 310.0, False, warp_um=30.0, fast=True),
    _S("nuclei", "os2_ki67", 0.5, 250.0, False, shift=(40.0, 60.0)),
    _S("nuclei", "os2_ki67", 3.0, 20.0, True, warp_um=25.0),
    # nuclei under brown cytoplasm (an IHC look-alike filled with tissue)
    _S("nuclei", "os1_dab", 2.75, 40.0, True),
    _S("nuclei", "os1_dab", 3.5, 215.0, False, warp_um=22.0),
    # an H&E filled with tissue: the CLI's last refinement reads the image's mirror beyond the frame (18 → 8 µm)
    _S("nuclei", "os1_he", 4.0, 190.0, True, fast=True),
    _S("nuclei", "merfish_dapi", 1.0, 75.0, True),
    # cells from part of the slide only, some nuclei without a cell and some cells without a visible nucleus
    _S("nuclei", "os2_ki67", 2.5, 225.0, True, options=(("coverage", 0.5), ("dropout", 0.15), ("extra", 0.05)),
       fast=True),
    _S("nuclei", "os1_he", 3.0, 100.0, False, warp_um=20.0, options=(("coverage", 0.6), ("dropout", 0.1))),
    # flat density inside a tissue mask
    # (sections of a few mm: the CLI then rasterises at 10-20 µm, about a cell spacing, like real sections)
    _S("uniform", "visium_tiny_he", 4.0, 200.0, True, options=(("spacing_um", 12.0),), fast=True),
    _S("uniform", "os2_ki67", 2.5, 45.0, False, options=(("spacing_um", 15.0),), fast=True),
    _S("uniform", "visium_tiny_he", 4.0, 290.0, False, shift=(500.0, 80.0), warp_um=25.0,
       options=(("spacing_um", 12.0),), fast=True),
    # unwarped, yet the image's texture (which a flat density cannot explain) once dragged its interior 11 µm under LDDMM
    _S("uniform", "visium_tiny_he", 3.0, 330.0, False, options=(("spacing_um", 15.0),), fast=True),
    _S("uniform", "visium_tiny_he", 1.5, 200.0, True, options=(("spacing_um", 15.0),)),
    _S("uniform", "os2_ki67", 0.8, 45.0, False, options=(("spacing_um", 15.0),)),
    _S("uniform", "os2_ki67", 1.2, 300.0, True, warp_um=20.0, options=(("spacing_um", 12.0),)),
    _S("uniform", "visium_dg_he", 4.0, 100.0, False, options=(("spacing_um", 15.0),)),
    _S("uniform", "os2_ki67", 4.0, 75.0, True, options=(("spacing_um", 10.0),)),  # seed-sized: ~160k cells
    # a frame filled with IHC tissue: the only outline is the frame's edge (and the lumens)
    _S("uniform", "os2_ki67_tile", 2.0, 330.0, False, options=(("spacing_um", 15.0),)),
    _S("uniform", "os2_ki67_tile", 3.0, 100.0, True, options=(("spacing_um", 12.0),)),
    # Visium-like spots
    _S("spots", "os2_ki67", 3.0, 170.0, True, options=(("pitch_um", 100.0),), fast=True),
    _S("spots", "visium_tiny_he", 4.0, 30.0, False, options=(("pitch_um", 55.0),), fast=True),
    _S("spots", "visium_dg_he", 4.0, 260.0, True, warp_um=15.0, options=(("pitch_um", 55.0),)),
    _S("spots", "os2_ki67", 2.0, 95.0, False, options=(("pitch_um", 55.0),)),
    # small sections (512-pixel crops of the Ki67 slide, a few hundred nuclei or spots, CLI raster 10 µm): the warp
    # is sampled by few cells, and spots' total counts are mostly library-size noise
    _S("nuclei", "os2_ki67_small", 2.75, 300.0, False),
    _S("nuclei", "os2_ki67_small", 3.2, 120.0, True, warp_um=25.0, fast=True),
    _S("nuclei", "os2_ki67_corner", 3.0, 20.0, True, warp_um=22.0, fast=True),
    _S("spots", "os2_ki67_small", 3.5, 200.0, False, options=(("pitch_um", 55.0),)),
    _S("spots", "os2_ki67_corner", 3.5, 130.0, True, options=(("pitch_um", 55.0),)),
    # real MERFISH cells on their DAPI
    _S("merfish", "merfish_dapi", 0.0, 150.0, True, fast=True),
    _S("merfish", "merfish_dapi", 0.0, -35.0, False, warp_um=15.0, fast=True),
    _S("merfish", "merfish_dapi", 0.0, 0.0, False, shift=(0.0, 0.0)),
    _S("merfish", "merfish_dapi", 0.0, 90.0, False, options=(("reduce", 8.0),)),
    _S("merfish", "merfish_dapi", 0.0, 150.0, True, options=(("reduce", 1.0),)),  # the full-res DAPI (4603×4143)
    _S("merfish", "merfish_dapi", 0.0, 210.0, False, shift=(-600.0, 150.0), warp_um=25.0,
       options=(("reduce", 2.0), ("bits", 16.0))),
    # held-out: the scikit-image IHC (the lead looks at it once, at the end) and local-only images
    _S("nuclei", "skimage_ihc", 2.75, 40.0, True),
    _S("nuclei", "skimage_ihc", 3.6, 215.0, False, warp_um=22.0),
    _S("nuclei", "skimage_ihc", 3.2, 120.0, True, warp_um=25.0),
    _S("uniform", "skimage_ihc", 2.0, 330.0, False, options=(("spacing_um", 15.0),)),
    _S("spots", "skimage_ihc", 3.5, 60.0, True, options=(("pitch_um", 55.0),)),
    _S("nuclei", "torchstain_source", 2.0, 100.0, True),
    _S("nuclei", "torchstain_target", 3.0, 285.0, False, warp_um=20.0),
]


def specs(*, fast: bool = False, family: str | None = None, heldout: bool = False,
          available_only: bool = True) -> list[CaseSpec]:
    """The registered cases: ``heldout`` picks the held-out ones (else the others); ``fast`` only the
    test subset; ``family`` one family; local-only images that are absent are skipped."""
    out = []
    for s in SPECS:
        if s.heldout != heldout or (fast and not s.fast) or (family and s.family != family):
            continue
        if available_only and not image_available(s.image):
            continue
        out.append(s)
    return out


@functools.lru_cache(maxsize=8)
def get_case(name: str) -> Case:
    """Build a registered case by name (cached)."""
    for s in SPECS:
        if s.name == name:
            return build_case(s)
    raise KeyError(f"unknown case {name!r}")


__all__ = ["Case", "CaseSpec", "FAMILIES", "IMAGES", "KnownTransform", "SPECS", "SmoothWarp", "build_case",
           "detect_nuclei", "get_case", "hex_lattice", "load_image", "make_warp", "pose_matrix", "specs",
           "tissue_mask", "uniform_points"]

