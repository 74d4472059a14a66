"""Every tuned number of the engine, each with the measurement behind it, and the
process-wide settings it makes.

The `_fast` rungs in `minimobile.kernels` choose between loop orders by map size and split
work into tasks. Those choices were timed on the development machine (2 cores, x86-64,
2026-11, batch 128, float32, MobileNet-shaped layers); a machine with other caches may prefer
other values, and `benchmarks/bench_tuning.py` tells, from whole training steps with one value
changed. On an AMD EPYC (Zen 3, AVX2, 2026-11-30) every value tried there was within 5 % of
today's in V1 1.0's step (docs/PERFORMANCE.md, "On another CPU"). Each number is read at call time, so a test or an experiment can change it
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

# Depthwise conv forward: the N*C planes (plane path) or the N images (channels-last path) are
# cut into this many tasks per thread (more tasks than threads evens out the load; each task
# zeroes one scratch plane or image once).
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

# Batch norm by image, forward statistics and backward sums: rows (one channel of one image)
# of at least this many pixels are summed row by row in registers; shorter ones go into
# float64 lanes, one per position. The backward, in process against the lanes at batch 128
# (AMD EPYC, 2026-11-30, paired medians of 9 rounds): 0.71-0.89 of the time at 8x8 and
# 16x16; 0.88-0.90 at 4x4 (480 and 1280 channels, ReLU6) in one run and 1.04-1.12 in
# another; 1.38 at 2x2 (1024 channels), where a row of 4 is shorter than a vector. So 4x4
# and 2x2 keep the lanes. Whole steps, `benchmarks/bench_tuning.py --models v2:0.5,v1:1.0
# --rounds 7 --steps 3 --set BN_ROW_SUMS_MIN_PIXELS=16 --set BN_BY_IMAGE_MAX_PIXELS=1024`
# (2026-11-30): 16 took 0.99 of today's step for both networks, within the noise; and with the
# row sums, batch norm by image up to 32x32 took 1.06 (V2 0.5) and 0.98 (V1 1.0): no reason
# to move either number.
BN_ROW_SUMS_MIN_PIXELS = 32

# 1x1 conv: maps of at least this many pixels run one product per image on the NCHW array in
# place; smaller ones (4x4 and 2x2 at the end of a CIFAR network) lay several images side by
# side, so that each product is long enough for BLAS. bench_pointwise.py (2026-11-29): per
# image took 0.6-0.7 of the grouped time (256 columns) on every 8x8 layer of V2 0.5 and
# V3-Small, 0.9-1.6x it on their 4x4 layers, and 1.1-5.4x it on V1's 4x4 and 2x2 layers.
PER_IMAGE_MIN_PIXELS = 64

# 1x1 conv on small maps: "groups" lays POINTWISE_GROUP_COLUMNS / (H*W) images side by side in
# a scratch matrix per task (kernels/matmul.py, rung 3b), "channel_major" the whole batch in
# one copy (rung 3). benchmarks/bench_pointwise.py (2026-11-29, batch 128, forward+backward,
# best of 7): over V1 0.5's 4x4 and 2x2 layers, groups of 128, 256 and 512 columns took 0.66,
# 0.53 and 0.63 of channel-major's time (31 against 59 ms); over V1 1.0's 0.77, 0.72, 0.83;
# over V2 0.5's and V3-Small's layers of at most 64 pixels about 0.5 at all three. 256 is
# the best for V1 and as good for the others. The whole V1 0.5 step went from 209 to 182 ms
# (bench_versions.py --payload steps, 3 rounds: 0.88x; V2 0.5 0.95x, V3-Small 0.94x).
POINTWISE_SMALL_MAPS = "groups"
POINTWISE_GROUP_COLUMNS = 256

# Iterations a Numba (libgomp) worker thread spins after a parallel loop before it sleeps;
# libgomp's default is 300000 (about a millisecond). Measured on V1 0.5's training step at
# batch 128 (2026-11-29): on a quiet machine, the step against libgomp's default took 1.02-1.04x
# at 5000 (V1 0.5, V2 0.5, V3-Small; benchmarks/bench_versions.py, 3 rounds), 1.04-1.09x at
# 2000 and 1.11-1.17x at 0 (sleep at once); beside a busy loop on one core it kept 48 % of its
# quiet images/s at 5000, 42-44 % at 10000, 56-58 % at 2000 and 62-66 % at 0; beside a second
# training process, 85-89 % combined at 10000 and 121-132 % at 0, where the default collapsed
# to 10-57 % (benchmarks/bench_contention.py). 5000 is the largest count that keeps the busy
# machine above 45 % while the quiet step stays within this machine's noise of the default.
GOMP_SPINCOUNT = 5000

# Arrays of at most this many elements run their parallel kernels on the calling thread alone
# (kernels.threads_for). benchmarks/bench_small_ops.py (2026-11-29): on a quiet machine two
# threads were 2-3 us faster per call than one at 256-16384 elements (hard-swish 4.9 against
# 6.9 us at 1024); with a second minimobile process training, two threads took 128-386 us per
# call at 256-16384 elements, one thread 7-25 us. Above about 16384 elements the work is worth
# sharing (hard-swish at 65536: 10 us on two threads, 17 on one, quiet). So small arrays stay
# on one thread: a few microseconds lost when the machine is quiet, hundreds saved when it
# is not.
SERIAL_MAX_ELEMENTS = 16384
