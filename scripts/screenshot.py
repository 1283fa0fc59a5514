"""Screenshot an HTML page in headless Chromium (how docs/images/report.png was made).

    .venv/bin/python scripts/screenshot.py reports/<run>/report.html docs/images/report.png

Needs Chromium on the PATH (Debian: `apt-get install chromium`) and Playwright (requirements-dev.txt).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


def find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def main(page: str, out: str, width: int = 1100) -> None:
    chromium = find_chromium()
    if chromium is None:
        sys.exit("no Chromium found on the PATH")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=FLAGS)
        tab = browser.new_page(viewport={"width": width, "height": 900})
        tab.goto(Path(page).resolve().as_uri())
        tab.wait_for_load_state("load")
        tab.screenshot(path=out, full_page=True)
        browser.close()


if __name__ == "__main__":
    main(*sys.argv[1:3])
