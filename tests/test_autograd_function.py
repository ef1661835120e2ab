"""`tracejit.autograd.Function`: ctx.save_for_backward / saved_tensors / needs_input_grad /
mark_non_differentiable / attributes, apply, setup_context, errors -- against PyTorch -- and the same Functions
inside ``@tracejit.compile`` (the user's backward traced into the graph), including the "learning PyTorch with
examples" polynomial fit with a custom LegendrePolynomial3."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import tracejit as tj

torch = pytest.importorskip("torch")


def functions(T):
    """The same Function classes, written once against module T (tracejit or torch)."""

    class LegendrePolynomial3(T.autograd.Function):
        @staticmethod
        def forward(ctx, input):
            ctx.save_for_backward(input)
            return 0.5 * (5 * input ** 3 - 3 * input)

        @staticmethod
        def backward(ctx, grad_output):
            input, = ctx.saved_tensors
            return grad_output * 1.5 * (5 * input ** 2 - 1)

    class Scale(T.autograd.Function):  # a non-tensor argument, ctx attributes, needs_input_grad, extra Nones
        @staticmethod
        def forward(ctx, x, k, y):
            ctx.k = k
            ctx.seen = ctx.needs_input_grad
            ctx.save_for_backward(x, y)
            return x * k + y * y

        @staticmethod
        def backward(ctx, g):
            x, y = ctx.saved_tensors
            gx = g * ctx.k if ctx.needs_input_grad[0] else None
            gy = 2 * y * g if ctx.needs_input_grad[2] else None
            return gx, None, gy, None

    class SplitMax(T.autograd.Function):  # two outputs, one of them non-differentiable
        @staticmethod
        def forward(ctx, x):
            idx = x.argmax(-1)
            ctx.mark_non_differentiable(idx)
            ctx.save_for_backward(x)
            return x * 2, idx

        @staticmethod
        def backward(ctx, g, g_idx):
            x, = ctx.saved_tensors
            return g * 2 + g_idx.unsqueeze(-1).to(x.dtype)  # g_idx arrives as zeros

    class TwoOut(T.autograd.Function):  # an unused output's gradient is materialized as zeros
        @staticmethod
        def forward(ctx, a, b):
            return a + b, a * b

        @staticmethod
        def backward(ctx, ga, gb):
            return ga + gb, ga - gb

    class Identity(T.autograd.Function):  # returns its input: a new tensor on its storage
        @staticmethod
        def forward(ctx, x):
            return x

        @staticmethod
        def backward(ctx, g):
            return g * 5

    class Separate(T.autograd.Function):  # PyTorch 2.x style: forward without ctx + setup_context
        @staticmethod
        def forward(x, k):
            return x * k

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.k = inputs[1]

        @staticmethod
        def backward(ctx, g):
            return g * ctx.k, None

    class Broadcasting(T.autograd.Function):  # a gradient of an expandable shape is summed down
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, g):
            return g.unsqueeze(0).expand(3, *g.shape).double()

    return {k: v for k, v in locals().items() if k != "T"}


def _arr(t):
    return None if t is None else t.detach().numpy()


def _both(test):
    out = []
    for T in (tj, torch):
        out.append(test(T, functions(T)))
    return out


def test_legendre_forward_and_backward_match_torch():
    def run(T, F):
        x = T.tensor([-0.5, 0.1, 0.7, 1.3], dtype=T.float64, requires_grad=True)
        y = F["LegendrePolynomial3"].apply(x)
        (y * T.arange(4, dtype=T.float64)).sum().backward()
        return _arr(y), _arr(x.grad), y.grad_fn is not None and "LegendrePolynomial3Backward" in repr(y.grad_fn)

    (y1, g1, n1), (y2, g2, n2) = _both(run)
    np.testing.assert_allclose(y1, y2)
    np.testing.assert_allclose(g1, g2)
    assert n1 and n2


@pytest.mark.parametrize("grads", [(True, True), (True, False), (False, True), (False, False)])
def test_needs_input_grad_ctx_attributes_and_none_gradients(grads):
    def run(T, F):
        x = T.tensor([1.0, 2.0], requires_grad=grads[0])
        y = T.tensor([3.0, -1.0], requires_grad=grads[1])
        out = F["Scale"].apply(x, 3.0, y)
        if any(grads):
            out.sum().backward()
        return _arr(out), _arr(x.grad), _arr(y.grad), out.requires_grad

    (o1, gx1, gy1, r1), (o2, gx2, gy2, r2) = _both(run)
    np.testing.assert_allclose(o1, o2)
    assert r1 == r2 == any(grads)
    for a, b in ((gx1, gx2), (gy1, gy2)):
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_allclose(a, b)


def test_needs_input_grad_is_seen_by_forward():
    for T in (tj, torch):
        F = functions(T)["Scale"]
        ctx_seen = []
        orig = F.forward

        def spy(ctx, x, k, y, orig=orig, ctx_seen=ctx_seen):
            out = orig(ctx, x, k, y)
            ctx_seen.append(ctx.needs_input_grad)
            return out

        F.forward = staticmethod(spy)
        F.apply(T.ones(2, requires_grad=True), 2.0, T.ones(2))
        assert ctx_seen == [(True, False, False)]


def test_multiple_outputs_non_differentiable_and_materialized_grads():
    def run(T, F):
        x = T.tensor([[1.0, 3.0, 2.0], [0.5, -1.0, 4.0]], requires_grad=True)
        v, i = F["SplitMax"].apply(x)
        flags = (v.requires_grad, i.requires_grad, i.grad_fn is None)
        v.sum().backward()
        a = T.tensor([1.0, 2.0], requires_grad=True)
        b = T.tensor([3.0, 4.0], requires_grad=True)
        s, p = F["TwoOut"].apply(a, b)
        (s * 2).sum().backward()  # p unused: its gradient is zeros
        return flags, _arr(i), _arr(x.grad), _arr(a.grad), _arr(b.grad)

    r1, r2 = _both(run)
    assert r1[0] == r2[0] == (True, False, True)
    for a, b in zip(r1[1:], r2[1:]):
        np.testing.assert_allclose(a, b)


def test_returned_input_setup_context_and_gradient_shapes():
    def run(T, F):
        x = T.ones(2, requires_grad=True)
        o = F["Identity"].apply(x)
        same = o is x
        o.sum().backward()
        z = T.ones(2, requires_grad=True)
        F["Separate"].apply(z, 4.0).sum().backward()
        w = T.ones(2, requires_grad=True)
        F["Broadcasting"].apply(w).sum().backward()
        return same, _arr(x.grad), _arr(z.grad), _arr(w.grad), str(w.grad.dtype).split(".")[-1]

    r1, r2 = _both(run)
    assert r1[0] is r2[0] is False
    for a, b in zip(r1[1:4], r2[1:4]):
        np.testing.assert_allclose(a, b)
    assert r1[4] == r2[4] == "float32"


def test_no_graph_without_grad():
    for T in (tj, torch):
        F = functions(T)["LegendrePolynomial3"]
        assert not F.apply(T.ones(2)).requires_grad
        with T.no_grad():
            assert not F.apply(T.ones(2, requires_grad=True)).requires_grad


def _errors(T):
    class WrongCount(T.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, g):
            return g * 2, g

    class WrongShape(T.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, g):
            return T.ones(3)

    class NoBackward(T.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

    class GradForNumber(T.autograd.Function):
        @staticmethod
        def forward(ctx, x, n):
            return x * n

        @staticmethod
        def backward(ctx, g):
            return g, g

    class Saves(T.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * 2

        @staticmethod
        def backward(ctx, g):
            x, = ctx.saved_tensors
            return g * x

    return locals()


@pytest.mark.parametrize("case, err, match", [
    ("WrongCount", RuntimeError, "WrongCountBackward returned an incorrect number of gradients \\(expected 1, "
                                 "got 2\\)"),
    ("WrongShape", RuntimeError, "WrongShapeBackward returned an invalid gradient at index 0 - got \\[3\\] but "
                                 "expected shape compatible with \\[2\\]"),
    ("NoBackward", NotImplementedError, "You must implement either the backward or vjp method"),
    ("GradForNumber", RuntimeError, "returned a gradient different than None at position 2, but the corresponding "
                                    "forward input was not a Variable"),
])
def test_backward_errors_match_torch(case, err, match):
    for T in (tj, torch):
        F = _errors(T)[case]
        args = (T.ones(2, requires_grad=True),) + ((2.0,) if case == "GradForNumber" else ())
        with pytest.raises(err, match=match):
            F.apply(*args).sum().backward()


def test_saved_tensor_checks_match_torch():
    for T in (tj, torch):
        F = _errors(T)["Saves"]
        y = T.ones(2, requires_grad=True) * 1.0
        z = F.apply(y)
        with T.no_grad():
            y.add_(1)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            z.sum().backward()
        x = T.ones(2, requires_grad=True)
        z = F.apply(x)
        z.sum().backward(retain_graph=True)
        z.sum().backward()
        assert x.grad.tolist() == [2.0, 2.0]
        with pytest.raises(RuntimeError, match="backward through the graph a second time"):
            z.sum().backward()
        with pytest.raises(RuntimeError, match="Legacy autograd function"), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # (torch's, on instantiating)
            F()(x)


def test_double_backward_through_a_function():
    for T in (tj, torch):
        x = T.tensor([0.3, -0.2], dtype=T.float64, requires_grad=True)
        y = functions(T)["LegendrePolynomial3"].apply(x).sum()
        (g,) = T.autograd.grad(y, x, create_graph=True)
        g.sum().backward()
        np.testing.assert_allclose(_arr(x.grad), 15 * _arr(x))  # d/dx 1.5 (5x^2 - 1) = 15 x


# ----------------------------------------------------------------------------------------------- compiled


def test_function_inside_compile_traces_the_users_backward():
    F = functions(tj)
    w = tj.tensor([0.4, -0.3], requires_grad=True)

    @tj.compile
    def step(x):
        v, _ = F["SplitMax"].apply(x * w)
        loss = F["LegendrePolynomial3"].apply(v).sum() + F["Scale"].apply(w, 2.0, w).sum()
        loss.backward()
        return loss

    x = tj.tensor([[1.0, 2.0], [3.0, -1.0]])
    loss = step(x)
    g_compiled = w.grad.numpy().copy()
    assert "LegendrePolynomial3" not in str(step.ir()) and "mul" in str(step.ir())  # plain ops in the graph
    w.grad = None
    v, _ = F["SplitMax"].apply(x * w)
    eager = F["LegendrePolynomial3"].apply(v).sum() + F["Scale"].apply(w, 2.0, w).sum()
    eager.backward()
    np.testing.assert_allclose(loss.item(), eager.item(), rtol=1e-6)
    np.testing.assert_allclose(g_compiled, w.grad.numpy(), rtol=1e-5)


def test_polynomial_fit_with_custom_function_eager_compiled_and_torch():
    """"Learning PyTorch with examples": y = a + b P3(c + d x) fitted to sin(x) with a custom Legendre P3."""

    def fit(T, compiled):
        P3 = functions(T)["LegendrePolynomial3"].apply
        x = T.linspace(-math.pi, math.pi, 200)
        y = T.sin(x)
        a = T.full((), 0.0, requires_grad=True)
        b = T.full((), -1.0, requires_grad=True)
        c = T.full((), 0.0, requires_grad=True)
        d = T.full((), 0.3, requires_grad=True)
        learning_rate = 5e-5

        def step(x, y):
            y_pred = a + b * P3(c + d * x)
            loss = (y_pred - y).pow(2).sum()
            loss.backward()
            with T.no_grad():
                for p in (a, b, c, d):
                    p -= learning_rate * p.grad
                    p.grad = None
            return loss

        if compiled:
            step = tj.compile(step)
        losses = [step(x, y).item() for _ in range(60)]
        return losses, [p.item() for p in (a, b, c, d)]

    (l_e, p_e), (l_c, p_c), (l_t, p_t) = fit(tj, False), fit(tj, True), fit(torch, False)
    np.testing.assert_allclose(l_e, l_t, rtol=1e-4)
    np.testing.assert_allclose(p_e, p_t, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(l_c, l_e, rtol=1e-4)
    np.testing.assert_allclose(p_c, p_e, rtol=1e-4, atol=1e-6)
    assert l_e[-1] < l_e[0]


def test_variable_is_an_alias_that_returns_a_tensor():
    for T in (tj, torch):
        a = T.ones(2)
        v = T.autograd.Variable(a, requires_grad=True)
        assert v is not a and v.requires_grad and not a.requires_grad
        assert isinstance(a, T.autograd.Variable) and type(v) is T.Tensor
        (v * 3).sum().backward()
        assert v.grad.tolist() == [3.0, 3.0]
        b = T.ones(2, requires_grad=True) * 2
        w = T.autograd.Variable(b)
        assert not w.requires_grad and w.grad_fn is None
        with pytest.raises(TypeError):
            T.autograd.Variable([1.0])


def test_gradcheck_and_autograd_grad_through_functions():
    F = functions(tj)
    x = tj.tensor([0.3, -0.7, 1.1], dtype=tj.float64, requires_grad=True)
    y = tj.tensor([0.5, 0.2, -0.4], dtype=tj.float64, requires_grad=True)
    assert tj.autograd.gradcheck(F["LegendrePolynomial3"].apply, (x,))
    assert tj.autograd.gradcheck(lambda a, b: F["Scale"].apply(a, 1.5, b), (x, y))
    mid = F["LegendrePolynomial3"].apply(x)
    (g_mid,) = tj.autograd.grad((mid * 3).sum(), mid)  # a Function's output as the input asked about
    assert g_mid.tolist() == [3.0, 3.0, 3.0]
