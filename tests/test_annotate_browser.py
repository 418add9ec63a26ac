"""The annotation page in a real browser: headless Chromium driven by Selenium against the
server running on a free 127.0.0.1 port, with a model whose answers are known (the
object under a click). A short annotation run: accept a clicked object, undo a prompt
and an accept, draw a box, correct with the eraser, paint with the brush, delete a
prefilled mask, go to the next image; the saved JSON is checked against the objects.

Needs Debian's ``chromium`` and ``chromium-driver`` (``make test`` installs them);
skipped with a message where they are missing. ``SAM_JAX_SCREENSHOT=path.png`` keeps
the screenshot (the README's picture comes from here).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time

import numpy as np
import pytest
from PIL import Image

from benchmarks.annotate_stub import StubGenerator, StubPredictor, iou, synthetic_scene

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
H, W = 360, 480

pytestmark = pytest.mark.skipif(
    not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)),
    reason=f"browser test needs {CHROMIUM} and {CHROMEDRIVER}: "
    "apt-get install chromium chromium-driver (make test does it)",
)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    pytest.importorskip("starlette")
    from sam_jax.annotate.server import bind, create_app, make_server

    root = tmp_path_factory.mktemp("browser")
    (root / "images").mkdir()
    gt = {}
    for i, name in enumerate(["a.png", "b.png"]):
        image, labels = synthetic_scene(H, W, seed=i)
        Image.fromarray(image).save(root / "images" / name)
        gt[name] = labels
    # prefill proposes the disk (2) only; rectangle (1) and bar (3) are left to the annotator
    app = create_app(
        root / "images", root / "out", make_predictor=StubPredictor, generator=StubGenerator(keep=(2,))
    )
    sock = bind("127.0.0.1", 0)
    server = make_server(app, sock)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/", root, gt
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    pytest.importorskip("selenium")
    os.environ["SE_OFFLINE"] = "true"  # selenium-manager must not download anything
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,860",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ]:
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    yield driver
    driver.quit()
    os.environ.pop("SE_OFFLINE", None)


def test_annotation_run_in_chromium(served, browser, tmp_path, capsys):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from sam_jax.annotate.store import annotation_stats
    from sam_jax.sa1b_json import decode_mask

    url, root, gt = served
    d = browser
    wait = WebDriverWait(d, 30).until

    def settled():
        wait(lambda _: d.execute_script("return window.samAnnotate.pending === 0"))
        d.execute_script("return window.samAnnotate.chain")  # the promise of the last decode
        wait(lambda _: d.execute_script("return window.samAnnotate.pending === 0"))

    def anns():
        p = root / "out" / "a.json"
        return json.loads(p.read_text())["annotations"] if p.exists() else []

    canvas = None

    def at(x, y):
        """ActionChains positioned on image pixel (x, y) of the canvas."""
        r = canvas.rect
        return ActionChains(d).move_to_element_with_offset(
            canvas,
            int((x + 0.5) * r["width"] / W - r["width"] / 2),
            int((y + 0.5) * r["height"] / H - r["height"] / 2),
        )

    def keys(*k):
        ActionChains(d).send_keys(*k).perform()
        settled()

    def current_area():
        return int(d.find_element(By.ID, "maskinfo").get_attribute("data-area") or 0)

    def centre(label):
        ys, xs = np.nonzero(gt["a.png"] == label)
        return float(np.median(xs)), float(np.median(ys))

    d.get(url)
    wait(lambda _: d.execute_script("return document.body.dataset.ready") == "a.png")
    canvas = d.find_element(By.ID, "canvas")
    assert [a["source"] for a in anns()] == ["auto"]  # the prefilled disk
    assert len(d.find_elements(By.CSS_SELECTOR, "#masks li.auto")) == 1

    # 1. click inside the rectangle, accept with Enter
    at(*centre(1)).click().perform()
    settled()
    assert current_area() == int((gt["a.png"] == 1).sum())
    keys(Keys.ENTER)
    wait(lambda _: len(anns()) == 2)
    manual = anns()[-1]
    iou_rect = iou(decode_mask(manual["segmentation"]), gt["a.png"] == 1)
    assert manual["source"] == "manual" and iou_rect == 1.0

    # 2. undo: Backspace drops the prompt being drawn, Ctrl+Z then reverts the accept
    at(*centre(3)).click().perform()
    settled()
    assert current_area() > 0
    keys(Keys.BACKSPACE)
    assert current_area() == 0 and len(anns()) == 2
    ActionChains(d).key_down(Keys.CONTROL).send_keys("z").key_up(Keys.CONTROL).perform()
    wait(lambda _: len(anns()) == 1)
    assert anns()[0]["source"] == "auto"

    # 3. the rectangle again, then a right-click (background point) on the bar is ignored...
    at(*centre(1)).click().perform()
    settled()
    at(*centre(3)).click().perform()  # foreground on the bar: rectangle + bar
    settled()
    assert current_area() == int(np.isin(gt["a.png"], (1, 3)).sum())
    at(*centre(3)).context_click().perform()  # background on the bar: rectangle only
    settled()
    assert current_area() == int((gt["a.png"] == 1).sum())
    keys(Keys.ENTER)
    wait(lambda _: len(anns()) == 2)
    assert iou(decode_mask(anns()[-1]["segmentation"]), gt["a.png"] == 1) == 1.0

    # 4. a box dragged around the bar
    ys, xs = np.nonzero(gt["a.png"] == 3)
    at(xs.min() - 4, ys.min() - 4).click_and_hold().perform()
    at(xs.max() + 4, ys.max() + 4).release().perform()
    settled()
    assert current_area() == int((gt["a.png"] == 3).sum())
    keys(Keys.ENTER)
    wait(lambda _: len(anns()) == 3)
    iou_bar = iou(decode_mask(anns()[-1]["segmentation"]), gt["a.png"] == 3)
    assert iou_bar == 1.0

    # 5. eraser: the rectangle minus a stroke across it
    at(*centre(1)).click().perform()
    settled()
    keys("e")
    cx, cy = centre(1)
    at(cx - 100, cy).click_and_hold().perform()
    at(cx + 100, cy).release().perform()
    erased_area = current_area()
    assert 0 < erased_area < int((gt["a.png"] == 1).sum())
    keys(Keys.ENTER)
    wait(lambda _: len(anns()) == 4)
    erased = decode_mask(anns()[-1]["segmentation"])
    assert erased.sum() == erased_area and not (erased & (gt["a.png"] != 1)).any()
    assert not erased[int(cy)].any()  # the stroke's row is gone

    # 6. brush: paint a blob on the background
    keys("b")
    at(20, 20).click_and_hold().perform()
    at(60, 20).release().perform()
    painted_area = current_area()
    assert painted_area > 0
    keys(Keys.ENTER)
    wait(lambda _: len(anns()) == 5)
    painted = decode_mask(anns()[-1]["segmentation"])
    assert painted.sum() == painted_area and painted[20, 20:61].all() and not painted[100:].any()
    keys("v")

    # 7. delete the prefilled mask from the list
    d.find_element(By.CSS_SELECTOR, "#masks li.auto button.delete").click()
    wait(lambda _: [a["source"] for a in anns()] == ["manual"] * 4)

    # 8. next image: prefilled on opening, counter of images done
    d.find_element(By.ID, "next").click()
    wait(lambda _: d.execute_script("return document.body.dataset.ready") == "b.png")
    settled()
    counter = d.find_element(By.ID, "counter").text
    assert "image 2 / 2" in counter and "done 2 / 2" in counter

    # screenshot: the prefilled disk, an accepted bar, and a live mask on the rectangle
    ys, xs = np.nonzero(gt["b.png"] == 3)
    at(xs.min() - 4, ys.min() - 4).click_and_hold().perform()
    at(xs.max() + 4, ys.max() + 4).release().perform()
    settled()
    keys(Keys.ENTER)
    ys, xs = np.nonzero(gt["b.png"] == 1)
    at(float(np.median(xs)), float(np.median(ys))).click().perform()
    settled()
    shot = tmp_path / "annotate.png"
    d.save_screenshot(str(shot))
    assert Image.open(shot).size[0] > 0
    if os.environ.get("SAM_JAX_SCREENSHOT"):
        shutil.copy(shot, os.environ["SAM_JAX_SCREENSHOT"])
    keys(Keys.ESCAPE)
    errors = [e for e in d.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors

    stats = annotation_stats(root / "out")
    assert stats["manual_masks"] == 5 and stats["auto_masks"] == 1
    with capsys.disabled():
        print(
            f"\nbrowser run: IoU rectangle {iou_rect:.4f}, bar (box) {iou_bar:.4f}; "
            f"masks per image {stats['masks_per_image']:.2f}, seconds per manual mask "
            f"{stats['seconds_per_manual_mask']:.2f} (median {stats['median_seconds_per_manual_mask']:.2f})"
        )
