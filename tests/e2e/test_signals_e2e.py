"""Target signals in a real browser: a typed gene list becomes the signal; a flat signal is warned about with a
better one named; the candidate previews draw one raster per candidate."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from gala_engine.demo import load_demo
from gala_engine.signals import candidate_signals

from .conftest import SCREENSHOTS

pytestmark = pytest.mark.e2e
expect.set_options(timeout=60_000)


def _settled(page: Page) -> None:
    page.wait_for_timeout(300)
    page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']", state="attached",
                           timeout=90_000)


def _signal(page: Page, text: str) -> None:
    box = page.get_by_role("combobox", name="Target signal")
    box.click()
    box.fill(text)
    page.wait_for_timeout(300)
    page.keyboard.press("Enter")
    _settled(page)


def test_typed_gene_list_flat_warning_and_previews(page: Page, app_url: str):
    page.set_default_timeout(90_000)
    page.goto(app_url)
    expect(page.get_by_text("Loaded: demo: merfish_mini")).to_be_visible()
    _settled(page)
    page.get_by_label("Demo", exact=True).click()
    page.get_by_role("option", name="visium_dg").click()
    page.get_by_role("button", name="Load demo data").click()
    expect(page.get_by_text("Loaded: demo: visium_dg")).to_be_visible()
    _settled(page)

    _signal(page, "Prkcd,Hpca")  # typed: not one of the listed options
    expect(page.get_by_text("Cells: Prkcd,Hpca")).to_be_visible()
    assert not page.locator("[data-testid='stAlertContentError']").count()

    _signal(page, "cell density")  # an evenly packed spot grid: flat
    warning = page.locator("[data-testid='stAlertContentWarning']", has_text="too flat to align")
    expect(warning).to_be_visible()
    assert "Try the signal '" in warning.inner_text()

    page.locator("label", has_text="Compare target signals").first.click()
    _settled(page)
    n_candidates = len(candidate_signals(load_demo("visium_dg").adata))  # the current one (density) is among them
    expect(page.locator(".js-plotly-plot")).to_have_count(4 + n_candidates)  # image, cells, rasters + candidates
    page.screenshot(path=SCREENSHOTS / "signals_data.png", full_page=True)
