"""Recurrent layers: nn.RNN, nn.LSTM, nn.GRU and the cells nn.RNNCell, nn.LSTMCell, nn.GRUCell.

PyTorch's constructors, parameter names (weight_ih_l0, weight_hh_l0_reverse, ...), initialization
(U(-1/sqrt(hidden_size), 1/sqrt(hidden_size))), gate order (LSTM i, f, g, o; GRU r, z, n), shapes and returns.
A layer projects its whole input sequence with one matmul, then runs one cell per time step: a compiled step
traces T unrolled cells (the gate math of each fuses into one kernel forward and one backward), so the graph grows
with the sequence length -- fine for the few hundred steps of truncated backpropagation through time; longer
sequences are better cut into chunks (as the word language model does with bptt).
"""

from __future__ import annotations

import math
import numbers
import warnings

import numpy as np

from .._tensor import Tensor, cat, stack, where
from ..factories import empty, tensor, zeros
from . import functional as F
from . import init
from .layers import _factory_dtype
from .module import Module, Parameter
from .utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

__all__ = ["RNNBase", "RNN", "LSTM", "GRU", "RNNCellBase", "RNNCell", "LSTMCell", "GRUCell"]

_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


# ----------------------------------------------------------------------------------------------- cell math
# `xw`: the input's projection x W_ih^T + b_ih of this step; `h`, `c`: the state; `w_hh`, `b_hh` the recurrent
# weights. Each returns the new state (h, or (h, c)).


def _hidden_proj(h: Tensor, w_hh: Tensor, b_hh: Tensor | None) -> Tensor:
    out = h.matmul(w_hh.t())
    return out if b_hh is None else out + b_hh


def lstm_cell(xw: Tensor, h: Tensor, c: Tensor, w_hh: Tensor, b_hh: Tensor | None, w_hr: Tensor | None = None):
    gates = xw + _hidden_proj(h, w_hh, b_hh)
    i, f, g, o = gates.chunk(4, -1)
    c = f.sigmoid() * c + i.sigmoid() * g.tanh()
    h = o.sigmoid() * c.tanh()
    if w_hr is not None:
        h = h.matmul(w_hr.t())
    return h, c


def gru_cell(xw: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor | None) -> Tensor:
    i_r, i_z, i_n = xw.chunk(3, -1)
    h_r, h_z, h_n = _hidden_proj(h, w_hh, b_hh).chunk(3, -1)
    r = (i_r + h_r).sigmoid()
    z = (i_z + h_z).sigmoid()
    n = (i_n + r * h_n).tanh()
    return (h - n) * z + n  # PyTorch's order of operations


def rnn_cell(xw: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor | None, relu: bool) -> Tensor:
    pre = xw + _hidden_proj(h, w_hh, b_hh)
    return pre.relu() if relu else pre.tanh()


# ----------------------------------------------------------------------------------------------- layers


class RNNBase(Module):
    """The recurrent layers' common part: parameters per layer and direction, checks and the time loop."""

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0,
                 device=None, dtype=None) -> None:
        super().__init__()
        if mode not in _GATES:
            raise ValueError(f"Unrecognized RNN mode: {mode}")
        if not isinstance(dropout, numbers.Number) or not 0 <= dropout <= 1 or isinstance(dropout, bool):
            raise ValueError("dropout should be a number in range [0, 1] representing the probability of an "
                             "element being zeroed")
        if dropout > 0 and num_layers == 1:
            warnings.warn("dropout option adds dropout after all but last recurrent layer, so non-zero dropout "
                          f"expects num_layers greater than 1, but got dropout={dropout} and num_layers={num_layers}",
                          stacklevel=3)
        if not isinstance(hidden_size, int) or isinstance(hidden_size, bool):
            raise TypeError(f"hidden_size should be of type int, got: {type(hidden_size).__name__}")
        if hidden_size <= 0:
            raise ValueError("hidden_size must be greater than zero")
        if num_layers <= 0:
            raise ValueError("num_layers must be greater than zero")
        if proj_size < 0:
            raise ValueError("proj_size should be a positive integer or zero to disable projections")
        if proj_size >= hidden_size:
            raise ValueError("proj_size has to be smaller than hidden_size")
        if proj_size and mode != "LSTM":
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        self.mode = mode
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.proj_size = proj_size
        directions = 2 if bidirectional else 1
        gate_size = _GATES[mode] * hidden_size
        real_hidden = proj_size if proj_size > 0 else hidden_size
        dt = _factory_dtype(dtype)
        self._flat_weights_names: list[str] = []
        self._all_weights: list[list[str]] = []
        for layer in range(num_layers):
            for direction in range(directions):
                layer_input = input_size if layer == 0 else real_hidden * directions
                suffix = "_reverse" if direction == 1 else ""
                shapes = [("weight_ih", (gate_size, layer_input)), ("weight_hh", (gate_size, real_hidden))]
                if bias:
                    shapes += [("bias_ih", (gate_size,)), ("bias_hh", (gate_size,))]
                if proj_size > 0:
                    shapes.append(("weight_hr", (proj_size, hidden_size)))
                names = []
                for kind, shape in shapes:
                    name = f"{kind}_l{layer}{suffix}"
                    setattr(self, name, Parameter(empty(shape, dtype=dt, device=device)))
                    names.append(name)
                self._flat_weights_names.extend(names)
                self._all_weights.append(names)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        stdv = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0
        for weight in self.parameters():
            init.uniform_(weight, -stdv, stdv)

    @property
    def _flat_weights(self) -> list:
        return [getattr(self, n) for n in self._flat_weights_names]

    @property
    def all_weights(self) -> list:
        return [[getattr(self, n) for n in names] for names in self._all_weights]

    def flatten_parameters(self) -> None:
        """Nothing to do (PyTorch packs the weights for cuDNN here)."""

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size != 0:
            s += f", proj_size={self.proj_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if self.bias is not True:
            s += f", bias={self.bias}"
        if self.batch_first is not False:
            s += f", batch_first={self.batch_first}"
        if self.dropout != 0:
            s += f", dropout={self.dropout}"
        if self.bidirectional is not False:
            s += f", bidirectional={self.bidirectional}"
        return s

    # ---- forward
    def _state_shapes(self, batch: int) -> list[tuple]:
        d = 2 if self.bidirectional else 1
        out = self.proj_size if self.proj_size > 0 else self.hidden_size
        shapes = [(self.num_layers * d, batch, out)]
        if self.mode == "LSTM":
            shapes.append((self.num_layers * d, batch, self.hidden_size))
        return shapes

    def _check_state(self, h: Tensor, shape: tuple, what: str = "hidden") -> None:
        if tuple(h.shape) != shape:
            raise RuntimeError(f"Expected {what} size {shape}, got {list(h.shape)}")

    def forward(self, input, hx=None):
        packed = isinstance(input, PackedSequence)
        lengths = None
        if packed:
            sorted_indices, unsorted_indices = input.sorted_indices, input.unsorted_indices
            padded, lengths_t = pad_packed_sequence(input)
            lengths = np.asarray(input.lengths())
            x, batched = padded, True
        else:
            if input.ndim not in (2, 3):
                raise ValueError(f"{type(self).__name__}: Expected input to be 2D or 3D, got {input.ndim}D instead")
            batched = input.ndim == 3
            x = input if batched else input.unsqueeze(1)
            if batched and self.batch_first:
                x = x.transpose(0, 1)
        if x.shape[-1] != self.input_size:
            raise RuntimeError(f"input.size(-1) must be equal to input_size. Expected {self.input_size}, "
                               f"got {x.shape[-1]}")
        batch = x.shape[1]
        shapes = self._state_shapes(batch)
        if hx is None:
            states = [zeros(s, dtype=x.dtype, device=x.device) for s in shapes]
        else:
            states = list(hx) if self.mode == "LSTM" else [hx]
            if self.mode == "LSTM" and len(states) != 2:
                raise RuntimeError("LSTM: expected hx to be a tuple (h_0, c_0)")
            if not batched:
                for s in states:
                    if s.ndim != 2:
                        raise RuntimeError(f"For unbatched 2-D input, hx should also be 2-D but got {s.ndim}-D tensor")
                states = [s.unsqueeze(1) for s in states]
            elif any(s.ndim != 3 for s in states):
                raise RuntimeError(f"For batched 3-D input, hx should also be 3-D but got "
                                   f"{next(s.ndim for s in states if s.ndim != 3)}-D tensor")
            for s, shape, what in zip(states, shapes, ("hidden", "cell")):
                self._check_state(s, shape, what if self.mode == "LSTM" else "hidden")
        out, finals = self._run(x, states, lengths)
        if packed:
            out = pack_padded_sequence(out, lengths_t, enforce_sorted=sorted_indices is None)
            out = PackedSequence(out.data, out.batch_sizes, sorted_indices, unsorted_indices)
        elif not batched:
            out = out.squeeze(1)
            finals = [f.squeeze(1) for f in finals]
        elif self.batch_first:
            out = out.transpose(0, 1)
        return out, (tuple(finals) if self.mode == "LSTM" else finals[0])

    def _run(self, x: Tensor, states: list, lengths) -> tuple:
        """Every layer and direction over time-major x [T, B, in]; (output [T, B, D * out], [h_n] or [h_n, c_n])."""
        d = 2 if self.bidirectional else 1
        steps, batch = x.shape[0], x.shape[1]
        masks = None
        if lengths is not None and np.any(lengths != steps):
            # sequences shorter than the batch: their state stops changing after their last step and their outputs
            # are zero there (as PyTorch's packed run): one [B, 1] keep-mask per step
            masks = [tensor((lengths > t).astype(np.float32).reshape(batch, 1), dtype=x.dtype, device=x.device)
                     for t in range(steps)]
        h_out, c_out = [], []
        layer_in = x
        for layer in range(self.num_layers):
            outs = []
            for direction in range(d):
                idx = layer * d + direction
                params = [getattr(self, n) for n in self._all_weights[idx]]
                h0 = states[0][idx]
                c0 = states[1][idx] if self.mode == "LSTM" else None
                seq, h, c = self._direction(layer_in, params, h0, c0, direction == 1, masks)
                outs.append(seq)
                h_out.append(h)
                c_out.append(c)
            layer_in = outs[0] if d == 1 else cat(outs, -1)
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_in = F.dropout(layer_in, self.dropout, True)
        finals = [stack(h_out)] + ([stack(c_out)] if self.mode == "LSTM" else [])
        return layer_in, finals

    def _direction(self, x: Tensor, params: list, h: Tensor, c, reverse: bool, masks):
        w_ih, w_hh = params[0], params[1]
        b_ih, b_hh = (params[2], params[3]) if self.bias else (None, None)
        w_hr = params[-1] if self.proj_size > 0 else None
        steps = x.shape[0]
        # the input projection of every step as one matmul: [T * B, in] @ [in, G], each step's rows a slice
        batch = x.shape[1]
        xw = x.reshape(steps * batch, x.shape[2]).matmul(w_ih.t())
        if b_ih is not None:
            xw = xw + b_ih
        xs = [xw.narrow(0, t * batch, batch) for t in range(steps)]
        outs: list = [None] * steps
        for t in (range(steps - 1, -1, -1) if reverse else range(steps)):
            if self.mode == "LSTM":
                h_new, c_new = lstm_cell(xs[t], h, c, w_hh, b_hh, w_hr)
            elif self.mode == "GRU":
                h_new, c_new = gru_cell(xs[t], h, w_hh, b_hh), None
            else:
                h_new, c_new = rnn_cell(xs[t], h, w_hh, b_hh, self.mode == "RNN_RELU"), None
            if masks is not None:
                keep = masks[t]
                outs[t] = h_new * keep
                h = where(keep > 0, h_new, h)
                c = where(keep > 0, c_new, c) if c_new is not None else None
            else:
                outs[t] = h = h_new
                c = c_new
        return stack(outs), h, c


class RNN(RNNBase):
    """Elman RNN: h_t = tanh(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh) (or relu, nonlinearity='relu').

    ``RNN(input_size, hidden_size, num_layers=1, nonlinearity='tanh', bias=True, batch_first=False, dropout=0.0,
    bidirectional=False)``; ``forward(input, hx=None) -> (output, h_n)``.
    """

    def __init__(self, *args, **kwargs) -> None:
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if len(args) > 3:
            self.nonlinearity = args[3]
            args = args[:3] + args[4:]
        else:
            self.nonlinearity = kwargs.pop("nonlinearity", "tanh")
        if self.nonlinearity == "tanh":
            mode = "RNN_TANH"
        elif self.nonlinearity == "relu":
            mode = "RNN_RELU"
        else:
            raise ValueError(f"Unknown nonlinearity '{self.nonlinearity}'. Select from 'tanh' or 'relu'.")
        super().__init__(mode, *args, **kwargs)


class LSTM(RNNBase):
    """Long short-term memory: gates i, f, g, o from x_t and h_{t-1}; c_t = f c_{t-1} + i g, h_t = o tanh(c_t)
    (times W_hr with proj_size > 0).

    ``forward(input, (h_0, c_0)=None) -> (output, (h_n, c_n))``.

    >>> lstm = nn.LSTM(8, 16, num_layers=2)
    >>> out, (h, c) = lstm(tracejit.randn(5, 3, 8))
    >>> out.shape, h.shape
    (tracejit.Size([5, 3, 16]), tracejit.Size([2, 3, 16]))
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__("LSTM", *args, **kwargs)


class GRU(RNNBase):
    """Gated recurrent unit: r, z from x_t and h_{t-1}, n = tanh(x W_in + b_in + r (h W_hn + b_hn)),
    h_t = (1 - z) n + z h_{t-1}. ``forward(input, hx=None) -> (output, h_n)``."""

    def __init__(self, *args, **kwargs) -> None:
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        super().__init__("GRU", *args, **kwargs)


# ----------------------------------------------------------------------------------------------- cells


class RNNCellBase(Module):
    def __init__(self, input_size: int, hidden_size: int, bias: bool, num_chunks: int, device=None,
                 dtype=None) -> None:
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        dt = _factory_dtype(dtype)
        self.weight_ih = Parameter(empty((num_chunks * hidden_size, input_size), dtype=dt, device=device))
        self.weight_hh = Parameter(empty((num_chunks * hidden_size, hidden_size), dtype=dt, device=device))
        if bias:
            self.bias_ih = Parameter(empty(num_chunks * hidden_size, dtype=dt, device=device))
            self.bias_hh = Parameter(empty(num_chunks * hidden_size, dtype=dt, device=device))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        stdv = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0
        for weight in self.parameters():
            init.uniform_(weight, -stdv, stdv)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.bias is not True:
            s += f", bias={self.bias}"
        if getattr(self, "nonlinearity", "tanh") != "tanh":
            s += f", nonlinearity={self.nonlinearity}"
        return s

    def _prepare(self, input: Tensor, hx, name: str):
        """(input as [B, in], states as [B, H] each (zeros if None), batched?)."""
        if input.ndim not in (1, 2):
            raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.ndim}D instead")
        if input.shape[-1] != self.input_size:
            raise RuntimeError(f"input has inconsistent input_size: got {input.shape[-1]} expected {self.input_size}")
        batched = input.ndim == 2
        x = input if batched else input.unsqueeze(0)
        count = 2 if name == "LSTMCell" else 1
        if hx is None:
            states = [zeros((x.shape[0], self.hidden_size), dtype=x.dtype, device=x.device) for _ in range(count)]
        else:
            states = list(hx) if count == 2 else [hx]
            if not batched:
                if any(s.ndim != 1 for s in states):
                    raise RuntimeError(f"{name}: Expected hidden to be 1D for a 1D input")
                states = [s.unsqueeze(0) for s in states]
            for s in states:
                if tuple(s.shape) != (x.shape[0], self.hidden_size):
                    raise RuntimeError(f"hidden{'[0]' if count == 2 else ''} has inconsistent hidden_size: got "
                                       f"{list(s.shape)}, expected {[x.shape[0], self.hidden_size]}")
        return x, states, batched

    def _input_proj(self, x: Tensor) -> Tensor:
        xw = x.matmul(self.weight_ih.t())
        return xw if self.bias_ih is None else xw + self.bias_ih


class RNNCell(RNNCellBase):
    """One Elman RNN step: h' = tanh(x W_ih^T + b_ih + h W_hh^T + b_hh) (or relu)."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh",
                 device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, bias, 1, device, dtype)
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity: {nonlinearity}")
        self.nonlinearity = nonlinearity

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        x, (h,), batched = self._prepare(input, hx, "RNNCell")
        out = rnn_cell(self._input_proj(x), h, self.weight_hh, self.bias_hh, self.nonlinearity == "relu")
        return out if batched else out.squeeze(0)


class LSTMCell(RNNCellBase):
    """One LSTM step: ``forward(input, (h, c)=None) -> (h', c')``."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, bias, 4, device, dtype)

    def forward(self, input: Tensor, hx=None):
        x, (h, c), batched = self._prepare(input, hx, "LSTMCell")
        h, c = lstm_cell(self._input_proj(x), h, c, self.weight_hh, self.bias_hh)
        return (h, c) if batched else (h.squeeze(0), c.squeeze(0))


class GRUCell(RNNCellBase):
    """One GRU step: ``forward(input, hx=None) -> h'``."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, bias, 3, device, dtype)

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        x, (h,), batched = self._prepare(input, hx, "GRUCell")
        out = gru_cell(self._input_proj(x), h, self.weight_hh, self.bias_hh)
        return out if batched else out.squeeze(0)
