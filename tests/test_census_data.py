"""The census harness's fake data for the sequence programs (benchmarks/census.py): a wikitext-2 corpus in the
format pytorch/examples' word language model tokenizes, time_sequence_prediction's traindata.pt written with the
program's `torch.save` and read back by its `torch.load`; and a view tensor (that model's positional encoding)
pickled without its link to the base, so a weights-only load takes it."""

from __future__ import annotations

import importlib.util
import io
import os
import sys

import numpy as np
import pytest

import tracejit as tj

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def census():
    spec = importlib.util.spec_from_file_location("census", os.path.join(ROOT, "benchmarks", "census.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules["census"] = mod  # (its dataclasses look their module up)
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop("census", None)


def test_fake_wikitext_tokenizes_like_the_word_language_model(census, tmp_path):
    census.write_fake_wikitext(str(tmp_path), np.random.default_rng(0))
    vocab, counts = {}, {}
    for split in ("train", "valid", "test"):
        with open(tmp_path / f"{split}.txt", encoding="utf8") as f:  # the program's Corpus.tokenize
            ids = [vocab.setdefault(w, len(vocab)) for line in f for w in line.split() + ["<eos>"]]
        counts[split] = len(ids)
    assert counts["train"] > 1000 and counts["valid"] > 200 and counts["test"] > 200
    assert {"<unk>", "@-@", "=", "<eos>"} <= set(vocab) and len(vocab) < 80


def test_sine_wave_file_round_trips_through_tracejit(census, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "torch", tj)  # the shim's alias, for this call
    census.PREPARE["sine_wave"]()
    data = tj.load("traindata.pt")
    assert isinstance(data, np.ndarray) and data.dtype == np.float64 and data.shape == (8, 100)
    for row in data:  # generate_sine_wave.py's series: sin((t + shift) / 20), shift in [-80, 80)
        assert any(np.allclose(row, np.sin((np.arange(100) + s) / 20.0)) for s in range(-80, 80))


def test_a_view_pickles_as_its_values():
    base = tj.arange(20.0).reshape(5, 4)
    pe = base.unsqueeze(0).transpose(0, 1)
    buf = io.BytesIO()
    tj.save({"pe": pe}, buf)
    assert b"ViewLink" not in buf.getvalue()
    buf.seek(0)
    back = tj.load(buf)["pe"]
    assert back.shape == (5, 1, 4) and back._view is None
    np.testing.assert_array_equal(back.numpy(), pe.numpy())
