"""The corpus of bad and awkward inputs through the command line.

Every case runs ``gala-align align`` in-process (:func:`gala_engine.cli.main`: exit code and stderr);
three run as real subprocesses, so the exit code and the absence of a traceback are those a user sees.
"""

from __future__ import annotations

import re
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from gala_engine import constants
from gala_engine.cli import main
from tests.corpus import CASE_IDS, CASES, Case, build_pair

from .conftest import run_cli

TINY_TOML = """\
num_generations = 2
sol_per_pop = 8
num_parents_mating = 4
ga_restarts = 1
refine_iterations = 0
seed_population = false
num_iterations = 0
"""
SUBPROCESS = {"cells_nanometres", "image_png_bomb", "cells_all_zero_counts"}


def _args(case: Case, folder: Path) -> list[str]:
    cells, image = build_pair(case, folder)
    (folder / "tiny.toml").write_text(TINY_TOML)
    return ["align", "--image", str(image), "--h5ad", str(cells), "--out", str(folder / "out.h5ad"),
            "--params", str(folder / "tiny.toml"), "--signal", case.signal, "--device", "cpu", "-q"]


def _check_outcome(case: Case, code: int, stderr: str, folder: Path) -> None:
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    if not case.ok:
        assert code == 2, (code, stderr)
        assert lines and lines[-1].startswith("gala-align: error: "), stderr
        assert re.search(case.expect, lines[-1]), lines[-1]
        assert not (folder / "out.h5ad").exists()
        return
    assert code == 0, stderr
    warnings = [ln for ln in lines if ln.startswith("gala-align: warning: ")]
    if case.warn:
        assert any(re.search(case.warn, w) for w in warnings), stderr
    else:
        assert not warnings, stderr
    out = ad.read_h5ad(folder / "out.h5ad")
    assert out.obsm[constants.ALIGNED_KEY].shape == (out.n_obs, 2)
    assert np.isfinite(out.obsm[constants.ALIGNED_KEY]).all()


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_cli_in_process(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _args(case, tmp_path)
    code = main(args)
    _check_outcome(case, code, capsys.readouterr().err, tmp_path)


@pytest.mark.parametrize("name", sorted(SUBPROCESS))
def test_cli_subprocess(name: str, tmp_path: Path) -> None:
    case = next(c for c in CASES if c.name == name)
    proc = run_cli(*_args(case, tmp_path), timeout=180)
    _check_outcome(case, proc.returncode, proc.stderr, tmp_path)
