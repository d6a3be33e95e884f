"""Shared by the browser tests: Debian's headless Chromium driven by Selenium through Debian's
chromedriver (an explicit driver path, so Selenium Manager never looks for or downloads one).
Anything missing is a failure with a clear message, never a skip."""
import os, sys

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def fail(message):
    print(f"FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def start_chromium(window="1200,1600"):
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as e:
        fail(f"selenium is not installed in this Python ({sys.executable}): {e}; run scripts/setup.sh")
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            fail(f"{path} is missing: the browser tests need Debian's chromium and chromium-driver (scripts/setup.sh)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", f"--window-size={window}", "--disable-dev-shm-usage",
              "--no-first-run", "--disable-extensions"):
        options.add_argument(a)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
