"""The CLI's quality report (gala_engine.report: a PNG and a JSON) for a run in the app, made on demand."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import streamlit as st

from gala_engine.report import write_report

from . import state
from .data import Dataset, rasters, session_tmpdir
from .runs import file_stem, image_record, run_rasters

REPORTS = "gala_reports"  # (run id, dataset uid) → (png bytes, json text)


def cached(data: Dataset, run_id: int) -> tuple[bytes, str] | None:
    """The report already made for this run, or None."""
    return st.session_state.get(REPORTS, {}).get((run_id, data.uid))


def make(data: Dataset, run_id: int, result: Any, *, landmarks: Any = None,
         quality: dict | None = None) -> tuple[bytes, str]:
    """Write the report of one run (:func:`gala_engine.report.write_report`) in the session folder and return
    (PNG bytes, JSON text). Its overlap scores use the run's own rasters when this session made it, else
    the Data page's current ones; ``quality`` (:func:`ui.runs.run_quality`) adds the flags and the confidence map.
    The JSON names the user's files, never a server path."""
    r = run_rasters().get(run_id) or rasters(data, state.settings())
    stem = f"{file_stem(data)}_report_run{run_id}"
    with tempfile.TemporaryDirectory(dir=session_tmpdir()) as tmp:
        written = write_report(data.adata, data.image, r, result, tmp, name="report",
                               inputs={"cells": data.cells_file or data.name, "image": data.image_file},
                               landmarks=landmarks, quality=quality)
        png = Path(written["png"]).read_bytes()
        metrics = json.loads(Path(written["json"]).read_text(encoding="utf-8"))
    metrics["png"], metrics["json"] = f"{stem}.png", f"{stem}.json"
    metrics["image"] = image_record(data)
    text = json.dumps(metrics, indent=2)
    store = st.session_state.setdefault(REPORTS, {})
    if len(store) > 6:
        store.clear()
    store[(run_id, data.uid)] = (png, text)
    return png, text
