"""Cell-level refinement: a smooth displacement that moves each cell onto its nucleus in the image.

The raster fits (pose search, LDDMM) compare Gaussian-splatted densities at ``dx``: finer than about a quarter of a
raster pixel they see nothing, and on sparse sections a warp is sampled by too few raster pixels to be found. But
transcriptomics cells are centred on nuclei, and the image shows the nuclei: after LDDMM, the field is refined by
the cells themselves, each scored by the image's nuclear stain where it lands (smoothed at the nuclei's own size,
measured at the cells), the displacement as smooth as LDDMM's (its velocity grid, Gaussian of one grid step).

It is kept only where the data support it, as LDDMM's warp is (cross-validation): the cells are split in two random
halves, each half's fit keeps the displacement the other half scores best, both must score better than without
it (by :data:`MIN_GAIN`), and the two are averaged. Sections whose cells do not sit on blobs of their own size are
left as they are (:func:`blob_scale`: evenly filled tissue and spot lattices, whose blob response at the cells keeps
rising up to the largest scale tried, and cells scattered among nuclei rather than on them), as are flat sections
(:mod:`gala_engine.flatness`; the section pipeline does not build the map for them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from .affine import sample
from .device import resolve_device
from .events import ProgressCallback, ProgressEvent, StopPredicate, emit, stopped
from .features import image_feature
from .stain import is_brightfield
from .transform import transform_points_target_to_source

BLOB_SCALES = tuple(2.0 ** (k / 2.0) for k in range(11))  # Laplacian-of-Gaussian σ tried, 1 … 32 map pixels
MAX_MAP_SIDE = 3000  # the nuclei map's longer side at most (the image reduced by an integer factor)
STEPS = 200  # gradient steps per fold at most
PATIENCE = 25  # a fold's fit ends when its held-out score has not risen for this many steps
STEP_SIZE = 0.05  # Adam's step on the field's coefficients (image pixels)
FOLDS = 2
MIN_GAIN = 0.005  # each held-out half's mean stain at the cells must rise by this much (in the stain's standard deviations)
PEAK_DROP = 0.85  # the blob response at the largest scale at most this share of its peak (a peak, not a plateau)
ON_BLOB_EFFECT = 0.5  # the blob response at the cells above the response beside them, in its standard deviations


@dataclass
class NucleiMap:
    """The image's nuclear stain on a grid of full-resolution image pixels: ``plane`` (h, w) float32 in [0, 1],
    ``x = [rows, cols]`` its pixel centres."""

    plane: np.ndarray
    x: list[np.ndarray]

    @property
    def pixel(self) -> float:
        """The map's pixel in full-resolution image pixels."""
        return float(self.x[0][1] - self.x[0][0]) if self.x[0].size > 1 else 1.0


def nuclei_kind(pixels: np.ndarray) -> str:
    """The feature that shows nuclei bright: hematoxylin (colour brightfield), darkness (grey brightfield) or the
    intensity of a fluorescence image (DAPI)."""
    if not is_brightfield(pixels):
        return "intensity"
    colour = np.ndim(pixels) == 3 and np.shape(pixels)[-1] in (3, 4)
    return "hematoxylin" if colour else "inverted"


def nuclei_map(pixels: np.ndarray, scale: float = 1.0, *, planes: dict[str, np.ndarray] | None = None,
               max_side: int = MAX_MAP_SIDE) -> NucleiMap:
    """The nuclear stain of a loaded image (``scale``: full-resolution pixels per loaded pixel), reduced by the
    smallest integer factor that keeps its longer side within ``max_side``. ``planes``: feature planes of this image
    already computed, by kind (:func:`~gala_engine.features.feature_planes`), e.g. the section's hematoxylin."""
    kind = nuclei_kind(pixels)
    known = (planes or {}).get(kind)
    reduce = max(1, math.ceil(max(np.shape(pixels)[:2]) / max_side))
    rows, cols, plane = image_feature(pixels, reduce=reduce, scale=scale, kind=kind,
                                      planes=None if known is None else [known])
    return NucleiMap(plane[0], [rows, cols])


def _at(plane: np.ndarray | torch.Tensor, x: list, points: torch.Tensor) -> torch.Tensor:
    """A plane sampled at (N, 2) full-resolution (row, col) points."""
    P = torch.as_tensor(plane, dtype=points.dtype, device=points.device)
    return sample(P[None], x, points)[0]


def _blob_response(nmap: NucleiMap, sigma: float, points: torch.Tensor) -> torch.Tensor:
    """The scale-normalised Laplacian of Gaussian of std ``sigma`` (map pixels), sign flipped (bright blobs of that
    std respond most), at (N, 2) full-resolution points. Computed on the map block-averaged by ``sigma / 2`` (a
    scale-space pyramid: the Gaussian then spans a few pixels whatever ``sigma``; 10× faster on a 2300² map)."""
    f = max(1, int(sigma // 2))
    h, w = (n // f for n in nmap.plane.shape)
    plane = nmap.plane[: h * f, : w * f].astype(np.float32)
    if f > 1:
        plane = cv2.resize(plane, (w, h), interpolation=cv2.INTER_AREA)
    s = sigma / f
    response = -(s**2) * cv2.Laplacian(cv2.GaussianBlur(plane, (0, 0), sigmaX=s), cv2.CV_32F)
    x = [axis[0] + (np.arange(n) * f + (f - 1) / 2.0) * nmap.pixel for axis, n in zip(nmap.x, (h, w))]
    return _at(response, x, points)


def blob_scale(nmap: NucleiMap, points: torch.Tensor) -> float | None:
    """σ (map pixels) of the Laplacian of Gaussian whose scale-normalised blob response, averaged at the cells'
    image positions, is largest; None when that is the largest scale tried, not positive or not a clear peak (the
    largest scale's response above :data:`PEAK_DROP` of it: no blobs of their own size under the cells, e.g. evenly
    filled tissue, spots wider than nuclei), or not :data:`ON_BLOB_EFFECT` standard
    deviations above the response beside the cells (cells scattered among nuclei, not on them)."""
    scores = [float(_blob_response(nmap, s, points).mean()) for s in BLOB_SCALES]
    best = int(np.argmax(scores))
    if best == len(BLOB_SCALES) - 1 or not scores[best] > 0 or scores[-1] > PEAK_DROP * scores[best]:
        return None
    # the cells must sit on the blobs, not merely among them: the response at the cells against the response beside
    # them (each cell moved two blob radii in a random direction), which is as high for cells scattered at random
    s = BLOB_SCALES[best]
    turn = torch.as_tensor(np.random.default_rng(0).uniform(0, 2 * np.pi, len(points)), dtype=points.dtype,
                           device=points.device)
    beside = points + 2.0 * math.sqrt(2.0) * s * nmap.pixel * torch.stack([torch.sin(turn), torch.cos(turn)], 1)
    at_beside = _blob_response(nmap, s, beside)
    if not scores[best] - float(at_beside.mean()) > ON_BLOB_EFFECT * float(at_beside.std()):
        return None
    return s


def _smoother() -> torch.Tensor:
    """A separable Gaussian (σ one grid step) as a (1, 1, 7) kernel, unnormalised (peak 1)."""
    t = torch.arange(-3, 4, dtype=torch.float64)
    return torch.exp(-(t**2) / 2.0)[None, None]


def _field(c: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """(n_r, n_c, 2) coefficients → the smooth (n_r, n_c, 2) velocity increment."""
    x = c.permute(2, 0, 1)[:, None]  # (2, 1, n_r, n_c)
    pad = kernel.shape[-1] // 2
    x = torch.nn.functional.conv2d(x, kernel[..., None, :].to(x), padding=(0, pad))
    x = torch.nn.functional.conv2d(x, kernel[..., :, None].to(x), padding=(pad, 0))
    return x[:, 0].permute(1, 2, 0)


def fit_to_nuclei(A: np.ndarray, v: np.ndarray, xv: list, yx_um: np.ndarray, nmap: NucleiMap, *,
                  seed: int = 0, progress: ProgressCallback | None = None,
                  should_stop: StopPredicate | None = None, device: str | torch.device | None = None,
                  spacing_um: float | None = None) -> tuple[np.ndarray, dict]:
    """Refine the velocity field ``v`` (LDDMM's, on grid ``xv``; ``A`` fixed) so that the cells at ``yx_um``
    (row, col µm) land on the nuclei of ``nmap``. Returns the field (``v`` unchanged when refused or stopped) and a
    record: ``accepted``, ``blob_px`` (the nuclei's scale in image pixels), ``held_out`` ([before, after] per fold),
    ``steps`` (each fold's best step) and ``stopped``. ``progress`` receives a ``"nuclei"`` event per step (``value``:
    the held-out half's mean stain at the cells, ``repeat``: the fold); ``should_stop`` is polled once per step.
    ``device``: where to compute (:func:`~gala_engine.device.resolve_device`; float64 throughout). ``spacing_um``: the
    cells' median nearest-neighbour distance; refused when it is below the nuclei's scale (σ in µm): then the cells are
    not one per nucleus (e.g. a dense sample of the stain) and pulling them onto the brightest blobs collapses them."""
    dtype, dev = torch.float64, resolve_device(device)
    v0 = torch.as_tensor(np.asarray(v), dtype=dtype, device=dev)
    A_t = torch.as_tensor(np.asarray(A), dtype=dtype, device=dev)
    yx = torch.as_tensor(np.asarray(yx_um, dtype=np.float64), dtype=dtype, device=dev)
    record: dict = {"accepted": False, "blob_px": None, "held_out": [], "steps": [], "stopped": False}
    if len(yx) < 2 * FOLDS:
        return np.asarray(v), record
    with torch.no_grad():
        start = transform_points_target_to_source(xv, v0, A_t, yx)
    sigma = blob_scale(nmap, start)
    if sigma is None:
        return np.asarray(v), record
    record["blob_px"] = sigma * nmap.pixel
    um_per_px = math.sqrt(abs(float(np.linalg.det(np.asarray(A, dtype=np.float64)[:2, :2]))))
    if spacing_um is not None and np.isfinite(spacing_um) and spacing_um < record["blob_px"] * um_per_px:
        return np.asarray(v), record
    smooth = cv2.GaussianBlur(nmap.plane.astype(np.float32), (0, 0), sigmaX=sigma)
    smooth = (smooth - smooth.mean()) / max(float(smooth.std()), 1e-12)
    F = torch.as_tensor(smooth, dtype=dtype, device=dev)
    kernel = _smoother()
    order = torch.as_tensor(np.random.default_rng(seed).permutation(len(yx)), device=dev)
    folds = order.tensor_split(FOLDS)
    fits = []
    for k in range(FOLDS):
        fit_idx, val_idx = folds[k], torch.cat([f for j, f in enumerate(folds) if j != k])
        c = torch.zeros((*v0.shape[1:3], 2), dtype=dtype, device=dev, requires_grad=True)
        opt = torch.optim.Adam([c], lr=STEP_SIZE)
        best, best_step, first, since = None, 0, None, 0
        for step in range(STEPS + 1):
            points = transform_points_target_to_source(xv, v0 + _field(c, kernel)[None], A_t, yx)
            with torch.no_grad():
                held = float(_at(F, nmap.x, points[val_idx]).mean())
            if first is None:
                first = held
            if best is None or held > best[0]:
                best, best_step, since = (held, c.detach().clone()), step, 0
            else:
                since += 1
            emit(progress, ProgressEvent("nuclei", step + 1, STEPS + 1, held, None, k))
            if stopped(should_stop):
                record["stopped"] = True
                return np.asarray(v), record
            if step == STEPS or since >= PATIENCE:
                break
            loss = -_at(F, nmap.x, points[fit_idx]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        record["held_out"].append([first, best[0]])
        record["steps"].append(best_step)
        fits.append(best[1])
    if not all(after > before + MIN_GAIN for before, after in record["held_out"]):
        return np.asarray(v), record
    record["accepted"] = True
    with torch.no_grad():
        refined = v0 + _field(torch.stack(fits).mean(0), kernel)[None]
    return refined.cpu().numpy().astype(np.asarray(v).dtype), record
