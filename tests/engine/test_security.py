"""Issue 15 beyond the corpus: transform .npz files (zip bombs, nesting, header types), the memory / time
budget of every size-driving input (with the peak memory of real runs), HDF5 links inside a file,
image series / plane / channel choice."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gala_engine.budget import Budget, check_align, check_prepare
from gala_engine.errors import GalaInputError
from gala_engine.h5safety import check_self_contained
from gala_engine.io import LoadedImage, read_image, spatial_yx
from gala_engine.params import AlignParams
from gala_engine.section import AlignmentResult, prepare_section
from tests.corpus import base_adata, base_rgb, good_cells, good_image

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------- transform .npz


def _result() -> AlignmentResult:
    return AlignmentResult(A=np.eye(3), A_affine=np.eye(3), v=np.zeros((3, 4, 5, 2)),
                           xv=[np.arange(4.0), np.arange(5.0)], genes=np.zeros(5), fitness=0.5, score=0.4,
                           params=AlignParams().to_dict(), ga_history=[{"best": [0.1, 0.2]}],
                           energy_history=[[1.0, 2.0, 3.0]])


def _npz(path: Path, **over) -> Path:
    arrays = dict(A=np.eye(3), A_affine=np.eye(3), v=np.zeros((3, 4, 5, 2)), xv_rows=np.arange(4.0),
                  xv_cols=np.arange(5.0), genes=np.zeros(5),
                  header=np.array(json.dumps({"fitness": 0.5, "score": 0.4, "params": {}})))
    arrays.update(over)
    np.savez_compressed(path, **arrays)
    return path


def test_transform_round_trip(tmp_path: Path) -> None:
    back = AlignmentResult.load_npz(_result().save_npz(tmp_path / "r.npz"))
    assert back.fitness == 0.5 and back.params == AlignParams().to_dict() and back.v.shape == (3, 4, 5, 2)


def test_zip_bomb_is_refused_before_decompressing(tmp_path: Path) -> None:
    bomb = _npz(tmp_path / "bomb.npz", v=np.zeros((1, 8000, 8000, 2)))  # 1 GB of zeros in ~1 MB
    assert bomb.stat().st_size < 4 * 2**20
    import tracemalloc

    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(GalaInputError, match=r"v.npy declares 1,024,000,128 bytes"):
        AlignmentResult.load_npz(bomb)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 16 * 2**20 and time.perf_counter() - t0 < 2.0, peak


def test_highly_compressed_member_is_refused(tmp_path: Path) -> None:
    bomb = _npz(tmp_path / "ratio.npz", v=np.zeros((1, 2000, 2000, 2)))  # 64 MB, under the size limit
    with pytest.raises(GalaInputError, match=r"compressed .*×, a zip bomb"):
        AlignmentResult.load_npz(bomb)


def test_deeply_nested_header_is_refused_without_recursion(tmp_path: Path) -> None:
    deep = _npz(tmp_path / "deep.npz", header=np.array("[" * 200_000 + "]" * 200_000))
    with pytest.raises(GalaInputError, match=r"nested more than 16 levels"):
        AlignmentResult.load_npz(deep)


@pytest.mark.parametrize(("header", "pattern"), [
    ({"fitness": "not a number", "score": 0.4, "params": {}}, r"'fitness' is str"),
    ({"fitness": 0.5, "score": 0.4, "params": {"num_generations": "many"}}, r"parameters are invalid"),
    ({"fitness": 0.5, "score": 0.4, "params": {}, "stopped": "no"}, r"'stopped' is str"),
    ({"fitness": 0.5, "score": 0.4, "params": {}, "evil": 1}, r"unknown header fields \['evil'\]"),
    ({"fitness": 0.5, "params": {}}, r"header fields missing \['score'\]"),
    ({"fitness": 0.5, "score": 0.4, "params": {}, "energy_history": [["x"]]}, r"energy_history"),
    ([1, 2], r"not a JSON object"),
])
def test_wrong_headers_are_refused(tmp_path: Path, header, pattern) -> None:
    with pytest.raises(GalaInputError, match=pattern):
        AlignmentResult.load_npz(_npz(tmp_path / "h.npz", header=np.array(json.dumps(header))))


def test_wrong_arrays_are_refused(tmp_path: Path) -> None:
    with pytest.raises(GalaInputError, match=r"A has shape \(2, 2\)"):
        AlignmentResult.load_npz(_npz(tmp_path / "a.npz", A=np.eye(2)))
    with pytest.raises(GalaInputError, match=r"does not match its grid"):
        AlignmentResult.load_npz(_npz(tmp_path / "v.npz", v=np.zeros((3, 9, 9, 2))))
    with pytest.raises(GalaInputError, match=r"unexpected members \['extra.npy'\]"):
        AlignmentResult.load_npz(_npz(tmp_path / "x.npz", extra=np.zeros(3)))


# ------------------------------------------------------------------------------- budgets


def _image() -> LoadedImage:
    return LoadedImage(base_rgb() / 255.0, 1.0, (96, 128), "x")


@pytest.mark.parametrize(("dx", "pattern"), [
    (1e6, r"dx=1e\+06 µm is larger than the tissue: the cell raster would be 2×2.*smaller dx"),
    (1000.0, r"larger than the tissue"),
    (0.01, r"cell raster \(more than 64,000,000 pixels\); use a larger dx"),
    (float("nan"), r"dx must be a positive number"),
    (-3.0, r"dx must be a positive number"),
])
def test_dx_outside_the_budget_is_refused_at_once(dx, pattern) -> None:
    t0 = time.perf_counter()
    with pytest.raises(GalaInputError, match=pattern):
        prepare_section(base_adata(), _image(), dx=dx)
    assert time.perf_counter() - t0 < 2.0


def test_blur_kernel_from_dx_is_budgeted() -> None:
    """A large image and a dx just small enough for a raster: the image blur grows with dx."""
    image = LoadedImage(np.zeros((4096, 4096, 1), np.float32), 1.0, (4096, 4096), "x")
    yx = spatial_yx(base_adata())
    with pytest.raises(GalaInputError, match=r"memory \(mostly the image blur kernel \(dx\)\).*use a smaller dx"):
        check_prepare(yx, image, dx=70.0, budget=Budget(2**30, 3600.0))
    check_prepare(yx, image, dx=None, budget=Budget(2**30, 3600.0))  # the automatic dx fits


@pytest.mark.parametrize(("params", "pattern"), [
    (AlignParams(num_generations=10**9), r"would take about .*GA generations"),
    (AlignParams(num_iterations=10**9), r"would take about .*LDDMM iterations"),
    (AlignParams(refine_iterations=10**10), r"would take about .*affine refinement"),
    (AlignParams(sol_per_pop=10**7), r"memory \(mostly the GA population"),
    (AlignParams(a=1e-3), r"memory \(mostly the LDDMM velocity grid"),
    (AlignParams(ga_max_pixels=10**5, sol_per_pop=5000), r"memory \(mostly the GA population × ga_max_pixels"),
    (AlignParams(num_repeats=10**6), r"would take about"),
    (AlignParams(scan_iterations=10**9), r"would take about .*pose scan"),
])
def test_alignment_parameters_outside_the_budget_are_refused(params, pattern) -> None:
    rasters = prepare_section(base_adata(), _image())
    with pytest.raises(GalaInputError, match=pattern):
        check_align(rasters, params, budget=Budget(2 * 2**30, 24 * 3600.0))


def test_the_defaults_and_the_tutorial_fit_the_budget() -> None:
    rasters = prepare_section(base_adata(), _image())
    for p in (AlignParams(), AlignParams.tutorial()):
        est = check_align(rasters, p, budget=Budget(2**30, 900.0))
        assert est.memory_bytes < 2**30 and est.seconds < 900


def test_budget_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("GALA_MEMORY_BUDGET_GB", "1.5")
    monkeypatch.setenv("GALA_TIME_BUDGET_S", "60")
    assert Budget.default() == Budget(int(1.5 * 2**30), 60.0)
    monkeypatch.setenv("GALA_MEMORY_BUDGET_GB", "lots")
    with pytest.raises(GalaInputError, match="GALA_MEMORY_BUDGET_GB must be a number"):
        Budget.default()


# the child's own peak: VmHWM of its (post-exec) address space. Not getrusage's ru_maxrss, which Linux carries over
# from the forking parent: under a full pytest run (> 1.5 GiB resident) every child then "peaked" at pytest's size
_PEAK = ("import re, sys\nfrom gala_engine.cli import main\ncode = main(sys.argv[1:])\n"
         "hwm = re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1)\n"
         "print('PEAK_KB', hwm, file=sys.stderr)\nsys.exit(code)\n")


@pytest.mark.parametrize(("extra", "params", "pattern"), [
    (["--dx", "1e6"], "", r"larger than the tissue"),
    ([], "sol_per_pop = 10000000\n", r"memory .*more than the budget"),
    ([], "a = 0.001\n", r"memory .*velocity grid.*more than the budget"),
    ([], "num_generations = 5\nsol_per_pop = 8\nnum_parents_mating = 4\nnum_iterations = 5\n", None),
])
def test_peak_memory_of_real_runs_stays_under_the_budget(tmp_path: Path, extra, params, pattern) -> None:
    """The CLI in a fresh process under a 1.5 GiB budget: refused cases end fast, the run fits."""
    budget_gb = 1.5
    toml = tmp_path / "p.toml"
    toml.write_text(params)
    env = {**os.environ, "GALA_MEMORY_BUDGET_GB": str(budget_gb), "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "2"}
    args = ["align", "--image", str(good_image(tmp_path)), "--h5ad", str(good_cells(tmp_path)), "--out",
            str(tmp_path / "out.h5ad"), "--params", str(toml), "--device", "cpu", "-q", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _PEAK, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    peak_kb = int(re.search(r"PEAK_KB (\d+)", proc.stderr).group(1))
    assert peak_kb * 1024 < budget_gb * 2**30, peak_kb
    if pattern is None:
        assert proc.returncode == 0, proc.stderr
    else:
        assert proc.returncode == 2 and re.search(pattern, proc.stderr), proc.stderr
        assert time.perf_counter() - t0 < 60 and not (tmp_path / "out.h5ad").exists()


# ------------------------------------------------------------------------------- HDF5 links


def test_soft_links_and_shared_objects_inside_the_file_are_fine(tmp_path: Path) -> None:
    import h5py

    path = good_cells(tmp_path)
    with h5py.File(path, "a") as f:
        f["uns/soft"] = h5py.SoftLink("/obsm")
        f["uns/hard"] = f["obsm"]  # a second hard link: a cycle-free walk visits it once
        f["uns/dangling"] = h5py.SoftLink("/nowhere")
    check_self_contained(path)


# ------------------------------------------------------------------------------- image choice


def test_channel_series_plane_from_the_command_line(tmp_path: Path, capsys) -> None:
    import tifffile

    from gala_engine.cli import main

    stack = np.stack([base_rgb()[..., 0], base_rgb()[..., 1], np.zeros((96, 128), np.uint8)])
    tifffile.imwrite(tmp_path / "z.tif", stack, photometric="minisblack", metadata={"axes": "ZYX"})
    assert "z.tif is a stack of 3 planes; using plane 1" in read_image(tmp_path / "z.tif", plane=1).notes[0]
    with pytest.raises(GalaInputError, match=r"plane=7 asked for, but .*z.tif has 3 plane\(s\)"):
        read_image(tmp_path / "z.tif", plane=7)
    with pytest.raises(GalaInputError, match=r"series=3 asked for"):
        read_image(tmp_path / "z.tif", series=3)
    (tmp_path / "p.toml").write_text("num_generations = 2\nsol_per_pop = 8\nnum_parents_mating = 4\n"
                                     "ga_restarts = 1\nrefine_iterations = 0\nnum_iterations = 0\n")
    base = ["align", "--image", str(tmp_path / "z.tif"), "--h5ad", str(good_cells(tmp_path)), "--params",
            str(tmp_path / "p.toml"), "--device", "cpu", "-q"]
    assert main([*base, "--out", str(tmp_path / "a.h5ad"), "--plane", "1", "--series", "0"]) == 0
    assert main([*base, "--out", str(tmp_path / "b.h5ad"), "--plane", "2"]) == 2
    assert re.search(r"blank", capsys.readouterr().err)
    five = np.stack([base_rgb()[..., 0]] * 5).astype(np.uint16)
    tifffile.imwrite(tmp_path / "c.tif", five, metadata={"axes": "CYX"})
    base[2] = str(tmp_path / "c.tif")
    assert main([*base, "--out", str(tmp_path / "c.h5ad"), "--channel", "3"]) == 0
