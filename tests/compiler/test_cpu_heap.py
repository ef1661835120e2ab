"""The CPU backend's malloc settings (backends/cpu/heap.py): applied once, and never over the user's."""

import platform

import numpy as np
import pytest

from tracejit.compiler.backends.cpu import heap


def test_configure_is_idempotent_and_says_what_it_did():
    first = heap.configure()
    assert isinstance(first, str) and first
    assert heap.configure() is first


@pytest.mark.parametrize("var, value", [(heap.ENV, "system"), ("MALLOC_TRIM_THRESHOLD_", "131072"),
                                        ("MALLOC_MMAP_THRESHOLD_", "131072")])
def test_the_users_settings_win(monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    assert heap._apply().startswith("left as")


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_on_glibc_it_applies_and_allocations_still_work(monkeypatch):
    for v in (heap.ENV, "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_"):
        monkeypatch.delenv(v, raising=False)
    assert "keeps freed blocks" in heap._apply()
    for n in (1 << 10, 1 << 20, heap.MMAP_THRESHOLD // 4 + 3, heap.MMAP_THRESHOLD + 5):  # heap and mmap sizes
        a = np.full(n, 7, np.uint8)
        assert int(a.sum()) == 7 * n
        del a
