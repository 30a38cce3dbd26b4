"""Output paths (issue 15, items 5–7): never an input, a special file or an unasked overwrite; checked
before any work; a late failure keeps the result and says where; stale temporaries are cleaned."""

from __future__ import annotations

import os
import re
from pathlib import Path

import anndata as ad
import pytest

from gala_engine import constants
from gala_engine import io as gala_io
from gala_engine.batch import read_manifest, run_batch
from gala_engine.cli import main
from gala_engine.errors import GalaInputError
from tests.corpus import good_cells, good_image
from tests.corpus_security import hashes

TINY = "num_generations = 2\nsol_per_pop = 8\nnum_parents_mating = 4\nga_restarts = 1\nrefine_iterations = 0\n" \
       "seed_population = false\nnum_iterations = 0\n"


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    params = tmp_path / "tiny.toml"
    params.write_text(TINY)
    return {"cells": good_cells(tmp_path), "image": good_image(tmp_path), "params": params}


def _align(inputs: dict[str, Path], out: Path | str, *extra: str) -> list[str]:
    return ["align", "--image", str(inputs["image"]), "--h5ad", str(inputs["cells"]), "--out", str(out),
            "--params", str(inputs["params"]), "--device", "cpu", "-q", *extra]


def _refused(capsys: pytest.CaptureFixture[str], args: list[str], pattern: str) -> str:
    code = main(args)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


def test_out_equal_to_params_is_refused(inputs, capsys) -> None:
    before = hashes(list(inputs.values()))
    _refused(capsys, _align(inputs, inputs["params"]), r"--out .*tiny.toml is an input file")
    _refused(capsys, _align(inputs, inputs["params"], "--overwrite"), r"is an input file")  # never, even so
    assert hashes(list(inputs.values())) == before


def test_report_never_overwrites_an_input_or_an_existing_file(inputs, tmp_path, capsys) -> None:
    report = tmp_path / "rep"
    report.mkdir()
    (report / "gala_report.png").write_bytes(inputs["image"].read_bytes())
    protected = hashes([report / "gala_report.png"])
    _refused(capsys, _align(inputs, tmp_path / "out.h5ad", "--report", str(report)),
             r"--report .*gala_report.png already exists; pass --overwrite")
    assert not (tmp_path / "out.h5ad").exists() and hashes([report / "gala_report.png"]) == protected
    # the input image itself named as a report file
    image_as_report = dict(inputs, image=report / "gala_report.png")
    _refused(capsys, _align(image_as_report, tmp_path / "out.h5ad", "--report", str(report), "--overwrite"),
             r"--report .*gala_report.png is an input file")
    assert hashes([report / "gala_report.png"]) == protected


def test_report_that_is_a_file_is_refused_before_work(inputs, tmp_path, capsys) -> None:
    (tmp_path / "rep.txt").write_text("notes")
    _refused(capsys, _align(inputs, tmp_path / "out.h5ad", "--report", str(tmp_path / "rep.txt")),
             r"--report .*rep.txt is a file, not a folder")
    assert not (tmp_path / "out.h5ad").exists()


def test_out_onto_a_fifo_or_device_is_refused(inputs, tmp_path, capsys) -> None:
    fifo = tmp_path / "pipe.h5ad"
    os.mkfifo(fifo)
    _refused(capsys, _align(inputs, fifo, "--overwrite"), r"is a FIFO \(named pipe\); give a regular file")
    assert fifo.is_fifo()
    _refused(capsys, _align(inputs, "/dev/null", "--overwrite"), r"/dev/null is a device")
    assert Path("/dev/null").is_char_device()


def test_inputs_that_are_folders_or_fifos_are_named_so(inputs, tmp_path, capsys) -> None:
    fifo = tmp_path / "cells_fifo.h5ad"
    os.mkfifo(fifo)
    _refused(capsys, _align(dict(inputs, cells=fifo), tmp_path / "o.h5ad"), r"is a FIFO \(named pipe\), not a regular")
    _refused(capsys, _align(dict(inputs, image=tmp_path), tmp_path / "o.h5ad"), r"image file .* is a folder")
    _refused(capsys, _align(dict(inputs, params=tmp_path), tmp_path / "o.h5ad"), r"parameter file .* is a folder")


def test_existing_output_needs_overwrite(inputs, tmp_path, capsys) -> None:
    out = tmp_path / "out.h5ad"
    out.write_text("earlier result")
    _refused(capsys, _align(inputs, out), r"out.h5ad already exists; pass --overwrite")
    assert out.read_text() == "earlier result"
    assert main(_align(inputs, out, "--overwrite")) == 0
    assert ad.read_h5ad(out).obsm[constants.ALIGNED_KEY].shape[1] == 2


def test_params_command_never_overwrites_its_input(tmp_path, capsys) -> None:
    p = tmp_path / "p.toml"
    p.write_text(TINY)
    _refused(capsys, ["params", str(p), "--params", str(p), "--overwrite"], r"is an input file")
    _refused(capsys, ["params", str(p)], r"already exists; pass --overwrite")
    assert p.read_text() == TINY
    assert main(["params", str(tmp_path / "new.toml")]) == 0


def test_late_write_failure_keeps_the_result_and_says_where(inputs, tmp_path, capsys, monkeypatch) -> None:
    real = gala_io.write_h5ad_atomic  # what align_files writes the aligned .h5ad with
    out = tmp_path / "out.h5ad"

    def full_disk(adata, path, **kw):
        if Path(path) == out:
            raise OSError(28, "No space left on device")
        return real(adata, path, **kw)

    monkeypatch.setattr(gala_io, "write_h5ad_atomic", full_disk)
    line = _refused(capsys, _align(inputs, out), r"could not write the aligned .h5ad to .*No space left on device.*"
                                                 r"it was kept in (\S+): move it")
    kept = Path(re.search(r"kept in (\S+):", line).group(1))
    try:
        assert ad.read_h5ad(kept).obsm[constants.ALIGNED_KEY].shape[1] == 2 and not out.exists()
    finally:
        kept.unlink(missing_ok=True)


def test_stale_temporaries_of_a_killed_run_are_cleaned(inputs, tmp_path) -> None:
    out = tmp_path / "out.h5ad"
    stale = tmp_path / ".out.h5ad.999999999-abcd1234.tmp"  # a pid that cannot be running
    stale.write_bytes(b"half a file")
    live = tmp_path / f".out.h5ad.{os.getpid()}-zzzz.tmp"  # ours: a write in progress is left alone
    live.write_bytes(b"in progress")
    assert main(_align(inputs, out)) == 0
    assert not stale.exists() and live.exists() and out.exists()


# ------------------------------------------------------------------------------------ batch


def _manifest(path: Path, rows: list[str]) -> Path:
    path.write_text("section,image,h5ad,params\n" + "\n".join(rows) + "\n")
    return path


def test_batch_output_named_after_another_rows_input_is_refused(tmp_path, capsys) -> None:
    """Section 'cells2' writes cells2.h5ad into --out = the inputs' folder: that is row 2's input."""
    (tmp_path / "tiny.toml").write_text(TINY)
    image = good_image(tmp_path)
    a = good_cells(tmp_path).rename(tmp_path / "cells1.h5ad")
    b = good_cells(tmp_path).rename(tmp_path / "cells2.h5ad")
    man = _manifest(tmp_path / "m.csv", [f"cells2,{image},{a},tiny.toml", f"other,{image},{b},tiny.toml"])
    before = hashes([a, b])
    _refused(capsys, ["batch", str(man), "--out", str(tmp_path), "--threads", "-q", "--overwrite"],
             r"section 'cells2': output .*cells2.h5ad is an input file")
    assert hashes([a, b]) == before and not (tmp_path / "summary.csv").exists()


def test_batch_name_collisions_get_unique_names(tmp_path) -> None:
    (tmp_path / "tiny.toml").write_text(TINY)
    image, cells = good_image(tmp_path), good_cells(tmp_path)
    man = _manifest(tmp_path / "m.csv", [f"x,{image},{cells},tiny.toml", f"x,{image},{cells},tiny.toml",
                                         f"x_2,{image},{cells},tiny.toml", f"X,{image},{cells},tiny.toml"])
    rows = read_manifest(man)
    names = [r.section for r in rows]
    assert len({n.casefold() for n in names}) == 4, names
    records = run_batch(rows, tmp_path / "out", n_workers=1, processes=False)
    assert [r["status"] for r in records] == ["ok"] * 4
    assert len({r["output"] for r in records}) == 4


def test_batch_existing_outputs_need_overwrite(tmp_path) -> None:
    (tmp_path / "tiny.toml").write_text(TINY)
    image, cells = good_image(tmp_path), good_cells(tmp_path)
    rows = read_manifest(_manifest(tmp_path / "m.csv", [f"s1,{image},{cells},tiny.toml"]))
    run_batch(rows, tmp_path / "out", n_workers=1, processes=False)
    with pytest.raises(GalaInputError, match=r"already exists; pass --overwrite"):
        run_batch(rows, tmp_path / "out", n_workers=1, processes=False)
    assert run_batch(rows, tmp_path / "out", n_workers=1, processes=False, overwrite=True)[0]["status"] == "ok"


@pytest.mark.parametrize("encoding", ["utf-16", "cp1252", "utf-8-sig"])
def test_manifests_in_other_encodings(tmp_path, encoding) -> None:
    (tmp_path / "tiny.toml").write_text(TINY)
    image, cells = good_image(tmp_path), good_cells(tmp_path)
    text = f"section,image,h5ad,params\nsection_é,{image.name},{cells.name},tiny.toml\n"
    (tmp_path / "m.csv").write_bytes(text.encode(encoding))
    rows = read_manifest(tmp_path / "m.csv")
    assert len(rows) == 1 and not rows[0].error and Path(rows[0].h5ad) == cells


def test_manifest_image_options(tmp_path) -> None:
    image, cells = good_image(tmp_path), good_cells(tmp_path)
    (tmp_path / "m.csv").write_text(f"image,h5ad,channel,series,plane\n{image},{cells},1,0,2\n{image},{cells},x,,\n")
    rows = read_manifest(tmp_path / "m.csv")
    assert rows[0].options == {"channel": 1, "series": 0, "plane": 2} and not rows[0].error
    assert re.search(r"row 2: channel must be a whole number", rows[1].error)
