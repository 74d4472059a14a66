"""Every tuned number of the engine, each with the measurement behind it, and the
process-wide settings it makes.

The `_fast` rungs in `minimobile.kernels` choose between loop orders by map size and split
work into tasks. Those choices were timed on the development machine (2 cores, x86-64,
2026-11, batch 128, float32, MobileNet-shaped layers); a machine with other caches may prefer
other values. Each number is read at call time, so a test or an experiment can change it
(`monkeypatch.setattr(tuning, "BN_BY_IMAGE_MAX_PIXELS", 0)`) and the next call obeys.

Process-wide settings, made once and listed here so there is one place to look:
- BLAS runs on one thread per caller (`minimobile.parallel.configure_blas_threads`, on
  import). Numba's pool runs the products, one single-threaded BLAS call per thread: with two
  pools on two cores, a V1 0.5 step took 928 ms against 318 ms. Turn off with
  `MINIMOBILE_BLAS_THREADS=N` (N BLAS threads per caller).
- Numba's thread count: every core (`NUMBA_NUM_THREADS`, or `minimobile.set_num_threads(n)`).
- Numba's OpenMP threads spin for at most GOMP_SPINCOUNT iterations after each parallel loop
  before they sleep (`minimobile.parallel.configure_waiting`, on import), so a busy machine
  does not make them crawl. An explicit `OMP_WAIT_POLICY` or `GOMP_SPINCOUNT` in the
  environment wins; `GOMP_SPINCOUNT=300000` is libgomp's own default.
- glibc malloc keeps freed memory during training (`minimobile.memory.keep_freed_memory`,
  called by `train.fit`), so a step does not page-fault its fresh arrays in again; turn off
  with `MINIMOBILE_MALLOC=default`.
- The kernel rung: `MINIMOBILE_KERNELS=loops|simple|fast` (`minimobile.kernels.use`).
"""

# Sums over the batch that are not split by channel (the weight gradients of the matrix
# products, of the channels-last depthwise conv and of the stem; batch norm's sums on small
# maps) are cut into this many fixed shares of the images, each summed by one task and added
# in task order, so the result does not depend on how many threads ran the tasks. 4 keeps two
# cores busy at little extra memory (a partial sum per task).
SUM_TASKS = 4

# Depthwise conv: outputs of at most this many pixels (8x8 and smaller) run channels last,
# image by image; larger ones plane by plane through phase planes. Timed at batch 128:
# channels last was 2-6x faster for 4x4 and 2x2 outputs, about the same at 8x8 and 1.5x
# slower at 16x16.
DEPTHWISE_CHANNELS_LAST_MAX_PIXELS = 64

# Depthwise conv, channels-last path: planes of at most this many pixels are turned channels
# last pixel by pixel (contiguous writes: 1.2-2x faster at 8x8 and below), larger ones plane by
# plane (contiguous reads: a 16x16 stride-2 forward took 3.0-3.2 ms against 3.8-4.2 ms).
PIXEL_ORDER_MAX_PIXELS = 64

# Depthwise conv forward, plane path: the N*C planes are cut into this many tasks per thread
# (more tasks than threads evens out the load; each task zeroes one scratch plane once).
DEPTHWISE_TASKS_PER_THREAD = 8

# Depthwise conv backward, plane path: each task takes a block of up to this many channels,
# reading each image's planes side by side (13-20 % faster at 32x32, 3-5 % at 16x16, than one
# channel per task), with at least DEPTHWISE_BLOCKS_PER_THREAD blocks per thread so both
# cores stay busy.
DEPTHWISE_MAX_CHANNEL_BLOCK = 16
DEPTHWISE_BLOCKS_PER_THREAD = 2

# Batch norm: maps of at most this many pixels run image by image (one contiguous (C, H*W)
# block per image), larger ones channel by channel. At V1 0.5's shapes the backward by image
# was 1.3x (16x16) to 20x (2x2) faster, and 1.5x slower at 32x32, where its per-position
# partial sums no longer stay in cache.
BN_BY_IMAGE_MAX_PIXELS = 256

# 1x1 conv: maps of at least this many pixels run one product per image on the NCHW array in
# place; smaller ones (4x4 and 2x2 at the end of a CIFAR network) are copied channel-major,
# (C, N*H*W), so the whole batch is one product long enough for BLAS.
PER_IMAGE_MIN_PIXELS = 64

# Iterations a Numba (libgomp) worker thread spins after a parallel loop before it sleeps;
# libgomp's default is 300000 (about a millisecond). TBD-SPIN
GOMP_SPINCOUNT = 10000

# Arrays of at most this many elements run their parallel kernels on the calling thread alone
# (kernels.threads_for): below it, waking a sleeping worker costs more than sharing the work
# saves. TBD-SMALL
SERIAL_MAX_ELEMENTS = 16384
