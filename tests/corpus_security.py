"""The security and data-safety sibling of :mod:`tests.corpus` (issue 15), built by code.

:data:`SECURITY_CASES` are more input files in the same :class:`~tests.corpus.Case` form — uploads that
reach outside themselves (HDF5 external links, external storage, virtual datasets) and inputs that used
to be aligned silently wrong or to crash (sparse ``obsm['spatial']``, 3 cells, collinear cells, ragged
``uns``, EXIF rotation, a thumbnail first page, a label series first, a Z-stack with a blank first plane, a
1-bit image, an image without contrast). :data:`ALL_CASES` (the 46 of the corpus plus these 16) run through
the engine API, the CLI, the batch runner and the app (``tests/*/test_corpus.py``).

Cases with ``server_file`` write a "server file" (:func:`server_files`) outside the upload that the upload
points to; :func:`assert_server_files_unread` checks after a run that it was never opened (its access time
is unchanged; it was set older than its modification time, so any read updates it under ``relatime``) and
that its bytes appear in no file the run wrote.

:data:`PARAM_CASES` are parameter values that must be refused up front with one clear line.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import tifffile
from PIL import Image
from scipy import sparse

from gala_engine import constants
from tests.corpus import CASES, Case, _cells, _raw, base_adata, base_rgb

SECRET = b"SERVER-SECRET-7f3a9c-" * 64  # the bytes of the server file; must never appear in any output
SERVER = "server"  # sub-folder of a case's folder standing for the rest of the server


def server_files(folder: Path) -> tuple[Path, Path]:
    """A raw server file and an HDF5 server file (both holding :data:`SECRET`), outside the upload's folder."""
    root = folder / SERVER
    root.mkdir(parents=True, exist_ok=True)
    raw, h5 = root / "secret.bin", root / "secret.h5"
    if not raw.exists():
        raw.write_bytes(SECRET)
        with h5py.File(h5, "w") as f:
            f["x"] = np.frombuffer(SECRET, np.uint8)
        past = os.stat(raw).st_mtime - 3600  # atime < mtime: under relatime any read updates atime
        for p in (raw, h5):
            os.utime(p, (past, os.stat(p).st_mtime))
    return raw, h5


def assert_server_files_unread(folder: Path, outputs: list[Path] | None = None) -> None:
    """The server files were never opened, and their bytes are in none of ``outputs`` (default: every file
    under ``folder`` outside the server folder)."""
    root = folder / SERVER
    if not root.exists():
        return
    for p in root.iterdir():
        st = p.stat()
        assert st.st_atime < st.st_mtime, f"{p.name} was read"
    files = outputs if outputs is not None else [p for p in folder.rglob("*") if p.is_file() and SERVER not in p.parts]
    marker = SECRET[:21]
    for p in files:
        if p.is_file():
            assert marker not in p.read_bytes(), f"the server file's bytes leaked into {p}"


def hashes(paths: list[Path]) -> dict[Path, str]:
    """SHA-256 of each file (inputs must keep theirs)."""
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


# ------------------------------------------------------------------------------ cells builders


def _patched_h5ad(name: str, patch: Callable[[h5py.File, Path], None]) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        path = folder / f"{name}.h5ad"
        base_adata().write_h5ad(path)
        with h5py.File(path, "a") as f:
            patch(f, folder)
        return path

    return build


def _external_link(f: h5py.File, folder: Path) -> None:
    f["uns/leak"] = h5py.ExternalLink(str(server_files(folder)[1]), "/x")


def _external_storage(f: h5py.File, folder: Path) -> None:
    f.create_dataset("uns/leak", shape=(len(SECRET),), dtype="u1", external=[(str(server_files(folder)[0]), 0,
                                                                               len(SECRET))])


def _virtual(f: h5py.File, folder: Path) -> None:
    layout = h5py.VirtualLayout(shape=(len(SECRET),), dtype="u1")
    layout[:] = h5py.VirtualSource(str(server_files(folder)[1]), "x", shape=(len(SECRET),))
    f.create_virtual_dataset("uns/leak", layout)


def _external_obs_column(f: h5py.File, folder: Path) -> None:
    """The link replaces a real column (read by anndata in every case, not only when uns is used)."""
    del f["obs/_index"]
    f["obs/_index"] = h5py.ExternalLink(str(server_files(folder)[1]), "/x")


def _plugin_filter(f: h5py.File, folder: Path) -> None:
    """A dataset whose pipeline names filter 32001 (Blosc): reading it would load a plugin shared library."""
    from h5py import h5d, h5p, h5s, h5t, h5z

    dcpl = h5p.create(h5p.DATASET_CREATE)
    dcpl.set_chunk((4,))
    dcpl.set_filter(32001, h5z.FLAG_OPTIONAL, (0,))  # optional: HDF5 writes it unfiltered, the name stays
    dset = h5d.create(f["uns"].id, b"plugin", h5t.NATIVE_DOUBLE, h5s.create_simple((8,)), dcpl=dcpl)
    dset.write(h5s.ALL, h5s.ALL, np.arange(8.0))


def _sparse_spatial(a: ad.AnnData) -> None:
    a.obsm[constants.SPATIAL_KEY] = sparse.csr_matrix(np.asarray(a.obsm[constants.SPATIAL_KEY]))


def _collinear(a: ad.AnnData) -> None:
    n = a.n_obs
    a.obsm[constants.SPATIAL_KEY] = np.c_[np.arange(n) * 12.0 + 500.0, np.full(n, 800.0)]


def _ragged_check(a: ad.AnnData) -> None:
    rows = a.uns["vlen"]  # an object array as read; a dict of its rows once written by GALA
    rows = [rows[k] for k in sorted(rows, key=int)] if isinstance(rows, dict) else list(rows)
    assert [len(row) for row in rows] == [2, 1, 3]


def _vlen_uns(folder: Path) -> Path:
    """A ragged (variable-length) array in uns, as h5py writes one; anndata reads it as an object array."""
    path = folder / "vlen.h5ad"
    base_adata().write_h5ad(path)
    with h5py.File(path, "a") as f:
        d = f.create_dataset("uns/vlen", (3,), dtype=h5py.vlen_dtype(np.dtype("float64")))
        d[0], d[1], d[2] = [1.0, 2.0], [3.0], [4.0, 5.0, 6.0]
    return path


# ------------------------------------------------------------------------------ image builders


def _exif_rotated(folder: Path) -> bytes:
    img = Image.fromarray(base_rgb())
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def _exif_check(img) -> None:
    assert img.pixels.shape == (128, 96, 3) and img.full_shape == (128, 96)
    want = np.rot90(base_rgb(), k=-1) / 255.0  # as displayed
    assert np.abs(img.pixels - want).mean() < 0.03


def _thumbnail_first(folder: Path) -> bytes:
    buf = io.BytesIO()
    with tifffile.TiffWriter(buf) as tw:
        tw.write(base_rgb()[::8, ::8].copy(), photometric="rgb")
        tw.write(np.repeat(np.repeat(base_rgb(), 4, 0), 4, 1), photometric="rgb")
    return buf.getvalue()


def _thumbnail_check(img) -> None:
    assert img.full_shape == (384, 512) and img.pixels.shape[2] == 3


def _label_first(folder: Path) -> bytes:
    buf = io.BytesIO()
    labels = (np.indices((96, 128)).sum(0) // 16 % 7).astype(np.uint8)
    with tifffile.TiffWriter(buf, ome=True) as tw:
        tw.write(labels, metadata={"Name": "label"})
        tw.write(base_rgb(), photometric="rgb", metadata={"Name": "tissue"})
    return buf.getvalue()


def _rgb_check(img) -> None:
    assert img.pixels.shape == (96, 128, 3)
    np.testing.assert_allclose(img.pixels, base_rgb() / 255.0, atol=0.02)


def _black_first_plane(folder: Path) -> bytes:
    z = np.stack([np.zeros((96, 128), np.uint8), base_rgb()[..., 0], base_rgb()[..., 1]])
    buf = io.BytesIO()
    tifffile.imwrite(buf, z, photometric="minisblack", metadata={"axes": "ZYX"})
    return buf.getvalue()


def _plane1_check(img) -> None:
    np.testing.assert_allclose(img.pixels[..., 0], base_rgb()[..., 0] / 255.0, atol=1e-6)


def _one_bit(folder: Path) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(base_rgb()[..., 1] > 120).save(buf, format="PNG")
    return buf.getvalue()


def _no_contrast(folder: Path) -> bytes:
    arr = np.full((96, 128), 128, np.uint8)
    arr[::40, ::40] = 255  # a few hot pixels: the range is wide, the content flat
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


C, I = "cells", "image"
_OUTSIDE = r"is refused: .*{what}.*self-contained copy"
SECURITY_CASES: list[Case] = [
    # --- 1. uploads that reach outside themselves
    Case("cells_hdf5_external_link", C, _patched_h5ad("extlink", _external_link),
         _OUTSIDE.format(what="external link to another file")),
    Case("cells_hdf5_external_link_in_obs", C, _patched_h5ad("extobs", _external_obs_column),
         _OUTSIDE.format(what="external link to another file")),
    Case("cells_hdf5_external_storage", C, _patched_h5ad("efile", _external_storage),
         _OUTSIDE.format(what="stored in external raw files")),
    Case("cells_hdf5_virtual_dataset", C, _patched_h5ad("vds", _virtual),
         _OUTSIDE.format(what="virtual dataset mapped from other files")),
    Case("cells_hdf5_plugin_filter", C, _patched_h5ad("plugin", _plugin_filter),
         _OUTSIDE.format(what="HDF5 filter 32001, which loads a plugin library")),
    # --- 10. below what an alignment can determine
    Case("cells_three_cells", C, _cells("three", lambda a: a[:3].copy()), r"3 cells at 3 distinct.*at least 10"),
    Case("cells_collinear", C, _cells("line", _collinear), r"lie \(almost\) on a straight line.*spread over an area"),
    Case("cells_few_cells", C, _cells("few", lambda a: None, n=30), "ok", warn=r"only 30 cells.*unreliable"),
    # --- 11. awkward cells files
    Case("cells_sparse_spatial", C, _cells("sparsexy", _sparse_spatial), r"scipy sparse matrix.*\.toarray\(\)"),
    Case("cells_ragged_vlen_uns", C, _vlen_uns, "ok", check=_ragged_check),
    # --- 9. images: as displayed, the right series / plane
    Case("image_exif_rotated_jpeg", I, _raw("rotated.jpg", _exif_rotated), "ok", check=_exif_check),
    Case("image_thumbnail_first_page", I, _raw("thumbfirst.tif", _thumbnail_first), "ok",
         warn=r"holds 2 images.*using series 1, the largest", check=_thumbnail_check),
    Case("image_ome_label_series_first", I, _raw("labelfirst.ome.tif", _label_first), "ok",
         warn=r"holds 2 images.*using series 1", check=_rgb_check),
    Case("image_zstack_black_first_plane", I, _raw("zstack.tif", _black_first_plane), "ok",
         warn=r"stack of 3 planes; using plane 1 \(planes 0–0 are blank\)", check=_plane1_check),
    # --- 10. images an alignment cannot trust
    Case("image_1bit", I, _raw("bw.png", _one_bit), "ok", warn=r"1-bit \(black and white\).*8- or 16-bit"),
    Case("image_no_contrast", I, _raw("flat.png", _no_contrast), "ok", warn=r"almost no contrast.*unreliable"),
]

SERVER_FILE_CASES = {c.name for c in SECURITY_CASES if c.name.startswith("cells_hdf5_")}
ALL_CASES: list[Case] = [*CASES, *SECURITY_CASES]
ALL_IDS = [c.name for c in ALL_CASES]


# ------------------------------------------------------------------------------ parameters


@dataclass(frozen=True)
class ParamCase:
    """A parameter file line that must be refused before any work (``expect``: regex of the message)."""

    name: str
    toml: str
    expect: str
    app: dict | None = None  # the same value entered in the app's Align form, where the form can produce it


PARAM_CASES: list[ParamCase] = [
    ParamCase("iterations_nan", "num_iterations = nan", r"num_iterations must be a finite number"),
    ParamCase("seed_negative", "random_seed = -1", r"random_seed must be ≥ 0"),
    ParamCase("seed_float", "random_seed = 3.7", r"random_seed must be a whole number"),
    ParamCase("device_tpu", 'device = "tpu"', r"device must be 'cpu', 'cuda'"),
    ParamCase("stop_criteria_bogus", 'stop_criteria = "bogus_7"', r"stop_criteria must be one of"),
    ParamCase("a_zero", "a = 0", r"a must be > 0", app={"a": 0.0}),
    ParamCase("ga_blur_inf", "ga_blur = inf", r"ga_blur must be a finite number"),
    ParamCase("mutation_nan", "mutation_probability = nan", r"mutation_probability must be a finite number"),
    ParamCase("generations_text", 'num_generations = "30"', r"num_generations must be a number \(not text"),
    ParamCase("generations_fraction", "num_generations = 30.5", r"num_generations must be a whole number"),
    ParamCase("contrast_yes", 'contrast = "yes"', r"contrast must be true or false"),
    ParamCase("contrast_false_text", 'contrast = "false"', r"contrast must be true or false"),
    ParamCase("generations_huge", "num_generations = 1_000_000_000", r"would take about .* more than the budget"),
    ParamCase("population_huge", "sol_per_pop = 10_000_000", r"memory .*GA population.*more than the budget",
              app={"sol_per_pop": 10_000_000}),
    ParamCase("velocity_grid_huge", "a = 0.001", r"memory .*velocity grid.*more than the budget",
              app={"a": 0.001}),
    ParamCase("ga_pixels_huge", "ga_max_pixels = 100000\nsol_per_pop = 5000",
              r"memory .*GA population × ga_max_pixels.*more than the budget"),
]
PARAM_IDS = [c.name for c in PARAM_CASES]
