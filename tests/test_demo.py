"""The demo page (``axial-deeplab-demo``): the prediction service, its HTTP API, and the page in a
real headless Chromium (the system's, driven by playwright) from photo to overlay and segments.

The checkpoint is the quick-start model with random weights (stuff area 1, centre threshold 0 so
that it still predicts several segments, things included); what is checked is the page's
plumbing, not segmentation quality.
"""

import base64
import http.client
import json
import os
import shutil
import struct
import threading
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from axial_deeplab.checkpoint.io import save_checkpoint_file
from axial_deeplab.config import load_config
from axial_deeplab.data.synthetic import SYNTHETIC_CLASSES, THINGS
from axial_deeplab.demo.app import DemoError, DemoModel
from axial_deeplab.demo.server import parse_args, serve
from axial_deeplab.modeling.build import build_model

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "quickstart" / "synthetic_axial.yaml")
SAMPLES = ROOT.parent / "shared" / "data" / "coco_panoptic_sample" / "images"
PHOTO = SAMPLES / "000000142238.jpg"
NAMES = [name for name, *_ in SYNTHETIC_CLASSES]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> DemoModel:
    folder = tmp_path_factory.mktemp("demo")
    cfg = load_config(CONFIG, ["MODEL.PANOPTIC_DEEPLAB.STUFF_AREA", "1",
                               "MODEL.PANOPTIC_DEEPLAB.CENTER_THRESHOLD", "0.0"])  # fmt: skip
    torch.manual_seed(0)
    metadata = {"class_names": NAMES, "thing_ids": list(THINGS), "label_divisor": 1000}
    weights = folder / "model.pth"
    save_checkpoint_file(weights, build_model(cfg).state_dict(), config=cfg, metadata=metadata)
    args = parse_args(["--weights", str(weights), "--samples", str(SAMPLES), "--max-size", "320"])
    return DemoModel.load(args)


def _decode(url: str) -> np.ndarray:
    assert url.startswith("data:image/png;base64,")
    data = np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8)
    return cv2.imdecode(data, cv2.IMREAD_COLOR)


def test_predict_returns_pictures_segments_and_timing(model):
    image = cv2.imread(str(PHOTO))[..., ::-1].copy()
    result = model.predict(image, {"threshold": "0.0", "stuff_area": "1"})
    assert result["size"] == [214, 320]  # 427x640 shrunk to a 320 long side (213.5 rounded)
    overlay = _decode(result["pictures"]["overlay"])
    assert overlay.shape[0] >= 384 and overlay.shape[1] > overlay.shape[0]  # enlarged, readable
    assert {"semantic", "centers", "offsets", "legend"} <= set(result["pictures"])
    segments = result["segments"]
    assert segments and {s["class"] for s in segments} <= set(NAMES)
    assert sum(s["area"] for s in segments) <= 214 * 320
    assert [s["area"] for s in segments] == sorted((s["area"] for s in segments), reverse=True)
    assert result["timing_ms"]["predict"] > 0 and result["settings"]["threshold"] == 0.0
    # A larger minimum stuff area can only remove stuff segments.
    fewer = model.predict(image, {"threshold": "0.0", "stuff_area": "1000000"})["segments"]
    assert not [s for s in fewer if not s["isthing"]]
    with pytest.raises(DemoError, match="threshold: 2.0 outside"):
        model.predict(image, {"threshold": "2"})
    with pytest.raises(DemoError, match="unknown setting 'sigma'"):
        model.predict(image, {"sigma": "1"})
    with pytest.raises(
        DemoError, match="nms_kernel .* must be odd and positive, got 8"
    ):  # in range, still bad
        model.predict(image, {"nms_kernel": "8"})


@pytest.fixture(scope="module")
def url(model):
    server = serve(model, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_api(url):
    info = json.load(urllib.request.urlopen(f"{url}/api/info"))
    assert info["samples"] == sorted(p.name for p in SAMPLES.glob("*.jpg"))
    assert info["classes"] == NAMES and info["defaults"]["stuff_area"] == 1
    request = urllib.request.Request(f"{url}/api/predict", data=b"not an image", method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request)
    assert err.value.code == 400 and "not an image" in json.load(err.value)["error"]
    host, port = url.removeprefix("http://").split(":")
    bad_requests = [
        ({"Content-Length": "abc"}, b"", "Content-Length 'abc' is not a byte count"),
        ({"Content-Type": "multipart/form-data; boundary=x"}, b"--x\r\n", "--data-binary"),
    ]
    for headers, body, said in bad_requests:  # a 400 with the reason, not a dropped connection
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        connection.putrequest("POST", "/api/predict")
        for key, value in {"Content-Length": str(len(body)), **headers}.items():
            connection.putheader(key, value)
        connection.endheaders(body)
        response = connection.getresponse()
        assert response.status == 400 and said in json.load(response)["error"], headers
        connection.close()
    # a GET of the POST endpoint is a 405 naming the method; a sample comes with its type
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{url}/api/predict")
    assert err.value.code == 405 and err.value.headers["Allow"] == "POST"
    sample = urllib.request.urlopen(f"{url}/api/sample/{info['samples'][0]}")
    assert sample.headers["Content-Type"] == "image/jpeg"


def test_http_api_refuses_bombs_and_answers_every_failure(url, model):
    """A 48 KB PNG declaring 20000 x 20000 pixels cost the server 2.3 GB per upload; an
    unexpected error (a sample file deleted, Content-Length "²") dropped the connection."""
    header = struct.pack(">IIBBBBB", 20000, 20000, 1, 0, 0, 0, 0)  # 1-bit grey, as a bomb is
    bomb = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + header + b"\0" * 4
    request = urllib.request.Request(f"{url}/api/predict", data=bomb, method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request)
    assert err.value.code == 400
    assert "20000x20000 pixels, more than the 100000000" in json.load(err.value)["error"]
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.putrequest("POST", "/api/predict")
    connection.putheader("Content-Length", "\u00b2")  # isdigit(), but no int()
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 400 and "is not a byte count" in json.load(response)["error"]
    connection.close()
    model.samples["gone.jpg"] = Path("/nonexistent/gone.jpg")  # deleted while serving
    try:
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{url}/api/sample/gone.jpg")
    finally:
        del model.samples["gone.jpg"]
    assert err.value.code == 500 and "gone.jpg" in json.load(err.value)["error"]


def test_busy_port_is_one_line(model, monkeypatch, capsys):
    from axial_deeplab.demo import server as demo_server

    taken = serve(model, "127.0.0.1", 0)  # holds a port
    port = taken.server_address[1]
    monkeypatch.setattr(demo_server.DemoModel, "load", classmethod(lambda cls, args: model))
    try:
        with pytest.raises(SystemExit) as exit_:
            demo_server.main(["--weights", "m.pth", "--port", str(port)])
    finally:
        taken.server_close()
    message = str(exit_.value)
    assert message.startswith(f"error: cannot serve on 127.0.0.1:{port}") and "--port" in message


def test_bad_port_and_host_are_one_line(model, monkeypatch, capsys):
    # An audit's --port 99999 ended in OverflowError's traceback, and an unknown --host got the
    # advice to pick another port.
    from axial_deeplab.demo import server as demo_server

    for port in ("99999", "-1", "http"):
        with pytest.raises(SystemExit):
            parse_args(["--weights", "m.pth", "--port", port])
        assert "expected a port in 0..65535" in capsys.readouterr().err
    monkeypatch.setattr(demo_server.DemoModel, "load", classmethod(lambda cls, args: model))
    with pytest.raises(SystemExit) as exit_:
        demo_server.main(["--weights", "m.pth", "--host", "nosuchhost.invalid", "--port", "0"])
    message = str(exit_.value)
    assert "--host nosuchhost.invalid is not an address of this machine" in message
    assert "--port" not in message


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no Chromium on this machine (.ci/run installs it: apt-get install chromium)")


def test_page_in_headless_chromium(url, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(url)
        page.wait_for_selector("#stuff_area")  # built once /api/info has answered
        assert page.locator("#sample option").count() == 2
        page.set_input_files("#file", str(PHOTO))  # an upload runs the model at once
        page.wait_for_selector("body[data-runs='1']", state="attached", timeout=120_000)
        assert "Error" not in page.inner_text("#status")
        width = page.eval_on_selector("#overlay", "img => img.naturalWidth")
        assert width >= 384 and page.is_visible("#overlay") and page.is_visible("#legend")
        rows = page.locator("#segments tr")
        assert rows.count() >= 1
        assert page.locator("#segments tr td:nth-child(2)").all_inner_texts()[0] in NAMES
        assert "ms" in page.inner_text("#status")
        page.uncheck("#show-offsets")  # toggles hide a panel without a new request
        assert not page.is_visible("#offsets") and page.is_visible("#semantic")
        shot = os.environ.get("AXIAL_DEMO_SCREENSHOT") or str(tmp_path / "demo.png")
        page.screenshot(path=shot, full_page=True)
        # Moving a slider runs the model again, now on the sample picked in the list.
        page.set_input_files("#file", [])  # cleared: the next run takes the picked sample
        with page.expect_request("**/api/predict?*") as request:
            page.eval_on_selector(
                "#stuff_area", "s => { s.value = 8192; s.dispatchEvent(new Event('change')); }"
            )
        assert (
            "stuff_area=8192" in request.value.url
            and "sample=000000142238.jpg" in request.value.url
        )
        page.wait_for_selector("body[data-runs='2']", state="attached", timeout=120_000)
        assert page.inner_text("#status").startswith("000000142238.jpg: 320x214 px")
        browser.close()
    assert cv2.imread(shot) is not None


def test_default_samples_follow_the_checkpoints_synthetic_data(tmp_path):
    """The quick start's held-out scenes were looked for in output/quickstart/data whatever the
    checkpoint's DATASETS.SYNTHETIC_DIR said."""
    from axial_deeplab.demo.app import default_sample_folders

    cfg = load_config(CONFIG, ["DATASETS.SYNTHETIC_DIR", str(tmp_path / "scenes")])
    folders = default_sample_folders(cfg)
    assert folders[0] == str(SAMPLES) and folders[1] == str(tmp_path / "scenes/coco/images/val")
    assert default_sample_folders(load_config(CONFIG, ["DATASETS.SYNTHETIC_DIR", ""])) == [
        str(SAMPLES)
    ]
