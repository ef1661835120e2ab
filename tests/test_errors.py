"""Errors a user sees: each names the op and the shapes, and errors from ops point at the user's own line."""

from __future__ import annotations

import os
import re

import pytest

import tracejit as tj
from tracejit.dispatch import apply
from tracejit.ops import OPS

HERE = os.path.basename(__file__)


def _raises(exc, fn, *fragments, located=True):
    """Call fn, expect `exc`; every fragment appears in the message, and (located) so does this file."""
    with pytest.raises(exc) as info:
        fn()
    msg = str(info.value)
    for f in fragments:
        assert f in msg, f"{f!r} not in {msg!r}"
    if located:
        assert re.search(rf"\(at [^)]*{re.escape(HERE)}:\d+\)", msg), f"no user location in {msg!r}"
    return msg


def _conv2d(x, w, groups=1):
    return apply(OPS["conv2d"], x, w, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=groups)


def test_broadcast_mismatch_names_op_and_both_shapes():
    msg = _raises(tj.OpError, lambda: tj.ones(2, 3) + tj.ones(4), "add", "[2, 3]", "[4]", "broadcast")
    assert msg.startswith("add: shapes [2, 3] and [4] cannot be broadcast together")
    _raises(RuntimeError, lambda: tj.ones(2, 3, 4) * tj.ones(3, 3, 1), "mul", "[2, 3, 4]", "[3, 3, 1]")
    _raises(RuntimeError, lambda: tj.where(tj.ones(2) > 0, tj.ones(3), 0.0), "where", "[2]", "[3]")


def test_error_location_is_the_calling_line():
    line = None
    try:
        line = _line_of_next()
        tj.ones(2) - tj.ones(3)
    except tj.OpError as e:
        assert f"{HERE}:{line}" in str(e)
    else:
        pytest.fail("expected an OpError")


def _line_of_next():
    import sys

    return sys._getframe(1).f_lineno + 1


@pytest.mark.parametrize("a, b", [((2, 3), (4, 5)), ((3,), (4, 5)), ((3,), (4,)), ((2, 3), (4,)),
                                  ((2, 3, 4), (5, 6)), ((2, 2, 3), (2, 4, 1))])
def test_matmul_mismatch_names_both_shapes(a, b):
    sa, sb = (f"[{', '.join(map(str, s))}]" for s in (a, b))
    _raises(tj.OpError, lambda: tj.ones(*a) @ tj.ones(*b), "matmul",
            f"shapes {sa} and {sb} cannot be multiplied")


def test_matmul_batch_mismatch():
    _raises(tj.OpError, lambda: tj.ones(2, 3, 4) @ tj.ones(3, 4, 6), "matmul", "[2, 3, 4]", "[3, 4, 6]",
            "batch dimensions [2] and [3]")
    _raises(tj.OpError, lambda: tj.ones(2, 3).mm(tj.ones(3)), "mm", "[2, 3]", "[3]")


def test_conv2d_channel_mismatch():
    _raises(tj.OpError, lambda: _conv2d(tj.ones(1, 3, 5, 5), tj.ones(2, 4, 3, 3)), "conv2d", "[1, 3, 5, 5]",
            "[2, 4, 3, 3]", "3 channels")
    _raises(tj.OpError, lambda: _conv2d(tj.ones(1, 4, 5, 5), tj.ones(2, 4, 3, 3), groups=2), "conv2d",
            "groups=2")
    _raises(tj.OpError, lambda: _conv2d(tj.ones(1, 3, 2, 2), tj.ones(2, 3, 3, 3)), "conv2d", "larger")
    bools = tj.ones(1, 3, 5, 5, dtype=tj.bool), tj.ones(2, 3, 3, 3, dtype=tj.bool)  # (int64 works, as in PyTorch)
    _raises(TypeError, lambda: _conv2d(*bools), "conv2d", "bool", "[1, 3, 5, 5]")


def test_pool_errors():
    _raises(tj.OpError, lambda: apply(OPS["max_pool2d"], tj.ones(1, 3, 5), kernel=(2, 2), stride=(2, 2),
                                      padding=(0, 0)), "max_pool2d", "[1, 3, 5]")
    _raises(tj.OpError, lambda: apply(OPS["avg_pool2d"], tj.ones(1, 1, 4, 4), kernel=(2, 2), stride=(1, 1),
                                      padding=(2, 2)), "avg_pool2d", "padding")


def test_backward_on_non_scalar_without_gradient():
    y = tj.ones(2, requires_grad=True) * 2
    _raises(RuntimeError, y.backward, "grad can be implicitly created only for scalar outputs", "[2]",
            located=False)
    _raises(RuntimeError, lambda: y.backward(tj.ones(3)), "[3]", "[2]", located=False)
    _raises(RuntimeError, lambda: tj.ones(2).sum().backward(), "does not require grad", located=False)


def test_backward_through_a_freed_graph():
    x = tj.ones(2, requires_grad=True)
    y = (x * x).sum()
    y.backward()
    _raises(RuntimeError, y.backward, "Trying to backward through the graph a second time",
            "retain_graph=True", located=False)
    z = x * 3  # a fresh graph from the same leaf is fine
    z.sum().backward()


def test_inplace_modification_of_a_saved_tensor():
    x = tj.ones(2, 3, requires_grad=True)
    y = x * 2
    out = (y.exp()).sum()  # exp saves its output; mul below saves y
    z = (y * y).sum()
    y.mul_(2)
    _raises(RuntimeError, z.backward, "one of the variables needed for gradient computation has been "
            "modified by an inplace operation", "MulBackward0", "[2, 3]",
            "is at version 1; expected version 0", located=False)
    out.backward()  # exp's output is a different tensor: unaffected


def test_inplace_on_a_leaf_that_requires_grad():
    x = tj.ones(3, requires_grad=True)
    _raises(RuntimeError, lambda: x.add_(1), "add_", "a leaf Variable that requires grad", "[3]",
            located=False)


def test_inplace_shape_mismatch():
    _raises(tj.OpError, lambda: tj.ones(2).add_(tj.ones(3, 2)), "add_", "[2]", "[3, 2]")


def test_item_on_a_multi_element_tensor():
    _raises(RuntimeError, lambda: tj.ones(3).item(), "item()", "3 elements", "[3]", located=False)
    _raises(RuntimeError, lambda: bool(tj.ones(2)), "ambiguous", located=False)


@pytest.mark.parametrize("shape", [(4, 2), (-1, 2), (2, -1, -1), (0, -1)])
def test_reshape_to_an_incompatible_size(shape):
    _raises(tj.OpError, lambda: tj.ones(3, 3).reshape(*shape), "reshape", "[3, 3]")


def test_index_out_of_range():
    x = tj.ones(3, 4)
    _raises(IndexError, lambda: x[5], "index 5 is out of bounds for dimension 0 with size 3")
    _raises(IndexError, lambda: x[:, -5], "index -5", "size 4")
    _raises(IndexError, lambda: x[[0, 3]], "index 3", "size 3")
    _raises(IndexError, lambda: x[tj.tensor([-4])], "index -4")
    _raises(IndexError, lambda: x[0, 0, 0], "too many indices", "[3, 4]", located=False)
    _raises(tj.OpError, lambda: x.gather(1, tj.tensor([[4], [0], [0]])), "gather", "index 4", "size 4",
            located=False)


def test_wrong_index_dtype():
    x = tj.ones(3, 4)
    _raises(IndexError, lambda: x[tj.tensor([0.0, 1.0])], "long or bool", "float32", "[2]")
    _raises(TypeError, lambda: x.gather(1, tj.tensor([[0.0]] * 3)), "gather", "int64", "float32")
    _raises(IndexError, lambda: x[tj.tensor([True, False])], "mask", "[2]", "[3, 4]")


def test_dimension_out_of_range():
    _raises(IndexError, lambda: tj.ones(2, 3).sum(2), "Dimension out of range", "[-2, 1]", "got 2")
    _raises(IndexError, lambda: tj.ones(2, 3).softmax(-3), "Dimension out of range")


def test_movement_errors_name_the_op():
    _raises(tj.OpError, lambda: tj.cat([tj.ones(2, 3), tj.ones(3, 2)]), "cat", "[2, 3]", "[3, 2]")
    _raises(tj.OpError, lambda: tj.stack([tj.ones(2, 3), tj.ones(3, 2)]), "stack", "[2, 3]", "[3, 2]")
    _raises(tj.OpError, lambda: tj.cat([tj.ones(2), tj.tensor(1.0)]), "cat", "zero-dimensional", "position 1")
    _raises(tj.OpError, lambda: tj.ones(2, 3).expand(4, 3), "expand", "[2, 3]", "[4, 3]")
    _raises(tj.OpError, lambda: tj.ones(2, 3).permute(0, 0), "permute", "[2, 3]")
    _raises(tj.OpError, lambda: tj.ones(2, 3).repeat(2), "repeat", "[2, 3]")
    _raises(tj.OpError, lambda: tj.ones(2, 3).narrow(1, 2, 3), "slice", "size 3")


def test_dtype_errors():
    _raises(TypeError, lambda: apply(OPS["add"], tj.ones(2), tj.ones(2, dtype=tj.float64)), "add", "float32",
            "float64")
    _raises(TypeError, lambda: apply(OPS["where"], tj.ones(2), tj.ones(2), tj.ones(2)), "where", "bool")
    _raises(TypeError, lambda: apply(OPS["exp"], tj.tensor([1, 2])), "exp", "floating-point", "int64")
    _raises(RuntimeError, lambda: tj.tensor([1, 2], requires_grad=True), "floating point", located=False)
    _raises(RuntimeError, lambda: tj.ones(2, requires_grad=True).numpy(), "detach", located=False)
