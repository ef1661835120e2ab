"""simplify rewrites a transposed matrix product so its result comes out contiguous: (a @ b)^T = b^T @ a^T."""

import numpy as np

from tracejit.compiler.backends.reference import run_graph
from tracejit.compiler.ir import parse_graph, print_graph, verify
from tracejit.compiler.passes.dce import dce
from tracejit.compiler.passes.simplify import simplify

SRC = """graph f(%a: f32[4,3], %b: f32[3,5]) {
  %c: f32[4,5] = matmul(%a, %b)
  %d: f32[5,4] = permute(%c) {dims=(1, 0)}
  return %d
}"""


def test_transposed_product_becomes_a_product_of_transposes():
    g = dce(simplify(parse_graph(SRC)))
    verify(g)
    assert print_graph(g) == """graph f(%a: f32[4,3], %b: f32[3,5]) {
  %0: f32[5,3] = permute(%b) {dims=(1, 0)}
  %1: f32[3,4] = permute(%a) {dims=(1, 0)}
  %d: f32[5,4] = matmul(%0, %1)
  return %d
}"""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal((3, 5)).astype(np.float32)
    (out,) = run_graph(g, [a, b])
    np.testing.assert_allclose(out, (a @ b).T, rtol=1e-6)
    assert out.flags.c_contiguous


def test_a_product_read_elsewhere_is_not_duplicated():
    src = SRC.replace("return %d", "return %d, %c")
    g = dce(simplify(parse_graph(src)))
    assert [n.op.name for n in g.nodes] == ["matmul", "permute"]


def test_transposing_an_already_transposed_operand_gives_back_the_array():
    # a linear layer's weight gradient: (x^T @ g)^T = g^T @ x, with x itself rather than (x^T)^T, which the
    # CPU backend would have copied to a contiguous array before its GEMM
    src = """graph f(%x: f32[4,3], %g: f32[4,5]) {
  %xt: f32[3,4] = permute(%x) {dims=(1, 0)}
  %c: f32[3,5] = matmul(%xt, %g)
  %d: f32[5,3] = permute(%c) {dims=(1, 0)}
  return %d
}"""
    g = dce(simplify(parse_graph(src)))
    verify(g)
    assert print_graph(g) == """graph f(%x: f32[4,3], %g: f32[4,5]) {
  %0: f32[5,4] = permute(%g) {dims=(1, 0)}
  %d: f32[5,3] = matmul(%0, %x)
  return %d
}"""
    rng = np.random.default_rng(1)
    x, gr = rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal((4, 5)).astype(np.float32)
    (out,) = run_graph(g, [x, gr])
    np.testing.assert_allclose(out, (x.T @ gr).T, rtol=1e-6)


def test_batched_transposed_product_swaps_its_last_two_dims():
    # attention's key gradient: (q^T @ dS)^T = dS^T @ q per batch entry, q^T itself a transposed view (gone)
    src = """graph f(%q: f32[2,3,4,5], %s: f32[2,3,4,6]) {
  %qt: f32[2,3,5,4] = permute(%q) {dims=(0, 1, 3, 2)}
  %c: f32[2,3,5,6] = matmul(%qt, %s)
  %d: f32[2,3,6,5] = permute(%c) {dims=(0, 1, 3, 2)}
  return %d
}"""
    g = dce(simplify(parse_graph(src)))
    verify(g)
    assert print_graph(g) == """graph f(%q: f32[2,3,4,5], %s: f32[2,3,4,6]) {
  %0: f32[2,3,6,4] = permute(%s) {dims=(0, 1, 3, 2)}
  %d: f32[2,3,6,5] = matmul(%0, %q)
  return %d
}"""
    rng = np.random.default_rng(2)
    q, s = rng.standard_normal((2, 3, 4, 5)).astype(np.float32), rng.standard_normal((2, 3, 4, 6)).astype(np.float32)
    (out,) = run_graph(g, [q, s])
    np.testing.assert_allclose(out, np.swapaxes(np.swapaxes(q, -1, -2) @ s, -1, -2), rtol=1e-5)


def test_batched_products_that_broadcast_or_permute_other_dims_stay():
    broadcast = """graph f(%a: f32[2,4,3], %b: f32[3,5]) {
  %c: f32[2,4,5] = matmul(%a, %b)
  %d: f32[2,5,4] = permute(%c) {dims=(0, 2, 1)}
  return %d
}"""
    other = """graph f(%a: f32[2,4,3], %b: f32[2,3,5]) {
  %c: f32[2,4,5] = matmul(%a, %b)
  %d: f32[4,2,5] = permute(%c) {dims=(1, 0, 2)}
  return %d
}"""
    for src in (broadcast, other):
        g = dce(simplify(parse_graph(src)))
        assert [n.op.name for n in g.nodes] == ["matmul", "permute"]
