"""The app's presets are AlignParams settings: standard = the defaults, thorough = the published tutorial's,
fast check = a short search without a warp; they round-trip through the CLI's TOML file."""

from __future__ import annotations

import pytest

from gala_engine.errors import GalaInputError
from gala_engine.paramfile import dumps_params, loads_params
from gala_engine.params import PRESETS, AlignParams


def test_presets_map_onto_the_engine_settings():
    assert AlignParams.preset("standard") == AlignParams()
    assert AlignParams.preset("thorough (published settings)") == AlignParams.tutorial()
    fast = AlignParams.preset("fast check")
    std = AlignParams()
    assert fast.num_iterations == 0 and fast.ga_restarts == 1
    assert fast.num_generations * fast.sol_per_pop < std.num_generations * std.sol_per_pop
    assert AlignParams.preset("fast check", random_seed=3).random_seed == 3
    for name in PRESETS:
        assert loads_params(dumps_params(AlignParams.preset(name))) == AlignParams.preset(name)
    with pytest.raises(GalaInputError, match="unknown preset"):
        AlignParams.preset("quick")
