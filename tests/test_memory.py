"""minimobile.memory: the glibc malloc settings that fit() applies, and their opt-out."""

import platform

import numpy as np
import pytest

from minimobile import memory


def test_the_opt_out_leaves_malloc_alone(monkeypatch):
    monkeypatch.setenv("MINIMOBILE_MALLOC", "default")
    assert memory.keep_freed_memory() is False


@pytest.mark.skipif(platform.system() != "Linux" or memory._libc() is None,
                    reason="mallopt is glibc's")
def test_glibc_accepts_the_settings_and_arrays_still_work(monkeypatch):
    monkeypatch.delenv("MINIMOBILE_MALLOC", raising=False)
    try:
        assert memory.keep_freed_memory() is True
        a = np.ones((64, 1024, 1024), dtype=np.float32)  # 256 MiB, from the heap now
        assert a.sum() == a.size
    finally:
        assert memory.restore_default_malloc() is True
