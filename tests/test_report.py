"""`python -m tracejit report script.py -o report.html`, run as a user would: the page for a small training
script has every section with real content, escapes text, and loads nothing from outside."""

import os
import re
import subprocess
import sys
import textwrap
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tracejit.report import split_out

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import argparse
    import tracejit
    import tracejit.nn as nn
    import tracejit.nn.functional as F

    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, required=True)
    steps = ap.parse_args().steps

    def make_step(backend):
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        opt = tracejit.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

        @tracejit.compile(backend=backend)
        def train_step(x, y):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return loss
        return train_step

    tracejit.manual_seed(0)
    x = tracejit.randn(6, 4)
    y = tracejit.tensor([0, 1, 2, 1, 0, 2])
    cpu_step, ref_step = make_step("cpu"), make_step("reference")
    affine = tracejit.compile(lambda t: t * 2.0 + 1.0, backend="reference")  # its name <lambda> needs escaping
    for _ in range(steps):
        cpu_step(x, y)
        ref_step(x, y)
    affine(x)
    print("trained", steps, "steps")
""")


class Page(HTMLParser):
    """Headings, <details> summaries, <pre> blocks, tables (rows of cell texts) and every src/href."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.headings: list[tuple[str, str]] = []
        self.summaries: list[str] = []
        self.pres: list[str] = []
        self.tables: list[list[list[str]]] = []
        self.links: list[str] = []
        self.tags: set[str] = set()
        self._text: list[str] | None = None
        self._cell: list[str] | None = None
        self._stack: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.links += [v or "" for k, v in attrs if k in ("src", "href")]
        if tag in ("h1", "h2", "h3", "h4", "summary", "pre"):
            self._stack.append(tag)
            self._text = []
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("h1", "h2", "h3", "h4", "summary", "pre") and self._stack and self._stack[-1] == tag:
            self._stack.pop()
            text = "".join(self._text or [])
            if tag == "summary":
                self.summaries.append(text)
            elif tag == "pre":
                self.pres.append(text)
            else:
                self.headings.append((tag, text))
            self._text = None
        elif tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._text is not None:
            self._text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def run_report(tmp_path, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEJIT_")}
    env.update(TRACEJIT_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "tracejit", "report", *args], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=300)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    d = tmp_path_factory.mktemp("report")
    (d / "train.py").write_text(SCRIPT)
    # report options before the script, the script's own arguments, then -o last (the form the docs show)
    proc = run_report(d, "--repeat", "2", "train.py", "--steps", "3", "-o", "out/report.html")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "trained 3 steps" in proc.stdout  # the script got its arguments
    raw = (d / "out" / "report.html").read_text(encoding="utf-8")
    page = Page()
    page.feed(raw)
    return raw, page


def _ms(cell: str) -> float:
    m = re.fullmatch(r"([\d.]+) ms", cell)
    assert m, f"not a time: {cell!r}"
    return float(m.group(1))


def _table_with(page: Page, *header_words: str) -> list[list[list[str]]]:
    return [t for t in page.tables if t and all(w in t[0] for w in header_words)]


def test_every_function_and_variant_has_a_section(report):
    raw, page = report
    h = [t for _, t in page.headings]
    assert ("h1", "tracejit report") in page.headings
    assert sum(t.startswith("train_step") for t in h) == 2
    assert any(t.startswith("<lambda>") for t in h)  # parsed text; the raw page holds it escaped
    assert "&lt;lambda&gt;" in raw and "<lambda>" not in raw
    assert sum(t == "Variant 1 — compiled because: first call" for t in h) == 3
    for section in ("Eager vs compiled step time", "Compile-time breakdown", "Per-kernel time",
                    "IR after each pass", "Why neighbours were not fused (pass notes)", "Graph"):
        assert section in h, section
    assert any(t.startswith("Fusion groups (") for t in h)
    assert any(t.startswith("Generated source (") for t in h)


def test_ir_after_each_pass_and_fusion_notes(report):
    raw, page = report
    stages = [s.split(" — ")[0].split()[1] for s in page.summaries if re.match(r"\d\d \w+ — \d+ nodes", s)]
    assert stages[:3] == ["traced", "dce", "cse"]
    assert {"simplify", "fuse_window", "fuse_elementwise", "fuse_optimizer"} <= set(stages)
    irs = [p for p in page.pres if p.startswith("graph train_step(")]
    assert any("= matmul(" in p and "= relu(" in p for p in irs)  # the traced graph
    assert any("= fused(" in p and "body elementwise_" in p for p in irs)  # after fusion
    assert "not fused:" in raw
    groups = _table_with(page, "group", "kind", "body")
    assert groups and any(row[2] in ("elementwise", "reduce", "multi") for t in groups for row in t[1:])


def test_generated_source_and_graphs(report):
    _, page = report
    sources = [p for p in page.pres if "@numba.njit" in p]
    assert sources and any(re.search(r"^def (kernel|segment)\w*\(", p, re.M) for p in sources)
    assert any(p.startswith('digraph "train_step"') for p in page.pres)


def test_timing_tables_hold_numbers(report):
    _, page = report
    steps = _table_with(page, "mode", "median")
    assert len(steps) >= 2  # cpu and reference train_step
    for t in steps:
        modes = {row[0]: row for row in t[1:]}
        assert {"compiled", "eager"} <= set(modes)
        assert _ms(modes["compiled"][1]) > 0 and _ms(modes["eager"][1]) > 0
    kernels = _table_with(page, "label", "time", "share")
    assert len(kernels) >= 3
    for t in kernels:
        rows = t[1:-1]
        times = [_ms(r[4]) for r in rows]
        assert times == sorted(times, reverse=True) and times[0] > 0
        assert abs(sum(float(r[5].rstrip("%")) for r in rows) - 100) <= 0.05 * len(rows) + 0.01
    compile_ = _table_with(page, "phase", "time")
    phases = {row[0].strip() for t in compile_ for row in t[1:]}
    assert {"trace", "passes", "backend"} <= phases and any(p.startswith("pass:") for p in phases)
    assert any("first call" in " ".join(t[0]) for t in page.tables)  # Numba compile/load per function


def test_page_is_self_contained(report):
    raw, page = report
    assert "link" not in page.tags
    assert all(not re.match(r"\s*(https?:)?//", u) for u in page.links), page.links
    assert re.search(r"<script>[^<]", raw) and "<style>" in raw  # inline CSS and JS


def test_a_failing_script_still_writes_a_report(tmp_path):
    (tmp_path / "bad.py").write_text("raise RuntimeError('broken <b>here</b>')\n")
    proc = run_report(tmp_path, "-o", "r.html", "bad.py")
    assert proc.returncode == 1
    raw = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "the script failed" in raw and "broken &lt;b&gt;here&lt;/b&gt;" in raw
    assert "Nothing was compiled" in raw


def test_trailing_out_option_belongs_to_the_report():
    assert split_out(["--steps", "3", "-o", "r.html"]) == (["--steps", "3"], "r.html")
    assert split_out(["--out=r.html"]) == ([], "r.html")
    assert split_out(["-o"]) == (["-o"], None)
    assert split_out([]) == ([], None)


def test_step_timing_uses_the_variant_that_ran_most_in_the_mode_it_ran(tmp_path):
    # a script whose last call is a partial batch and which ends in model.eval() (as training scripts do): the
    # report must time the steady-state training variant, in train mode, and say so
    import tracejit
    import tracejit.nn as nn
    import tracejit.nn.functional as F
    from tracejit.report import Recorder
    from tracejit.report.record import profile_variants, time_steps

    with Recorder() as rec:
        model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 3))
        opt = tracejit.optim.SGD(model.parameters(), lr=0.1)

        @tracejit.compile(backend="reference")
        def train_step(x, y):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return loss

        for _ in range(4):
            train_step(tracejit.randn(6, 4), tracejit.randint(0, 3, (6,)))
        train_step(tracejit.randn(2, 4), tracejit.randint(0, 3, (2,)))  # the epoch's last, partial batch
        model.eval()
    (r,) = rec.records
    assert r.variant_runs == {1: 4, 2: 1}
    profile_variants(r, 1)
    assert not isinstance(r.profiles[1], str), r.profiles[1]  # profiled in train mode despite model.eval()
    time_steps(r, 2)
    assert r.steps["variant"] == 1 and len(r.steps["compiled"]) == 2
    assert "variant 1, the variant that ran most (4 of 5 compiled calls), in train mode" in r.steps["note"]
    assert len(train_step.history) == 2  # no eval variant was compiled for the report
    assert model.training is False  # the script's final state is restored
    time_steps(r, 1, variant=2)
    assert r.steps["variant"] == 2 and "the variant you named" in r.steps["note"]
