"""The web app in a real browser (Debian's chromium through playwright, headless; the README's test command installs
it): a generate and a compose (decompose, swap a condition, recompose) on the bundled model end to end, a mask drawn
with the mouse, a running job cancelled, and a bad upload's error shown."""

import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    import uvicorn

    from recomposer.server.app import Settings, create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(Settings(tmp_path_factory.mktemp("serve"))), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(30)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.is_file(), "Debian's chromium is missing: the README's test command installs it"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser, app_url):
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    yield page
    page.close()
    assert not errors, errors


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from recomposer.world.render import render
    from recomposer.world.scene import sample_scene

    folder = tmp_path_factory.mktemp("scenes")
    for seed in (7, 11):
        Image.fromarray(render(sample_scene(seed), 64).image).save(folder / f"{seed}.png")
    (folder / "bad.png").write_bytes(b"this is text, not a picture")
    return folder


def stroke(page, start: tuple[float, float], end: tuple[float, float]) -> None:
    """One mouse stroke on the drawing canvas, between points given as shares of its width and height."""
    box = page.locator("#canvas").bounding_box()
    at = [(box["x"] + box["width"] * x, box["y"] + box["height"] * y) for x, y in (start, end)]
    page.mouse.move(*at[0])
    page.mouse.down()
    page.mouse.move(*at[1], steps=8)
    page.mouse.up()


def last_job(page) -> str:
    return page.locator("#history li").first.inner_text()


def test_generate_end_to_end(page, app_url):
    page.goto(app_url)
    page.fill("textarea[name=prompt]", "a red circle")
    page.fill("input[name=steps]", "8")
    assert page.locator("select[name=scheduler] option").count() >= 9  # a fixed list is a menu
    page.click("button.primary")
    page.wait_for_selector("#run-state[data-state=done]", timeout=60_000)
    assert page.locator("#results img").count() == 1
    assert last_job(page).startswith("generate done")
    page.locator("#history li").first.locator("summary").click()
    assert '"steps": 8' in page.locator("#history li pre").first.inner_text()
    page.fill("textarea[name=prompt]", "something else")
    page.fill("input[name=steps]", "30")
    page.locator("#history li").first.locator("button", has_text="Use these settings again").click()
    assert page.input_value("textarea[name=prompt]") == "a red circle" and page.input_value("input[name=steps]") == "8"


def test_compose_decomposes_swaps_a_condition_and_recomposes(page, app_url, scenes):
    page.goto(app_url + "/#compose")
    page.set_input_files("input[data-slot=image]", str(scenes / "7.png"))
    page.wait_for_selector(".slot[data-slot=image] img:not([hidden])")
    page.click("text=Decompose this image")
    page.wait_for_selector(".slot[data-slot=sketch] img:not([hidden])", timeout=60_000)
    page.set_input_files("input[data-slot=palette]", str(scenes / "11.png"))  # the palette from another image
    page.locator(".slot[data-slot=image_embedding] button", has_text="drop").click()
    page.fill("input[name=steps]", "8")
    page.click("button.primary")
    page.wait_for_selector("#history li:first-child b:text-is('compose')", timeout=60_000)
    page.wait_for_selector("#run-state[data-state=done]", timeout=60_000)
    record = page.evaluate("fetch('/api/jobs?limit=1').then(r => r.json())")[0]
    assert record["state"] == "done"
    assert set(record["request"]["inputs"]) == {"palette", "sketch", "instances", "intensity"}


def test_a_mask_drawn_with_the_mouse_becomes_the_mask_input(page, app_url, scenes):
    page.goto(app_url + "/#composite")
    page.set_input_files("input[data-slot=background]", str(scenes / "7.png"))
    page.wait_for_selector(".slot[data-slot=background] img:not([hidden])")
    page.locator(".slot[data-slot=mask] button", has_text="draw").click()
    page.wait_for_selector("#drawing[open] #canvas")
    stroke(page, (0.3, 0.5), (0.7, 0.5))
    page.click("#use-drawing")
    page.wait_for_selector(".slot[data-slot=mask] img:not([hidden])")
    src = page.get_attribute(".slot[data-slot=mask] img", "src")
    mask = np.asarray(Image.open(__import__("io").BytesIO(page.request.get(app_url + src).body())).convert("L"))
    assert mask.shape == (64, 64) and set(np.unique(mask)) == {0, 255}
    assert mask[32, 19:45].min() == 255 and mask[5, 5] == 0  # the stroke, and nothing else


def test_a_running_job_is_cancelled_from_the_page(page, app_url):
    page.goto(app_url)
    page.fill("textarea[name=prompt]", "a blue square")
    page.fill("input[name=steps]", "1000")
    page.click("button.primary")
    page.wait_for_selector("#run-state:text-matches('step [1-9]')", timeout=60_000)
    page.click("#cancel")
    page.wait_for_selector("#run-state[data-state=cancelled]", timeout=30_000)
    assert "cancelled while it ran" in page.inner_text("#run-state")


def test_a_bad_upload_shows_its_error(page, app_url, scenes):
    page.goto(app_url + "/#instruct")
    page.set_input_files("input[data-slot=image]", str(scenes / "bad.png"))
    page.wait_for_selector("#error:not([hidden])")
    assert page.inner_text("#error").startswith("file:")
    assert page.locator(".slot[data-slot=image] img:not([hidden])").count() == 0


def test_a_real_image_is_inverted_then_edited_by_prompt_to_prompt(page, app_url, scenes):
    page.goto(app_url + "/#p2p")
    page.fill("input[name=source]", "a gray crescent")
    page.fill("input[name=edited]", "a red crescent")
    page.fill("input[name=steps]", "6")
    page.click("summary:has-text('edit a real image')")
    page.set_input_files("input[data-slot=image]", str(scenes / "7.png"))
    page.wait_for_selector(".slot[data-slot=image] img:not([hidden])")
    page.click("button:text-is('Invert this image')")
    page.wait_for_selector("text=now edits the inverted image", timeout=60_000)
    page.click("button.primary")
    page.wait_for_selector("#history li:first-child b:text-is('p2p')", timeout=60_000)
    page.wait_for_selector("#run-state[data-state=done]", timeout=60_000)
    record = page.evaluate("fetch('/api/jobs?limit=1').then(r => r.json())")[0]
    assert record["state"] == "done" and set(record["request"]["inputs"]) == {"inversion"}
    assert page.locator("#results img").count() == 2
    page.locator("#history li").first.locator("summary").click()
    page.locator("#history li").first.locator("button", has_text="Use these settings again").click()
    page.fill("input[name=edited]", "a blue crescent")
    page.click("button.primary")  # the same inverted image, another edit
    end = time.monotonic() + 60
    while time.monotonic() < end:
        again = page.evaluate("fetch('/api/jobs?limit=1').then(r => r.json())")[0]
        if again["request"]["request"]["edited"] == "a blue crescent" and again["state"] == "done":
            break
        time.sleep(0.2)
    assert again["request"]["request"]["edited"] == "a blue crescent" and again["state"] == "done"
    assert again["request"]["inputs"] == record["request"]["inputs"]


def test_an_edit_is_learnt_from_a_pair_then_applied(page, app_url, scenes):
    page.goto(app_url + "/#instruct")
    page.set_input_files("input[data-slot=image]", str(scenes / "7.png"))
    page.click("summary:has-text('learn the edit')")
    page.set_input_files("input[data-slot=before]", str(scenes / "7.png"))
    page.set_input_files("input[data-slot=after]", str(scenes / "11.png"))
    page.wait_for_selector(".slot[data-slot=after] img:not([hidden])")
    page.locator("details[open] input[type=number]").fill("3")
    page.click("button:text-is('Learn this edit')")
    page.wait_for_selector("text=applies the learnt edit", timeout=60_000)
    page.fill("input[name=steps]", "4")
    page.click("button.primary")
    page.wait_for_selector("#history li:first-child b:text-is('instruct')", timeout=60_000)
    page.wait_for_selector("#run-state[data-state=done]", timeout=60_000)
    record = page.evaluate("fetch('/api/jobs?limit=1').then(r => r.json())")[0]
    assert record["state"] == "done" and record["request"]["request"]["learned"]


def test_scribbles_painted_over_the_background_become_the_background(page, app_url, scenes):
    page.goto(app_url + "/#composite")
    page.set_input_files("input[data-slot=background]", str(scenes / "11.png"))
    page.wait_for_selector(".slot[data-slot=background] img:not([hidden])")
    first = page.get_attribute(".slot[data-slot=background] img", "src")
    page.locator(".slot[data-slot=background] button", has_text="draw").click()
    page.wait_for_selector("#drawing[open] #colour")
    page.fill("#colour", "#ff0000")
    page.evaluate("document.getElementById('brush').value = 24")  # 4 picture pixels wide at this zoom
    stroke(page, (0.2, 0.2), (0.8, 0.2))
    page.click("#use-drawing")
    page.wait_for_function(f"document.querySelector('.slot[data-slot=background] img').getAttribute('src') != "
                           f"{first!r}")
    src = page.get_attribute(".slot[data-slot=background] img", "src")
    painted = np.asarray(Image.open(__import__("io").BytesIO(page.request.get(app_url + src).body())).convert("RGB"))
    original = np.asarray(Image.open(scenes / "11.png").convert("RGB"))
    assert painted.shape == original.shape
    assert (painted[13, 20:44] == (255, 0, 0)).all()  # the scribble
    assert (painted[40:] == original[40:]).all()  # and the picture under it, untouched
