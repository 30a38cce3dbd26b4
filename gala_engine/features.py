"""Image → feature raster (the alignment *source*): grayscale, Sobel magnitude, smooth, reduce."""

from __future__ import annotations

from typing import TypeVar

import cv2
import numpy as np
import torch

from .errors import GalaInputError
from .stain import estimate_stains, is_brightfield, stain_densities, unit_scale

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)
FeatureKind = str  # "auto", one of CHANNEL_KINDS, or several joined by "+", e.g. "hematoxylin+tissue"
CHANNEL_KINDS: tuple[str, ...] = ("sobel", "intensity", "inverted", "hematoxylin", "tissue")
AUTO_BRIGHTFIELD = "hematoxylin+tissue"
AUTO_FLUORESCENCE = "sobel"
# the choices a user is offered (app, CLI help); any '+'-joined combination of CHANNEL_KINDS is accepted
FEATURE_CHOICES: tuple[str, ...] = ("auto", "hematoxylin+tissue", "hematoxylin", "tissue", "sobel", "intensity",
                                    "inverted")


def resolve_feature(kind: str, pixels: np.ndarray) -> str:
    """``"auto"`` → from the image's content (:func:`stain.is_brightfield`), not its channel count: brightfield
    (stained tissue on a bright slide, H&E/IHC) → ``"hematoxylin+tissue"`` (the nuclei channel of a colour
    deconvolution, and the total stain), ``"inverted"`` for a grey brightfield image; fluorescence (DAPI) →
    ``"sobel"``. Other kinds (one channel or several joined by ``+``) are checked and returned unchanged."""
    channels = str(kind).split("+")
    if kind == "auto":
        if not is_brightfield(pixels):
            return AUTO_FLUORESCENCE
        colour = np.ndim(pixels) == 3 and np.shape(pixels)[-1] in (3, 4)
        return AUTO_BRIGHTFIELD if colour else "inverted"
    bad = [c for c in channels if c not in CHANNEL_KINDS]
    if bad or len(set(channels)) != len(channels):
        raise GalaInputError(f"Unknown image feature {kind!r}; use 'auto' or one or more of {CHANNEL_KINDS} "
                             "joined by '+'.")
    return kind


def check_feature(kind: str) -> str:
    """``kind`` if it names a feature (``"auto"``, a channel kind or several joined by ``+``), else a clear error."""
    return kind if kind == "auto" else resolve_feature(kind, np.zeros((2, 2)))


def normalize(values: ArrayT) -> ArrayT:
    """Min–max scale to [0, 1] (numpy or torch, dtype kept); a constant input gives zeros."""
    lo, hi = values.min(), values.max()
    span = hi - lo
    if float(span) <= 0:
        return values * 0
    return (values - lo) / span


def to_gray(pixels: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) → float32 (H, W) luminance in the input's scale."""
    arr = np.asarray(pixels)
    if arr.ndim == 2:
        return arr.astype(np.float32, copy=False)
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise GalaInputError(f"An image must be (H, W) or (H, W, 1|3|4), got shape {arr.shape}.")
    if arr.shape[2] == 1:
        return arr[..., 0].astype(np.float32, copy=False)
    # C order: the weighted sum's rounding follows the memory layout (an F-ordered image gave another gray)
    rgb = arr[..., :3].astype(np.float32, order="C", copy=False)
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def sobel_magnitude(gray: np.ndarray) -> np.ndarray:
    """Gradient magnitude from 3×3 Sobel filters (float32)."""
    reproducible_cv2()  # IPP's cv2.magnitude depends on where the buffers sit (the tutorial recipe calls this directly)
    gray = np.ascontiguousarray(gray, dtype=np.float32)
    gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3)
    return cv2.magnitude(gx, gy)


def reproducible_cv2() -> None:
    """Turn off OpenCV's Intel IPP paths in this thread (the flag is per thread): with them, ``cv2.Sobel`` and
    ``GaussianBlur`` results depend on where numpy happened to allocate the buffers (measured: 4 runs in 20 of
    the same Sobel differed), so the same run twice would not give the same raster (see gala_engine.replay)."""
    if cv2.ipp.useIPP():
        cv2.ipp.setUseIPP(False)


def feature_planes(pixels: np.ndarray, kind: FeatureKind = "auto") -> list[np.ndarray]:
    """The feature's planes at the image's loaded resolution, before any smoothing or reduction (float32, one per
    ``+``-joined kind; see :func:`image_feature`). Computed once, they serve every raster level of a section."""
    reproducible_cv2()
    kind = resolve_feature(kind, pixels)
    gray = to_gray(pixels)
    if min(gray.shape) < 2:
        raise GalaInputError(f"The image is too small ({gray.shape[0]}×{gray.shape[1]} pixels).")
    if not np.isfinite(gray).all():
        raise GalaInputError("The image contains NaN or infinite pixel values.")
    cache: dict = {}
    return [_channel(channel, pixels, gray, cache) for channel in kind.split("+")]


def image_feature(
    pixels: np.ndarray,
    *,
    reduce: int = 1,
    scale: float = 1.0,
    kind: FeatureKind = "auto",
    smooth: float = 0.0,
    planes: list[np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Make the normalised source raster from an image.

    Parameters
    ----------
    pixels
        The (possibly already downsampled) image, (H, W) or (H, W, C).
    reduce
        Working pixel = ``reduce`` × ``reduce`` loaded pixels (Gaussian-smoothed, then block-averaged).
    scale
        Full-resolution pixels per loaded pixel (from a downsampled read); keeps coordinates in
        full-resolution pixels.
    kind
        ``"sobel"`` (gradient magnitude, the published method), ``"intensity"`` (e.g. DAPI),
        ``"inverted"`` (darkness), ``"hematoxylin"`` (nuclei: colour deconvolution of a brightfield image),
        ``"tissue"`` (total stain optical density), several of them joined by ``+`` (one raster channel
        each), or ``"auto"`` (:func:`resolve_feature`).
    smooth
        Gaussian std (loaded pixels) of the feature before reduction, at least ``reduce / 2``; set it
        to the cell raster's blur seen in image pixels so both rasters show structure at one scale.
    planes
        This image's :func:`feature_planes` for ``kind``, when already computed (e.g. for several levels).

    Returns
    -------
    YI, XI, I
        Row and column pixel-centre coordinates in full-resolution image pixels (pixel centres at
        integers, origin at the top-left pixel) and the raster ``(C, h, w)`` float32 in [0, 1].
    """
    reproducible_cv2()
    if planes is None:
        planes = feature_planes(pixels, kind)
    reduce = max(int(reduce), 1)
    sigma = max(reduce / 2.0 if reduce > 1 else 0.0, float(smooth))
    h, w = planes[0].shape[0] // reduce, planes[0].shape[1] // reduce
    if reduce > 1 and min(h, w) < 2:
        raise GalaInputError("The image reduction is too strong for this image; lower it.")
    # a Gaussian and the block average commute: a blur of at least one working pixel is applied after the
    # reduction, on reduce² times fewer pixels with a reduce times narrower kernel (the same raster up to the
    # kernel's sampling)
    blur_after = reduce > 1 and sigma >= reduce
    reduced = []
    for feature in planes:
        if sigma > 0 and not blur_after:
            feature = cv2.GaussianBlur(feature, (0, 0), sigmaX=sigma)
        if reduce > 1:
            feature = cv2.resize(feature[: h * reduce, : w * reduce], (w, h), interpolation=cv2.INTER_AREA)
        if blur_after:
            feature = cv2.GaussianBlur(feature, (0, 0), sigmaX=sigma / reduce)
        reduced.append(normalize(feature.astype(np.float32)))
    feature = np.stack(reduced)
    # working pixel k covers loaded pixels [k*reduce, (k+1)*reduce): its centre in full-res pixels
    YI = (np.arange(feature.shape[1]) * reduce + (reduce - 1) / 2.0 + 0.5) * scale - 0.5
    XI = (np.arange(feature.shape[2]) * reduce + (reduce - 1) / 2.0 + 0.5) * scale - 0.5
    return YI, XI, feature


def _unit_rgb(pixels: np.ndarray) -> np.ndarray:
    """An RGB(A) image in any numeric scale → (H, W, 3) float32 in [0, 1] (integers by their dtype's range)."""
    arr = np.asarray(pixels)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise GalaInputError("The hematoxylin and tissue features need a colour (RGB) brightfield image; "
                             "for a one-channel image (e.g. DAPI) use 'sobel' or 'intensity'.")
    return unit_scale(arr[..., :3])


def _channel(kind: str, pixels: np.ndarray, gray: np.ndarray, cache: dict) -> np.ndarray:
    """One feature plane (float32, full loaded resolution) of the image; ``cache`` keeps the stain estimate and
    the stain densities (one optical-density pass gives both) between the channels of one image."""
    if kind == "sobel":
        return sobel_magnitude(gray)
    if kind == "intensity":
        return gray
    if kind == "inverted":
        return gray.max() - gray
    if "densities" not in cache:
        rgb = _unit_rgb(pixels)
        cache["densities"] = stain_densities(rgb, estimate_stains(rgb))
    hematoxylin, total = cache["densities"]
    return hematoxylin if kind == "hematoxylin" else total  # "tissue": all stain


GLASS_BINS = 64  # at most this many histogram bins over the smoothed total stain's range to find the empty slide
GLASS_BOTTOM = 0.1  # the empty-slide mode lies in the lowest 10 % of the range (glass carries ~no stain)
GLASS_DIP = 0.8  # the valley between the glass and the tissue modes: at most 80 % of the lower of the two


def stain_total(I: np.ndarray) -> np.ndarray:
    """(h, w) float32 in [0, 1]: the channels of a feature raster (C, h, w) summed, smoothed by a Gaussian of
    1/50 of its smaller side (texture → tissue) and min–max scaled: the map :func:`glass_split` splits."""
    reproducible_cv2()
    img = np.asarray(I, dtype=np.float32).sum(0)
    return normalize(cv2.GaussianBlur(img, (0, 0), sigmaX=max(min(img.shape) / 50.0, 1.0)))


def glass_split(total: np.ndarray) -> tuple[str, float | None]:
    """How the histogram of :func:`stain_total` shows empty slide: ``("glass", level)``, ``("tail", None)`` or
    ``("none", None)``.

    Empty slide (glass) is the least stained part of a brightfield image (the least-signal background of a
    fluorescence one): a histogram mode at the bottom of the range (within ``GLASS_BOTTOM``). ``"glass"``: the
    tissue has a mode of its own above it and the histogram dips between them to at most ``GLASS_DIP`` of both;
    ``level`` is the deepest point of that valley. Unlike Otsu's threshold it does not split the tissue itself when
    the tissue has two stain levels (IHC: pale hematoxylin counterstain and dark DAB, a trimodal histogram).
    ``"tail"``: a bottom mode whose signal falls off without a tissue mode as high as it (e.g. DAPI: the nuclei a
    long tail). ``"none"``: no bottom mode (a frame filled with tissue), or a higher tissue mode not separated
    from it (a little glass blurred into the tissue)."""
    bins = int(np.clip(np.sqrt(total.size) / 2.0, 16, GLASS_BINS))  # fewer bins on a small raster: ≥ 2√n pixels a bin
    hist, _ = np.histogram(total, bins=bins, range=(0.0, 1.0))
    h = cv2.GaussianBlur(hist.astype(np.float64)[None], (0, 0), sigmaX=1.0, borderType=cv2.BORDER_REFLECT)[0]
    heavy = 0.5 * total.size / bins  # half the mean bin: a mode of real pixels, not a tail's ripple
    glass = 0
    while glass + 1 < bins and h[glass + 1] > h[glass]:
        glass += 1  # the first mode from the unstained end
    if glass >= GLASS_BOTTOM * bins or h[glass] < heavy:
        return "none", None
    fall = glass
    while fall + 1 < bins and h[fall + 1] <= h[fall]:
        fall += 1
    main = fall + int(np.argmax(h[fall:]))  # the tissue's main mode, beyond the glass mode's slope
    if main == fall or h[main] < heavy:  # nothing rises again above the background's slope
        return "tail", None
    valley = glass + int(np.argmin(h[glass: main + 1]))
    if h[valley] > GLASS_DIP * min(h[glass], h[main]):  # no clear valley: tissue dominates, or ripples on a tail
        return ("none", None) if h[main] >= h[glass] else ("tail", None)
    return "glass", (valley + 0.5) / bins


def tissue_mask(I: np.ndarray) -> np.ndarray:
    """(h, w) float32 tissue mask of a feature raster (C, h, w): :func:`stain_total` above the empty slide's
    level (:func:`glass_split`), softened by a 1-pixel Gaussian (so a fitness reading it has sub-pixel gradients).

    A frame filled with tissue (:func:`glass_split` ``"none"``: no empty-slide mode, e.g. a tile inside the
    section) is tissue throughout: Otsu's split would call the paler half of the tissue "not tissue" (IHC's
    counterstain next to DAB; measured on a Ki67 tile: 43 % of the frame, and the QC flags read half of a right
    pose's cells as off the tissue). A ``"tail"`` (a fluorescence image's long bright tail) keeps Otsu's split of
    :func:`stain_total`: the stronger-signal part, e.g. the dense structure of a DAPI image."""
    total = stain_total(I)
    kind, level = glass_split(total)
    if kind == "none":
        return np.ones(total.shape, dtype=np.float32)
    if level is None:
        _, mask = cv2.threshold((total * 255).astype(np.uint8), 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    else:
        mask = total > level
    return cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigmaX=1.0)


def tissue_extent(I: np.ndarray, xI: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Bounding box of the tissue in a feature raster (:func:`tissue_mask`).

    Returns ``(lo, hi)`` as (row, col) coordinates in the units of ``xI``; the whole grid when no
    clear foreground is found.
    """
    rows, cols = np.nonzero(tissue_mask(I) > 0.5)
    full = (np.array([xI[0][0], xI[1][0]]), np.array([xI[0][-1], xI[1][-1]]))
    if rows.size < 4:
        return full
    lo = np.array([xI[0][np.percentile(rows, 0.5).astype(int)], xI[1][np.percentile(cols, 0.5).astype(int)]])
    hi = np.array([xI[0][np.percentile(rows, 99.5).astype(int)], xI[1][np.percentile(cols, 99.5).astype(int)]])
    return lo, hi
