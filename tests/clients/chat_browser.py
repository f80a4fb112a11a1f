#!/usr/bin/env python3
"""Drives the `chat` app's page in two pages of Debian's headless Chromium, with Playwright.

    chat_browser.py http://127.0.0.1:PORT/chat/ --screenshot PNG [--expect-published TEXT]

Both pages open `/chat/` (the page has an input `#message`, a button `#send` and a list
`#messages`, and connects a WebSocket to `/chat/ws`). Once each page's WebSocket is open, each
page sends a warm-up message of its own and waits for it to come back into its own list: the
round trip through the channel proves that page's subscription is live, so what follows cannot
race it. Then:

* by default, page 1 types a message and clicks send; it must appear in page 2's list (and in
  page 1's) within 10 s;
* with `--expect-published TEXT`, the script prints `READY` on its own line and waits (10 s
  after that line) until TEXT appears in both lists: the caller publishes it meanwhile, with
  `redis-cli PUBLISH messages TEXT`, say.

A list entry matches when its text, trimmed, is the message or ends with it (so a page may
prefix a time or a name). A screenshot of page 2 is saved to PNG at the end, and on failure too
when the pages got that far. Chromium is Debian's `/usr/bin/chromium` (`apt-get install
chromium`), started with `--no-sandbox` when running as root; Playwright downloads no browser.
Exits 1 with a `FAIL:` line, the pages' console output and their errors on any failure.
"""

import argparse
import os
import secrets
import sys
import time

from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"
TIMEOUT_MS = 10_000

# Records every WebSocket a page makes, so the script can wait until one is open.
TRACK_SOCKETS = """
(() => {
  const Native = window.WebSocket;
  window.__berthSockets = [];
  window.WebSocket = class extends Native {
    constructor(...args) { super(...args); window.__berthSockets.push(this); }
  };
})();
"""

SOCKET_OPEN = "() => (window.__berthSockets || []).some(s => s.readyState === 1)"

# Whether the list `#messages` has an entry that is `text` (or ends with it).
LIST_HAS = """
(text) => {
  const list = document.getElementById('messages');
  if (!list) return false;
  const entries = list.children.length
    ? Array.from(list.children, e => e.textContent)
    : list.innerText.split('\\n');
  return entries.some(e => { const t = e.trim(); return t === text || t.endsWith(text); });
}
"""


class Failure(Exception):
    pass


def log(message):
    print(message, flush=True)


class Page:
    """One browser page on the chat, with its console output kept for failure reports."""

    def __init__(self, browser, name):
        self.name = name
        self.console = []
        self.page = browser.new_page()
        self.page.on("console", lambda m: self.console.append(f"console.{m.type}: {m.text}"))
        self.page.on("pageerror", lambda e: self.console.append(f"page error: {e}"))
        self.page.on("websocket", self.on_websocket)
        self.page.add_init_script(TRACK_SOCKETS)

    def on_websocket(self, ws):
        self.console.append(f"websocket created: {ws.url}")
        ws.on("close", lambda _: self.console.append(f"websocket closed: {ws.url}"))
        ws.on("socketerror", lambda err: self.console.append(f"websocket error: {err}"))

    def open(self, url):
        response = self.page.goto(url, timeout=TIMEOUT_MS)
        if response is None or response.status != 200:
            status = None if response is None else response.status
            raise Failure(f"{self.name}: GET {url} answered {status}, not 200")
        for selector in ("#message", "#send", "#messages"):
            if self.page.locator(selector).count() != 1:
                raise Failure(f"{self.name}: the page at {url} has no single {selector} element")
        self.wait(SOCKET_OPEN, None, "open WebSocket (the page's to /chat/ws)")
        log(f"ok: {self.name} loaded {url} and its WebSocket is open")

    def wait(self, expression, arg, what):
        try:
            self.page.wait_for_function(expression, arg=arg, timeout=TIMEOUT_MS)
        except PlaywrightError as err:
            first = str(err).splitlines()[0]
            raise Failure(f"{self.name}: no {what} within {TIMEOUT_MS / 1000:.0f} s ({first})"
                          ) from None

    def send(self, text):
        """Types `text` into the input, as a person would, and clicks send."""
        box = self.page.locator("#message")
        box.click()
        box.press_sequentially(text, delay=5)
        self.page.locator("#send").click()

    def wait_for_message(self, text):
        self.wait(LIST_HAS, text, f"{text!r} in #messages")

    def text(self):
        """What the page shows, for failure reports."""
        try:
            return self.page.locator("body").inner_text(timeout=1000)[:2000]
        except PlaywrightError as err:
            return f"(cannot read the page: {err})"


def run(browser, args):
    nonce = secrets.token_hex(4)
    pages = [Page(browser, "page 1"), Page(browser, "page 2")]
    try:
        for page in pages:
            page.open(args.url)
        for page in pages:
            warm_up = f"{page.name} is here ({nonce})"
            page.send(warm_up)
            page.wait_for_message(warm_up)
            log(f"ok: {page.name}'s own message came back through the channel")
        if args.expect_published is None:
            message = f"Hello from page 1, d\u00e9j\u00e0 vu ({nonce})"
            started = time.monotonic()
            pages[0].send(message)
            pages[1].wait_for_message(message)
            log(f"ok: the message typed in page 1 appeared in page 2 after "
                f"{(time.monotonic() - started) * 1000:.0f} ms")
            pages[0].wait_for_message(message)
            log("ok: and in page 1")
        else:
            log("READY")
            for page in pages:
                page.wait_for_message(args.expect_published)
                log(f"ok: {args.expect_published!r} appeared in {page.name}")
    except Failure:
        for page in pages:
            log(f"--- {page.name} shows:\n{page.text()}")
        raise
    finally:
        try:
            pages[1].page.screenshot(path=args.screenshot, full_page=True)
            log(f"screenshot of page 2: {args.screenshot}")
        except PlaywrightError as err:
            log(f"no screenshot: {err}")
        for page in pages:
            if page.console:
                log(f"--- {page.name} console:\n" + "\n".join(page.console))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="the chat page, http://HOST:PORT/chat/")
    parser.add_argument("--screenshot", required=True, help="where page 2's PNG goes")
    parser.add_argument("--expect-published", metavar="TEXT",
                        help="wait for TEXT, published by the caller after READY")
    parser.add_argument("--chromium", default=CHROMIUM)
    args = parser.parse_args()
    if not os.access(args.chromium, os.X_OK):
        return f"FAIL: no Chromium at {args.chromium}: apt-get install chromium"
    os.makedirs(os.path.dirname(os.path.abspath(args.screenshot)), exist_ok=True)
    flags = ["--no-sandbox"] if os.geteuid() == 0 else []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, headless=True,
                                             args=flags, timeout=30_000)
        log(f"ok: started {args.chromium} {browser.version} (headless{', ' if flags else ''}"
            f"{' '.join(flags)})")
        try:
            run(browser, args)
        except Failure as err:
            return f"FAIL: {err}"
        finally:
            browser.close()
    log("chat_browser: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
