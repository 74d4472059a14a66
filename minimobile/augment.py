"""The Numba kernel of data augmentation (random crop from zero padding, then horizontal flip).

It lives on the data side, apart from the network's kernels, so that loading and augmenting
CIFAR-10 never imports (or compiles) the convolution kernels. `data.crop_flip` checks the
arguments and calls it; `data.random_crop_flip` draws them.
"""

from numba import njit, prange


@njit(cache=True, parallel=True)
def crop_flip_kernel(out, x, dy, dx, flipped, padding):
    """out[n, c, i, j] = xp[n, c, i + dy[n], j' + dx[n]], xp = x zero-padded by `padding` and
    j' = W-1-j where flipped[n]; reads x directly, treating out-of-range pixels as the padding.

    Never materialises the padded array, which would be 1.6x the input. Debug with
    NUMBA_DISABLE_JIT=1, or call crop_flip_kernel.py_func(...) for plain Python.
    """
    N, C, H, W = x.shape
    for n in prange(N):  # thread n alone writes out[n]: disjoint, so deterministic
        # Output column j reads source column base + step * j; hoisting the flip out of the
        # pixel loop and zeroing padded rows whole halves the time of a per-pixel test.
        step = -1 if flipped[n] else 1
        base = W - 1 + dx[n] - padding if flipped[n] else dx[n] - padding
        for c in range(C):
            for i in range(H):
                si = i + dy[n] - padding
                if si < 0 or si >= H:
                    out[n, c, i, :] = 0
                    continue
                for j in range(W):
                    sj = base + step * j
                    out[n, c, i, j] = x[n, c, si, sj] if 0 <= sj < W else 0
