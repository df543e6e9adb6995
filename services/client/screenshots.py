"""Screenshots of the coordinator's dashboard, and the headless browser that takes them (and that
the dashboard's browser tests drive): Debian's Chromium through Debian's chromedriver, with
selenium, never a browser or driver selenium would download.

The browser is kept at home: background networking off, and every host name but loopback made
unresolvable, so a page that needs the internet shows it. Optional: where Chromium, its driver or
selenium is missing, :func:`take` raises :class:`~.errors.BrowserUnavailable` saying which.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from services.client.errors import BrowserUnavailable

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-default-apps",
         "--disable-domain-reliability", "--disable-client-side-phishing-detection", "--no-default-browser-check",
         "--metrics-recording-only", "--window-size=1400,1000",
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1")
PAGE_TIMEOUT_S = 30.0


def browser(logs: bool = False) -> Any:
    """A headless Chromium under selenium (``logs``: keep its console and network logs)."""
    try:
        from selenium import webdriver
    except ImportError:
        raise BrowserUnavailable("selenium is not installed (the dev extra has it)") from None
    for path in (CHROMIUM, CHROMEDRIVER):
        if shutil.which(path) is None:
            raise BrowserUnavailable(f"{path} is missing (`apt-get install chromium chromium-driver`)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    if logs:
        options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(PAGE_TIMEOUT_S)
    return driver


def wait_for(check: Callable[[], Any], what: str, timeout: float = PAGE_TIMEOUT_S) -> Any:
    """``check()``'s first true value, polled; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} within {timeout:.0f} s")


def take(url: str, token: str, out: Path) -> list[Path]:
    """The job list, the largest finished job's page and the sweep page, as PNGs in ``out``."""
    from services.client.api import ApiClient

    jobs = [job for job in ApiClient(url, token).list_jobs(100) if job["state"] == "succeeded"]
    driver = browser()
    from selenium.common.exceptions import WebDriverException  # importable: browser() found selenium

    out.mkdir(parents=True, exist_ok=True)
    shots: list[Path] = []
    try:
        _pages(driver, url, token, jobs, out, shots)
    except (WebDriverException, AssertionError) as exc:  # optional: say why, the demo goes on
        raise BrowserUnavailable(f"the browser did not get through the pages: {str(exc).splitlines()[0]}") from None
    finally:
        driver.quit()
    return shots


def _pages(driver: Any, url: str, token: str, jobs: list[dict[str, Any]], out: Path, shots: list[Path]) -> None:
    driver.get(f"{url}/#token={token}")  # the page's script signs in and comes back to the list
    wait_for(lambda: driver.find_elements("id", "job-rows"), "the job list")
    shots.append(shot(driver, out / "jobs.png"))
    if jobs:
        largest = max(jobs, key=lambda job: job["world_size"])
        driver.get(f"{url}/ui/jobs/{largest['job_id']}")
        wait_for(lambda: driver.execute_script(
            "const r = document.getElementById('results'); const imgs = [...r.querySelectorAll('img')];"
            "return !r.hidden && imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);"),
            "the job's results")
        shots.append(shot(driver, out / "job.png", full=True))
    driver.get(f"{url}/ui/sweep")
    shots.append(shot(driver, out / "sweep.png", full=True))


def shot(driver: Any, path: Path, full: bool = False) -> Path:
    """Save the page; ``full``: the whole page's height, not only the window's."""
    if full:
        height = int(driver.execute_script("return document.documentElement.scrollHeight"))
        driver.set_window_size(1400, min(max(height, 1000), 6000))
    driver.save_screenshot(str(path))
    driver.set_window_size(1400, 1000)
    return path
