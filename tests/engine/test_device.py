"""The app's CPU sharing: torch leaves a core to the web server unless OMP_NUM_THREADS says otherwise."""

from __future__ import annotations

import os

import torch

from gala_engine.device import share_cpu_with_server


def test_one_core_is_left_to_the_server_unless_omp_num_threads_is_set(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setattr(os, "cpu_count", lambda: 8)
        assert share_cpu_with_server() == 7
        monkeypatch.setattr(os, "cpu_count", lambda: 1)
        assert share_cpu_with_server() == 1  # never zero
        torch.set_num_threads(3)
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        monkeypatch.setattr(os, "cpu_count", lambda: 8)
        assert share_cpu_with_server() == 3  # the operator's choice wins
    finally:
        torch.set_num_threads(before)
