"""The job runner without Streamlit: progress buffering, errors, stop, one engine at a time."""

from __future__ import annotations

import threading
import time

import numpy as np

from gala_engine.errors import GalaInputError
from gala_engine.events import ProgressEvent
from gala_engine.params import AlignParams
from ui.jobs import history_row, start_job


class _Result:
    stopped = False
    fitness = 0.5
    score = 0.4
    device = "CPU"
    genes = np.zeros(5)


def _fake_runner(steps=5, delay=0.0, fail=None):
    def run(rasters, params, *, gene_space=None, progress=None, should_stop=None):
        if fail is not None:
            raise fail
        for i in range(steps):
            if should_stop():
                res = _Result()
                res.stopped = True
                return res
            progress(ProgressEvent("ga", i + 1, steps, 0.1 * i, genes=np.full(5, i), extra={"mean": 0.05 * i}))
            time.sleep(delay)
        progress(ProgressEvent("lddmm", 1, 1, 12.0, extra={"matching": 11.0, "regularisation": 1.0}))
        return _Result()

    return run


def test_events_are_buffered_and_the_result_kept():
    job = start_job(None, AlignParams(), runner=_fake_runner(), run_id=7)
    job.join(5)
    snap = job.snapshot()
    assert snap.state == "done" and snap.ga_best == [0.0, 0.1, 0.2, 0.30000000000000004, 0.4]
    assert snap.ga_mean[-1] == 0.2 and snap.energy == [12.0] and snap.genes[0] == 4
    row = history_row(job, truth_error_px=3.21)
    assert row["run"] == 7 and row["fitness"] == 0.5 and row["error_px (vs truth)"] == 3.2


def test_input_errors_and_crashes_become_messages():
    job = start_job(None, AlignParams(), runner=_fake_runner(fail=GalaInputError("target too flat")))
    job.join(5)
    assert job.state == "error" and job.error.startswith("target too flat (run #0 with parameters num_generations=")
    job = start_job(None, AlignParams(), runner=_fake_runner(fail=RuntimeError("boom")))
    job.join(5)
    assert job.state == "error" and "RuntimeError: boom" in job.error
    assert "sol_per_pop=100" in job.error and "Your data are unchanged" in job.error


def test_stop_ends_quickly():
    job = start_job(None, AlignParams(), runner=_fake_runner(steps=10_000, delay=0.01))
    time.sleep(0.2)
    job.stop()
    t0 = time.monotonic()
    job.join(5)
    assert time.monotonic() - t0 < 1.0 and job.state == "stopped"


def test_one_job_uses_the_engine_at_a_time():
    active, peak = [0], [0]
    lock = threading.Lock()

    def runner(*args, **kwargs):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.2)
        with lock:
            active[0] -= 1
        return _Result()

    jobs = [start_job(None, AlignParams(), runner=runner) for _ in range(3)]
    for job in jobs:
        job.join(5)
    assert peak[0] == 1 and all(j.state == "done" for j in jobs)


def test_the_count_scales_second_search_is_named_in_the_stage():
    from ui.align_live import stage_words

    def run(rasters, params, *, gene_space=None, progress=None, should_stop=None):
        progress(ProgressEvent("ga", 1, 2, 0.1))
        progress(ProgressEvent("ga", 2, 2, 0.2, extra={"count_scale": "log"}))
        return _Result()

    job = start_job(None, AlignParams(), runner=run, run_id=8)
    job.join(5)
    snap = job.snapshot()
    assert snap.stage == "ga · log counts" and snap.ga_best == [0.1, 0.2]
    assert stage_words(snap.stage) == "searching for the pose, again on log(1 + counts)"
    assert stage_words("ga") == "searching for the pose"
