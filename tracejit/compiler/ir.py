"""The IR: a flat SSA list of primitive ops, like a jaxpr, with a text form that parses back.

`Graph(inputs, nodes, outputs)`; `Node(op, inputs, attrs, outputs)`; `Value(id, type)`. Nodes are
immutable; passes build new graphs. A fused node carries its body (another Graph) and prints it indented;
what it is -- its `FusedKind` and, for window and GEMM groups, its `Pattern` -- is the typed contract between the
fusion passes and the backends (`fused(...)` builds one, `Node.fused_kind` / `Node.pattern` read it).
"""

from __future__ import annotations

import ast
import enum
import math
import re
from dataclasses import dataclass, field

from .. import dtypes as D
from ..ops import OPS, Kind, OpDef, TensorType


class Value:
    """One SSA value. `name` is what the text form prints after `%` (the id unless parsed/named)."""

    __slots__ = ("id", "type", "name")
    _next_id = 0

    def __init__(self, type_: TensorType, name: str | None = None):
        Value._next_id += 1
        self.id = Value._next_id
        self.type = type_
        self.name = name

    @property
    def shape(self) -> tuple:
        return self.type.shape

    @property
    def dtype(self) -> D.DType:
        return self.type.dtype

    def __repr__(self) -> str:
        return f"%{self.name or self.id}: {self.type}"


@dataclass(frozen=True)
class Node:
    op: OpDef
    inputs: tuple
    attrs: dict
    outputs: tuple
    body: Graph | None = None  # a fused node's sub-graph (its inputs/outputs correspond to ours)

    @property
    def output(self) -> Value:
        return self.outputs[0]

    @property
    def fused_kind(self) -> FusedKind | None:
        """What a fused node holds (None for a primitive)."""
        return self.attrs["kind"] if self.body is not None else None

    @property
    def pattern(self) -> Pattern | None:
        """The window/GEMM pattern a fused node implements (None for loop groups and primitives)."""
        return self.attrs.get("pattern") if self.body is not None else None


@dataclass
class Graph:
    """inputs carry meta ({'arg': 'x'}, {'state': 'fc.weight'}, {'const': True});
    outputs are returned values (meta None) followed by state write-backs (meta = the state's name)."""

    name: str
    inputs: list
    nodes: list
    outputs: list
    input_meta: dict = field(default_factory=dict)  # Value.id -> dict
    output_meta: list = field(default_factory=list)  # per output: None (returned) or state name
    notes: list = field(default_factory=list)  # what passes decided and why (e.g. why not fused)

    def returns(self) -> list:
        return [v for v, m in zip(self.outputs, self.output_meta) if m is None]

    def writes(self) -> list:
        return [(m, v) for v, m in zip(self.outputs, self.output_meta) if m is not None]

    def replace(self, **kw) -> Graph:
        d = dict(name=self.name, inputs=self.inputs, nodes=self.nodes, outputs=self.outputs,
                 input_meta=self.input_meta, output_meta=self.output_meta, notes=[])
        d.update(kw)
        return Graph(**d)

    def __str__(self) -> str:
        return print_graph(self)


# ----------------------------------------------------------------------------------------------- fused nodes


class FusedKind(enum.StrEnum):
    """What a fused node's body is, and so how a backend runs it. (A StrEnum, so code that still compares with
    the text form's strings reads it right; nodes are built and verified with the enum.)"""

    ELEMENTWISE = "elementwise"  # elementwise ops over one iteration space (+ copied constants and views): one loop
    REDUCE = "reduce"  # the same with sum/amax results (backends.kernel.lower takes both)
    MULTI = "multi"  # ELEMENTWISE fused nodes run in sequence as one launch (fuse_optimizer: the parameter updates)
    WINDOW = "window"  # a conv/pool chain, named by its Pattern
    CONTRACTION = "contraction"  # a GEMM with an epilogue, named by its Pattern

    @property
    def op_kind(self) -> Kind:
        """The op-table kind the group as a whole has (what its node's `op.kind` says)."""
        return {FusedKind.REDUCE: Kind.REDUCE, FusedKind.WINDOW: Kind.WINDOW,
                FusedKind.CONTRACTION: Kind.CONTRACTION}.get(self, Kind.ELEMENTWISE)

    @property
    def is_loop(self) -> bool:
        """Loop groups: their body lowers to loop kernels; window and GEMM groups name a Pattern instead."""
        return self in (FusedKind.ELEMENTWISE, FusedKind.REDUCE, FusedKind.MULTI)


class Pattern(enum.StrEnum):
    """A window/GEMM group fuse_window forms: the body's ops, and the attrs a backend's kernel reads (`.attrs`).
    Backends say which they run natively (`supports(pattern, attrs)`); any other runs its body op by op."""

    CONV_POOL = "conv_pool"  # conv2d (+ bias) (+ relu) + max_pool2d, writing the pooled values and the argmax
    UNPOOL = "unpool"  # max_pool2d's backward from that argmax (+ relu's mask from the pooled values)
    CONV_POOL_BACKWARD = "conv_pool_backward"  # unpool + conv2d_grad_weight + bias sum (+ conv2d_grad_input)
    GRAD_WEIGHT_BIAS = "grad_weight_bias"  # conv2d_grad_weight + the bias gradient's sum
    LINEAR = "linear"  # 2-D matmul + bias (+ relu) as one GEMM with an epilogue

    @property
    def kind(self) -> FusedKind:
        return FusedKind.CONTRACTION if self is Pattern.LINEAR else FusedKind.WINDOW

    @property
    def attrs(self) -> tuple:
        """The attributes a node of this pattern carries (beyond kind and pattern)."""
        conv = ("stride", "padding", "dilation", "groups")
        pool = ("relu", "pool", "pool_stride", "pool_padding", "pool_dilation", "ceil_mode")
        return {Pattern.CONV_POOL: pool + ("bias",) + conv, Pattern.UNPOOL: pool,
                Pattern.CONV_POOL_BACKWARD: pool + ("input_grad",) + conv, Pattern.GRAD_WEIGHT_BIAS: conv,
                Pattern.LINEAR: ("relu",)}[self]


def _no_infer(*a, **k):
    raise TypeError("a fused node's types come from its body")


def _no_ref(*a, **k):
    raise TypeError("a fused node runs through its body")


# The containers of fusion groups: not primitives (they have no semantics of their own), so they live here
# rather than in the op table. One per FusedKind, so that `op.kind` is the group's (a conv/pool group is WINDOW,
# not ELEMENTWISE); all print as `fused` with their kind among the attrs.
FUSED_OPS = {k: OpDef("fused", k.op_kind, _no_infer, _no_ref, None, None, f"a fused {k.value} group run as one kernel")
             for k in FusedKind}


def fused(kind: FusedKind | Pattern, inputs, outputs, body: Graph, **attrs) -> Node:
    """A fused node: `kind` is a loop kind or a Pattern (its kind follows); attrs are the pattern's."""
    head = {"kind": kind.kind, "pattern": kind} if isinstance(kind, Pattern) else {"kind": kind}
    return Node(FUSED_OPS[head["kind"]], tuple(inputs), {**head, **attrs}, tuple(outputs), body)


def is_fused(n: Node) -> bool:
    return n.body is not None


def fused_label(n: Node) -> str:
    """'elementwise', 'window conv_pool', ... for a fused node."""
    p = n.pattern
    return n.fused_kind.value + (f" {p.value}" if p is not None else "")


class GraphBuilder:
    """Appends nodes in program order (what the tracer uses)."""

    def __init__(self, name: str):
        self.graph = Graph(name, [], [], [], {}, [])

    def add_input(self, type_: TensorType, meta: dict) -> Value:
        v = Value(type_)
        self.graph.inputs.append(v)
        self.graph.input_meta[v.id] = meta
        return v

    def add_node(self, op: OpDef, inputs, attrs: dict, out_type: TensorType) -> Value:
        v = Value(out_type)
        self.graph.nodes.append(Node(op, tuple(inputs), dict(attrs), (v,)))
        return v

    def add_output(self, v: Value, meta: str | None = None) -> None:
        self.graph.outputs.append(v)
        self.graph.output_meta.append(meta)


# ----------------------------------------------------------------------------------------------- text form


def format_attr(v) -> str:
    if isinstance(v, D.DType):
        return v.short
    if isinstance(v, FusedKind | Pattern):
        return repr(v.value)  # parsed back by the attribute's name (`_fused_attrs`)
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, tuple):
        inner = ", ".join(format_attr(x) for x in v)
        return f"({inner},)" if len(v) == 1 else f"({inner})"
    if isinstance(v, str):
        return repr(v)
    return str(v)


def _format_attrs(attrs: dict) -> str:
    if not attrs:
        return ""
    return " {" + ", ".join(f"{k}={format_attr(v)}" for k, v in attrs.items()) + "}"


def _namer(g: Graph):
    """Printed names: a value's own name, else its position in definition order (stable per graph)."""
    values = g.inputs + [v for n in g.nodes for v in n.outputs]
    taken = {v.name for v in values if v.name}
    names: dict[int, str] = {}
    counter = 0
    for v in values:
        if v.name:
            names[v.id] = v.name
            continue
        while str(counter) in taken:
            counter += 1
        names[v.id] = str(counter)
        counter += 1

    def name(v: Value) -> str:
        return "%" + names.get(v.id, v.name or f"?{v.id}")
    return name


def _meta_str(meta: dict) -> str:
    if not meta:
        return ""
    parts = []
    for k, v in meta.items():
        parts.append(k if v is True else f"{k}: {v}")
    return " {" + ", ".join(parts) + "}"


def print_graph(g: Graph, indent: str = "", header: str = "graph") -> str:
    _vname = _namer(g)
    ins = ", ".join(f"{_vname(v)}: {v.type}{_meta_str(g.input_meta.get(v.id, {}))}" for v in g.inputs)
    lines = [f"{indent}{header} {g.name}({ins}) {{"]
    for n in g.nodes:
        outs = ", ".join(f"{_vname(v)}: {v.type}" for v in n.outputs)
        args = ", ".join(_vname(v) for v in n.inputs)
        lines.append(f"{indent}  {outs} = {n.op.name}({args}){_format_attrs(n.attrs)}")
        if n.body is not None:
            lines.extend(print_graph(n.body, indent + "    ", header="body").splitlines())
    rets = ", ".join(_vname(v) for v in g.returns())
    writes = ", ".join(f"{m} <- {_vname(v)}" for m, v in g.writes())
    lines.append(f"{indent}  return {rets}" + (f" ; {writes}" if writes else ""))
    lines.append(f"{indent}}}")
    return "\n".join(lines)


_NAMES = {d.short: d for d in D.ALL}


def _eval_attr(node):
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Tuple | ast.List):
        return tuple(_eval_attr(e) for e in node.elts)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_eval_attr(node.operand)
    if isinstance(node, ast.Name):
        if node.id in _NAMES:
            return _NAMES[node.id]
        if node.id in ("inf", "nan"):
            return float(node.id)
    raise ValueError(f"cannot parse attribute value {ast.dump(node)}")


def parse_attrs(text: str) -> dict:
    text = text.strip()
    if not text:
        return {}
    call = ast.parse(f"f({text})", mode="eval").body
    return {kw.arg: _eval_attr(kw.value) for kw in call.keywords}


_TYPE_RE = re.compile(r"^(\w+)\[([\d,\s]*)\]$")


def parse_type(text: str) -> TensorType:
    m = _TYPE_RE.match(text.strip())
    if not m:
        raise ValueError(f"bad type {text!r}")
    dims = tuple(int(s) for s in m.group(2).split(",") if s.strip())
    return TensorType(dims, _NAMES[m.group(1)])


def _split_top(text: str, sep: str = ",") -> list:
    """Split on `sep` outside brackets/braces/parens."""
    out, depth, cur = [], 0, []
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == sep and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        out.append("".join(cur))
    return [s.strip() for s in out]


def _parse_meta(text: str) -> dict:
    meta = {}
    for part in _split_top(text):
        if ":" in part:
            k, v = part.split(":", 1)
            meta[k.strip()] = v.strip()
        else:
            meta[part.strip()] = True
    return meta


_HEADER_RE = re.compile(r"^\s*(graph|body)\s+([\w.<>-]+)\((.*)\)\s*\{\s*$")
_NODE_RE = re.compile(r"^\s*(.+?)\s*=\s*([\w.]+)\((.*?)\)\s*(\{.*\})?\s*$")


def parse_graph(text: str, ops: dict | None = None) -> Graph:
    """Parse the text form back into a Graph (fused-node bodies included)."""
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    g, end = _parse_block(lines, 0, {}, ops or OPS)
    return g


def _fused_attrs(attrs: dict, line: int) -> dict:
    """A parsed fused node's attrs with kind and pattern as the enums they stand for."""
    out = dict(attrs)
    try:
        out["kind"] = FusedKind(attrs["kind"])
        if "pattern" in attrs:
            out["pattern"] = Pattern(attrs["pattern"])
    except (KeyError, ValueError) as e:
        kinds = [k.value for k in FusedKind]
        raise ValueError(f"line {line}: a fused node needs kind= one of {kinds} (and a known pattern= for "
                         f"window and contraction groups): {e}") from None
    return out


def _parse_block(lines, i, env, ops):
    m = _HEADER_RE.match(lines[i])
    if not m:
        raise ValueError(f"line {i + 1}: expected 'graph name(...) {{', got {lines[i]!r}")
    g = Graph(m.group(2), [], [], [], {}, [])
    for part in _split_top(m.group(3)):
        name, rest = part.split(":", 1)
        rest = rest.strip()
        meta = {}
        if "{" in rest:
            rest, meta_text = rest.split("{", 1)
            meta = _parse_meta(meta_text.rstrip("} "))
        v = Value(parse_type(rest), name.strip().lstrip("%"))
        if v.name in env:
            raise ValueError(f"line {i + 1}: %{v.name} is defined twice")
        env[v.name] = v
        g.inputs.append(v)
        g.input_meta[v.id] = meta
    i += 1
    while i < len(lines):
        line = lines[i].strip()
        if line == "}":
            return g, i + 1
        if line.startswith("return"):
            body = line[len("return"):]
            rets, _, writes = body.partition(";")
            for r in _split_top(rets):
                g.outputs.append(_lookup(env, r, i))
                g.output_meta.append(None)
            for w in _split_top(writes):
                name, _, v = w.partition("<-")
                g.outputs.append(_lookup(env, v.strip(), i))
                g.output_meta.append(name.strip())
            i += 1
            continue
        nm = _NODE_RE.match(line)
        if not nm:
            raise ValueError(f"line {i + 1}: cannot parse {line!r}")
        outs_text, opname, args_text, attrs_text = nm.groups()
        if opname not in ops and opname != "fused":
            raise ValueError(f"line {i + 1}: unknown op {opname!r}")
        inputs = tuple(_lookup(env, a, i) for a in _split_top(args_text))
        attrs = parse_attrs(attrs_text[1:-1]) if attrs_text else {}
        if opname == "fused":
            attrs = _fused_attrs(attrs, i + 1)
        outs = []
        for o in _split_top(outs_text):
            name, t = o.split(":", 1)
            v = Value(parse_type(t), name.strip().lstrip("%"))
            if v.name in env:
                raise ValueError(f"line {i + 1}: %{v.name} is defined twice")
            env[v.name] = v
            outs.append(v)
        body = None
        i += 1
        if i < len(lines) and _HEADER_RE.match(lines[i]) and _HEADER_RE.match(lines[i]).group(1) == "body":
            body, i = _parse_block(lines, i, {}, ops)
        if opname == "fused" and body is None:
            raise ValueError(f"line {i + 1}: a fused node needs its body on the lines after it")
        op = FUSED_OPS[attrs["kind"]] if opname == "fused" else ops[opname]
        g.nodes.append(Node(op, inputs, attrs, tuple(outs), body))
    raise ValueError("unterminated graph: missing '}'")


def _lookup(env, token, i):
    name = token.strip().lstrip("%")
    if name not in env:
        raise ValueError(f"line {i + 1}: %{name} is used before it is defined")
    return env[name]


# ----------------------------------------------------------------------------------------------- verify


class VerifyError(ValueError):
    pass


def verify(g: Graph) -> Graph:
    """Check SSA, definition before use, and that every node's types agree with its op's `infer`."""
    defined = set()
    for v in g.inputs:
        if v.id in defined:
            raise VerifyError(f"{g.name}: input %{v.name or v.id} defined twice")
        defined.add(v.id)
    for k, n in enumerate(g.nodes):
        for v in n.inputs:
            if v.id not in defined:
                raise VerifyError(f"{g.name}: node {k} ({n.op.name}) uses %{v.name or v.id} before its definition")
        if n.body is not None:
            _verify_fused(g, k, n)
            verify(n.body)
            if [v.type for v in n.body.inputs] != [v.type for v in n.inputs]:
                raise VerifyError(f"{g.name}: node {k} ({n.op.name}) body inputs do not match its inputs")
            if [v.type for v in n.body.outputs] != [v.type for v in n.outputs]:
                raise VerifyError(f"{g.name}: node {k} ({n.op.name}) body outputs do not match its outputs")
        elif n.op.name in OPS and OPS[n.op.name] is n.op:
            expect = n.op.infer(*[v.type for v in n.inputs], **n.attrs)
            if expect != n.outputs[0].type or len(n.outputs) != 1:
                raise VerifyError(f"{g.name}: node {k} ({n.op.name}) has type {n.outputs[0].type}, "
                                  f"its op infers {expect}")
        for v in n.outputs:
            if v.id in defined:
                raise VerifyError(f"{g.name}: %{v.name or v.id} defined twice (node {k}, {n.op.name})")
            defined.add(v.id)
    for v in g.outputs:
        if v.id not in defined:
            raise VerifyError(f"{g.name}: output %{v.name or v.id} is never defined")
    if len(g.output_meta) != len(g.outputs):
        raise VerifyError(f"{g.name}: {len(g.outputs)} outputs but {len(g.output_meta)} output metas")
    return g


def _verify_fused(g: Graph, k: int, n: Node) -> None:
    kind, pattern = n.attrs.get("kind"), n.attrs.get("pattern")
    where = f"{g.name}: node {k} (fused {n.body.name})"
    if not isinstance(kind, FusedKind) or n.op is not FUSED_OPS[kind]:
        raise VerifyError(f"{where}: kind {kind!r} is not a FusedKind matching its op (build it with ir.fused)")
    if pattern is not None or not kind.is_loop:
        if not isinstance(pattern, Pattern) or pattern.kind is not kind:
            raise VerifyError(f"{where}: a {kind.value} group needs a Pattern of its kind, got {pattern!r}")
        missing = [a for a in pattern.attrs if a not in n.attrs]
        if missing:
            raise VerifyError(f"{where}: pattern {pattern.value} lacks attrs {missing}")
    if kind is FusedKind.MULTI and not all(m.fused_kind is FusedKind.ELEMENTWISE for m in n.body.nodes):
        raise VerifyError(f"{where}: a multi group's body holds only elementwise groups")


# ----------------------------------------------------------------------------------------------- queries


def count_by_kind(g: Graph) -> dict:
    counts: dict[str, int] = {}
    for n in g.nodes:
        if n.body is not None:
            k = f"fused {n.fused_kind.value}"
        else:
            k = n.op.kind.value if isinstance(n.op.kind, Kind) else str(n.op.kind)
        counts[k] = counts.get(k, 0) + 1
    return counts


def users(g: Graph) -> dict:
    """Value id -> list of node indices that read it (graph outputs count as index len(nodes))."""
    out: dict[int, list] = {}
    for k, n in enumerate(g.nodes):
        for v in n.inputs:
            out.setdefault(v.id, []).append(k)
    for v in g.outputs:
        out.setdefault(v.id, []).append(len(g.nodes))
    return out


# ----------------------------------------------------------------------------------------------- graphviz


def to_dot(g: Graph) -> str:
    """Graphviz source; fused nodes are drawn as clusters holding their bodies."""
    lines = [f'digraph "{g.name}" {{', "  rankdir=TB;", '  node [shape=box, fontname="monospace", fontsize=10];']
    producer = {}
    for v in g.inputs:
        meta = g.input_meta.get(v.id, {})
        label = meta.get("state") or meta.get("arg") or ("const" if meta.get("const") else "")
        lines.append(f'  v{v.id} [shape=ellipse, label="%{v.name or v.id}\\n{label}\\n{v.type}"];')
        producer[v.id] = f"v{v.id}"
    for k, n in enumerate(g.nodes):
        nid = f"n{k}"
        if n.body is not None:
            lines.append(f'  subgraph cluster_{k} {{ label="{n.op.name} #{k}"; style=rounded; color=blue;')
            for j, bn in enumerate(n.body.nodes):
                lines.append(f'    n{k}_{j} [label="{bn.op.name}\\n{bn.outputs[0].type}"];')
            for j in range(len(n.body.nodes) - 1):
                lines.append(f"    n{k}_{j} -> n{k}_{j + 1} [style=dotted];")
            lines.append("  }")
            anchor = f"n{k}_0" if n.body.nodes else nid
            for v in n.inputs:
                lines.append(f"  {producer[v.id]} -> {anchor};")
            last = f"n{k}_{len(n.body.nodes) - 1}" if n.body.nodes else nid
            for v in n.outputs:
                producer[v.id] = last
            continue
        label = n.op.name + "\\n" + ", ".join(str(v.type) for v in n.outputs)
        lines.append(f'  {nid} [label="{label}"];')
        for v in n.inputs:
            lines.append(f"  {producer[v.id]} -> {nid};")
        for v in n.outputs:
            producer[v.id] = nid
    for i, (v, m) in enumerate(zip(g.outputs, g.output_meta)):
        lines.append(f'  out{i} [shape=ellipse, style=dashed, label="{m or "return"}"];')
        lines.append(f"  {producer[v.id]} -> out{i};")
    lines.append("}")
    return "\n".join(lines)
