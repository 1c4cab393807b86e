"""Screenshot of the ``daonet serve --web`` page for the docs (docs/assets/web-page.png), in Debian's Chromium.

    python scripts/web_screenshot.py [--out docs/assets/web-page.png]

Uses bench/js_bench.py's MNIST mlp (trained there once and cached), draws a "3" on the pad with mouse
events, waits for the server's answer and saves the page.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "tests")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "assets" / "web-page.png")
    args = ap.parse_args()
    from js_bench import build
    from playwright.sync_api import sync_playwright
    from test_web_page import CHROMIUM, CHROMIUM_ARGS

    from daonet.server.config import ServerConfig
    from daonet.server.launch import ServerProcess

    _, server_dir, _ = build("mnist-mlp", ROOT / ".daonet-cache" / "js-bench")
    with ServerProcess(ServerConfig(bundles=[server_dir], web=True, port=0, log_level="warning")) as server:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1000, "height": 900})
            page.goto(server.url)
            page.wait_for_function("() => window.daonetPage && window.daonetPage.ready", timeout=30000)
            box = page.locator("#pad").bounding_box()
            cx, cy = box["x"] + 140, box["y"] + 140
            page.mouse.move(cx - 50, cy - 80)
            page.mouse.down()
            for a in range(-120, 100, 10):  # upper bowl of a "3"
                t = math.radians(a)
                page.mouse.move(cx + 55 * math.cos(t), cy - 45 + 40 * math.sin(t))
            for a in range(-90, 140, 10):  # lower bowl
                t = math.radians(a)
                page.mouse.move(cx + 60 * math.cos(t), cy + 40 + 45 * math.sin(t))
            page.mouse.up()
            page.wait_for_function("() => window.daonetPage.answer || window.daonetPage.error", timeout=30000)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out), full_page=True)
            print(f"{args.out}: answer {page.locator('#answer').inner_text()!r}")
            browser.close()


if __name__ == "__main__":
    main()
