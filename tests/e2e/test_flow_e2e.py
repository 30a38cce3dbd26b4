"""Issue 14 in a real browser: a preset run whose progress, Stop, live curve and current pose are in the first
screen (1400×900 and 1024×768), a refresh that keeps the runs, new data without stale views, and a saved
session opened in a fresh browser session."""

from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import Browser, Page, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from .conftest import SCREENSHOTS
from .conftest import nav as _nav
from .conftest import settled as _settled

pytestmark = pytest.mark.e2e
expect.set_options(timeout=60_000)


def _in_first_screen(page: Page, what: str, locator, height: int, *, min_width: float = 0) -> dict:
    box = None
    for _ in range(20):  # a fragment may be redrawing it this instant
        try:
            box = locator.bounding_box(timeout=500)
        except PlaywrightTimeoutError:
            box = None
        if box is not None:
            break
        page.wait_for_timeout(100)
    assert box is not None, f"{what} is not drawn"
    assert box["y"] >= 0 and box["y"] + box["height"] <= height, f"{what} is off the first screen: {box}"
    assert box["width"] >= min_width, f"{what} is {box['width']:.0f} px wide (< {min_width})"
    return box


def _run_fast_check(page: Page, height: int, shot: str, run: int) -> None:
    """Start a 'fast check' run; while it runs, check what the first screen shows; wait for the end."""
    page.get_by_test_id("stRadio").get_by_text("fast check", exact=True).click()
    expect(page.get_by_text("Seconds: one search")).to_be_visible()  # the preset's settings are in
    _settled(page)
    page.get_by_role("button", name="Start alignment").click()
    progress = page.get_by_test_id("stProgress")
    expect(progress).to_be_visible(timeout=30_000)
    boxes = {"progress": _in_first_screen(page, "the progress bar", progress.first, height),  # at once: a fast
             "stop": _in_first_screen(page, "Stop", page.get_by_role("button", name="Stop"), height)}  # run ends soon
    curve = page.locator(".js-plotly-plot").filter(has_text=re.compile("search round|fine-tuning step|warp step"))
    expect(curve).to_have_count(1, timeout=30_000)  # (it stays once the run is over)
    boxes["curve"] = _in_first_screen(page, "the live curve", curve, height)
    boxes["pose"] = _in_first_screen(page, "the current pose", page.locator(".js-plotly-plot").last, height,
                                     min_width=400)
    page.screenshot(path=SCREENSHOTS / shot)
    print(shot, {k: (round(b["y"]), round(b["y"] + b["height"]), round(b["width"])) for k, b in boxes.items()})
    expect(page.get_by_text(f"Run #{run} finished").first).to_be_visible(timeout=180_000)
    _settled(page)


def test_preset_run_in_first_screen_refresh_new_data_and_session_file(browser: Browser, app_url: str, tmp_path):
    context = browser.new_context(viewport={"width": 1400, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(app_url)
    expect(page.get_by_text("Loaded: demo: merfish_mini")).to_be_visible()
    _settled(page)
    assert re.search(r"[?&]sid=[0-9a-f]{32}", page.url), page.url
    _nav(page, "Align")
    page.wait_for_timeout(800)
    page.screenshot(path=SCREENSHOTS / "flow_align_idle_1400x900.png")
    _run_fast_check(page, 900, "flow_align_running_1400x900.png", 1)
    page.wait_for_timeout(800)
    page.screenshot(path=SCREENSHOTS / "flow_align_done_1400x900.png")
    page.screenshot(path=SCREENSHOTS / "flow_align_done_full.png", full_page=True)
    expect(page.get_by_text("Run #1 finished").first).to_be_visible()

    # the same at 1024×768 (a second run)
    page.set_viewport_size({"width": 1024, "height": 768})
    page.wait_for_timeout(800)
    _run_fast_check(page, 768, "flow_align_running_1024x768.png", 2)
    page.wait_for_timeout(800)
    page.screenshot(path=SCREENSHOTS / "flow_align_done_1024x768.png")
    page.set_viewport_size({"width": 1400, "height": 900})

    # a refresh keeps data, runs and the selected run
    url = page.url
    page.reload()
    _settled(page)
    assert page.url == url
    expect(page.get_by_text("Runs on this data")).to_be_visible()
    expect(page.get_by_text("2 finished run(s) in this session")).to_be_visible()
    expect(page.get_by_text("Run #2 finished").first).to_be_visible()
    _nav(page, "Viewer")
    expect(page.get_by_text("Median distance to truth")).to_be_visible()

    # new data: the Align page shows nothing of the old data's runs
    _nav(page, "Data")
    page.get_by_test_id("stSelectbox").filter(has_text="Demo").click()
    page.get_by_role("option", name=re.compile("visium_tiny")).click()
    page.get_by_role("button", name="Load demo data").click()
    _settled(page)
    expect(page.get_by_test_id("stSidebar").get_by_text("demo: visium_tiny")).to_be_visible()
    _nav(page, "Align")
    page.wait_for_timeout(800)
    expect(page.get_by_text("2 run(s) on other data")).to_be_visible()
    assert not page.get_by_text("Runs on this data").count()
    main = page.get_by_test_id("stMain")
    assert not main.get_by_text(re.compile(r"Run #\d")).count()  # (the sidebar names the last run's data)
    assert page.get_by_text("No run on this data yet").count() == 1
    page.screenshot(path=SCREENSHOTS / "flow_align_new_data_1400x900.png")

    # back to the first data, save the session, open it in a fresh browser session
    _nav(page, "Data")
    page.get_by_test_id("stSelectbox").filter(has_text="Demo").click()
    page.get_by_role("option", name=re.compile("merfish_mini")).click()
    page.get_by_role("button", name="Load demo data").click()
    _settled(page)
    page.get_by_text("Save or open a session").click()
    with page.expect_download() as info:
        page.get_by_role("button", name="Save session (.zip)").click()
    saved = tmp_path / "session.zip"
    info.value.save_as(saved)

    # a refresh while a run goes: the reloaded page follows the same run (progress, then its result)
    _nav(page, "Align")
    page.get_by_test_id("stRadio").get_by_text("standard", exact=True).click()
    expect(page.get_by_text("Recommended for most")).to_be_visible()
    _settled(page)
    page.get_by_role("button", name="Start alignment").click()
    expect(page.get_by_test_id("stProgress")).to_be_visible()
    page.reload()
    _settled(page)
    expect(page.get_by_test_id("stProgress")).to_be_visible(timeout=15_000)
    expect(page.get_by_text("Run #3 finished").first).to_be_visible(timeout=240_000)
    expect(page.get_by_text("3 finished run(s) in this session")).to_be_visible()

    other = browser.new_context(viewport={"width": 1400, "height": 900})
    fresh = other.new_page()
    fresh.set_default_timeout(60_000)
    fresh.goto(app_url)
    _settled(fresh)
    assert fresh.url != url
    expect(fresh.get_by_text("0 finished run(s) in this session")).to_be_visible()
    fresh.get_by_text("Save or open a session").click()
    t0 = time.monotonic()
    (fresh.get_by_test_id("stFileUploader").filter(has_text="Open session")
     .get_by_test_id("stFileUploaderDropzoneInput").set_input_files(saved))
    _settled(fresh)
    errors = fresh.locator("[data-testid='stAlertContentError']")
    assert not errors.count(), errors.first.inner_text()
    expect(fresh.get_by_text("2 finished run(s) in this session")).to_be_visible()
    print(f"session file opened in {time.monotonic() - t0:.1f} s")
    _nav(fresh, "Align")
    expect(fresh.get_by_text("Runs on this data")).to_be_visible()
    assert not fresh.locator("[data-testid='stAlertContentError']").count()
    fresh.screenshot(path=SCREENSHOTS / "flow_align_opened_session.png")
    other.close()
    context.close()
