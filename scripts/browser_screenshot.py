"""Screenshot the browser page playing a dream: serves a checkpoint, opens the page in headless
Chromium (Debian's ``chromium``, driven by Playwright's client; no browser download), holds
keys, and saves a PNG of the page.

    python scripts/browser_screenshot.py --checkpoint pong --out docs/browser.png --keys up:20 down:20
"""

from __future__ import annotations

import argparse
import shutil
import sys

import worldmodel
from play.serve import ServerConfig, ServerThread

KEYS = {"up": "ArrowUp", "down": "ArrowDown", "fire": "Space", "none": None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="pong", help="shipped name or bundle directory")
    parser.add_argument("--out", default="docs/browser.png", help="where the PNG goes")
    parser.add_argument("--keys", nargs="*", default=["up:20", "down:20"],
                        help="KEY:FRAMES held in turn; KEY in %(choices)s" % {"choices": sorted(KEYS)})
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for frames")
    args = parser.parse_args(argv)
    script = []
    for item in args.keys:
        key, _, frames = item.partition(":")
        if key not in KEYS or not frames.isdigit():
            parser.error(f"bad key step {item!r}: expected KEY:FRAMES with KEY in {sorted(KEYS)}")
        script.append((KEYS[key], int(frames)))
    chromium = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    if chromium is None:
        print("no chromium on PATH (apt-get install chromium)", file=sys.stderr)
        return 1
    from playwright.sync_api import sync_playwright

    model = worldmodel.load(args.checkpoint)
    wait_ms = args.timeout * 1000
    with ServerThread(model, ServerConfig(port=0, max_sessions=1)) as st, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 900, "height": 760})
            page.goto(st.url)
            page.wait_for_function("window.dream.framesShown >= 3", timeout=wait_ms)
            for key, frames in script:
                if key:
                    page.keyboard.down(key)
                shown = page.evaluate("window.dream.framesShown")
                page.wait_for_function(f"window.dream.framesShown >= {shown + frames}", timeout=wait_ms)
                if key:
                    page.keyboard.up(key)
            page.screenshot(path=args.out)
        finally:
            browser.close()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
