"""Headless Chromium from Debian's packages, driven by Selenium: nothing is downloaded (the
driver is /usr/bin/chromedriver, named through a Service, so selenium-manager never runs)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PHONE_WIDTH = 390


def as_phone(driver: webdriver.Chrome, height: int = 844) -> None:
    """Lay pages out as a phone of PHONE_WIDTH CSS pixels does (a taller one for full-page shots)."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": PHONE_WIDTH, "height": height, "deviceScaleFactor": 1, "mobile": True})


@contextmanager
def chromium(shots: Path, *, phone: bool = False) -> Iterator[webdriver.Chrome]:
    """A headless browser (a 390 px wide phone if asked); files it downloads and, if the block
    fails, a screenshot and the page's source land in `shots`."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1280,900", "--lang=zh-CN"):
        options.add_argument(argument)
    options.add_experimental_option("prefs", {"download.default_directory": str(shots),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        if phone:
            as_phone(driver)
        yield driver
    except BaseException:
        shots.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(shots / "failure.png"))
        (shots / "failure.html").write_text(driver.page_source)
        raise
    finally:
        driver.quit()
