"""The corpus of bad and awkward inputs (and its security sibling) through the command line and the batch runner.

Every case runs ``gala-align align`` in-process (:func:`gala_engine.cli.main`: exit code and stderr);
a few run as real subprocesses, so the exit code and the absence of a traceback are those a user sees.
The whole corpus also runs as one batch (one manifest row per case, on a threaded Dask LocalCluster), and
every parameter case of :data:`tests.corpus_security.PARAM_CASES` through ``align --params`` and a batch row.
Inputs keep their hashes; server files are never read.
"""

from __future__ import annotations

import re
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from gala_engine import constants
from gala_engine.batch import read_manifest, run_batch
from gala_engine.cli import main
from tests.corpus import Case, build_pair
from tests.corpus_security import (
    ALL_CASES,
    ALL_IDS,
    PARAM_CASES,
    PARAM_IDS,
    ParamCase,
    assert_server_files_unread,
    hashes,
)

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
SUBPROCESS = {"cells_nanometres", "image_png_bomb", "cells_all_zero_counts", "cells_hdf5_external_storage"}


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


def _inputs(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_file()]


@pytest.mark.parametrize("case", ALL_CASES, ids=ALL_IDS)
def test_cli_in_process(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _args(case, tmp_path)
    before = hashes(_inputs(tmp_path))
    code = main(args)
    _check_outcome(case, code, capsys.readouterr().err, tmp_path)
    assert hashes(list(before)) == before
    assert_server_files_unread(tmp_path)
    if case.check and case.ok and case.kind == "cells":
        case.check(ad.read_h5ad(tmp_path / "out.h5ad"))  # what the input held is in the output too


@pytest.mark.parametrize("name", sorted(SUBPROCESS))
def test_cli_subprocess(name: str, tmp_path: Path) -> None:
    case = next(c for c in ALL_CASES if c.name == name)
    proc = run_cli(*_args(case, tmp_path), timeout=180)
    _check_outcome(case, proc.returncode, proc.stderr, tmp_path)
    assert_server_files_unread(tmp_path)


def test_batch_runs_the_whole_corpus(tmp_path: Path) -> None:
    """One manifest row per case: every bad row fails alone with its message, every good row aligns."""
    (tmp_path / "tiny.toml").write_text(TINY_TOML)
    lines = ["section,image,h5ad,params,signal"]
    before: dict[Path, str] = {}
    for case in ALL_CASES:
        cells, image = build_pair(case, tmp_path / case.name)
        before.update(hashes([cells, image]))
        lines.append(f"{case.name},{image},{cells},tiny.toml,{case.signal}")
    (tmp_path / "manifest.csv").write_text("\n".join(lines) + "\n")
    rows = read_manifest(tmp_path / "manifest.csv")
    out = tmp_path / "aligned"
    records = {r["section"]: r for r in run_batch(rows, out, n_workers=2, processes=False)}
    for case in ALL_CASES:
        rec = records[case.name]
        if case.ok:
            assert rec["status"] == "ok", (case.name, rec["error"])
            assert ad.read_h5ad(out / f"{case.name}.h5ad").obsm[constants.ALIGNED_KEY].shape[1] == 2
        else:
            assert rec["status"] == "failed" and re.search(case.expect, rec["error"]), (case.name, rec["error"])
            assert "Traceback" not in rec["error"] and not (out / f"{case.name}.h5ad").exists()
        assert_server_files_unread(tmp_path / case.name, outputs=list(out.iterdir()))
    assert hashes(list(before)) == before


def _params_text(case: ParamCase) -> str:
    """TINY_TOML with the case's lines replacing the same names."""
    mine = {line.split("=")[0].strip() for line in case.toml.splitlines()}
    keep = [line for line in TINY_TOML.splitlines() if line.split("=")[0].strip() not in mine]
    return "\n".join([*keep, case.toml]) + "\n"


def _write_params(case: ParamCase, folder: Path) -> Path:
    path = folder / "params.toml"
    path.write_text(_params_text(case))
    return path


@pytest.mark.parametrize("case", PARAM_CASES, ids=PARAM_IDS)
def test_bad_parameters_refused_up_front(case: ParamCase, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GALA_MEMORY_BUDGET_GB", "2")
    good = next(c for c in ALL_CASES if c.name == "image_rgb_png")
    args = _args(good, tmp_path)
    args[args.index("--params") + 1] = str(_write_params(case, tmp_path))
    code = main(args)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("gala-align: error: "), err
    assert re.search(case.expect, lines[0]) and "Traceback" not in err, lines[0]
    assert not (tmp_path / "out.h5ad").exists()


def test_bad_parameters_in_a_batch_fail_their_row_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GALA_MEMORY_BUDGET_GB", "2")
    good = next(c for c in ALL_CASES if c.name == "image_rgb_png")
    cells, image = build_pair(good, tmp_path)
    lines = ["section,image,h5ad,params"]
    for case in PARAM_CASES:
        (tmp_path / f"{case.name}.toml").write_text(_params_text(case))
        lines.append(f"{case.name},{image},{cells},{case.name}.toml")
    (tmp_path / "tiny.toml").write_text(TINY_TOML)
    lines.append(f"good,{image},{cells},tiny.toml")
    (tmp_path / "manifest.csv").write_text("\n".join(lines) + "\n")
    records = {r["section"]: r for r in run_batch(read_manifest(tmp_path / "manifest.csv"), tmp_path / "out",
                                                   n_workers=1, processes=False)}
    assert records["good"]["status"] == "ok"
    for case in PARAM_CASES:
        rec = records[case.name]
        assert rec["status"] == "failed" and re.search(case.expect, rec["error"]), (case.name, rec["error"])
