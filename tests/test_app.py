"""The web app, started as a real server on 127.0.0.1: its API through gradio_client, and its page
in a real headless browser (Debian's Chromium driven by Playwright's Python package).

Without gradio, Playwright or a browser these tests skip with what to install, except under CI
(CI=true), where they fail: CI's setup.sh installs all three.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() == "true"
PHOTO = ROOT / "assets" / "red_circle.png"
SOURCE = "a red circle on a white background"
TARGET = "a blue circle on a white background"
FAST = dict(steps=6, inner_steps=1)  # a short null-text inversion on the tiny model
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Chromium flags that work offline as root in a container (Playwright gives it a fresh profile)
BROWSER_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def missing(message: str):
    """Skip with ``message``, or fail under CI, where everything the tests need is installed."""
    if IN_CI:
        pytest.fail(message + " (CI=true: setup.sh must install it)")
    pytest.skip(message)


def need(module: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        missing(f"{module} is not installed: run `bash setup.sh` (or `pip install -e '.[test]'`)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``python -m pipelines.app`` on the tiny model, on a free port of 127.0.0.1."""
    need("gradio")
    root = tmp_path_factory.mktemp("app")
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.app", "--model", "tiny", "--port", str(port), "--out", str(root / "out"),
         "--max-megapixels", "0.2"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 240
    try:
        while True:
            try:
                urllib.request.urlopen(url, timeout=5).close()
                break
            except (urllib.error.URLError, OSError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    pytest.fail(f"the app did not start:\n{(root / 'server.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield SimpleNamespace(url=url, out=root / "out", proc=proc, log=root / "server.log")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture
def client(server):
    need("gradio_client")
    from gradio_client import Client

    return Client(server.url, verbose=False)


def edit(client, photo=PHOTO, source=SOURCE, targets=TARGET, **options):
    from gradio_client import handle_file

    return client.predict(handle_file(str(photo)), source, targets, **{**FAST, **options}, api_name="/edit")


def picture(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float32)


def test_edit_returns_images_and_files(client, server):
    grid, edits, reconstruction, attention, files, status = edit(client, targets=f"{TARGET}\na red square on a white background")
    assert picture(grid).std() > 1.0
    assert [e["caption"] for e in edits] == [TARGET, "a red square on a white background"]
    assert all(picture(e["image"]).shape[:2] == picture(reconstruction).shape[:2] for e in edits)
    captions = [a["caption"] for a in attention]
    assert "source: circle" in captions and "edit 1: blue" in captions and "edit 2: square" in captions
    assert len(captions) == 3 * 9  # every token of every prompt, start and end tokens included
    names = sorted(Path(f).name for f in files)
    assert names == ["attention_edit_1.png", "attention_edit_2.png", "attention_source.png", "edit_1.png",
                     "edit_2.png", "grid.png", "input.png", "reconstruction.png", "run.json"]
    run = json.loads(Path(next(f for f in files if f.endswith("run.json"))).read_text())
    assert run["prompts"] == [SOURCE, TARGET, "a red square on a white background"]
    assert status.startswith("Inverted")
    # what the app wrote stays in its own folder
    assert list((server.out / "edits").glob("*/grid.png"))


def test_a_wide_photo_comes_back_whole_and_wide(client):
    _, edits, reconstruction, _, files, _ = edit(client, photo=ROOT / "assets" / "chelsea.png",
                                                 source="a cat on a floor", targets="a dog on a floor")
    assert picture(reconstruction).shape[:2] == (128, 192)  # the 451×300 photo's 3:2, not a square crop
    assert picture(edits[0]["image"]).shape[:2] == (128, 192)
    run = json.loads(Path(next(f for f in files if f.endswith("run.json"))).read_text())
    assert run["size"] == {"working": [192, 128], "photo": [451, 300]}


def test_second_edit_of_the_same_photo_reuses_the_inversion(client):
    first = edit(client, source="a red circle on a white background.")
    second = edit(client, source="a red circle on a white background.", targets="a green circle on a white background.",
                  reweight="green=1.5")
    assert first[-1].startswith("Inverted")
    assert "reused" in second[-1]
    run = json.loads(Path(next(f for f in second[4] if f.endswith("run.json"))).read_text())
    assert run["inversion"]["cache_hit"] is True and run["parameters"]["reweight"] == {"green": 1.5}
    # other settings mean another inversion
    assert edit(client, source="a red circle on a white background.", steps=5)[-1].startswith("Inverted")


@pytest.mark.parametrize("options,label", [
    (dict(inversion="direct", latent_guard=300), "direct+p2p+guard"),
    (dict(inversion="fixed-point", fixed_point_steps=2, fixed_point_anchor=2.0, prox="l0", prox_quantile=0.7,
          latent_guard=400), "fixed-point-anchor+p2p+prox+guard"),
])
def test_every_inversion_and_guidance_option_through_the_api(client, options, label):
    from pipelines.score import method_of

    *_, files, status = edit(client, **options)
    run = json.loads(Path(next(f for f in files if f.endswith("run.json"))).read_text())
    assert run["inversion"]["method"] == options["inversion"] and options["inversion"] in status
    assert {k: run["parameters"][k] for k in options if k != "inversion"} == {k: v for k, v in options.items()
                                                                              if k != "inversion"}
    assert method_of(run) == label


def test_a_bad_guidance_option_is_a_message(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="maximum value 1"):  # the page's own range check
        edit(client, prox="l0", prox_quantile=3)
    with pytest.raises(AppError, match="prox 'l2' is unknown|not in the list of choices"):
        edit(client, prox="l2")
    assert edit(client)[-1]  # and the server keeps serving


def test_bad_inputs_are_messages_and_the_server_keeps_serving(client, tmp_path):
    from gradio_client.exceptions import AppError

    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("this is not a picture")
    huge = tmp_path / "huge.png"
    Image.new("RGB", (600, 600), "white").save(huge)  # 0.36 MP, over this server's 0.2 MP cap
    cases = [
        (dict(reweight="green=2"), "'green'"),
        (dict(blend="dog:cat"), "dog"),
        (dict(photo=not_an_image), "not an image"),
        (dict(photo=huge), "over the cap"),
        (dict(source="a red circle " * 30), "77"),
        (dict(targets=""), "target prompt"),
        (dict(reweight="green"), "WORD=SCALE"),
        (dict(self_replace="1.5"), "[0, 1]"),
        (dict(mode="replace", targets="a big blue circle on a white background"), "word"),
    ]
    for options, words in cases:
        with pytest.raises(AppError) as caught:
            edit(client, **options)
        assert words in str(caught.value), (options, str(caught.value))
    grid, *_, status = edit(client)
    assert Path(grid).is_file() and "edited" in status


def test_stop_ends_a_long_inversion_and_the_queue_moves_on(client):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    assert client.predict(api_name="/stop") == "idle"
    # 100 null-text steps × 100 Adam steps: minutes on the tiny model
    job = client.submit(handle_file(str(PHOTO)), SOURCE, TARGET, steps=100, inner_steps=100, api_name="/edit")
    deadline = time.monotonic() + 120
    while True:
        status = job.status()
        if status.progress_data and status.progress_data[0].desc == "null-text":
            break
        assert time.monotonic() < deadline and not job.done(), status
        time.sleep(0.1)
    stopped_at = time.monotonic()
    assert client.predict(api_name="/stop") == "stopping"
    with pytest.raises(AppError, match="Stopped during null-text"):
        job.result(timeout=60)
    assert time.monotonic() - stopped_at < 20
    grid, *_, status = edit(client)  # the next job runs
    assert Path(grid).is_file() and "edited" in status


def test_serves_files_only_from_its_own_folder(server):
    for path in [ROOT / "README.md", Path("/etc/passwd"), next((server.out / "inversions").glob("*"), server.out)]:
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(f"{server.url}gradio_api/file={path}", timeout=10)
        assert caught.value.code == 403, path


def find_browser() -> str | None:
    """A Chromium or Chrome executable: $PROMPTEDIT_CHROMIUM, else the first on PATH."""
    given = os.environ.get("PROMPTEDIT_CHROMIUM")
    if given:
        return given
    return next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)


def test_edit_in_a_real_browser(server, tmp_path):
    need("playwright")
    browser_path = find_browser()
    if browser_path is None:
        missing("no Chromium found: on Debian or Ubuntu `sudo apt-get install chromium` (setup.sh does it as root "
                "or with sudo); elsewhere install Chromium or Chrome and set PROMPTEDIT_CHROMIUM=/path/to/it")
    from playwright.sync_api import sync_playwright

    shot = Path(os.environ.get("PROMPTEDIT_SCREENSHOT", tmp_path / "app.png"))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=BROWSER_FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(server.url, wait_until="domcontentloaded", timeout=120_000)
            page.locator("#photo input[type=file]").set_input_files(str(PHOTO), timeout=120_000)
            page.locator("#source textarea").fill(SOURCE)
            page.locator("#targets textarea").fill(TARGET)
            page.get_by_text("Inversion", exact=True).click()
            page.locator("#steps input").fill(str(FAST["steps"]))
            page.locator("#inner-steps input").fill(str(FAST["inner_steps"]))
            page.locator("#edit-button").click()
            result = page.locator("#grid img")
            result.wait_for(state="visible", timeout=120_000)
            page.wait_for_function("() => { const i = document.querySelector('#grid img');"
                                   " return i && i.complete && i.naturalWidth > 0; }", timeout=30_000)
            page.locator("#status").get_by_text("edited in").wait_for(timeout=30_000)
            page.screenshot(path=str(shot), full_page=True)
            shown = Image.open(io.BytesIO(result.screenshot()))
        finally:
            browser.close()
    pixels = np.asarray(shown.convert("RGB"), dtype=np.float32)
    assert pixels.shape[0] > 32 and pixels.shape[1] > 32
    assert pixels.std() > 5.0, "the result image is blank"
    assert shot.stat().st_size > 10_000


def test_bad_options_are_refused_before_the_model_loads(tmp_path):
    for args, words in ((["--port", "0"], "--port 0"), (["--out", str(ROOT / "README.md")], "is a file"),
                        (["--device", "gpu"], "--device 'gpu'")):
        done = subprocess.run([sys.executable, "-m", "pipelines.app", *args], cwd=tmp_path, capture_output=True,
                              text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert done.returncode == 2, (args, done.stderr)
        assert words in done.stderr.strip().splitlines()[-1], (args, done.stderr)
    assert not (tmp_path / "outputs").exists()


def test_prompts_of_any_whitespace_are_edited_as_one_line_each(client):
    grid, edits, *_, files, status = edit(client, source="a red\ncircle on a white\tbackground",
                                          targets="a blue\tcircle on a white\u00a0background\r\n")
    assert [e["caption"] for e in edits] == [TARGET]
    run = json.loads(Path(next(f for f in files if f.endswith("run.json"))).read_text())
    assert run["prompts"] == [SOURCE, TARGET]
    assert Path(grid).is_file()


def test_six_requests_from_three_threads_each_get_their_own_result(server):
    """Three clients at once, two edits each, each asking for another colour: every request is
    answered, with its own prompts, in its own folder."""
    need("gradio_client")
    from concurrent.futures import ThreadPoolExecutor

    from gradio_client import Client

    colours = ["blue", "green", "yellow", "black", "gray", "white"]

    def two_edits(k: int):
        client = Client(server.url, verbose=False)
        answers = []
        for colour in colours[2 * k:2 * k + 2]:
            target = f"a {colour} circle on a white background"
            *_, files, status = edit(client, targets=target, steps=3, seed=k)
            answers.append((target, files, status))
        return answers

    with ThreadPoolExecutor(3) as pool:
        results = [a for answers in pool.map(two_edits, range(3)) for a in answers]
    assert len(results) == 6
    folders = set()
    for target, files, status in results:
        run = json.loads(Path(next(f for f in files if f.endswith("run.json"))).read_text())
        assert run["prompts"] == [SOURCE, target], (target, run["prompts"])
        folders.add(Path(files[0]).parent)
    assert len(folders) == 6


def test_a_device_this_torch_cannot_use_is_one_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    done = subprocess.run([sys.executable, "-m", "pipelines.app", "--model", "tiny", "--device", "cuda:1",
                           "--out", str(tmp_path / "out")], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr and "cuda:1" in lines[-1] and "available here: cpu" in lines[-1]


def test_a_nan_cache_entry_is_recomputed_not_served(client, server):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    source = "a red circle on a plain white background"
    first = edit(client, source=source, steps=4)
    assert first[-1].startswith("Inverted")
    damaged = 0
    for path in (server.out / "inversions").glob("*.safetensors"):
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        if json.loads(meta["inversion"])["prompt"] != source:
            continue
        tensors = load_file(str(path))
        tensors = {k: v.float().fill_(float("nan")).to(v.dtype) if v.is_floating_point() else v for k, v in tensors.items()}
        save_file(tensors, str(path), metadata=meta)
        damaged += 1
    assert damaged == 1
    grid, edits, reconstruction, *_, status = edit(client, source=source, steps=4)
    assert status.startswith("Inverted")  # recomputed, not served from the damaged file
    assert picture(reconstruction).std() > 1.0 and picture(edits[0]["image"]).max() > 0  # not a black image
