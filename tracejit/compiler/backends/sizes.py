"""Kernels shared across batch sizes: generated source whose varying numbers are arguments.

A backend renders a graph's kernels with every size and constant written as a literal (so LLVM sees constant
inner trip counts). Rendering the same function at another batch size gives the same text except for some
numbers: the batch size, sizes and offsets that follow it, constants such as 1/n. Those numbers -- and only
those -- become arguments of a *template*: the source with the numbers at those positions replaced by names
read from one tuple argument. A template is keyed by its text, so it compiles once and every batch size whose
rendering differs from it only at its argument positions runs it (in this process, and from the disk cache in
the next). Correctness never depends on guessing which sizes vary: a template is used for a source only when
that source, with the template's arguments bound to its own numbers, is that source's text.

Which positions vary is learnt from two renderings of one function: at the first compile the compiler traces
the function again at batch size n + 1 (`SizeReuse.probe`), and later renderings whose numbers differ elsewhere
widen the template (torch.compile's "automatic dynamic", per kernel). What was learnt for a rendering is kept
beside the kernel cache (`remember`/`recall`: which literals are arguments), so a later process that renders
the same kernels skips the second trace.

Size-dependent decisions (whether a loop runs on threads, whether a GEMM is split, which nodes get a step of
their own) are recorded when a graph is rendered and replayed for smaller batch sizes of the same graph
(`Decisions`, `SizeReuse.replay_for`): every choice is correct at every size (it only decides speed), and a
partial last batch then runs the kernels the full batches run. A larger batch decides afresh, so it keeps the
speed of its own size (with dynamic=True it replays too and never compiles).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass

# a number literal that is not part of a name (t10, np.float32, i1_0) or of another number
NUMBER = re.compile(r"(?<![\w.])(?:\d+\.\d*(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+|\d+)(?![\w.])")
ARG = "SZ_"  # the tuple argument every function of a template takes first
_DEF = re.compile(r"^def (\w+)\((.*)\):\s*$")


def split_numbers(src: str) -> tuple[tuple, list]:
    """(the text between number literals, the literals) of `src`: its skeleton and its numbers."""
    nums = NUMBER.findall(src)
    return tuple(NUMBER.split(src)), nums


def _is_float(tok: str) -> bool:
    return "." in tok or "e" in tok or "E" in tok


def _value(tok: str):
    return float(tok) if _is_float(tok) else int(tok)


@dataclass
class Template:
    """Source text with the literals at `positions` (indices into its literal list) read from arguments: one
    argument per group of positions (`groups[j]`: the positions argument j stands for)."""

    skeleton: tuple
    base: list  # the literals of the rendering it was made from
    groups: tuple  # tuple of tuples of positions, one per argument
    floats: tuple  # per argument: a float (True) or an integer
    text: str  # the module source to load (the rendering itself when there are no arguments)

    @property
    def positions(self) -> set:
        return {p for g in self.groups for p in g}

    def values(self, nums: list) -> tuple | None:
        """The argument tuple running this template as the source whose literals are `nums`, or None when that
        source differs from the template outside its positions, in an argument's kind, or between positions
        one argument stands for."""
        base, pos = self.base, self.positions
        if len(nums) != len(base):
            return None
        for i, (a, b) in enumerate(zip(nums, base)):
            if i not in pos and a != b:
                return None
        out = []
        for group, is_float in zip(self.groups, self.floats):
            tok = nums[group[0]]
            if _is_float(tok) != is_float or any(nums[p] != tok for p in group):
                return None
            out.append(_value(tok))
        return tuple(out)

    @property
    def n_args(self) -> int:
        return len(self.groups)


def make_template(src: str, nums: list, skeleton: tuple, positions, other: list, groups=()) -> Template:
    """A Template of `src` (its literals `nums`) reading the literals at `positions` from the tuple argument
    `SZ_` of every function it defines. Positions in one of `groups` share an argument; so do the others whose
    literals agree in `nums` and in `other` (the literals of another rendering: the same size, most likely)."""
    by_pair: dict = {}
    group_of = {p: ("g", j) for j, g in enumerate(groups) for p in g}
    for p in sorted(positions):
        by_pair.setdefault(group_of.get(p, (nums[p], other[p])), []).append(p)
    groups = tuple(tuple(g) for g in by_pair.values())
    floats = tuple(_is_float(nums[g[0]]) for g in groups)
    if not groups:
        return Template(skeleton, list(nums), (), (), src)
    names = {p: f"sz{j}" for j, g in enumerate(groups) for p in g}
    parts = []
    for i, sep in enumerate(skeleton):
        parts.append(sep)
        if i < len(nums):
            parts.append(names.get(i, nums[i]))
    text = _plumb("".join(parts), [f"sz{j}" for j in range(len(groups))])
    return Template(skeleton, list(nums), groups, floats, text)


def _plumb(text: str, args: list) -> str:
    """Every function defined in `text` takes `SZ_` first and unpacks `args` from it; calls between them pass
    it on (generated modules call their own functions by name, one call per line)."""
    lines = text.split("\n")
    defined = [m.group(1) for line in lines if (m := _DEF.match(line))]
    call = re.compile(r"\b(" + "|".join(map(re.escape, defined)) + r")\(") if defined else None
    unpack = f"    {', '.join(args)}, = {ARG}"
    out = []
    for line in lines:
        m = _DEF.match(line)
        if m:
            params = m.group(2).strip()
            out.append(f"def {m.group(1)}({ARG}{', ' + params if params else ''}):")
            out.append(unpack)
            continue
        if call is not None and line.startswith(" "):
            line = call.sub(lambda c: f"{c.group(1)}({ARG}, ", line)
        out.append(line)
    return "\n".join(out)


class Decisions:
    """Size-dependent choices of one rendering, in the order they are made: recorded the first time a graph
    is rendered and replayed for the same graph at another batch size (`replay`), so that both render the
    same kernels. Every choice it records must be correct at any size (it only decides speed)."""

    def __init__(self, replay: list | None = None):
        self.replay = replay
        self.made: list = []

    def __call__(self, choice):
        k = len(self.made)
        if self.replay is not None and k < len(self.replay):
            choice = self.replay[k]
        self.made.append(choice)
        return choice


def graph_key(g) -> str:
    """A hash of a graph's structure without its sizes: ops, attributes' non-numeric parts, dtypes, ranks and
    how values connect (renderings of two batch sizes of one function share it)."""
    h = hashlib.sha256()
    ids: dict[int, int] = {}

    def walk(graph):
        for v in graph.inputs:
            ids[v.id] = len(ids)
            h.update(f"i{v.type.dtype.short}{len(v.shape)};".encode())
        for n in graph.nodes:
            attrs = NUMBER.sub("#", repr(sorted((k, v) for k, v in n.attrs.items() if k != "message")))
            h.update(f"{n.op.name}{attrs}{[ids.get(v.id, -1) for v in n.inputs]}".encode())
            if n.body is not None:
                walk(n.body)
            for v in n.outputs:
                ids[v.id] = len(ids)
                h.update(f"o{v.type.dtype.short}{len(v.shape)};".encode())
        h.update(str([ids.get(v.id, -1) for v in graph.outputs]).encode())

    walk(g)
    return h.hexdigest()[:24]


class SizeReuse:
    """What one compiled function's renderings share across its variants on one backend: templates by
    skeleton, the recorded decisions per graph structure, and (during one compile) `probe`, a callable giving
    the same function's optimized graph at another batch size, or None."""

    def __init__(self):
        self.templates: dict[str, list[Template]] = {}
        self.decisions: dict[str, list] = {}  # graph_key -> [(batch size, choices made), ...] in order
        self.always_replay = False  # dynamic=True: replay the first choices at any batch size (never compile)
        self.batch: int | None = None  # set by the compiler around one backend.compile call: its batch size
        self.probe = None  # likewise: a callable giving the function's graph at another batch size, or None
        self.probed: str | None = None  # words for explain: which sizes the probe changed

    def replay_for(self, key: str) -> list | None:
        """The recorded choices to replay for a graph of structure `key` at batch size `self.batch`: those made
        at the nearest batch size >= it (more work per loop: the parallel ones are at least as parallel), any
        first ones with always_replay; None (decide afresh, and compile kernels of its own if that changes a
        choice) for a batch larger than all recorded ones -- a larger batch keeps the speed of its own size."""
        known = self.decisions.get(key)
        if not known:
            return None
        if self.always_replay or self.batch is None:
            return known[0][1]
        above = [(n, made) for n, made in known if n is not None and n >= self.batch]
        return min(above, key=lambda nm: nm[0])[1] if above else None

    def record(self, key: str, decide: Decisions) -> None:
        """Remember the choices of a rendering made afresh (not replayed) at batch size `self.batch`."""
        if decide.replay is None:
            self.decisions.setdefault(key, []).append((self.batch, decide.made))

    @staticmethod
    def _key(skeleton: tuple) -> str:
        return hashlib.sha256("\0".join(skeleton).encode()).hexdigest()

    def find(self, src: str):
        """(template, argument tuple) for the source `src` from the templates known, else (None, (skeleton,
        literals)) for `learn`."""
        skeleton, nums = split_numbers(src)
        for t in self.templates.get(self._key(skeleton), ()):
            vals = t.values(nums)
            if vals is not None:
                return t, vals
        return None, (skeleton, nums)

    def recalled(self, src: str, parsed, salt: str = "") -> Template | None:
        """A template for `src` from what an earlier process learnt for this very rendering (`recall`)."""
        groups = recall(src, salt)
        skeleton, nums = parsed
        if groups is None or any(not 0 <= p < len(nums) for g in groups for p in g):
            return None
        if any(_is_float(nums[p]) != _is_float(nums[g[0]]) or nums[p] != nums[g[0]] for g in groups for p in g):
            return None
        t = make_template(src, nums, skeleton, {p for g in groups for p in g}, nums, groups)
        self.templates.setdefault(self._key(skeleton), []).append(t)
        return t

    def learn(self, src: str, parsed, twin_src: str | None) -> Template | None:
        """A template for `src` (not matched by `find`; `parsed` is what find returned): arguments where its
        literals differ from a known template of the same skeleton (widening it) or from `twin_src`, the
        same kernel rendered at another batch size. None when neither tells anything (a static kernel)."""
        skeleton, nums = parsed
        key = self._key(skeleton)
        known = self.templates.get(key)
        groups = ()
        if known:
            base = known[-1].base
            widen = set(known[-1].positions)
            groups = known[-1].groups
        elif twin_src is not None:
            tskel, base = split_numbers(twin_src)
            if tskel != skeleton:
                return None
            widen = set()
        else:
            return None
        positions = widen | {i for i, (a, b) in enumerate(zip(nums, base)) if a != b}
        if any(_is_float(nums[i]) != _is_float(base[i]) for i in positions):
            return None
        t = make_template(src, nums, skeleton, positions, base, groups)
        self.templates.setdefault(key, []).append(t)
        return t


# ---- what was learnt, kept in the kernel cache for later processes
_RECORD = "# tracejit: the number literals of a generated kernel that are size arguments (backends/sizes.py)\n"


def _record_path(src: str, salt: str) -> str | None:
    """An entry of the kernel cache of its own (k_<key>.py: listed, and removed by `python -m tracejit cache
    --clear`, with the kernels), keyed by the rendering it describes."""
    from . import cache

    try:
        d = cache.cache_dir()
    except OSError:
        return None
    return os.path.join(d, f"k_{cache.key_of('sizes ' + salt + src)}.py")


def remember(src: str, t: Template, salt: str = "") -> None:
    """Keep which literals of the rendering `src` are arguments of its template `t` (best effort)."""
    from . import cache

    path = _record_path(src, salt)
    if path is None:
        return
    try:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=os.path.basename(path)[:-2], suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(cache.HEADER + _RECORD + f"GROUPS = {json.dumps([list(g) for g in t.groups])}\n")
        os.replace(tmp, path)
    except OSError:
        pass


def recall(src: str, salt: str = "") -> tuple | None:
    """The argument groups remembered for the rendering `src`, or None. A damaged record is only a miss: a
    template is used for a source only where its own literals reproduce it (Template.values)."""
    from . import cache

    path = _record_path(src, salt)
    try:
        with open(path) as f:
            text = f.read()
        head = cache.HEADER + _RECORD + "GROUPS = "
        if not text.startswith(head):
            return None
        return tuple(tuple(int(p) for p in g) for g in json.loads(text[len(head) :]))
    except (OSError, TypeError, ValueError):
        return None
