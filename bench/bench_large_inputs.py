"""Large inputs with bounded memory: a 20k×20k RGB TIFF (single level and pyramidal) and 300k cells.

Writes the images band by band into a temporary folder (the generator never holds the image), then
measures each step in a fresh child process (so peak RSS is that step's own): the image read through
``read_image(max_side=...)``, and ``check_cells`` + ``rasterize`` of 300k cells. Prints peak memory
(tracemalloc: numpy + Python allocations; and the child's peak RSS above its post-import baseline) and
ratios against the naive full read of the same image (uint8 decode and float64 copy, computed, not
run). Nothing is asserted.

    python bench/bench_large_inputs.py                # 20k × 20k, 300k cells
    python bench/bench_large_inputs.py --side 8000    # a quicker run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TILE = 512
MB = 2**20


# ------------------------------------------------------------------------------------- inputs


def _pattern(y0: int, x0: int, h: int, w: int, step: int, side: int) -> np.ndarray:
    """H&E-like RGB uint8 for full-resolution rows y0.. and columns x0.. sampled every ``step`` pixels."""
    y = (y0 + step * np.arange(h, dtype=np.float32))[:, None] / side
    x = (x0 + step * np.arange(w, dtype=np.float32))[None, :] / side
    tissue = ((y - 0.5) ** 2 + (x - 0.5) ** 2 < 0.16).astype(np.float32)
    nuclei = 0.5 + 0.5 * np.sin(x * 900.0) * np.sin(y * 700.0)
    dark = tissue * (0.35 + 0.4 * nuclei)
    rgb = np.stack([235 - 90 * dark, 225 - 170 * dark, 235 - 70 * dark], -1)
    return rgb.astype(np.uint8)


def _tiles(side: int, step: int):
    n = -(-side // step)
    for ty in range(0, n, TILE):
        for tx in range(0, n, TILE):
            h, w = min(TILE, n - ty), min(TILE, n - tx)
            tile = np.full((TILE, TILE, 3), 255, np.uint8)
            tile[:h, :w] = _pattern(ty * step, tx * step, h, w, step, side)
            yield tile


def write_tiff(path: Path, side: int, *, pyramid: bool) -> float:
    """A tiled zlib RGB TIFF of side×side pixels (+ SubIFD levels ÷2, ÷4, ÷8); returns seconds."""
    import tifffile

    t0 = time.perf_counter()
    steps = (1, 2, 4, 8) if pyramid else (1,)
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for i, step in enumerate(steps):
            n = -(-side // step)
            kw = {"subifds": len(steps) - 1} if (i == 0 and pyramid) else ({"subfiletype": 1} if i else {})
            tw.write(_tiles(side, step), shape=(n, n, 3), dtype=np.uint8, tile=(TILE, TILE), photometric="rgb",
                     compression="zlib", compressionargs={"level": 1}, **kw)
    return time.perf_counter() - t0


def write_cells(path: Path, n: int) -> None:
    """``n`` cells over a 10 × 10 mm section (µm), 300 genes of sparse Poisson counts."""
    import anndata as ad
    from scipy import sparse

    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 10_000, (n, 2))
    counts = sparse.random(n, 300, density=0.05, format="csr", random_state=1, dtype=np.float32)
    counts.data = rng.poisson(3, counts.data.size).astype(np.float32) + 1
    adata = ad.AnnData(counts)
    adata.obsm["spatial"] = xy
    adata.write_h5ad(path)


# ----------------------------------------------------------------------------- child: measure


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _reset_peak_rss() -> float:
    """Reset the kernel's peak-RSS mark (Linux) and return the current RSS (MB) as the baseline."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return _maxrss_mb()
    return _status_mb("VmRSS") or _maxrss_mb()


def _peak_rss_mb() -> float:
    return _status_mb("VmHWM") or _maxrss_mb()


def measure(kind: str, path: str, max_side: int) -> dict:
    """One measured step, in this (fresh) process."""
    import anndata  # noqa: F401 - imported before the baseline: its import is not the step's memory
    import tifffile  # noqa: F401
    import zarr  # noqa: F401

    from gala_engine.checks import check_cells
    from gala_engine.io import read_cells, read_image, spatial_yx
    from gala_engine.raster import choose_dx, rasterize

    base = _reset_peak_rss()
    tracemalloc.start()
    t0 = time.perf_counter()
    out: dict = {}
    if kind == "image":
        img = read_image(path, max_side=max_side)
        out.update(loaded=list(img.pixels.shape), scale=img.scale, full=list(img.full_shape),
                   loaded_mb=img.pixels.nbytes / MB)
    else:
        t_read = time.perf_counter()
        adata = read_cells(path)
        out["read_s"] = time.perf_counter() - t_read
        t_chk = time.perf_counter()
        found = check_cells(adata)
        out["check_s"] = time.perf_counter() - t_chk
        yx = spatial_yx(adata)
        from gala_engine.io import cell_signal

        weights = cell_signal(adata, found.signal)
        t_r = time.perf_counter()
        dx = choose_dx(yx[:, 1], yx[:, 0])
        X, Y, J = rasterize(yx[:, 1], yx[:, 0], g=weights, dx=dx, blur=1.0)
        out.update(rasterize_s=time.perf_counter() - t_r, raster=list(J.shape), dx=dx, n=int(adata.n_obs),
                   spacing_um=found.spacing_um)
    out["seconds"] = time.perf_counter() - t0
    out["tracemalloc_peak_mb"] = tracemalloc.get_traced_memory()[1] / MB
    tracemalloc.stop()
    out["rss_peak_over_baseline_mb"] = _peak_rss_mb() - base
    return out


def _child(kind: str, path: Path, max_side: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--measure", kind, str(path), "--max-side", str(max_side)],
                          capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        raise RuntimeError(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------- main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--side", type=int, default=20_000, help="image side in pixels (default 20000)")
    p.add_argument("--cells", type=int, default=300_000, help="number of cells (default 300000)")
    p.add_argument("--max-side", type=int, default=4096, help="read_image max_side (the app uses 4096)")
    p.add_argument("--measure", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure[0], args.measure[1], args.max_side)))
        return

    tmp = Path(tempfile.mkdtemp(prefix="gala_bench_large_"))
    try:
        side = args.side
        full_u8 = side * side * 3 / MB
        full_f64 = full_u8 * 8
        print(f"image {side}×{side} RGB: uint8 decode {full_u8:,.0f} MB, float64 copy {full_f64:,.0f} MB "
              f"(naive full read; not run)")
        for pyramid in (False, True):
            path = tmp / ("pyramid.tif" if pyramid else "flat.tif")
            t_write = write_tiff(path, side, pyramid=pyramid)
            print(f"\n{'pyramidal (÷1, ÷2, ÷4, ÷8 SubIFDs)' if pyramid else 'single-level'} tiled zlib TIFF: "
                  f"{path.stat().st_size / MB:,.1f} MB on disk, written in {t_write:.1f} s "
                  f"(generator peak RSS {_maxrss_mb():,.0f} MB, whole process)")
            for max_side in sorted({args.max_side, 1024}, reverse=True):
                r = _child("image", path, max_side)
                peak = max(r["tracemalloc_peak_mb"], r["rss_peak_over_baseline_mb"])
                print(f"  read_image(max_side={max_side}): {r['seconds']:.1f} s → {r['loaded'][1]}×{r['loaded'][0]}"
                      f" (scale {r['scale']:g}, {r['loaded_mb']:,.0f} MB float32); peak tracemalloc "
                      f"{r['tracemalloc_peak_mb']:,.0f} MB, peak RSS +{r['rss_peak_over_baseline_mb']:,.0f} MB; "
                      f"peak / float64 copy = {peak / full_f64:.3f}, peak / uint8 decode = {peak / full_u8:.2f}")
            path.unlink()

        cells = tmp / "cells.h5ad"
        write_cells(cells, args.cells)
        r = _child("cells", cells, args.max_side)
        print(f"\n{r['n']:,} cells ({cells.stat().st_size / MB:,.0f} MB .h5ad): read {r['read_s']:.2f} s, "
              f"check_cells {r['check_s']:.2f} s (spacing {r['spacing_um']:.1f} µm), rasterize "
              f"{r['rasterize_s']:.2f} s → {r['raster'][2]}×{r['raster'][1]} px at dx={r['dx']:g} µm; "
              f"total {r['seconds']:.2f} s; peak tracemalloc {r['tracemalloc_peak_mb']:,.0f} MB, "
              f"peak RSS +{r['rss_peak_over_baseline_mb']:,.0f} MB")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
