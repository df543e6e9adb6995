"""The dashboard in a real browser: Debian's headless Chromium driven by selenium through Debian's
chromedriver (never one selenium downloads), against the coordinator and the stack of this folder
(moto's S3, the local Lambda runtime running the real worker, the rendezvous server).

The browser (:func:`services.client.screenshots.browser`) is told to stay home: background
networking off, and every host name but loopback made unresolvable, so a page that needed the
internet would show it. Each test then reads the browser's own network log and fails on any http(s) request beyond
loopback, and on any error in its console. Skips, saying why, where Chromium or its driver or
selenium is missing (``.ci/run`` installs the first two; the dev extra the third).
"""

from __future__ import annotations

import json
import secrets
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from services.client.screenshots import shot, wait_for
from tests.common import Api, Servers

TOKEN = "browser-test-token"
LOOPBACK = {"127.0.0.1", "localhost", "[::1]", "::1"}
#: Where the screenshots go, for the README and for whoever reads a failed CI run.
SCREENSHOTS = Path(__file__).resolve().parents[2] / "results" / "screenshots"


@pytest.fixture(scope="module")
def browser(stack: Servers) -> Iterator[Any]:
    from services.client.errors import BrowserUnavailable
    from services.client.screenshots import browser as headless

    try:
        driver = headless(logs=True)
    except BrowserUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def dashboard(stack: Servers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """One coordinator with a token for the module's tests (its own, not the per-test fixture's)."""
    from services.local.processes import python, start
    from services.ports import free_port
    from tests.common import REPO, http_ok

    port = free_port()
    log = tmp_path_factory.mktemp("dashboard") / "coordinator.log"
    child = start(python("services.coordinator", "--port", str(port)), name="the coordinator", log=log,
                  env=stack.env(COSMIC_API_TOKEN=TOKEN), cwd=REPO, stop_timeout=15)
    api = Api(f"http://127.0.0.1:{port}", child, log, TOKEN)
    child.wait_ready(lambda: http_ok(api.url + "/healthz"), 30)
    yield api
    child.stop()


@pytest.fixture
def clean_logs(browser: Any) -> Iterator[Callable[[], None]]:
    """Empty the browser's logs before the test; afterwards, check them: only loopback, no console error."""
    browser.get_log("browser")
    browser.get_log("performance")

    def check() -> None:
        outside, seen = [], 0
        for entry in browser.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.requestWillBeSent":
                url = urllib.parse.urlsplit(message["params"]["request"]["url"])
                seen += url.scheme in ("http", "https")
                if url.scheme in ("http", "https") and url.hostname not in LOOPBACK:
                    outside.append(url.geturl())
        assert seen, "the network log saw no request at all: it is not recording, so it proves nothing"
        assert outside == [], f"the page asked for something beyond loopback: {outside}"
        errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
        assert errors == [], f"errors in the browser's console: {errors}"

    yield check


def _sign_in(browser: Any, api: Api, path: str = "/") -> None:
    from selenium.webdriver.common.by import By

    browser.get(api.url + path)
    if browser.find_elements(By.ID, "login-form"):
        field = browser.find_element(By.ID, "token")
        field.send_keys(TOKEN)
        browser.find_element(By.CSS_SELECTOR, "#login-form button[type=submit]").click()
        wait_for(lambda: not browser.find_elements(By.ID, "login-form"), "the login to go through")


def _screenshot(browser: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shot(browser, SCREENSHOTS / f"{name}.png", full=True)


def test_cookie_login_then_a_submitted_job_appears_on_the_list(browser: Any, dashboard: Api, stack: Servers,
                                                               clean_logs: Callable[[], None]) -> None:
    from selenium.webdriver.common.by import By

    browser.get(dashboard.url + "/")
    assert browser.find_elements(By.ID, "login-form"), "a token is configured: the page asks for it"
    _sign_in(browser, dashboard)
    cookie = browser.get_cookie("cosmic_session")
    assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert browser.execute_script("return document.cookie") == "", "page scripts cannot read the session"
    job_id = dashboard.submit(stack.payload(file_limit="2"))
    row = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, f'tr[data-job="{job_id}"]'),
                "the job submitted through the API to appear on the list (no reload)")
    assert row[0].find_element(By.CSS_SELECTOR, "a").get_attribute("href").endswith(f"/ui/jobs/{job_id}")
    unlabelled = browser.execute_script(  # every control has a label a screen reader reads out
        "return [...document.querySelectorAll('input:not([type=hidden]), select, button')]"
        ".filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim())"
        ".map(e => e.outerHTML)")
    assert unlabelled == []
    dashboard.wait(job_id)
    _screenshot(browser, "jobs")
    clean_logs()


def test_the_rank_grid_changes_state_live_and_the_report_follows(browser: Any, dashboard: Api, stack: Servers,
                                                                 clean_logs: Callable[[], None]) -> None:
    from selenium.webdriver.common.by import By

    job_id = dashboard.submit(stack.payload(result_path=f"results/slow-{secrets.token_hex(3)}", file_limit="4"))
    _sign_in(browser, dashboard, f"/ui/jobs/{job_id}")
    seen: set[tuple[str, str]] = set()  # (state, phase) of rank 0's cell, as the page showed them

    def finished() -> bool:  # read in one script: the grid is redrawn every second, elements go stale
        state, cell = browser.execute_script(
            "const c = document.querySelector('#rank-grid li[data-rank=\"0\"]');"
            "return [document.getElementById('job-state').textContent, c && [c.dataset.state, c.dataset.phase]];")
        if cell:
            seen.add(tuple(cell))
        return bool(state == "succeeded")

    wait_for(finished, "the page to show the job succeeded", timeout=90)
    assert ("running", "starting") in seen or ("running", "inferring") in seen, seen
    assert ("succeeded", "done") in seen, seen
    assert len(browser.find_elements(By.CSS_SELECTOR, "#rank-grid li")) == 4
    wait_for(lambda: "Job " in browser.find_element(By.ID, "results").text, "the report to show")
    images = browser.find_elements(By.CSS_SELECTOR, "#results img")
    assert images and all(img.get_attribute("alt") for img in images)
    wait_for(lambda: all(browser.execute_script("return arguments[0].naturalWidth", img) > 0 for img in images),
          "the plots to load")
    assert browser.find_element(By.ID, "progress-text").text.startswith("192 of ~192 samples")
    _screenshot(browser, "job")
    clean_logs()


def test_cancel_from_the_button_ends_the_job_cancelled(browser: Any, dashboard: Api, stack: Servers,
                                                       clean_logs: Callable[[], None]) -> None:
    from selenium.webdriver.common.by import By

    job_id = dashboard.submit(stack.payload(result_path=f"results/slow-{secrets.token_hex(3)}", file_limit="6",
                                            world_size=6, max_concurrency=2))
    _sign_in(browser, dashboard, f"/ui/jobs/{job_id}")
    button = browser.find_element(By.ID, "cancel-button")
    assert button.is_enabled()
    button.click()
    assert dashboard.wait(job_id, timeout=60)["state"] == "cancelled"
    wait_for(lambda: browser.find_element(By.ID, "job-state").text == "cancelled", "the page to show it cancelled")
    assert not browser.find_element(By.ID, "cancel-button").is_enabled()
    clean_logs()


def test_retry_from_the_button_reruns_the_failed_rank(browser: Any, dashboard: Api, stack: Servers,
                                                       clean_logs: Callable[[], None]) -> None:
    """Rank 1 of a "flaky" job fails its first attempt (tests/coordinator/flaky_handler.py); with one
    attempt allowed the job fails, and the page's retry button, pressed from the keyboard, runs that
    rank again."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    job_id = dashboard.submit(stack.payload(result_path=f"results/flaky-{secrets.token_hex(3)}", file_limit="2",
                                            world_size=2, max_attempts=1))
    assert dashboard.wait(job_id)["state"] == "failed"
    _sign_in(browser, dashboard, f"/ui/jobs/{job_id}")
    assert "transient failure injected" in browser.find_element(By.ID, "problems").text
    assert not browser.find_element(By.ID, "cancel-button").is_enabled()
    browser.find_element(By.ID, "retry-button").send_keys(Keys.ENTER)  # from the keyboard
    wait_for(lambda: browser.find_element(By.ID, "job-state").text == "succeeded", "the page to show it succeeded",
             timeout=90)
    ranks = dashboard.call("GET", f"/jobs/{job_id}")[1]["ranks"]
    assert [[a["state"] for a in rank["attempts"]] for rank in ranks] == [["succeeded"], ["failed", "succeeded"]]
    clean_logs()


def test_docs_render_with_no_network(browser: Any, dashboard: Api, clean_logs: Callable[[], None]) -> None:
    from selenium.webdriver.common.by import By

    browser.get(dashboard.url + "/docs")
    title = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, ".swagger-ui .info .title"), "Swagger UI to render")
    assert "Cosmic Rendezvous coordinator" in title[0].text
    assert browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path[data-path='/jobs/{job_id}/report']")
    clean_logs()


def test_the_sweep_page_tables_and_plots_the_finished_jobs(browser: Any, dashboard: Api, stack: Servers,
                                                           clean_logs: Callable[[], None]) -> None:
    from selenium.webdriver.common.by import By

    jobs = [dashboard.submit(stack.payload(file_limit="2", world_size=size)) for size in (1, 2)]
    for job_id in jobs:
        assert dashboard.wait(job_id)["state"] == "succeeded"
    _sign_in(browser, dashboard, "/ui/sweep?" + "&".join(f"jobs={job_id}" for job_id in jobs))
    rows = browser.find_elements(By.CSS_SELECTOR, ".report table tbody tr")
    assert [row.find_elements(By.TAG_NAME, "td")[1].text for row in rows] == ["1", "2"]  # world sizes, in order
    plot = browser.find_element(By.CSS_SELECTOR, "img.plot")
    wait_for(lambda: browser.execute_script("return arguments[0].naturalWidth", plot) > 0, "the sweep's plot")
    clean_logs()


def test_the_demo_screenshots_sign_in_from_the_link_fragment(browser: Any, dashboard: Api, stack: Servers,
                                                             tmp_path: Path) -> None:
    """What ``cosmic demo`` does: a fresh browser opens ``/#token=...``, the page signs it in, and the
    list, the largest finished job and the sweep are saved as PNGs."""
    from services.client.screenshots import take

    assert dashboard.wait(dashboard.submit(stack.payload(file_limit="2")))["state"] == "succeeded"
    shots = take(dashboard.url, TOKEN, tmp_path)
    assert [path.name for path in shots] == ["jobs.png", "job.png", "sweep.png"]
    assert all(path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size > 10_000 for path in shots)
