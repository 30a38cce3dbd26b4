"""The corpus of bad and awkward inputs through the engine API: read → check → rasters."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from gala_engine.checks import check_cells, check_image
from gala_engine.errors import GalaInputError
from gala_engine.io import read_cells, read_image
from gala_engine.section import prepare_section
from tests.corpus import CASE_IDS, CASES, Case, build_pair
from tests.corpus_security import ALL_CASES, ALL_IDS, SERVER_FILE_CASES, assert_server_files_unread, hashes


def _load(case: Case, cells: Path, image: Path):
    adata = read_cells(cells)
    img = read_image(image)
    chk = check_cells(adata, signal=case.signal, name=cells.name)
    warnings = chk.warnings + check_image(img)
    rasters = prepare_section(adata, img, signal=chk.signal)
    return adata, img, warnings, rasters


def test_corpus_is_large_and_mixed() -> None:
    assert len(CASES) >= 30 and len(set(CASE_IDS)) == len(CASES)
    ok = [c for c in CASES if c.ok]
    assert len(ok) >= 10 and len(CASES) - len(ok) >= 20
    assert {c.kind for c in CASES} == {"cells", "image"}


def test_security_sibling_covers_issue_15() -> None:
    assert len(ALL_CASES) >= len(CASES) + 15 and len(set(ALL_IDS)) == len(ALL_CASES)
    assert len(SERVER_FILE_CASES) >= 4


@pytest.mark.parametrize("case", ALL_CASES, ids=ALL_IDS)
def test_engine_api(case: Case, tmp_path: Path) -> None:
    cells, image = build_pair(case, tmp_path)
    before = hashes([cells, image])
    if not case.ok:
        with pytest.raises(GalaInputError, match=case.expect) as info:
            _load(case, cells, image)
        msg = str(info.value)
        assert "Traceback" not in msg and len(msg) > 30
    else:
        adata, img, warnings, rasters = _load(case, cells, image)
        assert rasters.J.max() > 0 and np.isfinite(rasters.I).all() and np.isfinite(rasters.J).all()
        if case.warn:
            assert any(re.search(case.warn, w) for w in warnings), warnings
        else:
            assert not warnings, warnings
        if case.check:
            case.check(img if case.kind == "image" else adata)
    assert hashes([cells, image]) == before  # inputs are never modified
    assert_server_files_unread(tmp_path)
