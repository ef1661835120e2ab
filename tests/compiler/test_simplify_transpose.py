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
