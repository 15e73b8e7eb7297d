"""Drive the demo in a headless Chromium, as a user would: for the browser test and the README screenshot.

Playwright's Python package drives the machine's own Chromium (`executable_path`; Playwright's browser
download is never used). The flags keep Chromium from reaching out to the network on its own.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic"]
# Every change of the last reply's text, recorded in the page while it streams.
RECORD_REPLY = """() => {
  window.__replies = [];
  const box = document.querySelector('#chatbot');
  const observer = new MutationObserver(() => {
    const bots = box.querySelectorAll('.message.bot, [data-testid="bot"]');
    if (bots.length) window.__replies.push(bots[bots.length - 1].innerText);
  });
  observer.observe(box, {subtree: true, childList: true, characterData: true});
}"""


def find_chromium() -> str | None:
    """Debian's chromium (or another on PATH), or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


@dataclass
class Walkthrough:
    """What the user saw."""

    attach_status: list[str] = field(default_factory=list)
    reply_snapshots: list[str] = field(default_factory=list)  # the reply's text at each change, in order
    reply: str = ""
    status: str = ""
    cloud_preview: bool = False
    cleared: bool = False  # "Clear" emptied the chat and hid the previews


def walk_demo(url: str, image: Path, cloud: Path, screenshot: Path, question: str = "What is in the picture?",
              chromium: str | None = None, timeout_ms: int = 60_000) -> Walkthrough:
    """Attach an image, ask, wait for the streamed reply, attach a point cloud, wait for its 3D preview,
    screenshot, then clear the conversation."""
    from playwright.sync_api import sync_playwright

    seen = Walkthrough()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium or find_chromium(), args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(timeout_ms)
            page.goto(url)
            page.locator("#message textarea").wait_for()

            page.locator("#attach input[type=file]").set_input_files(str(image))
            page.locator("#status", has_text="Attached image").wait_for()
            seen.attach_status.append(page.locator("#status").inner_text())
            page.locator("#image-preview img").wait_for()

            page.evaluate(RECORD_REPLY)
            page.locator("#message textarea").fill(question)
            page.locator("#send").click()
            page.locator("#status", has_text="tokens (").wait_for()
            seen.status = page.locator("#status").inner_text()
            seen.reply_snapshots = [s for s in page.evaluate("window.__replies") if s.strip()]
            bots = page.locator("#chatbot .message.bot, #chatbot [data-testid='bot']")
            seen.reply = bots.last.inner_text()

            page.locator("#attach input[type=file]").set_input_files(str(cloud))
            page.locator("#status", has_text="Attached pointcloud").wait_for()
            seen.attach_status.append(page.locator("#status").inner_text())
            page.locator("#cloud-preview .js-plotly-plot").wait_for()
            seen.cloud_preview = page.locator("#cloud-preview .js-plotly-plot").is_visible()
            page.wait_for_timeout(500)  # let the scatter finish drawing before the picture
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)

            page.locator("#clear").click()
            page.locator("#status", has_text="Conversation and media cleared").wait_for()
            page.locator("#cloud-preview").wait_for(state="hidden")
            seen.cleared = page.locator("#chatbot .message").count() == 0
        finally:
            browser.close()
    return seen
