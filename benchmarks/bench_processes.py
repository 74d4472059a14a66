"""Threads or processes? One training process with its kernels on every core, against the
same cores running one single-threaded process each, free-running and in the lockstep that
data-parallel training needs.

    python benchmarks/bench_processes.py [--model v1:1.0] [--batch-size 256] [--steps 8]
                                         [--rounds 3]

Three ways to spend the cores on training steps (forward, loss, backward, SGD step) of one
network, alternating in rounds so that a slow spell of a shared machine falls on all three:

- threads: one process, its Numba kernels on every core, batch B (what `minimobile train`
  does);
- free: one process per core, one thread each, batch B / cores each, never waiting for each
  other: the most that processes could give;
- lockstep: the same processes meeting once per step as data-parallel training must: each
  copies its weight gradients into shared memory, the first adds the others' to its own
  (their average, up to the scale), steps its optimiser and copies its weights out; the
  others copy them in before the next step.

It prints the images per second of each way (all processes together) and each way's ratio
to threads, taken round by round, with the median. What it showed (docs/PERFORMANCE.md,
"Processes instead of threads"): free-running processes train more images per second than
the threads, but in lockstep, where every process runs the same layer at the same time,
most of that gain is gone.
"""

import argparse
import multiprocessing
import os
import statistics
import sys
import time

import numpy as np


def parse_model(text):
    name, _, width = text.partition(":")
    return name, float(width or 1.0)


def _grads(model):
    return [g for _, _, g in model.named_parameters()]


def _params(model):
    return [p for _, p, _ in model.named_parameters()]


def make_step(model_spec, batch, seed=0):
    """A model, its optimiser, one random batch, and a function that runs one step."""
    from minimobile.models import build_model
    from minimobile.ops import softmax_cross_entropy
    from minimobile.optim import SGD

    name, width = model_spec
    model = build_model(name, width, True, 10, None, seed, "float32").train()
    optimizer = SGD(list(model.named_parameters()), 0.01, momentum=0.9, nesterov=True,
                    weight_decay=5e-4)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, batch)

    def gradients():
        logits = model.forward(x)
        _, dlogits = softmax_cross_entropy(logits, y, 0.1)
        model.backward(dlogits)
    return model, optimizer, gradients


def run_threads(model_spec, batch, steps):
    """Images per second of `steps` steps in this process, on every thread."""
    model, optimizer, gradients = make_step(model_spec, batch)
    for _ in range(2):  # warm-up: caches, first-touch of the buffers
        gradients()
        optimizer.step()
    start = time.perf_counter()
    for _ in range(steps):
        gradients()
        optimizer.step()
    return batch * steps / (time.perf_counter() - start)


def _worker(rank, model_spec, batch, steps, lockstep, barrier, shared, sizes, results):
    model, optimizer, gradients = make_step(model_spec, batch, seed=rank)
    grads, params = _grads(model), _params(model)
    count = sum(g.size for g in grads)
    workers = len(sizes)
    exchange = np.frombuffer(shared, dtype=np.float32).reshape(workers, count)
    for step in range(2 + steps):
        if step == 2:
            barrier.wait()  # everyone starts the timed steps together
            start = time.perf_counter()
        gradients()
        if lockstep:
            offset = 0
            for g in grads:  # this process's gradients out
                exchange[rank, offset:offset + g.size] = g.reshape(-1)
                offset += g.size
            barrier.wait()
            if rank == 0:
                for other in range(1, workers):  # the others' in, added in rank order
                    offset = 0
                    for g in grads:
                        g.reshape(-1)[...] += exchange[other, offset:offset + g.size]
                        offset += g.size
                optimizer.step()
                offset = 0
                for p in params:  # the new weights out (over this process's own row)
                    exchange[0, offset:offset + p.size] = p.reshape(-1)
                    offset += p.size
            barrier.wait()
            if rank != 0:
                offset = 0
                for p in params:
                    p.reshape(-1)[...] = exchange[0, offset:offset + p.size]
                    offset += p.size
        else:
            optimizer.step()
    results.put(batch * steps / (time.perf_counter() - start))


def run_processes(model_spec, batch, steps, workers, lockstep):
    """Images per second of `workers` single-threaded processes together, batch / workers
    images each per step."""
    from minimobile.models import build_model

    context = multiprocessing.get_context("spawn")
    count = build_model(model_spec[0], model_spec[1], True, 10).num_parameters()
    shared = context.RawArray("f", workers * count)
    barrier, results = context.Barrier(workers), context.Queue()
    saved = os.environ.get("NUMBA_NUM_THREADS")
    os.environ["NUMBA_NUM_THREADS"] = "1"  # read by each child's Numba at import
    try:
        processes = [context.Process(target=_worker, args=(
            rank, model_spec, batch // workers, steps, lockstep, barrier, shared,
            [count] * workers, results)) for rank in range(workers)]
        for p in processes:
            p.start()
    finally:
        if saved is None:
            del os.environ["NUMBA_NUM_THREADS"]
        else:
            os.environ["NUMBA_NUM_THREADS"] = saved
    rates = [results.get(timeout=1800) for _ in processes]
    for p in processes:
        p.join()
    if lockstep:
        return workers * min(rates)  # they keep the same pace; the slowest sets it
    return sum(rates)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="v1:1.0")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args(argv)
    spec = parse_model(args.model)
    from minimobile.parallel import get_num_threads

    print(f"{args.model}, batch {args.batch_size}, {args.steps} timed steps per way and round; "
          f"threads: 1 process on {get_num_threads()} threads; free and lockstep: "
          f"{args.workers} processes of 1 thread, batch {args.batch_size // args.workers} each")
    print(f"{'round':>5}  {'threads':>8}  {'free':>8}  {'lockstep':>8}  (images/s)  "
          f"{'free/thr':>8}  {'lock/thr':>8}")
    ratios = {"free": [], "lockstep": []}
    for r in range(args.rounds):
        threads = run_threads(spec, args.batch_size, args.steps)
        free = run_processes(spec, args.batch_size, args.steps, args.workers, False)
        lock = run_processes(spec, args.batch_size, args.steps, args.workers, True)
        ratios["free"].append(free / threads)
        ratios["lockstep"].append(lock / threads)
        print(f"{r:>5}  {threads:8.0f}  {free:8.0f}  {lock:8.0f}              "
              f"{free / threads:8.2f}  {lock / threads:8.2f}", flush=True)
    medians = {k: statistics.median(v) for k, v in ratios.items()}
    print(f"median ratio to threads: free {medians['free']:.2f}, lockstep "
          f"{medians['lockstep']:.2f}")
    return medians


if __name__ == "__main__":
    main(sys.argv[1:])
