"""The pass rules for collectives, IR text in -> pass -> IR text out: dce keeps them, cse never merges two,
fusion never groups across one, and overlap_collectives splits all_reduce into a start placed as early as its input
is complete and a wait placed behind everything that does not need the result -- keeping the collectives' order.
Graphs run on the reference backend in a world of one rank (values equal before and after each pass)."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from tracejit.compiler.backends.reference import run_graph
from tracejit.compiler.ir import parse_graph, print_graph, verify
from tracejit.compiler.passes import PIPELINE, run_pipeline
from tracejit.compiler.passes.cse import cse
from tracejit.compiler.passes.dce import dce
from tracejit.compiler.passes.fuse_elementwise import fuse_elementwise
from tracejit.compiler.passes.overlap_collectives import overlap_collectives
from tracejit.distributed.group import single_process


def ir(text: str) -> str:
    return textwrap.dedent(text).strip("\n")


def run(g, seed=0):
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(v.shape).astype(v.dtype.np) for v in g.inputs]
    with single_process():
        return run_graph(g, arrays)


def check(pass_, before: str, after: str):
    g = verify(parse_graph(ir(before)))
    out = verify(pass_(g))
    assert print_graph(out) == ir(after)
    assert print_graph(parse_graph(print_graph(out))) == ir(after)  # the text form parses back
    for w, r in zip(run(g), run(out)):
        np.testing.assert_array_equal(r, w)
    return out


def test_dce_keeps_collectives_nothing_reads():
    check(dce, """
        graph f(%x: f32[4] {arg: x}) {
          %1: f32[4] = all_reduce(%x) {reduce='sum'}
          %2: bool[] = barrier()
          %3: f32[4] = neg(%x)
          %4: f32[4] = exp(%x)
          return %4
        }""", """
        graph f(%x: f32[4] {arg: x}) {
          %1: f32[4] = all_reduce(%x) {reduce='sum'}
          %2: bool[] = barrier()
          %4: f32[4] = exp(%x)
          return %4
        }""")


def test_cse_never_merges_two_collectives():
    check(cse, """
        graph f(%x: f32[4] {arg: x}) {
          %1: f32[4] = all_reduce(%x) {reduce='sum'}
          %2: f32[4] = all_reduce(%x) {reduce='sum'}
          %3: f32[4] = exp(%x)
          %4: f32[4] = exp(%x)
          %5: f32[4] = add(%1, %2)
          %6: f32[4] = add(%3, %4)
          return %5, %6
        }""", """
        graph f(%x: f32[4] {arg: x}) {
          %1: f32[4] = all_reduce(%x) {reduce='sum'}
          %2: f32[4] = all_reduce(%x) {reduce='sum'}
          %3: f32[4] = exp(%x)
          %5: f32[4] = add(%1, %2)
          %6: f32[4] = add(%3, %3)
          return %5, %6
        }""")


def test_fusion_does_not_group_across_a_collective():
    g = verify(parse_graph(ir("""
        graph f(%x: f32[4] {arg: x}, %y: f32[4] {arg: y}) {
          %1: f32[4] = exp(%x)
          %2: f32[4] = broadcast(%y) {src=0}
          %3: f32[4] = neg(%1)
          %4: f32[4] = tanh(%x)
          %5: f32[4] = mul(%3, %2)
          return %5, %4
        }""")))
    out = verify(fuse_elementwise(g))
    groups = [sorted(m.op.name for m in n.body.nodes) if n.body else n.op.name for n in out.nodes]
    # exp stays a kernel of its own before the broadcast (not with neg, which reads it, nor tanh, which reads x too)
    assert groups == [["exp"], "broadcast", ["tanh"], ["mul", "neg"]], print_graph(out)
    assert any("a collective runs between them" in n for n in out.notes), out.notes
    for w, r in zip(run(g), run(out)):
        np.testing.assert_array_equal(r, w)
    # without the broadcast in between, exp joins them
    free = verify(parse_graph(ir("""
        graph f(%x: f32[4] {arg: x}, %y: f32[4] {arg: y}) {
          %1: f32[4] = exp(%x)
          %3: f32[4] = neg(%1)
          %4: f32[4] = tanh(%x)
          %5: f32[4] = mul(%3, %y)
          return %5, %4
        }""")))
    assert [n.op.name for n in fuse_elementwise(free).nodes] == ["fused"]


def test_overlap_starts_early_and_waits_late():
    out = check(overlap_collectives, """
        graph step(%x: f32[8] {arg: x}, %w: f32[8] {arg: w}) {
          %a: f32[8] = exp(%x)
          %b: f32[8] = mul(%a, %w)
          %c: f32[8] = tanh(%b)
          %f: f32[16] = cat(%a, %x) {axis=0}
          %r: f32[16] = all_reduce(%f) {reduce='avg'}
          %s: f32[8] = slice(%r) {starts=(0,), stops=(8,), steps=(1,)}
          %t: f32[8] = add(%s, %c)
          return %t
        }""", """
        graph step(%x: f32[8] {arg: x}, %w: f32[8] {arg: w}) {
          %a: f32[8] = exp(%x)
          %f: f32[16] = cat(%a, %x) {axis=0}
          %0: f32[16] = all_reduce_start(%f) {reduce='avg'}
          %b: f32[8] = mul(%a, %w)
          %c: f32[8] = tanh(%b)
          %r: f32[16] = all_reduce_wait(%0, %f)
          %s: f32[8] = slice(%r) {starts=(0,), stops=(8,), steps=(1,)}
          %t: f32[8] = add(%s, %c)
          return %t
        }""")
    assert out.notes == ["overlap_collectives: all_reduce of f32[16] (0.1 KB, avg) starts at node 2 (after cat) and "
                         "is waited for at node 5; in flight meanwhile: 1 mul, 1 tanh"]


def test_overlap_pulls_forward_what_a_start_needs():
    # %g (a weight gradient the engine scheduled after the rest of backward) moves up with the bucket's start
    check(overlap_collectives, """
        graph step(%x: f32[8] {arg: x}, %w: f32[8] {arg: w}) {
          %a: f32[8] = exp(%x)
          %b: f32[8] = mul(%a, %w)
          %c: f32[8] = tanh(%b)
          %g: f32[8] = neg(%x)
          %f: f32[16] = cat(%a, %g) {axis=0}
          %r: f32[16] = all_reduce(%f) {reduce='sum'}
          %s: f32[8] = slice(%r) {starts=(8,), stops=(16,), steps=(1,)}
          %t: f32[8] = add(%s, %c)
          return %t, %b
        }""", """
        graph step(%x: f32[8] {arg: x}, %w: f32[8] {arg: w}) {
          %a: f32[8] = exp(%x)
          %g: f32[8] = neg(%x)
          %f: f32[16] = cat(%a, %g) {axis=0}
          %0: f32[16] = all_reduce_start(%f) {reduce='sum'}
          %b: f32[8] = mul(%a, %w)
          %c: f32[8] = tanh(%b)
          %r: f32[16] = all_reduce_wait(%0, %f)
          %s: f32[8] = slice(%r) {starts=(8,), stops=(16,), steps=(1,)}
          %t: f32[8] = add(%s, %c)
          return %t, %b
        }""")


def test_overlap_keeps_the_order_in_which_collectives_start():
    # the second all_reduce's input is ready first, but it starts only after the first one and the broadcast (which
    # needs the first one's result: so tanh runs while the first is in flight, nothing while the second is)
    check(overlap_collectives, """
        graph step(%x: f32[4] {arg: x}, %y: f32[4] {arg: y}) {
          %p: f32[4] = neg(%y)
          %a: f32[4] = exp(%x)
          %r1: f32[4] = all_reduce(%a) {reduce='sum'}
          %b: f32[4] = broadcast(%r1) {src=0}
          %r2: f32[4] = all_reduce(%p) {reduce='max'}
          %c: f32[4] = tanh(%x)
          %d: f32[4] = add(%b, %r2)
          %e: f32[4] = add(%d, %c)
          return %e
        }""", """
        graph step(%x: f32[4] {arg: x}, %y: f32[4] {arg: y}) {
          %a: f32[4] = exp(%x)
          %0: f32[4] = all_reduce_start(%a) {reduce='sum'}
          %p: f32[4] = neg(%y)
          %c: f32[4] = tanh(%x)
          %r1: f32[4] = all_reduce_wait(%0, %a)
          %b: f32[4] = broadcast(%r1) {src=0}
          %1: f32[4] = all_reduce_start(%p) {reduce='max'}
          %r2: f32[4] = all_reduce_wait(%1, %p)
          %d: f32[4] = add(%b, %r2)
          %e: f32[4] = add(%d, %c)
          return %e
        }""")


def test_a_wait_nothing_reads_still_runs_and_the_pipeline_runs_it():
    g = verify(parse_graph(ir("""
        graph f(%x: f32[3, 4] {arg: x}) {
          %1: f32[3, 4] = all_reduce(%x) {reduce='sum'}
          %2: f32[3, 4] = exp(%x)
          %3: f32[3, 4] = mul(%2, %2)
          return %3
        }""")))
    out = run_pipeline(g, PIPELINE)
    names = [n.op.name for n in out.nodes]
    assert names.count("all_reduce_start") == names.count("all_reduce_wait") == 1, names
    assert names.index("all_reduce_start") < names.index("all_reduce_wait")
    for w, r in zip(run(g), run(out)):
        np.testing.assert_allclose(r, w, rtol=1e-6)


def test_collective_type_errors_name_the_op():
    with pytest.raises(Exception, match="all_reduce: ReduceOp.AVG needs a floating-point tensor"):
        verify(parse_graph(ir("""
            graph f(%x: i64[4] {arg: x}) {
              %1: i64[4] = all_reduce(%x) {reduce='avg'}
              return %1
            }""")))


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_the_wait_keeps_the_array_being_sent_read_until_the_message_is_complete(backend):
    import tracejit as tj
    import tracejit.distributed as dist
    import tracejit.nn as nn

    with single_process():
        model = nn.Linear(4, 3)
        opt = tj.optim.SGD(model.parameters(), lr=0.1)

        @tj.compile(backend=backend)
        def step(x):
            opt.zero_grad()
            model(x).sum().backward()
            # the weight before the update: a copy, which the passes reduce to a view of the weight's own array,
            # sent while the optimizer updates that array in place (start < update < wait below)
            before = model.weight.detach().clone().reshape(12)
            opt.step()
            dist.all_reduce(before)
            return before

        x = tj.randn(2, 4)
        for _ in range(3):
            w0 = model.weight.detach().clone()
            np.testing.assert_array_equal(step(x).numpy(), w0.numpy().reshape(12))
        g = step.latest().graph
        start = next(n for n in g.nodes if n.op.name == "all_reduce_start")
        wait = next(n for n in g.nodes if n.op.name == "all_reduce_wait")
        assert wait.inputs == (start.outputs[0], start.inputs[0])
        multi = next(n for n in g.nodes if n.fused_kind is not None and n.fused_kind.value == "multi")
        assert g.nodes.index(start) < g.nodes.index(multi) < g.nodes.index(wait)  # in flight during the update


def test_the_arena_never_hands_a_buffer_in_flight_to_a_later_step():
    # the runtime's arena (compiler/runtime.py) shares a buffer between native-step results whose lifetimes do not
    # overlap. A gradient a window kernel wrote into the arena is sent by all_reduce_start; the wait reads it too
    # (overlap_collectives), so the kernel running meanwhile gets another buffer. Plans as the CPU backend makes
    # them: (step, input slots, output slots, freed); slot 0 is the graph input.
    from tracejit import dtypes as D
    from tracejit.compiler.ir import TensorType
    from tracejit.compiler.runtime import ArenaPlan

    def native():
        def step(args, into):
            return into
        step.writes_into = True
        return step

    def collective():
        def step(args):
            return [np.empty_like(args[0])]
        step.aliases = {0: ()}  # its result is fresh memory (the message's receive buffer), no view of the input
        return step

    t = TensorType((64,), D.float32)
    types = [t] * 6
    grad, nxt, start, wait, other = native(), native(), collective(), collective(), native()
    # 1 = grad(0); 2 = all_reduce_start(1); 3 = other kernel(0); 4 = all_reduce_wait(2, 1 [or not]); 5 = nxt(3, 4)
    for wait_reads_sent in (True, False):
        wait_ins = [2, 1] if wait_reads_sent else [2]
        plan = [(grad, [0], [1], []), (start, [1], [2], []), (other, [0], [3], []), (wait, wait_ins, [4], []),
                (nxt, [3, 4], [5], [])]
        arena = ArenaPlan(plan, types, [5], lambda n: np.empty(n, np.uint8))
        sent, meanwhile = arena.where[0][0][0], arena.where[2][0][0]
        if wait_reads_sent:
            assert sent != meanwhile, "the kernel between start and wait writes into the buffer being sent"
        else:  # (what the wait's second input prevents)
            assert sent == meanwhile
