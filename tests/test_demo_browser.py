"""The web demo in a real headless Chromium (Debian's `chromium`, driven by Playwright): load
the page, upload a recording, type a query, click, wait for the result, keep a screenshot.

CI installs chromium (.ci/run); without it this test fails rather than skips, so a broken CI
image cannot pass unnoticed. The screenshot is kept in the test's tmp_path and copied to
test-artifacts/demo.png at the repository root.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import soundfile as sf

from .conftest import ROOT, DemoServer, tone

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run",
]  # fmt: skip
ARTIFACTS = ROOT / "test-artifacts"
RESULT_TIMEOUT_MS = 60_000


def test_browser_upload_query_and_result(demo_server: DemoServer, tmp_path: Path) -> None:
    assert CHROMIUM.is_file(), (
        f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium); "
        "CI does this in .ci/run"
    )
    from playwright.sync_api import expect, sync_playwright

    recording = tmp_path / "birdsong.wav"
    sf.write(recording, tone(440, 3.0, 16_000)[0] + tone(2500, 3.0, 16_000, amp=0.1)[0], 16_000)
    screenshot = tmp_path / "demo.png"
    requests: list[str] = []
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.on("request", lambda r: requests.append(r.url))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(demo_server.url, wait_until="domcontentloaded")
            expect(page.get_by_role("button", name="Separate")).to_be_visible(timeout=30_000)

            page.locator("input[type=file]").first.set_input_files(str(recording))
            # the player's download link names the file once the server holds the upload (the
            # file name as text shows only while the upload runs, so waiting for it was a race)
            uploaded = page.locator('a[href$="/birdsong.wav"]').first
            expect(uploaded).to_be_visible(timeout=15_000)
            page.get_by_label("Sound to extract").fill("dog barking")
            page.get_by_role("button", name="Separate").click()

            timing = page.get_by_label("Timing")
            expect(timing).to_have_value(re.compile("real time"), timeout=RESULT_TIMEOUT_MS)
            page.screenshot(path=str(screenshot), full_page=True)
            page.get_by_text("remove the cow", exact=True).click()  # an example fills the form
            expect(page.get_by_label("Sound to extract")).to_have_value("remove the cow")
        finally:
            browser.close()

    fetched = {Path(urlsplit(u).path).name for u in requests}  # the players loaded the results
    assert {"birdsong_dog-barking.wav", "birdsong_dog-barking_residual.wav"} <= fetched, requests
    assert not errors, f"JavaScript errors on the page: {errors}"
    foreign = {urlsplit(u).netloc for u in requests if urlsplit(u).scheme in ("http", "https")}
    assert foreign <= {urlsplit(demo_server.url).netloc}, f"the page fetched from {foreign}"
    assert screenshot.stat().st_size > 20_000
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(screenshot, ARTIFACTS / "demo.png")
