"""TOML parameter files (the CLI's ``--params``, the app's export/import)."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomllib

from gala_engine.cli import main
from gala_engine.errors import GalaInputError
from gala_engine.paramfile import dumps_params, loads_params, read_params, write_params
from gala_engine.params import AlignParams


@pytest.mark.parametrize(
    "params", [AlignParams(), AlignParams.tutorial(), AlignParams(stop_criteria="saturate_5", sigmaM=0.5, a=12.0)]
)
def test_roundtrip(params: AlignParams, tmp_path: Path) -> None:
    path = write_params(params, tmp_path / "p.toml")
    assert read_params(path) == params
    data = tomllib.loads(dumps_params(params))
    defaults = AlignParams().to_dict()
    assert set(data) == {k for k, v in params.to_dict().items() if v is not None or defaults[k] is not None}
    assert all(data[k] == "none" for k, v in params.to_dict().items() if v is None and k in data)


def test_groups_and_partial_files() -> None:
    p = loads_params("[ga]\nnum_generations = 7\n[lddmm]\nnum_iterations = 0\nepV = 2\n")
    assert (p.num_generations, p.num_iterations, p.epV) == (7, 0, 2.0)
    assert p.sol_per_pop == AlignParams().sol_per_pop


@pytest.mark.parametrize(
    "text,needle",
    [
        ("num_generations = 0", "num_generations"),
        ("foo = 1", "unknown"),
        ("fitness = 'xyz'", "fitness"),
        ("a = [1, 2]", "single values"),
        ("x = ", "not valid TOML"),
    ],
)
def test_errors(text: str, needle: str) -> None:
    with pytest.raises(GalaInputError, match=needle):
        loads_params(text)


def test_params_command_writes_a_readable_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["params", str(tmp_path / "t.toml"), "--tutorial"]) == 0
    assert read_params(tmp_path / "t.toml") == AlignParams.tutorial()
    assert main(["params", "-"]) == 0
    assert "num_generations = 150" in capsys.readouterr().out
    assert main(["params", str(tmp_path / "x.toml"), "--params", str(tmp_path / "missing.toml")]) == 2
