"""The explorer served by Voila, driven in headless Chromium: move the dose, the figure changes (issue 14)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "08_explorer.ipynb"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str, step: float = 0.5):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture
def voila_app(tmp_path):
    pytest.importorskip("voila")
    pytest.importorskip("selenium")
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("Debian's chromium and chromedriver are not installed (make test installs them)")
    port = _free_port()
    log = open(tmp_path / "voila.log", "w")
    env = {**os.environ, "SEGDEPTH_EXPLORER_GPTS": "1024", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "voila", str(NOTEBOOK), "--no-browser", f"--port={port}",
                             "--Voila.ip=127.0.0.1"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

    def up():
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/voila/static/", timeout=2) is not None
        except OSError as exc:
            return getattr(exc, "code", None) is not None  # any HTTP answer: the server is up
    try:
        _wait(up, 90, "the Voila server")
        yield f"http://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        print((tmp_path / "voila.log").read_text()[-3000:])


@pytest.mark.slow
def test_moving_the_dose_slider_redraws_the_figure(voila_app):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(voila_app)

        def figure_src():
            imgs = driver.find_elements(By.CSS_SELECTOR, ".widget-image")
            src = imgs[0].get_attribute("src") if imgs else ""
            return src if src and (src.startswith("blob:") or src.startswith("data:")) else ""

        first = _wait(figure_src, 240, "the explorer's figure in the page")
        sliders = [s for s in driver.find_elements(By.CSS_SELECTOR, ".widget-slider")
                   if "dose" in s.find_element(By.CSS_SELECTOR, ".widget-label").text]
        assert len(sliders) == 1, [s.text for s in driver.find_elements(By.CSS_SELECTOR, ".widget-slider")]
        readout = sliders[0].find_element(By.CSS_SELECTOR, ".widget-readout")
        assert float(readout.text) == 2.5
        readout.click()
        readout.send_keys(Keys.CONTROL, "a")
        readout.send_keys("20", Keys.ENTER)
        _wait(lambda: float(readout.text) == 20, 30, "the dose readout to show 20")
        changed = _wait(lambda: (src := figure_src()) != first and src, 120, "a new figure after the dose change")
        assert changed != first
        status = driver.find_elements(By.CSS_SELECTOR, ".widget-html")
        assert any("columns exact" in s.text for s in status)
    finally:
        driver.quit()
