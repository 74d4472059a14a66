"""How the C allocator hands memory to NumPy during training.

A training step allocates the same few hundred arrays every time, many of them megabytes. glibc
malloc serves each allocation above its mmap threshold with a fresh mapping from the kernel
and unmaps it on free, so every step touches every page of every big array for the first time
again: a page fault per 4 KiB. PyTorch pays the same (the brief's measurement: ~40 % of its
step in page faults under glibc). tcmalloc avoids it by keeping freed memory; so does glibc
once told to serve big blocks from its heap and not to give freed memory back to the kernel,
which is what `keep_freed_memory()` does. The memory stays with the process until it exits
(peak memory is unchanged: the same arrays are alive at the peak either way).

`minimobile.train.fit` calls it (set MINIMOBILE_MALLOC=default to opt out);
`benchmarks/bench_train_step.py --malloc` compares both settings in one run.
"""

import ctypes
import ctypes.util
import os

# mallopt parameters, from glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4

_GLIBC_DEFAULTS = {M_TRIM_THRESHOLD: 128 * 1024, M_TOP_PAD: 128 * 1024,
                   M_MMAP_THRESHOLD: 128 * 1024, M_MMAP_MAX: 65536}
_KEEP = {M_MMAP_MAX: 0,  # no allocation gets its own mapping: all come from the heap
         M_TRIM_THRESHOLD: 2**31 - 1,  # and freed memory is never returned to the kernel
         M_TOP_PAD: 64 * 1024 * 1024}  # the heap grows in 64 MiB steps, not page by page


def _libc():
    """glibc's handle, or None where mallopt is not glibc's (macOS, musl, tcmalloc
    preloaded: then there is nothing to tune)."""
    if "tcmalloc" in os.environ.get("LD_PRELOAD", "") or "jemalloc" in os.environ.get(
            "LD_PRELOAD", ""):
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # only glibc has it
        return libc
    except (OSError, AttributeError):
        return None


def _apply(settings):
    libc = _libc()
    if libc is None:
        return False
    return all(libc.mallopt(ctypes.c_int(k), ctypes.c_int(v)) == 1 for k, v in settings.items())


def keep_freed_memory():
    """Tell glibc malloc to recycle freed memory instead of returning it to the kernel.
    Returns True if applied; False where it does not apply (not glibc, an allocator
    preloaded, or MINIMOBILE_MALLOC=default)."""
    if os.environ.get("MINIMOBILE_MALLOC", "keep") == "default":
        return False
    return _apply(_KEEP)


def restore_default_malloc():
    """glibc's defaults again (for comparisons); memory already kept is not given back."""
    return _apply(_GLIBC_DEFAULTS)
