"""`tracejit.onnx`, as `torch.onnx`: the module exists (programs import it at the top, as pytorch/examples'
word language model does), but tracejit writes no ONNX: `export` says so."""

from __future__ import annotations

__all__ = ["export", "is_in_onnx_export"]


def export(model, args=(), f=None, *posargs, **kwargs):
    raise NotImplementedError("tracejit.onnx.export: tracejit cannot export ONNX; save the weights with "
                              "tracejit.save(model.state_dict(), path) and export from PyTorch if you need ONNX")


def is_in_onnx_export() -> bool:
    return False
