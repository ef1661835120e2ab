"""The HTML page of `python -m tracejit report`: one self-contained document (inline CSS and JS, all text
escaped) per run, with a section per compiled function and variant."""

from __future__ import annotations

import html
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import time

from ..compiler import api
from ..compiler.ir import Graph, count_by_kind, fused_label, print_graph, to_dot
from .record import Record

_e = html.escape


# ----------------------------------------------------------------------------------------------- html pieces


CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d232a;background:#f6f7f9}
main{max-width:1200px;margin:0 auto;padding:16px 24px 64px}
h1{font-size:26px;margin:8px 0}h2{font-size:21px;margin:32px 0 8px;border-bottom:2px solid #3b6ea5}
h3{font-size:17px;margin:24px 0 6px;color:#24507a}h4{font-size:14px;margin:16px 0 4px}
section.fn{background:#fff;border:1px solid #d8dde3;border-radius:6px;padding:4px 18px 16px;margin:16px 0}
pre,code{font:12px/1.4 ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace}
pre{background:#f3f5f7;border:1px solid #e1e5ea;padding:8px;overflow:auto;max-height:560px;white-space:pre}
details{margin:4px 0}summary{cursor:pointer;padding:2px 0}summary:hover{color:#3b6ea5}
table{border-collapse:collapse;margin:6px 0 10px;font-size:13px}
th,td{border:1px solid #dde2e8;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#eef2f6}td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.bar{width:220px;height:12px;background:#e8ecf0;border-radius:2px}
.bar span{display:block;height:12px;background:#3b8f6a;border-radius:2px}
.bar.eager span{background:#c07a2c}.muted{color:#5f6b77}.note{background:#fff8e1;border-left:4px solid #e0b040;
padding:6px 10px;margin:8px 0}.err{background:#fdecea;border-left:4px solid #d05040;padding:6px 10px}
.svg{overflow:auto;max-height:900px;background:#fff;border:1px solid #e1e5ea}.svg svg{max-width:100%;height:auto}
nav ul{margin:4px 0}button{margin-right:6px}
"""

JS = """function setAll(open){document.querySelectorAll('details').forEach(function(d){d.open=open;});}"""


def plural(k: int, noun: str) -> str:
    return f"{k} {noun}{'' if k == 1 else 's'}"


def _pre(text: str) -> str:
    return f"<pre>{_e(text)}</pre>"


def _details(summary: str, body_html: str, open_: bool = False) -> str:
    return f"<details{' open' if open_ else ''}><summary>{_e(summary)}</summary>{body_html}</details>"


def _table(head: list[str], rows: list[list[str]]) -> str:
    """`rows` hold HTML cells (already escaped); a cell starting with '<td' is used as is."""
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _num(x: float, unit: str = "ms") -> str:
    return f'<td class="n">{x:.3f} {unit}</td>' if x < 10 else f'<td class="n">{x:.1f} {unit}</td>'


def _bar(frac: float, cls: str = "") -> str:
    pct = max(0.0, min(1.0, frac)) * 100
    return f'<div class="bar {cls}" title="{pct:.1f}%"><span style="width:{pct:.1f}%"></span></div>'


def _flat_ops(g: Graph) -> list[str]:
    out = []
    for n in g.nodes:
        out.extend(_flat_ops(n.body) if n.body is not None else [n.op.name])
    return out


def _ops_summary(g: Graph, limit: int = 8) -> str:
    ops = _flat_ops(g)
    return " + ".join(ops[:limit]) + (f" + … ({len(ops)} ops)" if len(ops) > limit else "")


_RUNS = {"generated": "generated kernel", "library": "library step", "interpreted": "NumPy (interpreted)"}


def _step_rows(program) -> list[tuple]:
    """(index, label, what runs it, ops, StepInfo, nodes or None) for each step of a Program (its `steps()`)."""
    rows = []
    for st in program.steps():
        ns = list(st.nodes) if st.nodes is not None else None
        runs = _RUNS.get(st.runs, st.runs)
        if st.runs == "interpreted" and ns and len(ns) == 1 and ns[0].body is not None:
            runs = f"NumPy (interpreted {fused_label(ns[0])} group)"
        ops = "" if ns is None else _ops_summary(Graph("step", [], ns, []))
        rows.append((st.index, st.label, runs, ops, st, ns))
    return rows


def _dot_svg(dot_src: str) -> str | None:
    dot = shutil.which("dot")
    if not dot:
        return None
    try:
        p = subprocess.run([dot, "-Tsvg"], input=dot_src, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    i = p.stdout.find("<svg")
    return p.stdout[i:] if p.returncode == 0 and i >= 0 else None


# ----------------------------------------------------------------------------------------------- sections


def _section_steps(r: Record) -> str:
    s = r.steps
    if not s:
        return "<p class='muted'>Step time not measured: the function was never called at top level.</p>"
    parts = ["<h3>Eager vs compiled step time</h3>"]
    if s["note"]:
        parts.append(f"<p class='note'>{_e(s['note'])}</p>")
    if s["compiled"] and s["eager"]:
        c, e = statistics.median(s["compiled"]), statistics.median(s["eager"])
        top = max(max(s["compiled"]), max(s["eager"]))
        rows = []
        for name, xs, cls in (("compiled", s["compiled"], ""), ("eager", s["eager"], "eager")):
            med = statistics.median(xs)
            rows.append([_e(name), _num(med * 1e3), _num(min(xs) * 1e3), _num(max(xs) * 1e3), str(len(xs)),
                         _bar(med / top, cls)])
        parts.append(_table(["mode", "median", "min", "max", "runs", ""], rows))
        variant = f" (variant {s['variant']})" if s["variant"] else ""
        parts.append(f"<p><b>speedup: {e / c:.2f}×</b> compiled{_e(variant)} vs eager, interleaved runs.</p>")
    return "".join(parts)


_PHASES = ("trace", "passes", "backend")


def _first_calls(program) -> float:
    """Seconds the generated functions took on their first call (Numba compiles or loads them then)."""
    return sum(s.first_call_s or 0.0 for s in program.steps() if s.source is not None)


def _section_compile_time(v, program) -> str:
    ks = [(k, label, step) for k, label, _, _, step, _ in _step_rows(program) if step.source is not None]
    numba_s = _first_calls(program)
    total = v.total_time + numba_s  # the bars: shares of the time to the first compiled result

    def row(name, t, bold=False):
        cell = _e(name).replace(" ", "&nbsp;")
        return [f"<b>{cell}</b>" if bold else cell, _num(t * 1e3), _bar(t / total if total else 0)]

    rows, pending = [], []
    for k, sec in v.timings.items():
        if k not in _PHASES:  # a detail of the phase recorded after it (pass:* in passes, render+load in backend)
            pending.append((k, sec))
            continue
        rows += [row(k, sec)] + [row("    " + n, t) for n, t in pending]
        pending = []
    rows += [row(n, t) for n, t in pending]
    rows.append(row("trace → program", v.total_time, bold=True))
    if ks:
        rows.append(row("Numba compile/load on first call", numba_s))
        rows.append(row("total", total, bold=True))
    html_ = "<h4>Compile-time breakdown</h4>" + _table(["phase", "time", "share of compile"], rows)
    html_ += ("<p class='muted'>pass:* rows are inside <code>passes</code>; a pass that runs several times "
              "shows its last run. Numba compiles (or loads from its disk cache) a generated function on its "
              "first call, after the phases above.</p>")
    if ks:
        krows = []
        for k, label, s in ks:
            fc = s.first_call_s
            hit = s.cache_hit
            krows.append([str(k), f"<code>{_e(label)}</code>", _num(fc * 1e3) if fc is not None else "not run",
                          "hit" if hit else "miss" if hit is not None else "?"])
        html_ += _details(f"Numba compile/load per generated function ({plural(len(ks), 'function')})",
                          _table(["step", "kernel", "first call (compile/load + run)", "source cache"], krows),
                          open_=True)
    return html_


def _section_profile(r: Record, v, program) -> str:
    prof = r.profiles.get(v.number)
    head = "<h4>Per-kernel time</h4>"
    if prof is None:
        return head + "<p class='muted'>not profiled</p>"
    if isinstance(prof, str):
        return head + f"<p class='muted'>{_e(prof)}</p>"
    steps = _step_rows(program)
    total = sum(prof) or 1e-12
    order = sorted(range(len(prof)), key=lambda k: -prof[k])
    rows = []
    for k in order:
        _, label, runs, ops, _, _ = steps[k]
        rows.append([str(k), f"<code>{_e(label)}</code>", _e(runs), f"<span class='muted'>{_e(ops)}</span>",
                     _num(prof[k] * 1e3), f'<td class="n">{prof[k] / total * 100:.1f}%</td>',
                     _bar(prof[k] / total)])
    rows.append(["", "<b>total</b>", "", "", _num(total * 1e3), '<td class="n">100%</td>', ""])
    return (head + f"<p class='muted'>median of the runs of <code>program.profile</code> over the arguments of "
            f"this variant's last run, {plural(len(steps), 'step')}, slowest first</p>"
            + _table(["step", "label", "runs as", "ops", "time", "share", ""], rows))


def _section_ir(v) -> str:
    stages = getattr(v, "stage_graphs", None) or []
    parts = ["<h4>IR after each pass</h4>"]
    prev = None
    for i, (name, g) in enumerate(stages):
        n = len(g.nodes)
        delta = "" if prev is None else f" ({n - prev:+d})"
        counts = ", ".join(f"{k} {c}" for k, c in sorted(count_by_kind(g).items()))
        notes = "".join(f"# {x}\n" for x in g.notes)
        parts.append(_details(f"{i:02d} {name} — {n} nodes{delta}: {counts}", _pre(print_graph(g) + "\n" + notes)))
        prev = n
    return "".join(parts)


def _section_fusion(v, program) -> str:
    g = v.graph
    runs_by_node = {id(n): f"step {k}: {label}" for k, label, _, _, _, ns in _step_rows(program) for n in ns or ()}
    rows = []
    for k, n in enumerate(g.nodes):
        if n.body is None:
            continue
        outs = ", ".join(str(o.type) for o in n.outputs)
        rows.append([str(k), f"<code>{_e(n.body.name)}</code>", _e(fused_label(n)),
                     str(len(_flat_ops(n.body))), f"<code>{_e(_ops_summary(n.body, 12))}</code>", _e(outs),
                     _e(runs_by_node.get(id(n), "?"))])
    parts = [f"<h4>Fusion groups ({len(rows)} in the final graph of {len(g.nodes)} nodes)</h4>"]
    parts.append(_table(["node", "group", "kind", "ops", "body", "outputs", "runs in"], rows) if rows
                 else "<p class='muted'>no fused nodes</p>")
    noted = [(i, name, sg.notes) for i, (name, sg) in enumerate(getattr(v, "stage_graphs", [])) if sg.notes]
    parts.append("<h4>Why neighbours were not fused (pass notes)</h4>")
    if not noted:
        parts.append("<p class='muted'>no notes were recorded</p>")
    for i, name, notes in noted:
        items = "".join(f"<li><code>{_e(x)}</code></li>" for x in notes)
        parts.append(f"<p><b>{i:02d} {_e(name)}</b> ({len(notes)} notes; node numbers refer to the pass's "
                     f"input graph)</p><ul>{items}</ul>")
    return "".join(parts)


def _section_kernels(program) -> str:
    ks = [(k, label, step) for k, label, _, _, step, _ in _step_rows(program) if step.source is not None]
    if not ks:
        return ("<h4>Generated source</h4><p class='muted'>this backend generates no kernel source (steps run "
                "through NumPy / libraries)</p>")
    parts = [f"<h4>Generated source ({plural(len(ks), 'function')})</h4>"]
    for k, label, step in ks:
        fc = step.first_call_s
        when = f", first call {fc * 1e3:.1f} ms" if fc is not None else ""
        parts.append(_details(f"step {k}: {label}{when}", _pre(step.source)))
    return "".join(parts)


def _section_graph(v) -> str:
    src = to_dot(v.graph)
    parts = ["<h4>Graph</h4>"]
    svg = _dot_svg(src)
    if svg:
        parts.append(_details("final graph (SVG rendered by Graphviz dot)", f"<div class='svg'>{svg}</div>"))
    else:
        parts.append("<p class='muted'>install Graphviz (<code>dot</code>) to see the graph drawn here</p>")
    parts.append(_details("final graph, .dot source", _pre(src)))
    parts.append(_details("traced graph, .dot source", _pre(to_dot(v.traced))))
    return "".join(parts)


def _section_variant(r: Record, v, fid: str) -> str:
    program = v.program
    runs = r.variant_runs.get(v.number, 0)
    parts = [f"<h3 id='{fid}-v{v.number}'>Variant {v.number} — compiled because: {_e(v.reason)}</h3>",
             f"<p>backend <code>{_e(str(getattr(v, 'backend', '?')))}</code> on {_e(str(program.device))}, "
             f"{runs} compiled runs during the "
             f"script, {len(v.traced.nodes)} traced nodes → {len(v.graph.nodes)} in the final graph, "
             f"{plural(len(program.plan), 'step')}</p>"]
    try:
        parts.append(_details("explanation (guards, inputs, outputs, nodes by stage)",
                              _pre(api.explain_variant(r.cf, v)), open_=True))
    except Exception as e:  # the explanation is a convenience
        parts.append(f"<p class='muted'>no explanation: {_e(repr(e))}</p>")
    parts += [_section_compile_time(v, program), _section_profile(r, v, program), _section_fusion(v, program),
              _section_ir(v), _section_kernels(program), _section_graph(v)]
    return "".join(parts)


def _section_function(r: Record, i: int) -> str:
    cf = r.cf
    fid = f"f{i}"
    parts = [f"<section class='fn'><h2 id='{fid}'>{_e(cf.__name__)} <span class='muted'>(backend "
             f"{_e(cf.backend_name)})</span></h2>",
             f"<p>{plural(r.calls, 'call')}, {plural(len(cf.history), 'compiled variant')}, "
             f"{cf.eager_calls} ran eagerly</p>"]
    if cf.log:
        parts.append("<h4>Log</h4><ul>" + "".join(f"<li>{_e(x)}</li>" for x in cf.log) + "</ul>")
    parts.append(_section_steps(r))
    parts += [_section_variant(r, v, fid) for v in cf.history]
    parts.append("</section>")
    return "".join(parts)


def build_html(records: list[Record], script: str, args: list[str], exit_code: int, error: str | None,
               elapsed_s: float) -> str:
    """The report page for `records` (measured already) from a run of `script`."""
    import numba
    import numpy

    from .. import __version__
    from ..compiler.backends import get_backend

    shown = [r for r in records if r.calls or r.cf.history]
    used = sorted({v.backend for r in shown for v in r.cf.history} or {"cpu"})
    runs_on = []
    for name in used:
        try:
            d = get_backend(name).describe()
        except Exception as e:  # a report should not die on a description
            d = {"device": f"? ({type(e).__name__})"}
        runs_on.append(f"{name}: {d.get('device')}" + (f", {d['threads']} threads" if d.get("threads") else ""))
    toc = []
    for i, r in enumerate(shown):
        vs = "".join(f"<li><a href='#f{i}-v{v.number}'>variant {v.number}: {_e(v.reason)}</a></li>"
                     for v in r.cf.history)
        toc.append(f"<li><a href='#f{i}'>{_e(r.cf.__name__)}</a> ({_e(r.cf.backend_name)})<ul>{vs}</ul></li>")
    summary = []
    for i, r in enumerate(shown):
        s = r.steps or {}
        c = statistics.median(s["compiled"]) if s.get("compiled") else None
        e = statistics.median(s["eager"]) if s.get("eager") else None
        comp = sum(v.total_time + _first_calls(v.program) for v in r.cf.history)
        summary.append([f"<a href='#f{i}'>{_e(r.cf.__name__)}</a>", _e(r.cf.backend_name), str(r.calls),
                        str(len(r.cf.history)), _num(comp * 1e3),
                        _num(e * 1e3) if e else "–", _num(c * 1e3) if c else "–",
                        f'<td class="n">{e / c:.2f}×</td>' if c and e else "–"])
    head = (f"<h1>tracejit report</h1><p><code>{_e(shlex.join([script] + list(args)))}</code> — "
            f"{_e(time.strftime('%Y-%m-%d %H:%M:%S'))}, script ran {elapsed_s:.1f} s, exit status {exit_code}</p>"
            f"<p class='muted'>tracejit {_e(__version__)}, Python {_e(platform.python_version())}, NumPy "
            f"{_e(numpy.__version__)}, Numba {_e(numba.__version__)}, {_e(platform.machine())}; "
            f"{_e('; '.join(runs_on))}</p>")
    note = ("<p class='note'>Step times and per-kernel times were measured after the script finished, with the "
            "arguments of each function's last call. Running the extra eager and compiled steps changed the "
            "model's state (parameters, optimizer buffers): acceptable for a report, but the state the script "
            "left is not what remains. Per-kernel profiling writes no state.</p>")
    body = [head, note]
    if error:
        body.append(f"<div class='err'><b>the script failed</b>{_pre(error)}</div>")
    body.append("<button onclick='setAll(true)'>expand all</button><button onclick='setAll(false)'>collapse "
                "all</button>")
    if shown:
        body.append("<h2>Summary</h2>" + _table(["function", "backend", "calls", "variants", "compile time",
                                                  "eager step", "compiled step", "speedup"], summary)
                    + "<p class='muted'>compile time: tracing, passes, code generation and Numba's compile or "
                      "load on the first call, summed over variants</p>")
        body.append("<nav><ul>" + "".join(toc) + "</ul></nav>")
        body += [_section_function(r, i) for i, r in enumerate(shown)]
    else:
        body.append("<p>Nothing was compiled: no <code>@tracejit.compile</code> function ran.</p>")
    title = _e(f"tracejit report: {os.path.basename(script)}")
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{title}</title>"
            f"<style>{CSS}</style><script>{JS}</script></head><body><main>{''.join(body)}</main></body></html>\n")
