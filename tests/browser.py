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


@contextmanager
def chromium(shots: Path, width: int = 1280, height: int = 900) -> Iterator[webdriver.Chrome]:
    """A headless browser; if the block fails, a screenshot of where it was lands in `shots`."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--window-size={width},{height}", "--lang=zh-CN"):
        options.add_argument(argument)
    options.add_experimental_option("prefs", {"download.default_directory": str(shots),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    except BaseException:
        shots.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(shots / "failure.png"))
        (shots / "failure.html").write_text(driver.page_source)
        raise
    finally:
        driver.quit()
