"""The console in a real browser: headless Debian chromium driven by Selenium, against the real
daemon sorting on fake hardware (real model, real time) with the console on 127.0.0.1.

Log in, watch an item appear on the status page while the daemon sorts, correct an item on
the review page, classify an uploaded photo, filter the events. A screenshot of each page is
saved; with ``BIN_DAEMON_SCREENSHOTS=docs/console`` they replace the README's.

Skipped only where chromium or chromedriver is not installed (``.ci/run`` installs both; under
``CI`` their absence is a failure).
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from conftest_console import PASSWORD, SAMPLES, UNSURE_BELOW, free_port, write_config

from bin_daemon.config import load_config
from bin_daemon.console.state import Hooks
from bin_daemon.loop.service import RunOptions, Service
from bin_daemon.records.eventlog import read_events

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
WAIT_S = 30
DESKTOP = (1280, 860)
PHONE = (390, 844)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None or CHROMEDRIVER is None:
        if os.environ.get("CI"):
            pytest.fail("chromium/chromedriver missing; .ci/run installs chromium chromium-driver")
        pytest.skip(
            "chromium and chromedriver not installed (apt-get install chromium chromium-driver)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--hide-scrollbars",
                     f"--window-size={DESKTOP[0]},{DESKTOP[1]}"):  # fmt: skip
        options.add_argument(argument)
    driver = webdriver.Chrome(service=DriverService(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture
def daemon(tmp_path, monkeypatch):
    """The real daemon sorting the samples in real time, its console on a free port."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    port = free_port()
    config = write_config(
        tmp_path,
        listen=f"127.0.0.1:{port}",
        extra="timing: {hold_open_s: 0.4, lid_move_s: 0.05, cooldown_s: 0.4}\n",
    )
    text = config.read_text().replace("console: {", "console: {refresh_s: 0.5, recent_items: 8, ")
    config.write_text(text)
    hooks = Hooks(fill_levels=lambda: {"recycling": 64.0, "glass": 23.0, "landfill": None})
    service = Service(
        RunOptions(config, "fake", SAMPLES, realtime=True),
        stdout=io.StringIO(),
        console_hooks=hooks,
    )
    hooks.on_correction = service.site_link.queue_correction  # corrections teach the site store
    hooks.extra_labels = service.site_link.labels
    hooks.site_store = load_config(config).site_store_path()  # the Taught page
    thread = threading.Thread(target=service.run, name="daemon")
    thread.start()
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or not thread.is_alive():
                service.stop.set()
                thread.join(10)
                pytest.fail("the daemon's console did not come up")
            time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", service, tmp_path
    service.stop.set()
    thread.join(15)
    assert not thread.is_alive()


class Shots:
    def __init__(self, driver, folder: Path) -> None:
        self.driver = driver
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def take(self, name: str, size: tuple[int, int] = DESKTOP) -> Path:
        """The whole page at this width (the window grows to the page's height)."""
        width, height = size
        self.driver.set_window_size(width, height)
        full, chrome = self.driver.execute_script(
            "return [document.documentElement.scrollHeight, window.outerHeight - window.innerHeight]"
        )
        self.driver.set_window_size(width, max(height, min(int(full) + int(chrome), 2600)))
        path = self.folder / f"{name}.png"
        assert self.driver.save_screenshot(str(path))
        self.driver.set_window_size(*DESKTOP)
        assert path.stat().st_size > 5000 and path.read_bytes()[:4] == b"\x89PNG"
        return path


def wait_for(driver, condition, message: str):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(
        driver, WAIT_S, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)
    )
    return wait.until(condition, message)


def test_a_person_uses_the_console_in_a_browser(browser, daemon, tmp_path):
    from selenium.webdriver.common.by import By

    base, service, folder = daemon
    shots = Shots(browser, tmp_path / "screenshots")

    # -- log in ----------------------------------------------------------------------------
    browser.get(base + "/")
    wait_for(browser, lambda d: "/login" in d.current_url, "not sent to the login page")
    shots.take("login")
    browser.find_element(By.ID, "password").send_keys("wrong password")
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    banner = wait_for(
        browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".banner.bad"), "no wrong password"
    )
    assert "Wrong password" in banner[0].text
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_for(browser, lambda d: d.find_elements(By.ID, "last-items"), "no status page")

    # -- status: an item appears while the daemon sorts, without reloading the page ---------
    def shown_items(driver) -> set[str]:  # in one go: the live part may be replaced any time
        script = "return [...document.querySelectorAll('#last-items tr[data-item]')]"
        return set(driver.execute_script(script + ".map(row => row.dataset.item)"))

    before = shown_items(browser)
    browser.execute_script("window.stillTheSamePage = true;")
    wait_for(browser, lambda d: shown_items(d) - before, "no new item on the status page")
    assert browser.execute_script("return window.stillTheSamePage === true;")
    today, fill = browser.execute_script(
        "return [document.getElementById('items-today').textContent,"
        " document.querySelector('.bin .fill .bar').style.width]"
    )
    assert int(today) > 0 and fill == "64%"
    # for the pictures: wait until an unsure item with its photo is among the last items
    wait_for(
        browser,
        lambda d: d.find_elements(By.CSS_SELECTOR, "#last-items img.thumb"),
        "no unsure item with a photo on the status page",
    )
    shots.take("status")
    shots.take("status-phone", PHONE)

    # -- review: label the newest unsure items ------------------------------------------------
    def photos_to_review(driver) -> list:
        driver.get(base + "/review")
        cards = driver.find_elements(By.CSS_SELECTOR, ".review-card")
        return [card for card in cards if card.find_elements(By.CSS_SELECTOR, "img.thumb")]

    cards = wait_for(
        browser, lambda d: len(photos_to_review(d)) > 1 and photos_to_review(d), "no photos"
    )
    records = {r["item_id"]: r for r in read_events(folder / "events.sqlite3")}
    # the first: the right label, one click (the fake camera's file name tells the truth)
    first, second = cards[0].get_attribute("data-item"), cards[1].get_attribute("data-item")
    truth = Path(records[first]["frame_source"]).parent.name
    cards[0].find_element(By.CSS_SELECTOR, f'button[data-label="{truth}"]').click()
    status = cards[0].find_element(By.CSS_SELECTOR, ".status")
    wait_for(browser, lambda d: status.text == f"Labelled: {truth}", "label not confirmed")
    # the second: a kind of item the model does not know, typed in
    cards[1].find_element(By.CSS_SELECTOR, "form.new-label input").send_keys("aluminium can\n")
    note = cards[1].find_element(By.CSS_SELECTOR, ".status")
    wait_for(browser, lambda d: note.text == "Labelled: aluminium_can", "typed label not saved")
    after = {r["item_id"]: r for r in read_events(folder / "events.sqlite3")}
    assert after[first]["corrected_label"] == truth
    assert after[second]["corrected_label"] == "aluminium_can"
    for item_id in (first, second):  # the model's own label stays beside the person's
        assert after[item_id]["label"] == records[item_id]["label"]
        assert after[item_id]["confidence"] < UNSURE_BELOW
    shots.take("review")
    shots.take("review-phone", PHONE)

    # -- classify an upload -----------------------------------------------------------------
    browser.get(base + "/classify")
    photo = SAMPLES / "glass" / "glass1.jpg"
    browser.find_element(By.ID, "image").send_keys(str(photo))
    browser.find_element(By.CSS_SELECTOR, "form.upload button[type=submit]").click()
    wait_for(browser, lambda d: d.find_elements(By.ID, "result"), "no classification shown")
    classifier = service.sorter.classifier
    from bin_daemon.model import preprocess

    expected = service.sorter.decide(*_top(classifier.classify(preprocess.load_image(photo))))
    assert browser.find_element(By.ID, "result-bin").text.lower() == expected.bin
    shots.take("classify")
    # the frame corrected to a new label, uploaded once the loop has taught both corrections
    wait_for(browser, lambda d: service.sorter.classifier.examples >= 2, "corrections not taught")
    browser.get(base + "/classify")
    frame = service.console_view().spool.frame_path(second)
    browser.find_element(By.ID, "image").send_keys(str(frame))
    browser.find_element(By.CSS_SELECTOR, "form.upload button[type=submit]").click()
    banner = wait_for(browser, lambda d: d.find_elements(By.ID, "site-changed"), "no site banner")
    assert "aluminium_can" in banner[0].text and records[second]["label"] in banner[0].text
    assert "is in no bin" in browser.find_element(By.ID, "no-bin").text  # the fallback, said
    assert browser.find_element(By.CSS_SELECTOR, ".scores tr th").text.lower() == "aluminium_can"
    shots.take("classify-site")
    browser.get(base + "/")  # the model tile counts what the site head applies
    tile = wait_for(browser, lambda d: d.find_elements(By.ID, "site-examples"), "no site count")
    assert tile[0].text == f"site head: {service.sorter.classifier.examples} examples"
    browser.save_screenshot(str(tmp_path / "status-site.png"))

    # -- taught: what the corrections taught; one removed, and the loop refits without it ------
    browser.get(base + "/taught")
    cards = wait_for(
        browser, lambda d: d.find_elements(By.CSS_SELECTOR, "[data-example]"), "nothing taught"
    )
    assert sorted(card.get_attribute("data-label") for card in cards) == sorted(
        [truth, "aluminium_can"]
    )
    wrong = next(c for c in cards if c.get_attribute("data-label") == "aluminium_can")
    wrong.find_element(By.CSS_SELECTOR, "button[data-remove]").click()
    browser.switch_to.alert.accept()  # "Remove this example?"
    note = wrong.find_element(By.CSS_SELECTOR, ".status")
    wait_for(browser, lambda d: note.text == "Removed: 0 aluminium_can left", "not removed")
    wait_for(browser, lambda d: service.sorter.classifier.examples == 1, "the loop did not refit")
    assert service.sorter.classifier.counts == {truth: 1}
    assert browser.find_element(By.ID, "taught-total").text == "1 example"
    gone = browser.find_element(By.CSS_SELECTOR, '[data-label-row="aluminium_can"]')
    assert "removed" in gone.get_attribute("class")  # its last example: the label is struck
    kept = browser.find_element(By.CSS_SELECTOR, f'[data-label-row="{truth}"]')
    assert "removed" not in (kept.get_attribute("class") or "")
    shots.take("taught")
    shots.take("taught-phone", PHONE)

    # -- events -----------------------------------------------------------------------------
    browser.get(base + "/events?since=1h")
    rows = browser.find_elements(By.CSS_SELECTOR, "table.events tr[data-item]")
    assert len(rows) >= len(before) + 1
    assert any("aluminium_can" in row.text for row in rows)  # the correction shows
    shots.take("events")

    target = os.environ.get("BIN_DAEMON_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        for png in shots.folder.glob("*.png"):
            shutil.copy(png, Path(target) / png.name)


def _top(prediction) -> tuple[str, float]:
    return prediction.label, prediction.confidence
