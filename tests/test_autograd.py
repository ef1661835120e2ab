"""Autograd: requires_grad propagation, accumulation, retain_graph, grad modes, autograd.grad with
create_graph, in-place ops and the version counter, grad_fn names, and gradcheck itself."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import tracejit as tj
from tracejit import autograd
from tracejit.autograd import GradcheckError, gradcheck
from tracejit.ops import OPS

try:
    import torch
except ImportError:  # torch is an extra oracle; every test below also checks literal values
    torch = None


def leaf(values, dtype=tj.float32):
    return tj.tensor(values, dtype=dtype, requires_grad=True)


def test_requires_grad_propagates_to_float_results_only():
    x, c = leaf([1.5, -2.0]), tj.tensor([1.0, 1.0])
    assert x.requires_grad and x.is_leaf and x.grad_fn is None
    y = x * c
    assert y.requires_grad and not y.is_leaf
    assert not (c * c).requires_grad
    assert not (x > 0).requires_grad and not x.argmax().requires_grad and not x.long().requires_grad
    assert not x.sign().requires_grad
    assert x.detach().requires_grad is False and x.detach().is_leaf
    with pytest.raises(RuntimeError, match="only Tensors of floating point dtype can require gradients"):
        tj.tensor([1, 2]).requires_grad_()


def test_backward_values_through_shared_subexpressions():
    x = leaf([0.5, 2.0], tj.float64)
    y = x * x
    z = (y + y.exp() + y * x).sum()  # y is used three times
    z.backward()
    a = np.array([0.5, 2.0])
    np.testing.assert_allclose(x.grad.numpy(), 2 * a + 2 * a * np.exp(a * a) + 3 * a * a)
    assert x.grad.dtype is tj.float64 and not x.grad.requires_grad


def test_grad_accumulates_across_backward_calls():
    x = leaf([1.0, 2.0, 3.0])
    (x * x).sum().backward()
    (x * 3.0).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [5.0, 7.0, 9.0])
    x.grad = None
    x.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [1.0, 1.0, 1.0])
    x.grad.zero_()
    assert x.grad.tolist() == [0.0, 0.0, 0.0]


def test_backward_with_explicit_gradient():
    x = leaf([[1.0, 2.0], [3.0, 4.0]])
    y = x * x
    y.backward(gradient=tj.tensor([[1.0, 0.0], [0.5, -1.0]]))
    np.testing.assert_allclose(x.grad.numpy(), [[2.0, 0.0], [3.0, -8.0]])


def test_backward_of_a_leaf_itself():
    x = leaf([1.0, 2.0])
    x.backward(tj.tensor([3.0, 4.0]))
    assert x.grad.tolist() == [3.0, 4.0]


def test_retain_graph_allows_a_second_backward():
    x = leaf([1.0, 2.0])
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), [4.0, 8.0])  # accumulated twice
    with pytest.raises(RuntimeError, match="Trying to backward through the graph a second time"):
        y.backward()


def test_second_backward_without_retain_graph_raises():
    x = leaf([1.0, 2.0])
    y = (x.exp() * 2.0).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="Specify retain_graph=True"):
        y.backward()


def test_detach_shares_storage_and_stops_gradients():
    x = leaf([1.0, 2.0])
    d = x.detach()
    assert not d.requires_grad and d.grad_fn is None
    y = (x * d).sum()
    y.backward()
    assert x.grad.tolist() == [1.0, 2.0]  # d is a constant
    d.add_(10.0)  # in-place through the alias is seen by x (shared storage), as in PyTorch
    assert x.tolist() == [11.0, 12.0]


def test_no_grad_context_and_decorators():
    x = leaf([1.0])
    with tj.no_grad():
        assert not tj.is_grad_enabled()
        y = x * 2
        with tj.enable_grad():
            assert tj.is_grad_enabled()
            z = x * 2
        assert not tj.is_grad_enabled()
    assert tj.is_grad_enabled()
    assert not y.requires_grad and y.grad_fn is None
    assert z.requires_grad and z.grad_fn.name() == "MulBackward0"

    @tj.no_grad()
    def called():
        return x * 2, tj.is_grad_enabled()

    @tj.no_grad
    def bare():
        return x * 2

    out, mode = called()
    assert not out.requires_grad and mode is False
    assert not bare().requires_grad
    assert tj.is_grad_enabled()


def test_grad_mode_is_restored_after_an_exception():
    with pytest.raises(ValueError), tj.no_grad():
        raise ValueError
    assert tj.is_grad_enabled()
    with tj.set_grad_enabled(False):
        assert not (leaf([1.0]) * 2).requires_grad
    with tj.inference_mode():
        assert not tj.is_grad_enabled()
    assert tj.is_grad_enabled()


def test_autograd_grad_leaves_dot_grad_alone():
    x, w = leaf([1.0, 2.0]), leaf([3.0, -1.0])
    gx, gw = autograd.grad((x * w).sum(), [x, w])
    assert gx.tolist() == [3.0, -1.0] and gw.tolist() == [1.0, 2.0]
    assert x.grad is None and w.grad is None
    (g,) = autograd.grad((x * x).sum(), x)
    assert g.tolist() == [2.0, 4.0]
    u = leaf([1.0])
    with pytest.raises(RuntimeError, match="not used"):
        autograd.grad((x * 2).sum(), [x, u])
    assert autograd.grad((x * 2).sum(), [x, u], allow_unused=True)[1] is None


def test_autograd_grad_create_graph_second_derivative():
    x = leaf([0.5, 2.0], tj.float64)
    y = (x ** 3).sum()
    (g,) = autograd.grad(y, x, create_graph=True)
    np.testing.assert_allclose(g.detach().numpy(), [0.75, 12.0])  # 3x^2
    assert g.requires_grad
    (h,) = autograd.grad(g.sum(), x)
    np.testing.assert_allclose(h.numpy(), [3.0, 12.0])  # 6x


def test_backward_create_graph_gives_differentiable_grads():
    x = leaf([1.0, 3.0], tj.float64)
    (x.sin() * x).sum().backward(create_graph=True)
    g = x.grad
    assert g.requires_grad
    (h,) = autograd.grad(g.sum(), x)
    a = np.array([1.0, 3.0])
    np.testing.assert_allclose(h.numpy(), 2 * np.cos(a) - a * np.sin(a))


def test_double_backward_through_conv2d_and_avg_pool(rng):
    x = tj.from_numpy(rng.standard_normal((1, 2, 5, 5))).requires_grad_()
    w = tj.from_numpy(rng.standard_normal((2, 1, 3, 3))).requires_grad_()

    def grad_penalty(x, w):
        y = _conv(x, w)
        gx, gw = autograd.grad((y * y).sum(), [x, w], create_graph=True)
        return (gx * gx).sum() + (gw * gw).sum()

    assert gradcheck(grad_penalty, [x, w])


def _conv(x, w):
    from tracejit.dispatch import apply

    y = apply(OPS["conv2d"], x, w, stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=2)
    return apply(OPS["avg_pool2d"], y, kernel=(2, 2), stride=(2, 2), padding=(0, 0), ceil_mode=True)


# ----------------------------------------------------------------------------------------------- in-place


def test_inplace_ops_values_and_versions():
    x = tj.tensor([1.0, -2.0, 3.0])
    v = x._box.version
    assert x.add_(1.0) is x and x.tolist() == [2.0, -1.0, 4.0]
    x.add_(tj.tensor([1.0, 1.0, 1.0]), alpha=2)
    assert x.tolist() == [4.0, 1.0, 6.0]
    x.sub_(1.0)
    x.sub_(tj.tensor([1.0, 0.0, 1.0]), alpha=0.5)
    assert x.tolist() == [2.5, 0.0, 4.5]
    x.mul_(2)
    x.div_(tj.tensor(4.0))
    assert x.tolist() == [1.25, 0.0, 2.25]
    x.clamp_(0.5, 2.0)
    assert x.tolist() == [1.25, 0.5, 2.0]
    x.copy_(tj.tensor([7.0]))  # broadcast
    assert x.tolist() == [7.0, 7.0, 7.0]
    x.fill_(3)
    assert x.tolist() == [3.0, 3.0, 3.0] and x.dtype is tj.float32
    x.zero_()
    assert x.tolist() == [0.0, 0.0, 0.0]
    assert x._box.version == v + 10
    x += 1
    x *= 3
    x -= 1
    x /= 2
    assert x.tolist() == [1.0, 1.0, 1.0]


def test_inplace_keeps_dtype():
    i = tj.tensor([1, 2, 3])
    i.add_(2)
    i.mul_(tj.tensor([2, 2, 2]))
    assert i.dtype is tj.int64 and i.tolist() == [6, 8, 10]
    i.copy_(tj.tensor([1.7, -1.7, 0.2]))
    assert i.tolist() == [1, -1, 0]


def test_inplace_on_non_leaf_is_differentiated():
    x, w = leaf([1.0, 2.0]), leaf([3.0, 4.0])
    y = x * 2
    y.add_(1.0)
    y.mul_(w)  # needs the value of y before the multiplication for w's gradient
    y.sub_(x)
    assert y.grad_fn.name() == "SubBackward0"
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [5.0, 7.0])  # 2w - 1
    np.testing.assert_allclose(w.grad.numpy(), [3.0, 5.0])  # 2x + 1
    if torch is not None:
        tx, tw = torch.tensor([1.0, 2.0], requires_grad=True), torch.tensor([3.0, 4.0], requires_grad=True)
        ty = tx * 2
        ty.add_(1.0)
        ty.mul_(tw)
        ty.sub_(tx)
        ty.sum().backward()
        np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy())
        np.testing.assert_allclose(w.grad.numpy(), tw.grad.numpy())


def test_inplace_into_a_tensor_without_grad_picks_up_the_graph():
    x = leaf([1.0, 2.0])
    buf = tj.zeros(2)
    buf.copy_(x * 3)
    assert buf.requires_grad and buf.grad_fn is not None
    buf.mul_(x)
    buf.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [6.0, 12.0])  # d(3x^2)/dx


def test_modifying_a_saved_tensor_raises_at_backward():
    x = leaf([1.0, 2.0])
    y = x * 2
    z = (y * y).sum()  # saves y
    y.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation") as info:
        z.backward()
    msg = str(info.value)
    assert "MulBackward0" in msg and "version 1" in msg and "expected version 0" in msg and "[2]" in msg


def test_modifying_a_saved_output_raises_at_backward():
    x = leaf([1.0, 2.0])
    y = x.exp()  # exp's gradient uses its output
    y.mul_(2.0)
    with pytest.raises(RuntimeError, match="ExpBackward0.*is at version 1; expected version 0"):
        y.sum().backward()


def test_modifying_through_detach_bumps_the_shared_version():
    x = leaf([1.0, 2.0])
    y = x * 1.0
    z = (y.sin()).sum()
    y.detach().zero_()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        z.backward()


def test_inplace_on_leaf_requiring_grad_raises():
    x = leaf([1.0, 2.0])
    for op in (lambda: x.add_(1.0), lambda: x.mul_(2.0), lambda: x.zero_(), lambda: x.fill_(1.0),
               lambda: x.copy_(tj.ones(2)), lambda: x.clamp_(0.0), lambda: x.sub_(1.0), lambda: x.div_(2.0)):
        with pytest.raises(RuntimeError, match="a leaf Variable that requires grad is being used in an in-"):
            op()
    assert x.tolist() == [1.0, 2.0] and x._box.version == 0
    with tj.no_grad():
        x.add_(1.0)  # allowed, as an optimizer step does
    assert x.tolist() == [2.0, 3.0] and x.requires_grad and x.is_leaf


def test_data_assignment_and_data_inplace():
    x = leaf([1.0, 2.0])
    x.data.mul_(10.0)  # .data aliases storage and is not tracked
    assert x.tolist() == [10.0, 20.0] and x.requires_grad and x.is_leaf
    x.data = tj.tensor([5.0, 6.0, 7.0])
    assert x.shape == (3,) and x.tolist() == [5.0, 6.0, 7.0] and x.requires_grad
    (x * x).sum().backward()
    assert x.grad.tolist() == [10.0, 12.0, 14.0]


def test_grad_fn_names_and_graph():
    x, w = leaf([1.0, 2.0]), leaf([3.0, 4.0])
    names = {
        "MulBackward0": x * w, "AddBackward0": x + 1, "SubBackward0": x - w, "DivBackward0": x / w,
        "NegBackward0": -x, "ExpBackward0": x.exp(), "SumBackward0": x.sum(), "PowBackward0": x ** w,
        "ReluBackward0": x.relu(), "ReshapeBackward0": x.reshape(2, 1), "PermuteBackward0": x.reshape(1, 2).T,
        "ExpandBackward0": x.expand(3, 2), "SliceBackward0": x[1:],
        "MatmulBackward0": x.reshape(1, 2) @ w.reshape(2, 1),
        "CatBackward0": tj.cat([x, w]), "AmaxBackward0": x.amax(), "CastBackward0": x.double(),
        "WhereBackward0": tj.where(x > 1, x, w), "GatherBackward0": x[tj.tensor([1, 0])],
    }
    for name, t in names.items():
        assert t.grad_fn.name() == name and repr(t.grad_fn) == f"<{name}>"
    y = x * w
    z = y.sum()
    assert z.grad_fn.next_functions == ((y.grad_fn, 0),)
    assert y.grad_fn.next_functions == ((None, 0), (None, 0))  # leaves
    assert "grad_fn=<MulBackward0>" in repr(y)


def test_backward_through_long_chain_and_repeated_inputs():
    x = leaf([0.5], tj.float64)
    y = x
    for _ in range(200):
        y = y * 1.01 + x * 0.0
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [1.01 ** 200])


# ----------------------------------------------------------------------------------------------- gradcheck


def test_gradcheck_passes_and_catches_a_wrong_gradient(monkeypatch):
    x = tj.tensor([0.3, -1.2, 2.0], dtype=tj.float64, requires_grad=True)
    assert gradcheck(lambda t: t.sin() * t, [x])
    wrong = dataclasses.replace(OPS["sin"], grad=lambda c, g: [g * c.input(0).cos() * 1.01])
    monkeypatch.setitem(OPS, "sin", wrong)
    with pytest.raises(GradcheckError, match="Jacobian mismatch for output 0 with respect to input 0"):
        gradcheck(lambda t: t.sin() * t, [x])
    assert gradcheck(lambda t: t.sin() * t, [x], raise_exception=False) is False


def test_gradcheck_catches_a_wrong_broadcast_gradient(monkeypatch):
    a = tj.tensor([[0.5, 1.0, 2.0]], dtype=tj.float64, requires_grad=True)
    b = tj.tensor([[1.0], [2.0]], dtype=tj.float64, requires_grad=True)
    assert gradcheck(lambda p, q: p * q, [a, b])
    wrong = dataclasses.replace(OPS["mul"], grad=lambda c, g: [(g * c.input(1)).sum(0, keepdim=True),
                                                               (g * c.input(0)).sum(1, keepdim=True) * 0.5])
    monkeypatch.setitem(OPS, "mul", wrong)
    assert not gradcheck(lambda p, q: p * q, [a, b], raise_exception=False)


def test_gradcheck_checks_several_outputs_and_ignores_non_float_ones():
    x = tj.tensor([[0.3, -1.2], [2.0, 0.1]], dtype=tj.float64, requires_grad=True)
    assert gradcheck(lambda t: (t.exp(), t.argmax(1), t.max(0).values), [x])
