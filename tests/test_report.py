"""The run report: one self-contained HTML file with every section a run has, written by train and
by `convae report`, and rendered by a real browser (headless Chromium over the DevTools protocol)
with every image loaded and no console error."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from cli_helpers import run_cli
from PIL import Image

import convae
from convae import codec as C
from convae.checkpoint import read_json, write_json
from convae.data import load_split
from convae.report import REPORT_FILE, build_report, write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def images_of(page: str) -> list[bytes]:
    """The decoded PNGs of every <img>; fails on any image that is not an inline PNG."""
    srcs = re.findall(r'<img src="([^"]*)"', page)
    assert len(srcs) == page.count("<img ")
    out = []
    for s in srcs:
        assert s.startswith("data:image/png;base64,"), s[:60]
        data = base64.b64decode(s.split(",", 1)[1], validate=True)
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
        out.append(data)
    return out


@pytest.fixture(scope="module")
def full_run(tiny_run, tmp_path_factory) -> Path:
    """A copy of the tiny run with everything a report can show: a codec, an anomaly threshold with
    the ROC and heat maps of `convae anomaly`, and a training noise (the denoising section)."""
    run = tmp_path_factory.mktemp("report") / "run"
    shutil.copytree(tiny_run, run)
    model = convae.load(run)
    x, _ = load_split(model.run_config.data, "train")
    fit = C.CodecFitConfig(epochs=1, lmbda=0.01, batch_size=64, steps=(2.0, 1.0), default_level=1)
    C.save_codec(run, C.fit_codec(model, x[:256], fit))
    rc, _, err = run_cli("anomaly", run, "--data", "mnist-sample", "--split", "test", "--top", "4")
    assert rc == 0, err
    cfg = read_json(run / "config.json")
    cfg["train"]["noise"] = ["gaussian:0.3"]
    write_json(run / "config.json", cfg)
    return run


@pytest.fixture(scope="module")
def full_report(full_run) -> Path:
    return Path(write_report(full_run)["report"])


def test_train_writes_the_report(tiny_run):
    page = (tiny_run / REPORT_FILE).read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    for anchor in ("metrics", "training", "reconstructions", "latent", "config"):
        assert f'<section id="{anchor}">' in page
    assert "Per class (test split)" in page  # digits 0 and 1
    assert len(images_of(page)) == 3  # loss, reconstructions, latent map


def test_report_has_every_section_and_is_self_contained(full_report):
    page = full_report.read_text()
    sections = re.findall(r'<section id="([a-z]+)">', page)
    assert sections == ["metrics", "training", "reconstructions", "latent", "denoise", "codec",
                        "anomaly", "config"]  # fmt: skip
    assert len(images_of(page)) == 6  # + rate-distortion, ROC, heat maps
    assert not re.search(
        r"(src|href)=\"(?!data:|#)", page
    )  # no file, no network: inline or anchors
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert "Scores per class (test split)" in page and "3 (normal)" not in page
    assert "fitted to these weights</td><td>yes" in page


def test_a_damaged_file_spoils_its_section_only(full_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(full_run, run)
    (run / "codec.safetensors").write_bytes(b"not a codec")
    (run / "anomaly" / "roc.png").write_bytes(b"not a png")
    (run / "history.jsonl").write_text('{"epoch": 1, "train_loss": 0.2}\n{broken\n')
    page, sections = build_report(run)
    assert "codec" in sections and "not shown: " in page
    assert len(images_of(page)) == 4  # the broken PNG and the codec's figure are left out


def test_cli_report(tiny_run, tmp_path):
    rc, out, err = run_cli("report", tiny_run, "--out", tmp_path / "r.html", "--json")
    res = json.loads(out.strip().splitlines()[-1])
    assert rc == 0 and res["report"] == str(tmp_path / "r.html") and "latent" in res["sections"]
    rc, _, err = run_cli("report", tiny_run, "--out", tiny_run / "config.json")
    assert rc == 1 and "input" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------
# In a real browser


class _DevTools:
    """The smallest DevTools-protocol client: commands to one page target, and the events that
    arrive in between."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.next_id = 0
        self.events: list[dict] = []

    def _recv(self, deadline: float) -> dict:
        return json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))

    def call(self, method: str, timeout: float = 30, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            msg = self._recv(deadline)
            if msg.get("id") == self.next_id:
                assert "error" not in msg, msg
                return msg["result"]
            self.events.append(msg)

    def wait_for(self, method: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._recv(deadline))


def _page_socket(profile: Path, proc: subprocess.Popen, timeout: float = 60) -> str:
    """The page target's websocket URL, once Chromium has written its DevTools port."""
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + timeout
    while not port_file.is_file() or not port_file.read_text().strip():
        assert proc.poll() is None, "chromium exited early"
        assert time.monotonic() < deadline, "chromium did not open its DevTools port"
        time.sleep(0.2)
    port = port_file.read_text().split()[0]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as r:
        targets = json.load(r)
    return next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (Debian package `chromium`)")
def test_report_renders_in_chromium(full_report, tmp_path):
    """Every image decoded (complete, natural width > 0), no console message of level error, no
    exception, no request beyond the file itself; the screenshot is saved next to the test's
    files (CONVAE_SCREENSHOT=PATH keeps a copy)."""
    from websockets.sync.client import connect

    profile = tmp_path / "profile"
    proc = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-sync", "--hide-scrollbars",
         f"--user-data-dir={profile}", "--remote-debugging-port=0", "--window-size=1100,1400",
         "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        with connect(_page_socket(profile, proc), max_size=None, open_timeout=30) as ws:
            dt = _DevTools(ws)
            for domain in ("Page", "Runtime", "Log", "Network"):
                dt.call(f"{domain}.enable")
            dt.call("Page.navigate", url=full_report.as_uri())
            dt.wait_for("Page.loadEventFired")
            check = (
                "JSON.stringify([...document.images].map(i => i.complete && i.naturalWidth > 0))"
            )
            res = dt.call("Runtime.evaluate", expression=check, returnByValue=True)
            loaded = json.loads(res["result"]["value"])
            shot = dt.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert len(loaded) == 6 and all(loaded), loaded
    errors = [e for e in dt.events if e.get("method") == "Runtime.exceptionThrown"
              or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] == "error")
              or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")]  # fmt: skip
    assert errors == []
    requests = [e["params"]["request"]["url"] for e in dt.events
                if e.get("method") == "Network.requestWillBeSent"]  # fmt: skip
    assert all(u == full_report.as_uri() or u.startswith("data:") for u in requests), requests
    png = base64.b64decode(shot["data"])
    (tmp_path / "report.png").write_bytes(png)
    if os.environ.get("CONVAE_SCREENSHOT"):
        Path(os.environ["CONVAE_SCREENSHOT"]).write_bytes(png)
    with Image.open(io.BytesIO(png)) as im:
        assert im.width >= 1000 and im.height > 1400  # the whole page, beyond one screen
