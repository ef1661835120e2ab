"""The HTML report opened in a real headless Chromium: the rendered DOM holds the report's headings and a
screenshot is a non-empty PNG. Marked `browser` (run with `pytest -m browser`); skipped without Chromium."""

import os
import shutil
import struct
import subprocess
import sys
import textwrap
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [pytest.mark.browser, pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH")]

SCRIPT = textwrap.dedent("""
    import tracejit
    import tracejit.nn as nn
    import tracejit.nn.functional as F

    tracejit.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = tracejit.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    @tracejit.compile(backend="cpu")
    def train_step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    x, y = tracejit.randn(6, 4), tracejit.tensor([0, 1, 2, 1, 0, 2])
    for _ in range(3):
        train_step(x, y)
""")


def chromium(*args, profile: Path) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=180)


class Headings(HTMLParser):
    def __init__(self):
        super().__init__()
        self.found: list[tuple[str, str]] = []
        self.tags: list[str] = []
        self._tag: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag in ("h1", "h2", "h3", "h4"):
            self._tag, self._text = tag, []

    def handle_endtag(self, tag):
        if tag == self._tag:
            self.found.append((tag, "".join(self._text).strip()))
            self._tag = None

    def handle_data(self, data):
        if self._tag:
            self._text.append(data)


@pytest.fixture(scope="module")
def report_file(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("browser")
    (d / "train.py").write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEJIT_")}
    env.update(TRACEJIT_CACHE_DIR=str(d / "cache"), PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "tracejit", "report", "--repeat", "2", "train.py", "-o",
                           "report.html"], capture_output=True, text=True, cwd=d, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return d / "report.html"


def test_rendered_dom_has_the_report_sections(report_file, tmp_path):
    proc = chromium("--dump-dom", report_file.as_uri(), profile=tmp_path / "profile")
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = Headings()
    dom.feed(proc.stdout)
    texts = [t for _, t in dom.found]
    assert ("h1", "tracejit report") in dom.found
    assert "Summary" in texts
    assert any(t.startswith("train_step") and "backend cpu" in t for t in texts)
    assert "Variant 1 — compiled because: first call" in texts
    for section in ("Eager vs compiled step time", "Compile-time breakdown", "Per-kernel time",
                    "IR after each pass", "Graph"):
        assert section in texts, section
    assert dom.tags.count("details") >= 10 and "table" in dom.tags


def test_screenshot_is_a_non_empty_png(report_file, tmp_path):
    png = tmp_path / "report.png"
    proc = chromium(f"--screenshot={png}", "--window-size=1280,2000", report_file.as_uri(),
                    profile=tmp_path / "profile")
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    assert (width, height) == (1280, 2000)
    assert len(data) > 50_000  # text, tables and bars: a blank page of this size is ~12 kB
