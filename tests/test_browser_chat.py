"""The persona chat in a real browser: a local JupyterLab server, headless Chromium driven by Playwright.

Needs Debian's chromium (`apt-get install -y chromium`) and `pip install playwright`; Playwright drives the system
browser and never downloads its own. The screenshot lands in build/screenshots/ (git-ignored).
"""
import json
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
# This network is closed: without these flags Chromium stalls on outbound connections (sync, updates, ...).
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
# Start the notebook's kernel without asking, and no news or update checks (toasts that could cover the page).
LAB_SETTINGS = {"@jupyterlab/notebook-extension/tracker": {"autoStartDefaultKernel": True},
                "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False}}
PIRATE = "captain_codebeard"
SCREENSHOTS = ROOT / "build" / "screenshots"

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} not found: apt-get install -y chromium", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed: pip install playwright")


def chat_notebook(adapter_dir: Path, feedback: Path) -> nbformat.NotebookNode:
    """The smallest notebook that shows the persona chat: one base model, the pirate adapter, short replies, and the
    thumbs that save ratings to `feedback`."""
    code = f"""import sys
sys.path.insert(0, {str(ROOT)!r})
from utils.chat import PersonaChat, chat_widget
from utils.loading import load_personas

personas = load_personas({str(adapter_dir)!r})
chat = PersonaChat(personas.model, personas.tokenizer, personas.system_prompts, max_new_tokens=12,
                   feedback_file={str(feedback)!r})
chat_widget(chat)"""
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return notebook


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, server: subprocess.Popen, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with code {server.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return json.load(response)
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"jupyter lab did not answer at {url} within {timeout} s")


@pytest.fixture(scope="module")
def lab(pirate_adapter, tmp_path_factory):
    """A JupyterLab server on localhost serving a folder with the chat notebook; yields the notebook's URL."""
    folder = tmp_path_factory.mktemp("lab")
    nbformat.write(chat_notebook(pirate_adapter, folder / "feedback.jsonl"), folder / "chat.ipynb")
    for plugin, values in LAB_SETTINGS.items():
        path = folder / "settings" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    port, token = free_port(), secrets.token_hex(16)
    command = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", "--ip=127.0.0.1",
               f"--port={port}", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={folder}",
               # fresh settings and layout; nothing that would reach out to the internet
               f"--LabApp.user_settings_dir={folder / 'settings'}", f"--LabApp.workspaces_dir={folder / 'workspaces'}",
               "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
               "--LabApp.extension_manager=readonly"]
    log = (folder / "server.log").open("w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/api/status?token={token}", server)
        yield f"http://127.0.0.1:{port}/lab/tree/chat.ipynb?token={token}", folder / "feedback.jsonl"
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


@pytest.fixture
def page(tmp_path):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            tmp_path / "chromium-profile", executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 900})
        try:
            yield browser.pages[0] if browser.pages else browser.new_page()
        finally:
            browser.close()


def chat_log_text(page) -> str:
    return page.locator(".persona-chat-log").first.inner_text()


def wait_for_reply(page, speaker: str, timeout_ms: int = 120_000):
    """Until the log shows the speaker's turn, finished (no streaming cursor)."""
    page.wait_for_function(
        """speaker => { const log = document.querySelector('.persona-chat-log');
                        return log && log.innerText.includes(speaker + ':') && !log.innerText.includes('▌'); }""",
        arg=speaker, timeout=timeout_ms)


def talk(page, message: str, speaker: str):
    page.get_by_placeholder("Say something ...").fill(message)
    page.get_by_role("button", name="Send").click()
    wait_for_reply(page, speaker)
    assert message in chat_log_text(page)


def test_chat_in_a_real_browser(lab, page):
    from utils.preference import feedback_pairs

    url, feedback = lab
    screenshot = SCREENSHOTS / "persona_chat.png"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    try:
        page.goto(url)
        page.locator(".jp-Notebook").wait_for(timeout=60_000)
        page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=60_000)  # the kernel is up: run
        page.get_by_text("Run", exact=True).first.click()  # the Run menu
        page.get_by_text("Run All Cells", exact=True).click()
        page.get_by_role("button", name="Send").wait_for(timeout=120_000)  # the kernel displayed the widget

        talk(page, "Ahoy! Any tips on naming variables?", PIRATE)
        page.get_by_role("button", name="👍 good reply").click()
        page.get_by_text("saved as a good reply").wait_for(timeout=30_000)
        page.get_by_role("button", name="try again").click()  # a new sample for the same message
        page.wait_for_function("!document.querySelector('.persona-chat-log').innerText.includes('saved as')")
        wait_for_reply(page, PIRATE)
        page.get_by_role("button", name="👎 bad reply").click()
        page.get_by_text("saved as a bad reply").wait_for(timeout=30_000)
        page.locator(".widget-dropdown select").first.select_option("base")
        page.wait_for_function("!document.querySelector('.persona-chat-log').innerText.includes('Ahoy')")
        talk(page, "Hello, who are you?", "base")
        page.locator(".widget-dropdown select").first.select_option(PIRATE)  # its conversation is still there
        page.wait_for_function("document.querySelector('.persona-chat-log').innerText.includes('Ahoy')")
    finally:  # also on failure: the page as it was is the best clue
        page.screenshot(path=screenshot, full_page=True)
    assert screenshot.stat().st_size > 10_000
    ratings = [json.loads(line) for line in feedback.read_text().splitlines()]
    assert [r["good"] for r in ratings] == [True, False] and ratings[0]["prompt"] == ratings[1]["prompt"]
    assert len(feedback_pairs(feedback, PIRATE)) == (ratings[0]["reply"] != ratings[1]["reply"]), \
        "the two ratings make one preference pair, in the format notebook 09 trains on"
