"""Make the three small "How it works" pictures of the Align page (ui/assets/how_*.png) from the MERFISH demo.

    OMP_NUM_THREADS=1 python scripts/make_howto_pictures.py

1. the two pictures the engine compares (image feature raster, cell raster);
2. the search: candidate poses of the cells' outline on the image, the best one thick;
3. the warp: a regular grid over the cells carried through a real (short) run's warp, its local
   displacement drawn 20× larger so it is visible at this size.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gala_engine.demo import load_demo  # noqa: E402
from gala_engine.io import read_image, spatial_yx  # noqa: E402
from gala_engine.params import AlignParams  # noqa: E402
from gala_engine.section import align_section, prepare_section  # noqa: E402

OUT = ROOT / "ui" / "assets"
SIDE = 320  # pixels of each picture's long side
EXAGGERATE = 20.0
PAD = 0.25  # share of the picture added around the image, so poses reaching past it show


def _gray(a: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(a, [1, 99.5])
    return (np.clip((a - lo) / max(hi - lo, 1e-9), 0, 1) * 255).astype(np.uint8)


def _fit(img: Image.Image, side: int) -> Image.Image:
    s = side / max(img.size)
    return img.resize((max(1, round(img.size[0] * s)), max(1, round(img.size[1] * s))), Image.LANCZOS)


def _background(image) -> tuple[Image.Image, float, np.ndarray]:
    """The demo image (grey, contrast-stretched) inside a dark margin, SIDE px wide; full-res pixels per picture
    pixel; the picture position of full-res pixel (0, 0)."""
    pix = image.pixels[..., 0] if image.pixels.shape[2] == 1 else image.pixels.mean(axis=2)
    inner = _fit(Image.fromarray(_gray(pix)).convert("RGB"), round(SIDE / (1 + 2 * PAD)))
    pad = round(inner.size[0] * PAD)
    img = Image.new("RGB", (inner.size[0] + 2 * pad, inner.size[1] + 2 * pad), (35, 35, 45))
    img.paste(inner, (pad, pad))
    return img, image.full_shape[1] / inner.size[0], np.array([pad, pad], float)


def pictures(r) -> Image.Image:
    """Step 1: image raster | cell raster, side by side."""
    a = _fit(Image.fromarray(_gray(np.asarray(r.I)[0])), SIDE // 2 - 4)
    b = _fit(Image.fromarray(_gray(np.asarray(r.J)[0])), SIDE // 2 - 4)
    out = Image.new("RGB", (SIDE, max(a.size[1], b.size[1])), "white")
    out.paste(a.convert("RGB"), (0, 0))
    out.paste(b.convert("RGB"), (SIDE // 2 + 4, 0))
    return out


def _outline(xy_um: np.ndarray, um_to_px: np.ndarray) -> np.ndarray:
    lo, hi = xy_um.min(axis=0), xy_um.max(axis=0)
    box = np.array([[lo[0], lo[1]], [hi[0], lo[1]], [hi[0], hi[1]], [lo[0], hi[1]], [lo[0], lo[1]]])
    return box @ um_to_px[:, :2].T + um_to_px[:, 2]


def search(image, xy_um: np.ndarray, um_to_px: np.ndarray) -> Image.Image:
    """Step 2: random candidate poses of the cells' outline (thin) and the best pose (thick)."""
    img, s, o = _background(image)
    draw = ImageDraw.Draw(img)
    best = _outline(xy_um, um_to_px)
    centre = best[:4].mean(axis=0)
    rng = np.random.default_rng(3)
    for _ in range(7):
        t = np.deg2rad(rng.uniform(-60, 60))
        rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]) * rng.uniform(0.6, 1.2)
        pts = (best - centre) @ rot.T + centre + rng.uniform(-0.2, 0.2, 2) * image.full_shape[::-1]
        draw.line([tuple(p / s + o) for p in pts], fill=(255, 160, 60), width=2)
    draw.line([tuple(p / s + o) for p in best], fill=(40, 220, 90), width=4)
    return img


def warp(image, xy_um: np.ndarray, result) -> Image.Image:
    """Step 3: a µm grid over the cells through the run's warp (local part exaggerated)."""
    img, s, o = _background(image)
    draw = ImageDraw.Draw(img)
    lo, hi = xy_um.min(axis=0), xy_um.max(axis=0)
    t = np.linspace(0, 1, 60)
    lines = [np.c_[np.full_like(t, x), lo[1] + t * (hi[1] - lo[1])] for x in np.linspace(lo[0], hi[0], 9)]
    lines += [np.c_[lo[0] + t * (hi[0] - lo[0]), np.full_like(t, y)] for y in np.linspace(lo[1], hi[1], 9)]
    for line in lines:
        affine = result.cells_to_image(line, deformed=False)
        warped = result.cells_to_image(line, deformed=True)
        pts = affine + EXAGGERATE * (warped - affine)
        draw.line([tuple(p / s + o) for p in pts], fill=(0, 229, 255), width=2)
    return img


def main() -> None:
    demo = load_demo("merfish_mini")
    image = read_image(demo.image_path, max_side=1200)
    r = prepare_section(demo.adata, image)
    xy_um = spatial_yx(demo.adata)[:, ::-1]
    result = align_section(r, AlignParams.fast_check(num_iterations=200, lddmm_validate=False, random_seed=0))
    OUT.mkdir(parents=True, exist_ok=True)
    for name, img in (("how_1_pictures.png", pictures(r)), ("how_2_search.png", search(image, xy_um, demo.um_to_px)),
                      ("how_3_warp.png", warp(image, xy_um, result))):
        img.save(OUT / name, optimize=True)
        print(OUT / name, img.size, (OUT / name).stat().st_size, "bytes")


if __name__ == "__main__":
    main()
