"""Landmarks in a real browser: on visium_tiny (which the images alone do not align), click 3 pairs on the
image and the cells, align from them, and read the overlay's distance to the truth on the Viewer."""

from __future__ import annotations

import re
import time

import anndata
import numpy as np
import pytest
from playwright.sync_api import Page, expect

from gala_engine.demo import load_demo, truth_px_xy
from gala_engine.landmarks import read_xenium_matrix

from .conftest import SCREENSHOTS
from .test_app_e2e import _nav, _settled

pytestmark = pytest.mark.e2e
expect.set_options(timeout=60_000)

# page position of a data point in the plotly chart whose title starts with `title`
_TO_PAGE = """([title, x, y]) => {
  for (const el of document.querySelectorAll('.js-plotly-plot')) {
    const t = el.layout && el.layout.title && el.layout.title.text;
    if (!t || !t.startsWith(title) || !el._fullLayout) continue;
    const xa = el._fullLayout.xaxis, ya = el._fullLayout.yaxis, bb = el.getBoundingClientRect();
    return [bb.left + xa._offset + xa.d2p(x), bb.top + ya._offset + ya.d2p(y)];
  }
  return null;
}"""


def _click(page: Page, title: str, x: float, y: float) -> None:
    pos = page.evaluate(_TO_PAGE, [title, float(x), float(y)])
    assert pos is not None, f"no chart titled {title!r}"
    page.mouse.move(pos[0], pos[1])
    page.wait_for_timeout(250)  # plotly picks the hovered point on click
    page.mouse.click(pos[0], pos[1])
    page.wait_for_timeout(400)
    _settled(page)


def test_three_pairs_align_visium_tiny(page: Page, app_url: str, tmp_path):
    page.set_default_timeout(60_000)
    page.goto(app_url)
    _settled(page)
    page.get_by_test_id("stSelectbox").first.click()
    page.get_by_role("option", name=re.compile("^visium_tiny")).click()
    page.get_by_role("button", name="Load demo data").click()
    expect(page.get_by_text("Loaded: demo: visium_tiny")).to_be_visible()
    _settled(page)

    _nav(page, "Landmarks")
    expect(page.get_by_text("Image: click a point")).to_be_visible()
    page.wait_for_timeout(1000)
    demo = load_demo("visium_tiny")
    um = np.asarray(demo.adata.obsm["spatial"], np.float64)
    truth = truth_px_xy(demo)
    # three spots far apart: the extreme ones along x + y and x − y
    s, d = um.sum(1), um[:, 0] - um[:, 1]
    picks = [int(np.argmin(s)), int(np.argmax(s)), int(np.argmax(d))]
    t0 = time.monotonic()
    for k, i in enumerate(picks, start=1):
        _click(page, "Image", *truth[i])
        expect(page.get_by_text("now click the same point on the cells")).to_be_visible()
        _click(page, "Cells", *um[i])
        expect(page.get_by_text(f"Pair {k} added.")).to_be_visible()
    page.screenshot(path=SCREENSHOTS / "4_landmarks_pairs.png", full_page=True)
    page.get_by_role("button", name="Align from landmarks").click()
    _settled(page)
    expect(page.get_by_text("landmark affine, median residual")).to_be_visible()
    elapsed = time.monotonic() - t0
    page.wait_for_timeout(1000)
    page.screenshot(path=SCREENSHOTS / "4_landmarks_aligned.png", full_page=True)

    _nav(page, "Viewer")
    metric = page.get_by_test_id("stMetric").filter(has_text="Median distance to truth")
    expect(metric).to_be_visible()
    value = float(re.search(r"([\d.]+) px", metric.inner_text()).group(1))
    print(f"3 pairs clicked and aligned in {elapsed:.1f} s; median distance to truth {value:.2f} px")
    assert value <= 3.0
    expect(page.get_by_test_id("stMetric").filter(has_text="Median landmark error")).to_be_visible()

    # a manual nudge makes run #2 (run #1 stays selectable), then download the corrected run
    page.get_by_text("Manual correction").click()
    page.get_by_role("button", name="↻ 1°").click()
    _settled(page)
    expect(page.get_by_text("Run #2 (manual): rotate 1°")).to_be_visible()
    expect(page.get_by_role("button", name="↻ 1°")).to_be_visible()  # the panel stays open for the next step
    page.wait_for_timeout(1000)
    page.screenshot(path=SCREENSHOTS / "4_viewer_nudged.png", full_page=True)
    with page.expect_download() as info:
        page.get_by_role("button", name="Download aligned .h5ad").click()
    path = tmp_path / "corrected.h5ad"
    info.value.save_as(path)
    adata = anndata.read_h5ad(path)
    assert adata.uns["gala"]["origin"]["source"] == "manual"
    assert len(adata.uns["gala"]["landmarks"]["error_px"]) == 3
    with page.expect_download() as info:
        page.get_by_role("button", name="Download Xenium Explorer matrix .csv").click()
    matrix = tmp_path / "matrix.csv"
    info.value.save_as(matrix)
    assert read_xenium_matrix(matrix).shape == (3, 3)
    print(f"from the Landmarks page to the corrected, downloaded run: {time.monotonic() - t0:.1f} s")
