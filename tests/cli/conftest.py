"""Fixtures of the CLI tests: a synthetic known-transform section, fast parameter files, a runner."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import cv2
import numpy as np
import pytest

from gala_engine.demo import DEMO_DIR
from gala_engine.io import read_image

DAPI = DEMO_DIR / "merfish_mini" / "mini_dataset_dapi_z1.jpg"
MERFISH_H5AD = DEMO_DIR / "merfish_mini" / "vizgen_mini_cells_z1.h5ad"
REPO = Path(__file__).resolve().parents[2]

# fast settings (seconds on 2 CPUs); the same names as AlignParams / the tutorial
FAST_TOML = """\
num_generations = 40
ga_restarts = 2
refine_iterations = 150
num_iterations = 0
"""
SYNTH_TOML = """\
num_generations = 30
ga_restarts = 1
refine_iterations = 100
num_iterations = 15
"""


def run_cli(*args: str | os.PathLike[str], timeout: float = 240) -> subprocess.CompletedProcess:
    """``python -m gala_engine ARGS`` as a subprocess (text output captured)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    return subprocess.run(
        [sys.executable, "-m", "gala_engine", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=env,
    )


@dataclass
class Synth:
    image: Path  # PNG
    h5ad: Path
    truth_xy: np.ndarray  # (N, 2) true (x, y) positions in the PNG's pixels
    A: np.ndarray  # 3×3 (row, col) px → µm


def make_synth(
    folder: Path,
    *,
    angle: float = 25.0,
    scale: float = 1.6,
    shift=(300.0, -150.0),
    n_cells: int = 3000,
    seed: int = 0,
    name: str = "synth",
) -> Synth:
    """Cells sampled where a real DAPI image (reduced to ≤ 400 px) is bright, mapped to µm by a known
    rotation + isotropic scale + shift; the image is written as a PNG, the cells as an .h5ad."""
    gray = read_image(DAPI, max_side=400).pixels[..., 0]
    rng = np.random.default_rng(seed)
    prob = gray.ravel().astype(np.float64) ** 2
    idx = rng.choice(prob.size, n_cells, p=prob / prob.sum())
    rc = np.stack([idx // gray.shape[1], idx % gray.shape[1]], 1) + rng.uniform(-0.5, 0.5, (n_cells, 2))
    t = np.deg2rad(angle)
    L = scale * np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    A = np.eye(3)
    A[:2, :2], A[:2, 2] = L, shift
    um_rc = rc @ L.T + np.asarray(shift)
    image = folder / f"{name}.png"
    cv2.imwrite(str(image), np.round(gray * 255).astype(np.uint8))
    counts = rng.poisson(20, size=(n_cells, 5)).astype(np.float32) + 1
    adata = ad.AnnData(counts)
    adata.obs_names = [f"c{i}" for i in range(n_cells)]
    adata.var_names = [f"g{i}" for i in range(5)]
    adata.obsm["spatial"] = um_rc[:, ::-1].copy()
    h5ad = folder / f"{name}.h5ad"
    adata.write_h5ad(h5ad)
    return Synth(image, h5ad, rc[:, ::-1].copy(), A)


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    return make_synth(tmp_path_factory.mktemp("synth"))


@pytest.fixture(scope="session")
def param_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("params")
    (d / "fast.toml").write_text(FAST_TOML)
    (d / "synth.toml").write_text(SYNTH_TOML)
    return {"fast": d / "fast.toml", "synth": d / "synth.toml"}


@dataclass
class Run:
    proc: subprocess.CompletedProcess
    out: Path
    report: Path


@pytest.fixture(scope="session")
def synth_run(synth: Synth, param_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Run:
    """``align`` on the synthetic section with a short LDDMM and a report (run once per session)."""
    d = tmp_path_factory.mktemp("synth_run")
    out, report = d / "aligned.h5ad", d / "report"
    proc = run_cli(
        "align",
        "--image",
        synth.image,
        "--h5ad",
        synth.h5ad,
        "--out",
        out,
        "--params",
        param_files["synth"],
        "--report",
        report,
        "--device",
        "cpu",
    )
    return Run(proc, out, report)
