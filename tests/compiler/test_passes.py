"""Passes: IR text in -> pass -> expected IR text out (expectations written by hand), and seeded random
graphs whose results (reference backend) are equal before and after every pass, verified after each.
"""

import os
import textwrap
from pathlib import Path

os.environ.setdefault("TRACEJIT_CACHE_DIR", str(Path(__file__).resolve().parents[2] / ".tracejit_cache" / "tests"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tracejit.compiler.backends.reference import run_graph  # noqa: E402
from tracejit.compiler.ir import FusedKind, parse_graph, print_graph, verify  # noqa: E402
from tracejit.compiler.passes import PIPELINE, run_pipeline  # noqa: E402
from tracejit.compiler.passes.cse import cse  # noqa: E402
from tracejit.compiler.passes.dce import dce  # noqa: E402
from tracejit.compiler.passes.fuse_elementwise import fuse_elementwise  # noqa: E402
from tracejit.compiler.passes.fuse_optimizer import fuse_optimizer  # noqa: E402
from tracejit.compiler.passes.simplify import simplify  # noqa: E402

from .graphs import inputs_for, random_graph, random_inputs  # noqa: E402

# the passes these tests cover (fuse_window and memory_plan are tested with their own work), in
# PIPELINE's order
FUSION_PASSES = [dce, cse, simplify, fuse_elementwise, fuse_optimizer]
FUSION_PIPELINE = [p for p in PIPELINE if p in FUSION_PASSES]


def ir(text: str) -> str:
    return textwrap.dedent(text).strip("\n")


def check(pass_, before: str, after: str):
    """Parse `before`, run `pass_`, compare the printed result with `after` and the results of both graphs
    (reference backend); verify both; return the graph after the pass."""
    g = verify(parse_graph(ir(before)))
    out = verify(pass_(g))
    assert print_graph(out) == ir(after)
    # the text form round-trips: what the pass printed parses back to the same text
    assert print_graph(parse_graph(print_graph(out))) == ir(after)
    same_results(g, out, exact=pass_ is not simplify)
    return out


def same_results(g_before, g_after, exact=True, seed=0):
    arrays = random_inputs(g_before, seed)
    by_id = {v.id: a for v, a in zip(g_before.inputs, arrays)}
    want = run_graph(g_before, arrays)
    got = run_graph(g_after, inputs_for(g_after, by_id))
    assert len(want) == len(got)
    for w, r in zip(want, got):
        assert w.shape == r.shape and w.dtype == r.dtype
        if exact or w.dtype.kind not in "fc":
            np.testing.assert_array_equal(r, w)
        else:
            np.testing.assert_allclose(r, w, rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------------------------- dce


def test_dce_drops_unused_nodes_and_state_inputs_but_keeps_arguments():
    out = check(dce, """
        graph g(%x: f32[4] {arg: x}, %u: f32[4] {arg: u}, %s: f32[4] {state: s}) {
          %a: f32[4] = exp(%x)
          %b: f32[4] = neg(%s)
          %c: f32[4] = tanh(%a)
          %d: f32[4] = mul(%b, %b)
          %e: f32[4] = add(%c, %a)
          return %c
        }
    """, """
        graph g(%x: f32[4] {arg: x}, %u: f32[4] {arg: u}) {
          %a: f32[4] = exp(%x)
          %c: f32[4] = tanh(%a)
          return %c
        }
    """)
    assert [n.op.name for n in out.nodes] == ["exp", "tanh"]


def test_dce_keeps_what_state_write_backs_need():
    check(dce, """
        graph g(%x: f32[4] {arg: x}, %s: f32[4] {state: s}, %t: f32[4] {state: t}) {
          %a: f32[4] = exp(%x)
          %b: f32[4] = neg(%s)
          %d: f32[4] = mul(%b, %b)
          %dead: f32[4] = sin(%t)
          return %a ; s <- %d
        }
    """, """
        graph g(%x: f32[4] {arg: x}, %s: f32[4] {state: s}) {
          %a: f32[4] = exp(%x)
          %b: f32[4] = neg(%s)
          %d: f32[4] = mul(%b, %b)
          return %a ; s <- %d
        }
    """)


# --------------------------------------------------------------------------------------------- cse


def test_cse_merges_identical_nodes_transitively_but_not_different_attrs():
    check(cse, """
        graph g(%x: f32[4,3] {arg: x}) {
          %a: f32[4,3] = exp(%x)
          %b: f32[4,3] = exp(%x)
          %c: f32[4,3] = add(%a, %b)
          %d: f32[4,3] = add(%a, %a)
          %e: f32[3] = sum(%c) {axes=(0,), keepdim=False}
          %f: f32[3] = sum(%d) {axes=(0,), keepdim=False}
          %h: f32[1,3] = sum(%d) {axes=(0,), keepdim=True}
          %k: f32[4,3] = add(%b, %x)
          return %e, %f, %h, %k
        }
    """, """
        graph g(%x: f32[4,3] {arg: x}) {
          %a: f32[4,3] = exp(%x)
          %c: f32[4,3] = add(%a, %a)
          %e: f32[3] = sum(%c) {axes=(0,), keepdim=False}
          %h: f32[1,3] = sum(%c) {axes=(0,), keepdim=True}
          %k: f32[4,3] = add(%a, %x)
          return %e, %e, %h, %k
        }
    """)


def test_cse_keeps_operand_order_and_constants_apart():
    # sub is not commutative; full constants with different values are different
    check(cse, """
        graph g(%x: f32[4] {arg: x}, %y: f32[4] {arg: y}) {
          %a: f32[4] = sub(%x, %y)
          %b: f32[4] = sub(%y, %x)
          %one: f32[] = full() {shape=(), value=1.0, dtype=f32}
          %two: f32[] = full() {shape=(), value=2.0, dtype=f32}
          %one2: f32[] = full() {shape=(), value=1.0, dtype=f32}
          %c: f32[4] = mul(%a, %one)
          %d: f32[4] = mul(%a, %two)
          %e: f32[4] = mul(%a, %one2)
          return %b, %c, %d, %e
        }
    """, """
        graph g(%x: f32[4] {arg: x}, %y: f32[4] {arg: y}) {
          %a: f32[4] = sub(%x, %y)
          %b: f32[4] = sub(%y, %x)
          %one: f32[] = full() {shape=(), value=1.0, dtype=f32}
          %two: f32[] = full() {shape=(), value=2.0, dtype=f32}
          %c: f32[4] = mul(%a, %one)
          %d: f32[4] = mul(%a, %two)
          return %b, %c, %d, %c
        }
    """)


def test_cse_keeps_negative_zero_apart_from_zero():
    # 0.0 == -0.0 in Python, but 1/x tells them apart: the constants must not merge
    check(cse, """
        graph g(%x: f32[4] {arg: x}) {
          %p: f32[] = full() {shape=(), value=0.0, dtype=f32}
          %n: f32[] = full() {shape=(), value=-0.0, dtype=f32}
          %a: f32[4] = div(%x, %p)
          %b: f32[4] = div(%x, %n)
          return %a, %b
        }
    """, """
        graph g(%x: f32[4] {arg: x}) {
          %p: f32[] = full() {shape=(), value=0.0, dtype=f32}
          %n: f32[] = full() {shape=(), value=-0.0, dtype=f32}
          %a: f32[4] = div(%x, %p)
          %b: f32[4] = div(%x, %n)
          return %a, %b
        }
    """)


# --------------------------------------------------------------------------------------------- simplify


def test_simplify_arithmetic_identities():
    check(simplify, """
        graph g(%x: f32[4,3] {arg: x}) {
          %one: f32[] = full() {shape=(), value=1.0, dtype=f32}
          %zero: f32[] = full() {shape=(), value=0.0, dtype=f32}
          %a: f32[4,3] = mul(%x, %one)
          %b: f32[4,3] = mul(%one, %a)
          %c: f32[4,3] = add(%b, %zero)
          %d: f32[4,3] = sub(%c, %zero)
          %e: f32[4,3] = div(%d, %one)
          %f: f32[4,3] = add(%zero, %e)
          %g: f32[4,3] = tanh(%f)
          return %g
        }
    """, """
        graph g(%x: f32[4,3] {arg: x}) {
          %one: f32[] = full() {shape=(), value=1.0, dtype=f32}
          %zero: f32[] = full() {shape=(), value=0.0, dtype=f32}
          %g: f32[4,3] = tanh(%x)
          return %g
        }
    """)


def test_simplify_keeps_identities_that_broadcast_or_are_not_identities():
    # x*ones[4,3] with x: [3] broadcasts (a new shape); 0-x and 1/x are not x
    check(simplify, """
        graph g(%x: f32[3] {arg: x}) {
          %ones: f32[4,3] = full() {shape=(4, 3), value=1.0, dtype=f32}
          %zero: f32[] = full() {shape=(), value=0.0, dtype=f32}
          %one: f32[] = full() {shape=(), value=1.0, dtype=f32}
          %a: f32[4,3] = mul(%x, %ones)
          %b: f32[3] = sub(%zero, %x)
          %c: f32[3] = div(%one, %x)
          return %a, %b, %c
        }
    """, """
        graph g(%x: f32[3] {arg: x}) {
          %ones: f32[4,3] = full() {shape=(4, 3), value=1.0, dtype=f32}
          %zero: f32[] = full() {shape=(), value=0.0, dtype=f32}
          %one: f32[] = full() {shape=(), value=1.0, dtype=f32}
          %a: f32[4,3] = mul(%x, %ones)
          %b: f32[3] = sub(%zero, %x)
          %c: f32[3] = div(%one, %x)
          return %a, %b, %c
        }
    """)


def test_simplify_neg_neg_same_dtype_cast_same_shape_reshape_identity_permute():
    check(simplify, """
        graph g(%x: f32[4,3] {arg: x}) {
          %a: f32[4,3] = neg(%x)
          %b: f32[4,3] = neg(%a)
          %c: f32[4,3] = cast(%b) {dtype=f32}
          %d: f32[4,3] = reshape(%c) {shape=(4, 3)}
          %e: f32[4,3] = permute(%d) {dims=(0, 1)}
          %f: f32[4,3] = expand(%e) {shape=(4, 3)}
          %g: f32[4,3] = exp(%f)
          %h: f64[4,3] = cast(%g) {dtype=f64}
          return %h, %a
        }
    """, """
        graph g(%x: f32[4,3] {arg: x}) {
          %a: f32[4,3] = neg(%x)
          %g: f32[4,3] = exp(%x)
          %h: f64[4,3] = cast(%g) {dtype=f64}
          return %h, %a
        }
    """)


def test_simplify_reshape_and_permute_chains_compose():
    check(simplify, """
        graph g(%x: f32[2,3,4] {arg: x}) {
          %a: f32[6,4] = reshape(%x) {shape=(6, 4)}
          %b: f32[24] = reshape(%a) {shape=(24,)}
          %p: f32[3,4,2] = permute(%x) {dims=(1, 2, 0)}
          %q: f32[4,3,2] = permute(%p) {dims=(1, 0, 2)}
          return %b, %q
        }
    """, """
        graph g(%x: f32[2,3,4] {arg: x}) {
          %a: f32[6,4] = reshape(%x) {shape=(6, 4)}
          %b: f32[24] = reshape(%x) {shape=(24,)}
          %p: f32[3,4,2] = permute(%x) {dims=(1, 2, 0)}
          %q: f32[4,3,2] = permute(%x) {dims=(2, 1, 0)}
          return %b, %q
        }
    """)


def test_simplify_chains_that_compose_to_nothing_disappear():
    # permute(permute(x)) that restores x's order and reshape(reshape(x)) back to x's shape change
    # nothing: the uses read x itself (no no-op reshape left behind)
    check(simplify, """
        graph g(%x: f32[2,3,4] {arg: x}) {
          %p: f32[3,4,2] = permute(%x) {dims=(1, 2, 0)}
          %q: f32[2,3,4] = permute(%p) {dims=(2, 0, 1)}
          %r: f32[6,4] = reshape(%x) {shape=(6, 4)}
          %s: f32[2,3,4] = reshape(%r) {shape=(2, 3, 4)}
          %t: f32[2,3,4] = add(%q, %s)
          return %t
        }
    """, """
        graph g(%x: f32[2,3,4] {arg: x}) {
          %p: f32[3,4,2] = permute(%x) {dims=(1, 2, 0)}
          %r: f32[6,4] = reshape(%x) {shape=(6, 4)}
          %t: f32[2,3,4] = add(%x, %x)
          return %t
        }
    """)


def test_simplify_folds_constants():
    check(simplify, """
        graph g(%x: f32[4,3] {arg: x}) {
          %two: f32[] = full() {shape=(), value=2.0, dtype=f32}
          %three: f32[] = full() {shape=(), value=3.0, dtype=f32}
          %six: f32[] = mul(%two, %three)
          %z: f32[] = full() {shape=(), value=0.0, dtype=f32}
          %e: f32[] = exp(%z)
          %lt: bool[] = lt(%three, %two)
          %a: f32[4,3] = add(%x, %six)
          %b: f32[4,3] = mul(%a, %e)
          return %b, %lt
        }
    """, """
        graph g(%x: f32[4,3] {arg: x}) {
          %two: f32[] = full() {shape=(), value=2.0, dtype=f32}
          %three: f32[] = full() {shape=(), value=3.0, dtype=f32}
          %six: f32[] = full() {shape=(), value=6.0, dtype=f32}
          %z: f32[] = full() {shape=(), value=0.0, dtype=f32}
          %e: f32[] = full() {shape=(), value=1.0, dtype=f32}
          %lt: bool[] = full() {shape=(), value=False, dtype=bool}
          %a: f32[4,3] = add(%x, %six)
          return %a, %lt
        }
    """)


def test_simplify_folds_broadcasting_constants_to_the_output_shape():
    check(simplify, """
        graph g(%x: f32[4,3] {arg: x}) {
          %a: f32[1,3] = full() {shape=(1, 3), value=0.5, dtype=f32}
          %b: f32[4,1] = full() {shape=(4, 1), value=4.0, dtype=f32}
          %c: f32[4,3] = mul(%a, %b)
          %d: f32[4,3] = sub(%x, %c)
          return %d
        }
    """, """
        graph g(%x: f32[4,3] {arg: x}) {
          %a: f32[1,3] = full() {shape=(1, 3), value=0.5, dtype=f32}
          %b: f32[4,1] = full() {shape=(4, 1), value=4.0, dtype=f32}
          %c: f32[4,3] = full() {shape=(4, 3), value=2.0, dtype=f32}
          %d: f32[4,3] = sub(%x, %c)
          return %d
        }
    """)


def test_simplify_reshape_and_expand_of_a_constant_are_constants():
    check(simplify, """
        graph g(%x: f32[4,3] {arg: x}) {
          %k: f32[1,3] = full() {shape=(1, 3), value=0.5, dtype=f32}
          %r: f32[3] = reshape(%k) {shape=(3,)}
          %e: f32[4,3] = expand(%k) {shape=(4, 3)}
          %a: f32[4,3] = add(%x, %r)
          %b: f32[4,3] = mul(%a, %e)
          return %b
        }
    """, """
        graph g(%x: f32[4,3] {arg: x}) {
          %k: f32[1,3] = full() {shape=(1, 3), value=0.5, dtype=f32}
          %r: f32[3] = full() {shape=(3,), value=0.5, dtype=f32}
          %e: f32[4,3] = full() {shape=(4, 3), value=0.5, dtype=f32}
          %a: f32[4,3] = add(%x, %r)
          %b: f32[4,3] = mul(%a, %e)
          return %b
        }
    """)


def test_simplify_renames_outputs_and_write_backs():
    check(simplify, """
        graph g(%x: f32[4] {arg: x}, %s: f32[4] {state: s}) {
          %one: f32[] = full() {shape=(), value=1.0, dtype=f32}
          %a: f32[4] = mul(%s, %one)
          %b: f32[4] = neg(%x)
          %c: f32[4] = neg(%b)
          return %c ; s <- %a
        }
    """, """
        graph g(%x: f32[4] {arg: x}, %s: f32[4] {state: s}) {
          %one: f32[] = full() {shape=(), value=1.0, dtype=f32}
          %b: f32[4] = neg(%x)
          return %x ; s <- %s
        }
    """)


# --------------------------------------------------------------------------------------------- fuse_elementwise


def test_fuse_elementwise_chain_is_one_fused_node():
    check(fuse_elementwise, """
        graph g(%x: f32[8,16] {arg: x}, %y: f32[8,16] {arg: y}) {
          %a: f32[8,16] = mul(%x, %y)
          %b: f32[8,16] = tanh(%a)
          %c: f32[8,16] = add(%b, %x)
          return %c
        }
    """, """
        graph g(%x: f32[8,16] {arg: x}, %y: f32[8,16] {arg: y}) {
          %c: f32[8,16] = fused(%x, %y) {kind='elementwise'}
            body elementwise_0(%x: f32[8,16], %y: f32[8,16]) {
              %a: f32[8,16] = mul(%x, %y)
              %b: f32[8,16] = tanh(%a)
              %c: f32[8,16] = add(%b, %x)
              return %c
            }
          return %c
        }
    """)


def test_fuse_elementwise_intermediate_used_outside_becomes_an_output():
    check(fuse_elementwise, """
        graph g(%x: f32[8,16] {arg: x}, %w: f32[16,4] {arg: w}) {
          %a: f32[8,16] = exp(%x)
          %b: f32[8,16] = neg(%a)
          %m: f32[8,4] = matmul(%b, %w)
          return %m, %a
        }
    """, """
        graph g(%x: f32[8,16] {arg: x}, %w: f32[16,4] {arg: w}) {
          %a: f32[8,16], %b: f32[8,16] = fused(%x) {kind='elementwise'}
            body elementwise_0(%x: f32[8,16]) {
              %a: f32[8,16] = exp(%x)
              %b: f32[8,16] = neg(%a)
              return %a, %b
            }
          %m: f32[8,4] = matmul(%b, %w)
          return %m, %a
        }
    """)


def test_fuse_elementwise_broadcast_bias_fuses():
    check(fuse_elementwise, """
        graph g(%x: f32[8,4] {arg: x}, %b: f32[4] {state: b}) {
          %a: f32[8,4] = add(%x, %b)
          %r: f32[8,4] = relu(%a)
          return %r
        }
    """, """
        graph g(%x: f32[8,4] {arg: x}, %b: f32[4] {state: b}) {
          %r: f32[8,4] = fused(%x, %b) {kind='elementwise'}
            body elementwise_0(%x: f32[8,4], %b: f32[4]) {
              %a: f32[8,4] = add(%x, %b)
              %r: f32[8,4] = relu(%a)
              return %r
            }
          return %r
        }
    """)


def test_fuse_elementwise_copies_explicit_broadcasts_and_constants_into_the_body():
    # the expand of an input and the constant are re-done inside the kernel (the outer copies are dead)
    check(fuse_elementwise, """
        graph g(%x: f32[2,3,4,4] {arg: x}, %b: f32[1,3,1,1] {state: b}) {
          %e: f32[2,3,4,4] = expand(%b) {shape=(2, 3, 4, 4)}
          %h: f32[] = full() {shape=(), value=0.5, dtype=f32}
          %a: f32[2,3,4,4] = add(%x, %e)
          %c: f32[2,3,4,4] = mul(%a, %h)
          return %c
        }
    """, """
        graph g(%x: f32[2,3,4,4] {arg: x}, %b: f32[1,3,1,1] {state: b}) {
          %e: f32[2,3,4,4] = expand(%b) {shape=(2, 3, 4, 4)}
          %h: f32[] = full() {shape=(), value=0.5, dtype=f32}
          %c: f32[2,3,4,4] = fused(%x, %b) {kind='elementwise'}
            body elementwise_2(%x: f32[2,3,4,4], %b: f32[1,3,1,1]) {
              %e: f32[2,3,4,4] = expand(%b) {shape=(2, 3, 4, 4)}
              %a: f32[2,3,4,4] = add(%x, %e)
              %h: f32[] = full() {shape=(), value=0.5, dtype=f32}
              %c: f32[2,3,4,4] = mul(%a, %h)
              return %c
            }
          return %c
        }
    """)


def test_fuse_elementwise_reduction_takes_its_elementwise_prologue():
    check(fuse_elementwise, """
        graph g(%x: f32[8,16] {arg: x}, %y: f32[8,16] {arg: y}) {
          %d: f32[8,16] = sub(%x, %y)
          %sq: f32[8,16] = mul(%d, %d)
          %s: f32[8] = sum(%sq) {axes=(1,), keepdim=False}
          return %s
        }
    """, """
        graph g(%x: f32[8,16] {arg: x}, %y: f32[8,16] {arg: y}) {
          %s: f32[8] = fused(%x, %y) {kind='reduce'}
            body reduce_0(%x: f32[8,16], %y: f32[8,16]) {
              %d: f32[8,16] = sub(%x, %y)
              %sq: f32[8,16] = mul(%d, %d)
              %s: f32[8] = sum(%sq) {axes=(1,), keepdim=False}
              return %s
            }
          return %s
        }
    """)


def test_fuse_elementwise_consumer_of_a_reduction_is_a_separate_kernel():
    out = check(fuse_elementwise, """
        graph g(%x: f32[8,16] {arg: x}) {
          %e: f32[8,16] = exp(%x)
          %s: f32[8,1] = sum(%e) {axes=(1,), keepdim=True}
          %p: f32[8,16] = div(%e, %s)
          return %p
        }
    """, """
        graph g(%x: f32[8,16] {arg: x}) {
          %e: f32[8,16], %s: f32[8,1] = fused(%x) {kind='reduce'}
            body reduce_0(%x: f32[8,16]) {
              %e: f32[8,16] = exp(%x)
              %s: f32[8,1] = sum(%e) {axes=(1,), keepdim=True}
              return %e, %s
            }
          %p: f32[8,16] = fused(%e, %s) {kind='elementwise'}
            body elementwise_2(%e: f32[8,16], %s: f32[8,1]) {
              %p: f32[8,16] = div(%e, %s)
              return %p
            }
          return %p
        }
    """)
    # why div did not join the reduction's kernel is recorded
    assert any("div (node 2)" in n for n in out.notes), out.notes


def test_fuse_elementwise_softmax_is_three_kernels():
    out = verify(fuse_elementwise(parse_graph(ir("""
        graph g(%x: f32[8,16] {arg: x}) {
          %m: f32[8,1] = amax(%x) {axes=(1,), keepdim=True}
          %d: f32[8,16] = sub(%x, %m)
          %e: f32[8,16] = exp(%d)
          %s: f32[8,1] = sum(%e) {axes=(1,), keepdim=True}
          %p: f32[8,16] = div(%e, %s)
          return %p
        }
    """))))
    assert [n.fused_kind for n in out.nodes] == [FusedKind.REDUCE, FusedKind.REDUCE, FusedKind.ELEMENTWISE]
    assert [[m.op.name for m in n.body.nodes] for n in out.nodes] == [["amax"], ["sub", "exp", "sum"], ["div"]]


def test_fuse_elementwise_different_iteration_shapes_do_not_fuse_and_say_why():
    out = check(fuse_elementwise, """
        graph g(%x: f32[8,16] {arg: x}, %y: f32[16] {arg: y}) {
          %a: f32[16] = exp(%y)
          %b: f32[8,16] = mul(%x, %a)
          %c: f32[8,16] = tanh(%b)
          return %c
        }
    """, """
        graph g(%x: f32[8,16] {arg: x}, %y: f32[16] {arg: y}) {
          %a: f32[16] = fused(%y) {kind='elementwise'}
            body elementwise_0(%y: f32[16]) {
              %a: f32[16] = exp(%y)
              return %a
            }
          %c: f32[8,16] = fused(%x, %a) {kind='elementwise'}
            body elementwise_1(%x: f32[8,16], %a: f32[16]) {
              %b: f32[8,16] = mul(%x, %a)
              %c: f32[8,16] = tanh(%b)
              return %c
            }
          return %c
        }
    """)
    assert any("exp (node 0) -> mul (node 1)" in n and "iteration shapes [16] and [8, 16] differ" in n
               for n in out.notes), out.notes


def test_fuse_elementwise_ordering_conflict_prevents_fusion():
    # %a is needed by the matmul before %b exists: a kernel computing both would have to run before
    # the matmul (too early for %b) or after it (too late for %a)
    out = check(fuse_elementwise, """
        graph g(%x: f32[4,4] {arg: x}, %w: f32[4,4] {arg: w}) {
          %a: f32[4,4] = exp(%x)
          %m: f32[4,4] = matmul(%a, %w)
          %b: f32[4,4] = add(%a, %m)
          return %b
        }
    """, """
        graph g(%x: f32[4,4] {arg: x}, %w: f32[4,4] {arg: w}) {
          %a: f32[4,4] = fused(%x) {kind='elementwise'}
            body elementwise_0(%x: f32[4,4]) {
              %a: f32[4,4] = exp(%x)
              return %a
            }
          %m: f32[4,4] = matmul(%a, %w)
          %b: f32[4,4] = fused(%a, %m) {kind='elementwise'}
            body elementwise_2(%a: f32[4,4], %m: f32[4,4]) {
              %b: f32[4,4] = add(%a, %m)
              return %b
            }
          return %b
        }
    """)
    assert any("exp (node 0) is needed by matmul (node 1)" in n for n in out.notes), out.notes


def test_fuse_elementwise_leaves_movement_and_matmul_alone():
    out = fuse_elementwise(parse_graph(ir("""
        graph g(%x: f32[4,6] {arg: x}, %w: f32[6,4] {arg: w}) {
          %t: f32[6,4] = permute(%x) {dims=(1, 0)}
          %m: f32[4,4] = matmul(%x, %w)
          %s: f32[6,4] = add(%t, %w)
          return %m, %s
        }
    """)))
    assert [n.op.name for n in out.nodes] == ["permute", "matmul", "fused"]


# --------------------------------------------------------------------------------------------- fuse_optimizer


def test_fuse_optimizer_sink_kernels_become_one_multi_kernel_at_the_end():
    check(fuse_optimizer, """
        graph step(%w1: f32[4], %g1: f32[4], %w2: f32[3], %g2: f32[3], %lr: f32[]) {
          %n1: f32[4] = fused(%w1, %g1, %lr) {kind='elementwise'}
            body elementwise_0(%a1: f32[4], %b1: f32[4], %c1: f32[]) {
              %d1: f32[4] = mul(%b1, %c1)
              %e1: f32[4] = sub(%a1, %d1)
              return %e1
            }
          %s: f32[] = sum(%w1) {axes=(0,), keepdim=False}
          %n2: f32[3] = fused(%w2, %g2, %lr) {kind='elementwise'}
            body elementwise_2(%a2: f32[3], %b2: f32[3], %c2: f32[]) {
              %d2: f32[3] = mul(%b2, %c2)
              %e2: f32[3] = sub(%a2, %d2)
              return %e2
            }
          %t: f32[] = neg(%s)
          return %t ; w1 <- %n1, w2 <- %n2
        }
    """, """
        graph step(%w1: f32[4], %g1: f32[4], %w2: f32[3], %g2: f32[3], %lr: f32[]) {
          %s: f32[] = sum(%w1) {axes=(0,), keepdim=False}
          %t: f32[] = neg(%s)
          %n1: f32[4], %n2: f32[3] = fused(%w1, %g1, %lr, %w2, %g2) {kind='multi'}
            body optimizer(%w1: f32[4], %g1: f32[4], %lr: f32[], %w2: f32[3], %g2: f32[3]) {
              %n1: f32[4] = fused(%w1, %g1, %lr) {kind='elementwise'}
                body elementwise_0(%a1: f32[4], %b1: f32[4], %c1: f32[]) {
                  %d1: f32[4] = mul(%b1, %c1)
                  %e1: f32[4] = sub(%a1, %d1)
                  return %e1
                }
              %n2: f32[3] = fused(%w2, %g2, %lr) {kind='elementwise'}
                body elementwise_2(%a2: f32[3], %b2: f32[3], %c2: f32[]) {
                  %d2: f32[3] = mul(%b2, %c2)
                  %e2: f32[3] = sub(%a2, %d2)
                  return %e2
                }
              return %n1, %n2
            }
          return %t ; w1 <- %n1, w2 <- %n2
        }
    """)


def test_fuse_optimizer_leaves_kernels_whose_results_are_read_and_single_sinks():
    text = """
        graph step(%w: f32[4] {state: w}, %g: f32[4] {state: w.grad}) {
          %n1: f32[4] = fused(%w, %g) {kind='elementwise'}
            body elementwise_0(%a: f32[4], %b: f32[4]) {
              %c: f32[4] = sub(%a, %b)
              return %c
            }
          %n2: f32[4] = fused(%n1) {kind='elementwise'}
            body elementwise_1(%a: f32[4]) {
              %c: f32[4] = neg(%a)
              return %c
            }
          return %n1 ; w <- %n2
        }
    """
    # %n1 is read by %n2: not a sink; %n2 alone is nothing to merge
    check(fuse_optimizer, text, text)


# --------------------------------------------------------------------------------------------- the pipeline


def test_pipeline_on_a_small_training_step():
    # y = relu(x*1 + b); loss-ish sum; state update w <- w - 0.1 * w: everything fuses; the dead node goes
    g = parse_graph(ir("""
        graph step(%x: f32[8,4] {arg: x}, %b: f32[4] {state: b}, %w: f32[4] {state: w}) {
          %one: f32[] = full() {shape=(), value=1.0, dtype=f32}
          %x1: f32[8,4] = mul(%x, %one)
          %a: f32[8,4] = add(%x1, %b)
          %r: f32[8,4] = relu(%a)
          %s: f32[4] = sum(%r) {axes=(0,), keepdim=False}
          %dead: f32[8,4] = exp(%r)
          %lr: f32[] = full() {shape=(), value=0.1, dtype=f32}
          %u: f32[4] = mul(%w, %lr)
          %w2: f32[4] = sub(%w, %u)
          %b2: f32[4] = sub(%b, %s)
          return %s ; w <- %w2, b <- %b2
        }
    """))
    out = run_pipeline(verify(g), FUSION_PIPELINE)
    assert [n.op.name for n in out.nodes] == ["fused", "fused"]
    # the two small state updates run as one kernel (fuse_elementwise merges small neighbouring kernels)
    assert [n.fused_kind for n in out.nodes] == [FusedKind.REDUCE, FusedKind.ELEMENTWISE]
    assert len(out.nodes[1].outputs) == 2
    assert [n.op.kind.value for n in out.nodes] == ["reduce", "elementwise"]
    same_results(g, out)


# --------------------------------------------------------------------------------------------- random graphs

SEEDS = range(40)


def _check_random(seed, passes, exact):
    g = random_graph(seed)
    arrays = random_inputs(g, seed)
    by_id = {v.id: a for v, a in zip(g.inputs, arrays)}
    want = run_graph(g, arrays)
    h = g
    for p in passes:
        h = p(h)
        verify(h)
        got = run_graph(h, inputs_for(h, by_id))
        assert [(a.shape, a.dtype) for a in got] == [(a.shape, a.dtype) for a in want], p.__name__
        assert h.output_meta == g.output_meta, p.__name__
        for w, r in zip(want, got):
            if exact:
                np.testing.assert_array_equal(r, w, err_msg=f"seed {seed}, after {p.__name__}")
            else:
                np.testing.assert_allclose(r, w, rtol=1e-6, atol=1e-6, err_msg=f"seed {seed}, after {p.__name__}")
    return h


def test_random_graphs_are_valid_and_varied():
    ops = set()
    for seed in SEEDS:
        g = random_graph(seed)
        ops |= {n.op.name for n in g.nodes}
        assert len(g.outputs) >= 1
    assert {"full", "sum", "amax", "reshape", "expand", "permute", "matmul", "where", "exp", "div"} <= ops


@pytest.mark.parametrize("pass_", FUSION_PASSES, ids=lambda p: p.__name__)
def test_each_pass_alone_keeps_results_on_random_graphs(pass_):
    # structure-only passes are exact; simplify folds constants (same NumPy ops, but allow rounding)
    for seed in SEEDS:
        _check_random(seed, [pass_], exact=pass_ is not simplify)


def test_pipeline_keeps_results_on_random_graphs_after_every_stage():
    fused = 0
    for seed in SEEDS:
        h = _check_random(seed, FUSION_PIPELINE, exact=False)
        fused += sum(1 for n in h.nodes if n.fused_kind is not None)
        # nothing left for a second run of the cleanup passes to do
        assert print_graph(dce(h)) == print_graph(h)
    assert fused > len(SEEDS)  # the generator gives the fusion passes work


def test_full_pipeline_keeps_results_on_random_graphs():
    # PIPELINE as compile() runs it (passes still being written included): results stay equal
    for seed in SEEDS:
        g = random_graph(seed)
        same_results(g, run_pipeline(g), exact=False, seed=seed)


def test_pipeline_runs_passes_through_run_pipeline_with_timings():
    g = random_graph(3)
    timings = {}
    out = run_pipeline(g, timings=timings)
    assert {f"pass:{p.__name__}" for p in PIPELINE} == set(timings)
    same_results(g, out, exact=False, seed=3)
