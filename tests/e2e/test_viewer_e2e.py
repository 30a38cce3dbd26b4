"""The Viewer in a real browser: toggle times (printed), the before view on the image, full-resolution detail,
the quality report, upload type errors in words; screenshots at 1400×900 and 1024×768."""

from __future__ import annotations

import json
import statistics
import time

import pytest
from playwright.sync_api import Page, expect

from .conftest import SCREENSHOTS
from .conftest import nav as _nav
from .conftest import settled as _settled

pytestmark = pytest.mark.e2e
expect.set_options(timeout=60_000)

BEFORE = "before (centred)"
WIDTH, HEIGHT = 4603, 4143  # the MERFISH demo's DAPI image, full resolution
TOGGLE_BOUND_S = 3.0  # printed times are the result; this bound only catches a return to full-page reruns

_OVERLAY = "[...document.querySelectorAll('.js-plotly-plot')].find(el => (el.data || []).some(t => t.name === 'image'))"
_SIGNATURE = f"""() => {{ const el = {_OVERLAY}; if (!el) return '';
  const h = s => {{ let v = 0; for (let i = 0; i < s.length; i++) v = (v * 31 + s.charCodeAt(i)) | 0; return v; }};
  return el.data.map(t => t.name + ':' + String(t.visible) + ':' + h(JSON.stringify(t.marker || {{}}))
                          + ':' + (t.source || '').length).join('|'); }}"""
_ARM = f"""() => {{ window.__t0 = null; window.__t1 = null; const el = {_OVERLAY};
  document.addEventListener('mousedown', () => {{ if (window.__t0 === null) window.__t0 = performance.now(); }},
                            {{capture: true, once: true}});
  el.once('plotly_afterplot', () => {{ window.__t1 = performance.now(); }}); }}"""
_INSIDE = f"""(name) => {{ const el = {_OVERLAY}; const t = el._fullData.find(d => d.name === name);
  let n = 0; for (let i = 0; i < t.x.length; i++) if (t.x[i] >= 0 && t.x[i] < {WIDTH} && t.y[i] >= 0
    && t.y[i] < {HEIGHT}) n++; return n / t.x.length; }}"""


def _until_changed(page: Page, action, timeout: float = 30.0) -> float:
    """Seconds from ``action`` until the overlay figure differs in the browser."""
    before = page.evaluate(_SIGNATURE)
    t0 = time.monotonic()
    action()
    while page.evaluate(_SIGNATURE) == before:
        assert time.monotonic() - t0 < timeout, "the figure did not change"
        page.wait_for_timeout(15)
    return time.monotonic() - t0


def _legend_click(page: Page, name: str) -> float:
    """Seconds from the mouse press on a legend entry to plotly's redraw (in the page's own clock)."""
    page.evaluate(_ARM)
    box = page.locator(".legendtext", has_text=name).first.bounding_box()
    page.mouse.click(box["x"] + 5, box["y"] + box["height"] / 2)
    page.wait_for_function("() => window.__t1 !== null", timeout=30_000)
    return page.evaluate("() => window.__t1 - window.__t0") / 1000.0


def test_viewer_speed_before_view_detail_and_report(page: Page, app_url: str, tmp_path):
    page.set_default_timeout(60_000)
    page.set_viewport_size({"width": 1400, "height": 900})
    page.goto(app_url)
    expect(page.get_by_text("Loaded: demo: merfish_mini")).to_be_visible()
    _settled(page)

    # a wrong file type is said in words (not a bare red "!")
    page.get_by_role("tab", name="Upload files").click()
    page.get_by_test_id("stFileUploaderDropzoneInput").first.set_input_files(
        files=[{"name": "cells.csv", "mimeType": "text/csv", "buffer": b"x,y\n1,2\n"}])
    _settled(page)
    expect(page.get_by_text("'cells.csv' is not a cells file")).to_be_visible()
    page.screenshot(path=SCREENSHOTS / "viewer_e2e_upload_error_1400.png")

    _nav(page, "Align")
    page.get_by_role("button", name="Start alignment").click()  # the default settings
    expect(page.get_by_text("Runs on this data")).to_be_visible(timeout=300_000)
    _settled(page)
    page.get_by_text("Runs on this data").scroll_into_view_if_needed()
    page.wait_for_timeout(500)
    page.screenshot(path=SCREENSHOTS / "align_history_1400x900.png")

    _nav(page, "Viewer")
    expect(page.locator(".legendtext", has_text="after LDDMM")).to_be_visible()
    page.wait_for_timeout(1000)
    page.screenshot(path=SCREENSHOTS / "viewer_1400x900.png")

    # the before view lies on the image (it used to be the µm coordinates far off it)
    _legend_click(page, BEFORE)
    assert page.evaluate(_INSIDE, BEFORE) > 0.9
    page.wait_for_timeout(500)
    page.screenshot(path=SCREENSHOTS / "viewer_before_1400x900.png")
    _legend_click(page, BEFORE)

    layer = [_legend_click(page, name) for _ in range(3) for name in ("deformation grid", "after affine")]
    colour = []
    for gene in ("Abcc9", "Ackr1", "Ackr3"):
        page.get_by_test_id("stSelectbox").filter(has_text="Colour by").click()
        page.keyboard.type(gene)
        option = page.get_by_role("option", name=gene, exact=True)
        option.wait_for()
        colour.append(_until_changed(page, option.click))
        _settled(page)
    print(f"\nviewer toggle, layer/grid in the legend (s): {[round(t, 2) for t in layer]}; "
          f"median {statistics.median(layer):.2f}")
    print(f"viewer toggle, colour by a gene (s): {[round(t, 2) for t in colour]}; median {statistics.median(colour):.2f}")
    assert statistics.median(layer) < TOGGLE_BOUND_S and statistics.median(colour) < TOGGLE_BOUND_S

    # full-resolution detail: box-select an area
    overlay = page.locator(".js-plotly-plot").filter(has=page.locator(".legendtext", has_text="after LDDMM"))
    overlay.hover()
    overlay.locator("[data-title='Box Select']").click()
    area = overlay.locator(".nsewdrag").first.bounding_box()
    x0, y0 = area["x"] + area["width"] * 0.45, area["y"] + area["height"] * 0.3
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move(x0 + 60, y0 + 50, steps=8)
    page.mouse.up()
    expect(page.get_by_role("button", name="Show the whole image")).to_be_visible()
    _settled(page)
    detail_dx = page.evaluate(f"() => {_OVERLAY}.data.find(t => t.name === 'detail').dx")
    assert detail_dx == 1.0  # one screen pixel per full-resolution pixel (the demo is loaded reduced 2×)
    page.wait_for_timeout(800)
    page.screenshot(path=SCREENSHOTS / "viewer_detail_1400x900.png")
    page.get_by_role("button", name="Show the whole image").click()
    _settled(page)

    page.set_viewport_size({"width": 1024, "height": 768})
    page.wait_for_timeout(1200)
    page.screenshot(path=SCREENSHOTS / "viewer_1024x768.png")

    page.get_by_role("button", name="Make the quality report").click()
    _settled(page)
    expect(page.get_by_text("Quality report of run #1")).to_be_visible()
    page.get_by_text("Quality report of run #1").scroll_into_view_if_needed()
    page.screenshot(path=SCREENSHOTS / "viewer_report_1024x768.png")
    with page.expect_download() as info:
        page.get_by_role("button", name="Download report .json").click()
    assert info.value.suggested_filename == "merfish_mini_report_run1.json"
    path = tmp_path / "report.json"
    info.value.save_as(path)
    metrics = json.loads(path.read_text())
    assert metrics["overlap_after"] > metrics["overlap_before"] and not metrics["folding"]
    assert "/tmp" not in path.read_text()
