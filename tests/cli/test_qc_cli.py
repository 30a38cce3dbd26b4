"""Quality flags and per-cell confidence from the CLI (issue 13): ``uns['gala']['qc']``, ``obs['gala_confidence']``,
``gala_report.json``'s ``"qc"`` and the verdict on stderr, all from one ``align`` run (the shared synthetic run)."""

from __future__ import annotations

import json

import numpy as np

from gala_engine import constants
from gala_engine.io import read_cells
from gala_engine.qc import VERDICTS

from .conftest import Run, Synth


def test_align_writes_qc_and_confidence(synth_run: Run, synth: Synth) -> None:
    assert synth_run.proc.returncode == 0, synth_run.proc.stderr
    out = read_cells(synth_run.out)
    qc = out.uns[constants.UNS_KEY]["qc"]
    assert qc["verdict"] in VERDICTS
    flags = qc["flags"]
    assert {"outside_image", "outside_tissue", "dice", "scale", "margin", "deformation"} <= set(flags)
    assert all(f["verdict"] in VERDICTS for f in flags.values())
    # a right alignment (the synthetic section is recovered to a fraction of a pixel by the CLI tests): ok
    d = np.linalg.norm(np.asarray(out.obsm[constants.ALIGNED_KEY]) - synth.truth_xy, axis=1)
    assert np.median(d) < 2.0
    assert qc["verdict"] == "ok", qc["summary"]
    conf = np.asarray(out.obs[constants.CONFIDENCE_KEY], dtype=np.float64)
    assert conf.shape == (out.n_obs,) and np.all(np.isfinite(conf)) and conf.min() >= 0 and conf.max() <= 1
    assert np.median(conf) > 0.3  # right: the DAPI texture follows the cells around most of them
    report = json.loads((synth_run.report / "gala_report.json").read_text())
    assert report["qc"]["verdict"] == qc["verdict"]
    assert report["qc"]["flags"]["outside_image"]["fraction"] == flags["outside_image"]["fraction"]
    assert f"quality: {qc['verdict']}" in synth_run.proc.stderr
