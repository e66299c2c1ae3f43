"""The README's screenshots of the web app, on the bundled model, through Debian's chromium (headless).

    python benchmarks/webapp_pictures.py [-o docs/images]

webapp-compose.png: a shapes-world scene decomposed, its palette taken from another scene, its image embedding
dropped, recomposed. webapp-mask.png: a mask being drawn over a background on the compositing page.
"""

import argparse
import tempfile
import threading
import time
from pathlib import Path

import torch
from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=Path("docs/images"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    import uvicorn
    from playwright.sync_api import sync_playwright

    from recomposer.server.app import Settings, create_app
    from recomposer.world.render import render
    from recomposer.world.scene import sample_scene

    work = Path(tempfile.mkdtemp(prefix="webapp-"))
    for seed in (7, 11):
        Image.fromarray(render(sample_scene(seed), 64).image).save(work / f"{seed}.png")
    server = uvicorn.Server(uvicorn.Config(create_app(Settings(work / "data")), host="127.0.0.1", port=7871,
                                           log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    url = "http://127.0.0.1:7871"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 980})
        page.goto(url + "/#compose")
        page.set_input_files("input[data-slot=image]", str(work / "7.png"))
        page.wait_for_selector(".slot[data-slot=image] img:not([hidden])")
        page.click("text=Decompose this image")
        page.wait_for_selector(".slot[data-slot=sketch] img:not([hidden])", timeout=60_000)
        page.set_input_files("input[data-slot=palette]", str(work / "11.png"))
        page.locator(".slot[data-slot=image_embedding] button", has_text="drop").click()
        page.fill("textarea[name=caption]", "a gray crescent, a red triangle and a teal pentagon")
        page.fill("input[name=batch]", "3")
        page.click("button.primary")
        page.wait_for_selector("#history li:first-child b:text-is('compose')", timeout=60_000)
        page.wait_for_selector("#run-state[data-state=done]", timeout=120_000)
        time.sleep(0.5)
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(args.output / "webapp-compose.png"), full_page=True)
        page.goto(url + "/#composite")
        page.set_input_files("input[data-slot=background]", str(work / "11.png"))
        page.wait_for_selector(".slot[data-slot=background] img:not([hidden])")
        page.locator(".slot[data-slot=mask] button", has_text="draw").click()
        page.wait_for_selector("#drawing[open] #canvas")
        box = page.locator("#canvas").bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.25, box["y"] + box["height"] * 0.3)
        page.mouse.down()
        for k in range(1, 30):
            page.mouse.move(box["x"] + box["width"] * (0.25 + 0.5 * k / 29),
                            box["y"] + box["height"] * (0.3 + 0.35 * ((k % 10) / 9)))
        page.mouse.up()
        page.screenshot(path=str(args.output / "webapp-mask.png"))
        browser.close()
    server.should_exit = True
    print(args.output / "webapp-compose.png", args.output / "webapp-mask.png")


if __name__ == "__main__":
    main()
