"""Click latency in a real browser: from a click on the template to the mask drawn on the page.

Starts `sam2pal serve` on 127.0.0.1, opens it in Debian's Chromium with Playwright, uploads a
1600×1200 template, opens "click points" and clicks inside the specimen N times. Each click is
timed inside the page, from the pointer going down to the new click image's load event, so the
benchmark's own polling neither adds to the time nor takes the CPU from the server. The first
click loads the model and encodes the photo; the later ones are what a user waits for while
refining a mask.

    .venv/bin/python bench/click_latency.py --model random:tiny --image-size 1024 --clicks 6
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from sam2pal.synthetic.domains import write_collection

CHROMIUM = "/usr/lib/chromium/chromium"
FLAGS = ["--no-sandbox", "--disable-dev-shm-usage", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for(url: str, seconds: float) -> None:
    import urllib.request

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"the app did not start at {url}")


def measure(model: str, image_size: int, clicks: int, size: tuple[int, int]) -> list[float]:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        files = write_collection(Path(tmp) / "c", "in-domain", seed=3, templates=1, specimens=1)
        photo = Path(tmp) / "template.jpg"
        Image.open(files.folder / "template_0.png").convert("RGB").resize(size, Image.BICUBIC).save(photo, quality=92)
        port = _free_port()
        server = subprocess.Popen([sys.executable, "-m", "sam2pal.cli", "serve", "--host", "127.0.0.1", "--port",
                                   str(port), "--model", model, "--image-size", str(image_size), "--device", "cpu"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_for(url, 120)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(url)
                page.wait_for_function("document.querySelector('#template-note')?.innerText.includes('Session ready')",
                                       timeout=60_000)
                page.locator("#template-files input[type=file]").set_input_files(str(photo))
                page.locator("#structures textarea").fill("body")
                page.wait_for_timeout(1500)
                page.locator("#apply-structures").click()
                page.get_by_text("Or click points on a structure for a SAM2 mask").click()
                page.wait_for_selector("#click-image img", timeout=60_000)
                image = page.locator("#click-image img")
                page.evaluate("""() => {
                    window.__clicks = []; window.__drawn = [];
                    document.addEventListener('pointerdown', () => window.__clicks.push(performance.now()), true);
                    const watch = (img) => img.addEventListener('load', () => window.__drawn.push(performance.now()));
                    const root = document.querySelector('#click-image');
                    root.querySelectorAll('img').forEach(watch);
                    new MutationObserver((changes) => changes.forEach((c) => c.addedNodes.forEach((n) => {
                        if (n.tagName === 'IMG') watch(n); else if (n.querySelectorAll) n.querySelectorAll('img').forEach(watch);
                    }))).observe(root, {childList: true, subtree: true});
                }""")
                times = []
                for index in range(clicks):
                    drawn_before = page.evaluate("window.__drawn.length")
                    box = image.bounding_box()
                    image.click(position={"x": box["width"] * (0.45 + 0.01 * index), "y": box["height"] * 0.5})
                    page.wait_for_function(f"window.__drawn.length > {drawn_before}", polling=100, timeout=600_000)
                    clicked, drawn = page.evaluate(f"[window.__clicks.at(-1), window.__drawn[{drawn_before}]]")
                    times.append((drawn - clicked) / 1000)
                    page.wait_for_timeout(300)  # a person looks at the mask before the next click
                browser.close()
            return times
        finally:
            server.terminate()
            server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random:tiny")
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--clicks", type=int, default=6)
    parser.add_argument("--photo", default="1600x1200", help="template size WxH (default 1600x1200)")
    args = parser.parse_args()
    size = tuple(int(side) for side in args.photo.split("x"))
    times = measure(args.model, args.image_size, args.clicks, size)
    print(f"click latency in Chromium, {args.model} at {args.image_size} px, {size[0]}x{size[1]} template")
    print(" | ".join(("click", "seconds")))
    for index, seconds in enumerate(times, start=1):
        print(f"{index} | {seconds:.2f}" + (" (loads the model, encodes the photo)" if index == 1 else ""))
    later = sorted(times[1:])
    if later:
        print(f"later clicks: median {later[len(later) // 2]:.2f} s, worst {later[-1]:.2f} s")


if __name__ == "__main__":
    main()
