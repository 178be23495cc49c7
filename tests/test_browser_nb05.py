"""Notebook 05 in a real browser: JupyterLab on 127.0.0.1, Debian's Chromium driven by Playwright.

Runs all cells, types an instruction, clicks Generate, waits for the streamed answer and saves a screenshot
(runs/browser/05_generate.png). Not part of the default run (it needs Debian's `chromium` package:
`apt-get install -y chromium`); run it with

    .venv/bin/python -m pytest -m browser tests/test_browser_nb05.py

Playwright drives the system browser at /usr/bin/chromium: no browser download (`playwright install`) needed.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest
from playwright.sync_api import expect, sync_playwright

from alpaca_helpers.course import NOTEBOOKS_DIR
from alpaca_helpers.demo.decoding import Decoding
from alpaca_helpers.demo.generate import generate, load_model
from alpaca_helpers.demo.watermark import Watermark
from alpaca_helpers.paths import runs_dir
from alpaca_helpers.self_instruct.server import free_port

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]  # Playwright adds --headless itself
LAB_SETTINGS = {
    # Render every cell (JupyterLab 4 leaves off-screen cells out of the page by default) and ask no questions.
    "notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false"},
}
KERNEL_READY = """() => {
    const w = window.jupyterapp.shell.currentWidget;
    const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
    return k && k.connectionStatus === "connected" && k.status === "idle";
}"""
QUESTION = "What is the capital of Tanzania?"
MAX_NEW_TOKENS = 32


def _notebook_copy(folder: Path) -> Path:
    """Notebook 05 with test parameters in a cell right after its parameters cell (as papermill does)."""
    nb = nbformat.read(NOTEBOOKS_DIR / "05_generate.ipynb", as_version=4)
    params = {"models_root": str(folder / "runs"), "max_new_tokens": MAX_NEW_TOKENS, "serve_max_tokens": 16,
              "export_dtypes": [], "output_dir": str(folder / "out")}
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in params.items())))
    path = folder / "05_generate.ipynb"
    nbformat.write(nb, path)
    return path


@pytest.fixture
def jupyterlab(tmp_path):
    """A JupyterLab server on 127.0.0.1 serving `tmp_path`; yields (url, token)."""
    port, token = free_port(), secrets.token_hex(16)
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           f"--ServerApp.root_dir={tmp_path}", f"--IdentityProvider.token={token}",
           "--LabApp.expose_app_in_browser=True", "--LabApp.extension_manager=readonly",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.news_url=None"]
    if os.geteuid() == 0:
        cmd.append("--allow-root")  # CI containers run as root
    # Fresh config, settings and runtime folders: nothing from the user's own Jupyter set-up.
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp_path / "jupyter-config"),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "jupyter-runtime"), JUPYTER_DATA_DIR=str(tmp_path / "jupyter-data"))
    settings = tmp_path / "jupyter-config" / "lab" / "user-settings" / "@jupyterlab"
    for plugin, values in LAB_SETTINGS.items():
        (settings / plugin).parent.mkdir(parents=True, exist_ok=True)
        (settings / plugin).write_text(json.dumps(values))
    log = open(tmp_path / "jupyterlab.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (tmp_path / "jupyterlab.log").read_text()[-3000:]
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "JupyterLab did not start in 90 s"
                time.sleep(0.5)
        yield url, token
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_notebook_05_in_a_real_browser(jupyterlab, tmp_path):
    assert CHROMIUM.is_file(), "Debian's chromium is missing: apt-get install -y chromium"
    url, token = jupyterlab
    _notebook_copy(tmp_path)
    screenshot = runs_dir() / "browser" / "05_generate.png"
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True,
            chromium_sandbox=False, args=CHROMIUM_FLAGS, viewport={"width": 1400, "height": 1000})
        try:
            page = browser.pages[0] if browser.pages else browser.new_page()
            page.goto(f"{url}/lab/tree/05_generate.ipynb?token={token}")
            page.wait_for_function("window.jupyterapp && document.querySelector('.jp-Notebook')", timeout=90_000)
            page.wait_for_function(KERNEL_READY, timeout=120_000)
            page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
            summary = tmp_path / "out" / "summary.json"  # the last cell writes it once every cell above has run
            deadline = time.monotonic() + 300
            while not summary.exists():
                assert time.monotonic() < deadline, "the notebook did not finish running in 300 s"
                page.wait_for_timeout(1000)
            page.wait_for_function(KERNEL_READY, timeout=60_000)

            page.locator(".widget-textarea textarea").first.fill(QUESTION)
            page.get_by_role("button", name="Generate").click()
            status = page.locator(".alpaca-status")
            expect(status).to_contain_text("generating", timeout=30_000)
            expect(status).to_have_text("done", timeout=120_000)
            answer = page.locator(".alpaca-answer").first
            expect(answer).to_contain_text("Tanzania")
            shown = answer.inner_text().strip()
            verdict = page.locator(".alpaca-verdict").first.inner_text()
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    # What the browser shows is what `generate` gives with the widget's settings (seed 42, watermark on).
    model, tokenizer = load_model("default")
    widget_settings = Decoding(temperature=0.7, seed=42, max_new_tokens=MAX_NEW_TOKENS,
                               watermark=Watermark(key="alpaca-course"))
    expected = generate(model, tokenizer, QUESTION, decoding=widget_settings)
    assert shown == expected
    assert verdict.startswith("watermark check: z = ")
    assert screenshot.stat().st_size > 20_000
    shutil.copy(screenshot, tmp_path / screenshot.name)
    print(f"screenshot: {screenshot}")
