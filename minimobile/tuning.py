"""Every tuned number of the engine, each with the measurement behind it (or, where none was
made, the reasoning), and the process-wide settings it makes.

The `_fast` rungs in `minimobile.kernels` choose between loop orders by map size and split
work into tasks. Those choices were timed on the development machine (2 cores, x86-64,
2026-11, batch 128, float32, MobileNet-shaped layers); a machine with other caches may prefer
other values, and `benchmarks/bench_tuning.py` tells, from whole training steps with one value
changed. On an AMD EPYC (Zen 3, AVX2, 2026-11-30) no value tried there, timed in pairs, was
more than 5 % faster than today's (docs/PERFORMANCE.md, "On another CPU", and the tried and
not kept of "Small maps and batch norm's backward"). Each number but GOMP_SPINCOUNT is read
at call time, so a test or an experiment can change it
(`monkeypatch.setattr(tuning, "BN_BY_IMAGE_MAX_PIXELS", 0)`) and the next call obeys;
GOMP_SPINCOUNT is read once, on import (`minimobile.parallel.configure_waiting`), so it only
changes from one process to the next.

Process-wide settings, made once and listed here so there is one place to look:
- BLAS runs on one thread per caller (`minimobile.parallel.configure_blas_threads`, on
  import). Numba's pool runs the products, one single-threaded BLAS call per thread: with two
  pools on two cores, a V1 0.5 step took 928 ms against 318 ms (benchmarks/bench_train_step.py,
  2026-11-25, not committed as a table). Turn off with `MINIMOBILE_BLAS_THREADS=N` (N BLAS
  threads per caller).
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
# in task order, so the result does not depend on how many threads ran the tasks. 4 rests
# on reasoning, not a measurement: it keeps two cores busy at little extra memory (a partial
# sum per task). The recorded timings of another value, with benchmarks/bench_tuning.py:
# SUM_TASKS=2 took 0.95 of today's V1 1.0 step (pairs 0.88-1.13) on the Zen 3 EPYC
# (docs/PERFORMANCE.md, "On another CPU"), and 0.99 (V1 1.0) and 0.91 (V1 0.5) on the Zen 4
# EPYC ("On a Zen 4 EPYC"), each within its machine's noise.
SUM_TASKS = 4

# Depthwise conv: outputs of at most this many pixels (8x8 and smaller) run channels last,
# image by image; larger ones plane by plane through phase planes. At batch 128 channels last
# was 2-6x faster for 4x4 and 2x2 outputs (docs/PERFORMANCE.md, "Ops against PyTorch", small
# maps); with the phase planes' taps in registers, they still took 1.25-2.5x channels last's
# time at 8x8 and 4x4 outputs ("Squeeze-excite's output scaled on reading, and 3x3 taps in
# registers"), and channels last took 1.1-2.8x the phase planes' time at 16x16 and on
# stride-2 layers from 32x32 ("Small maps and batch norm's backward", tried and not kept).
DEPTHWISE_CHANNELS_LAST_MAX_PIXELS = 64

# Depthwise conv, channels-last path: planes of at most this many pixels are turned channels
# last pixel by pixel (contiguous writes: 1.2-2x faster at 8x8 and below, in a timing made
# with the change on 2026-11-26, commit 807815a, not committed as a table), larger ones plane
# by plane (contiguous reads: a 16x16 stride-2 forward took 3.0-3.2 ms against 3.8-4.2 ms;
# docs/PERFORMANCE.md, "Ops against PyTorch", the stride-2 depthwise conv).
PIXEL_ORDER_MAX_PIXELS = 64

# Depthwise conv, channels-last backward of a 3x3 filter at stride 1: dx is summed in a
# register from a copy of dout inside a border of zeros (kernels/depthwise.py,
# _gather_3x3_channels_last) on maps of at least this many pixels (8x8), and in a row in
# memory, over the real taps only, on smaller ones. The border gives every pixel nine terms:
# at 2x2 nine where four are real, and the backward of V1 1.0's 1024-channel 2x2 layer took
# 1.10x the in-memory sums' time with it (1.00-1.17 over 5 rounds), at 4x4 0.95-0.99 against
# 0.88-0.95 without it, at 8x8 0.87-0.90 with it (python benchmarks/bench_depthwise_taps.py
# --rounds 5 --repeats 3, Zen 4 EPYC, 2026-12-02; two runs a minute apart on a noisy machine).
DEPTHWISE_GATHER_MIN_PIXELS = 64

# Depthwise conv forward: the N*C planes (plane path) or the N images (channels-last path) are
# cut into this many tasks per thread. Chosen by reasoning, not measured: more tasks than
# threads evens out the load, and each task zeroes one scratch plane or image once.
DEPTHWISE_TASKS_PER_THREAD = 8

# Depthwise conv backward, plane path: each task takes a block of up to this many channels,
# reading each image's planes side by side (13-20 % faster at 32x32, 3-5 % at 16x16, than one
# channel per task; docs/PERFORMANCE.md, "Ops against PyTorch"), with at least
# DEPTHWISE_BLOCKS_PER_THREAD blocks per thread so both cores stay busy
# (chosen by reasoning, not measured).
DEPTHWISE_MAX_CHANNEL_BLOCK = 16
DEPTHWISE_BLOCKS_PER_THREAD = 2

# Batch norm: maps of at most this many pixels run image by image (one contiguous (C, H*W)
# block per image), larger ones channel by channel. At V1 0.5's channel counts, forward+
# backward by image was 1.3x (16x16) to 15-18x (2x2) faster (docs/PERFORMANCE.md, "Ops
# against PyTorch", small maps); at 32x32 the backward by image was 1.5x slower, where its
# per-position partial sums no longer stay in cache (a timing made with the change on
# 2026-11-26, commit 1608238, not committed as a table).
BN_BY_IMAGE_MAX_PIXELS = 256

# Batch norm by image, forward statistics and backward sums: rows (one channel of one image)
# of at least this many pixels are summed row by row in registers; shorter ones go into
# float64 lanes, one per position. The backward, in process against the lanes at batch 128
# (AMD EPYC, 2026-11-30, a scratch script, paired medians of 9 rounds; docs/PERFORMANCE.md,
# "Sums in vector lanes"): 0.71-0.84 of the time at 8x8 and 16x16; 1.38 at 2x2 (1024
# channels), where a row of 4 is shorter than a vector. At 4x4 (480 and 1280 channels, ReLU6)
# the same script gave 0.88-0.90 in one run and 1.04-1.12 in another (not committed as a
# table). So 4x4 and 2x2 keep the lanes. Whole steps, `benchmarks/bench_tuning.py --models
# v2:0.5,v1:1.0 --rounds 7 --steps 3 --set BN_ROW_SUMS_MIN_PIXELS=16 --set
# BN_BY_IMAGE_MAX_PIXELS=1024` (2026-11-30, not committed as a table): 16 took 0.99 of today's
# step for both networks, within the noise; and with the row sums, batch norm by image up to
# 32x32 took 1.06 (V2 0.5) and 0.98 (V1 1.0): no reason to move either number.
BN_ROW_SUMS_MIN_PIXELS = 32

# The convs make batch norm's backward first-pass sums (kernels/batchnorm.py, 3e) and forward
# statistics (3g) only on maps of at least this many pixels; smaller maps' batch norms make
# their own. benchmarks/bench_fused_sums.py (Intel Xeon with AMX, 2026-12-02, the "own" way
# with no conv making any sums; 7 rounds before this threshold, 9 after it): on 32x32 maps the conv's backward sums took
# 0.92-0.99 of the pair's time for the depthwise convs and 0.97-0.98 for the 1x1s, its
# statistics 0.92-0.93 and 0.88-1.00; on 16x16 and 8x8 maps, where batch norm sums a whole
# image in one call, the conv's row-by-row sums lost: 1.08-1.44 (depthwise) and 1.05-2.97 (1x1,
# all but one pair at 1.05-1.53) for the sums, 1.05-1.75 for the statistics. Whole steps with the fusions
# on every map of 8x8 and more took 1.01-1.04 (sums) and 0.99-1.03 (statistics) of the steps
# without; with this threshold, 0.99-1.00 and 0.98-1.00. So 32x32 only.
CONV_MAKES_BN_SUMS_MIN_PIXELS = 1024

# 1x1 conv: maps of at least this many pixels run one product per image on the NCHW array in
# place; smaller ones (4x4 and 2x2 at the end of a CIFAR network) lay several images side by
# side, so that each product is long enough for BLAS. bench_pointwise.py (2026-11-29;
# docs/PERFORMANCE.md, "The 1x1 convs on small maps, a group of images at a time"): per image
# took 0.6-0.7 of the grouped time (256 columns) on every 8x8 layer of V2 0.5 and V3-Small,
# 1.1-3.4x it on V1 0.5's 4x4 and 2x2 layers, and 2.6x it over V1 1.0's (286 against 111 ms).
# The same runs put it at 0.9-1.6x on V2 0.5's and V3-Small's 4x4 layers (not committed as a
# table).
PER_IMAGE_MIN_PIXELS = 64

# 1x1 conv, one product per image, when its input is normalised (or scaled) as it is read
# (kernels/matmul.py, 3c and 3d): the images are cut into this many tasks per thread, each
# with one scratch image. Chosen by reasoning, not measured: more tasks than threads evens
# out the load, and a task's scratch image is made once.
POINTWISE_TASKS_PER_THREAD = 4

# Squeeze-excite's pooling (forward) and gate (backward) when they read batch norm's output,
# normalising each image as they read it (kernels/elementwise.py): the images are cut into
# this many tasks per thread, each with one scratch image. Chosen by reasoning, not measured,
# as POINTWISE_TASKS_PER_THREAD.
GATE_TASKS_PER_THREAD = 4

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
# libgomp's default is 300000 (about a millisecond). Measured on training steps at batch 128
# (2026-11-29; docs/PERFORMANCE.md, "On a busy machine", records the runs at 5000 and 0): on a
# quiet machine, the step against libgomp's default took 1.02-1.04x at 5000 (V1 0.5, V2 0.5,
# V3-Small; benchmarks/bench_versions.py, 3 rounds) and 1.11-1.17x at 0 (sleep at once);
# beside a busy loop on one core V1 0.5 kept 48 % of its quiet images/s at 5000, and beside a
# second training process the two kept 121-132 % combined at 0
# (benchmarks/bench_contention.py). The other counts come from runs of the same two scripts
# that day, not committed as tables: the quiet step 1.04-1.09x at 2000; beside the busy loop
# 42-44 % at 10000, 56-58 % at 2000 and 62-66 % at 0; beside a second process 85-89 %
# combined at 10000, where the default collapsed to 10-57 %. 5000 is the largest count that
# keeps the busy machine above 45 % while the quiet step stays within this machine's noise of
# the default.
GOMP_SPINCOUNT = 5000

# Arrays of at most this many elements run their parallel kernels on the calling thread alone
# (kernels.threads_for). benchmarks/bench_small_ops.py (2026-11-29, runs not committed as a
# table): on a quiet machine two threads were 2-3 us faster per call than one at 256-16384
# elements (hard-swish 4.9 against 6.9 us at 1024); with a second minimobile process training,
# two threads took 128-386 us per call at 256-16384 elements, one thread 7-25 us. Above
# about 16384 elements the work is worth sharing (hard-swish at 65536: 10 us on two threads,
# 17 on one, quiet). So small arrays stay on one thread: a few microseconds lost when the
# machine is quiet, hundreds saved when it is not.
SERIAL_MAX_ELEMENTS = 16384
