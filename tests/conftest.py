"""Suite-wide setup. Triton reads TRITON_INTERPRET when it is first imported, and other tests' libraries may
import it before tests/kernels does, so the CPU interpreter is chosen here, before anything else.

The CPU tuner is pinned to today's rules (fp32, no measured choices) so that numerics do not depend on the
machine, and its cache file goes to a temp folder: CI machines keep ``~/.cache`` between runs. Tests of the
tuner turn it on themselves."""

import os
import shutil
import tempfile

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ["FUSION_TUNE"] = "off"
os.environ["FUSION_CACHE_DIR"] = tempfile.mkdtemp(prefix="fusion-test-cache-")


@pytest.fixture
def chromium(tmp_path):
    """A headless Chromium driven by selenium; the test is skipped where chromium, chromedriver or selenium is
    missing, except under CI=true, which requires it (.ci/run installs it)."""
    paths = [shutil.which(p) for p in ("chromium", "chromedriver")]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        paths, why = None, "selenium is not installed"
    else:
        why = "chromium / chromedriver are not installed (apt-get install chromium chromium-driver)"
    if paths is None or not all(paths):
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true requires the headless-browser check: {why}")
        pytest.skip(f"headless Chromium check skipped: {why}")
    options = Options()
    options.binary_location = paths[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic",
                f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(paths[1]))
    yield driver
    driver.quit()
