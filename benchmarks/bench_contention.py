"""Throughput on a busy machine: a training step (and a batch-1 inference) alone, then with a
competing load on the same cores, for minimobile and, where installed, PyTorch.

    python benchmarks/bench_contention.py [--model v1:0.5] [--seconds 15] [--repeats 3]
                                          [--engines mm,torch] [--spin-counts 0,300000]
                                          [--scenarios "train, alone;train, with another"]

Every measurement is a fresh process that warms up, waits for a common start time and then
counts completed steps for --seconds, so processes started together overlap for the whole
measurement. The loads:
- another: a second training process of the same engine, started at the same time (the
  combined images/s of both against one process alone);
- busy-loop: a plain Python loop spinning on one core (it can take at most one of the two).
Each scenario runs --repeats times, alternating with the "alone" runs it is compared to, and
every run's ratio is printed: a setting is only good if it holds in every run.

--spin-counts also runs minimobile with each given GOMP_SPINCOUNT (how long a waiting thread
spins before it sleeps; 300000 is libgomp's default, the behaviour before
minimobile/parallel.py set its own), so the settings can be compared in one run.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


# --------------------------------------------------------------------------------------------
# Workers: each runs in its own process.
# --------------------------------------------------------------------------------------------


def _wait_until(start_at):
    delay = start_at - time.time()
    if delay > 0:
        time.sleep(delay)


def _count(step, start_at, seconds, items_per_step):
    for _ in range(2):  # warm-up: compile (cached), allocate, fault pages in
        step()
    _wait_until(start_at)
    t0 = time.perf_counter()
    steps = 0
    while time.perf_counter() - t0 < seconds:
        step()
        steps += 1
    return steps * items_per_step / (time.perf_counter() - t0)


def minimobile_worker(kind, name, width, start_at, seconds):
    import minimobile as mm
    from minimobile import memory
    from minimobile.optim import SGD
    memory.keep_freed_memory()  # as fit() does
    rng = np.random.default_rng(0)
    model = mm.models.build_model(name, width, cifar=True, seed=0)
    if kind == "train":
        x = rng.standard_normal((128, 3, 32, 32)).astype(np.float32)
        y = rng.integers(0, 10, 128)
        opt = SGD(model.named_parameters(), lr=0.01, momentum=0.9)

        def step():
            loss, d = mm.ops.softmax_cross_entropy(model.forward(x), y)
            model.backward(d)
            opt.step()
        return _count(step, start_at, seconds, 128)
    model.eval()
    x = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
    with mm.no_grad():
        return _count(lambda: model.forward(x), start_at, seconds, 1)


def torch_worker(kind, name, width, start_at, seconds):
    import torch
    sys.path.insert(0, HERE)
    import torch_models
    torch.set_num_threads(2)
    model = torch_models.build(name, width, cifar=True).to(memory_format=torch.channels_last)
    rng = np.random.default_rng(0)
    if kind == "train":
        x = torch.from_numpy(rng.standard_normal((128, 3, 32, 32)).astype(np.float32))
        x = x.contiguous(memory_format=torch.channels_last)
        y = torch.from_numpy(rng.integers(0, 10, 128))
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def step():
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        return _count(step, start_at, seconds, 128)
    model.eval()
    x = torch.from_numpy(rng.standard_normal((1, 3, 32, 32)).astype(np.float32))
    with torch.no_grad():
        return _count(lambda: model(x), start_at, seconds, 1)


def busy_worker(start_at, seconds):
    _wait_until(start_at - 1)  # spinning before the others start measuring, until they end
    end = time.time() + seconds + 2
    while time.time() < end:
        pass
    return 0.0


# --------------------------------------------------------------------------------------------
# The driver.
# --------------------------------------------------------------------------------------------


def launch(role, args, start_at, env_extra):
    """Start one worker process; role is (engine, kind) or "busy"."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker"]
    if role == "busy":
        cmd += ["busy"]
    else:
        engine, kind = role
        cmd += [f"{engine}:{kind}", "--model", args.model]
    cmd += ["--start-at", str(start_at), "--seconds", str(args.seconds)]
    env = dict(os.environ, PYTHONPATH=ROOT, **env_extra)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT)


def run_together(roles, args, env_extra):
    """Start the workers together; returns the rate each worker printed (busy: 0)."""
    start_at = time.time() + args.warmup
    procs = [launch(role, args, start_at, env_extra) for role in roles]
    rates = []
    for proc in procs:
        out, err = proc.communicate()
        if proc.returncode != 0:
            sys.exit(f"bench_contention: a worker failed:\n{err[-2000:]}")
        rates.append(json.loads(out.strip().splitlines()[-1]))
    return rates


SCENARIOS = {
    # name: (roles started together, which rates to add up, what the result is compared to)
    "train, alone": ([("E", "train")], [0], None),
    "train, with another": ([("E", "train"), ("E", "train")], [0, 1], "train, alone"),
    "train, with busy-loop": ([("E", "train"), "busy"], [0], "train, alone"),
    "infer, alone": ([("E", "infer")], [0], None),
    "infer, with busy-loop": ([("E", "infer"), "busy"], [0], "infer, alone"),
    "infer, with training": ([("E", "infer"), ("E", "train")], [0], "infer, alone"),
}


def measure(engine, env_extra, args):
    """Rates per scenario per repeat; 'alone' runs alternate with the loaded ones."""
    results = {name: [] for name in args.scenarios}
    for _ in range(args.repeats):
        for name in args.scenarios:
            roles, summed, _ = SCENARIOS[name]
            roles = [r if r == "busy" else (engine, r[1]) for r in roles]
            rates = run_together(roles, args, env_extra)
            results[name].append(sum(rates[i] for i in summed))
    return results


def report(label, results):
    print(f"\n{label}")
    print(f"  {'scenario':<24}{'per run (images/s, or inferences/s)':<44}{'of alone':>28}")
    for name in results:
        base = SCENARIOS[name][2]
        rates = results[name]
        cells = " ".join(f"{r:7.0f}" for r in rates)
        if base is None:
            print(f"  {name:<24}{cells:<44}")
            continue
        ratios = [r / b for r, b in zip(rates, results[base])]
        shares = " ".join(f"{100 * q:4.0f}%" for q in ratios)
        print(f"  {name:<24}{cells:<44}{shares:>28}  (min {100 * min(ratios):.0f} %)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="v1:0.5", help="network as name:width")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=12.0,
                        help="seconds between launching workers and measuring (import, warm-up)")
    parser.add_argument("--engines", default="mm,torch")
    parser.add_argument("--spin-counts", default="",
                        help="also run minimobile with each of these GOMP_SPINCOUNT values")
    parser.add_argument("--scenarios", default=";".join(SCENARIOS),
                        help="semicolon-separated scenario names (default: all)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.scenarios = [n.strip() for n in args.scenarios.split(";") if n.strip()]
    unknown = [n for n in args.scenarios if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios {unknown}; expected some of {list(SCENARIOS)}")
    for name in args.scenarios:  # a loaded scenario needs its "alone" base
        base = SCENARIOS[name][2]
        if base is not None and base not in args.scenarios:
            args.scenarios.insert(0, base)
    if args.worker:
        name, width = args.model.split(":")
        if args.worker == "busy":
            rate = busy_worker(args.start_at, args.seconds)
        else:
            engine, kind = args.worker.split(":")
            fn = minimobile_worker if engine == "mm" else torch_worker
            rate = fn(kind, name, float(width), args.start_at, args.seconds)
        print(json.dumps(rate))
        return
    engines = [e for e in args.engines.split(",") if e]
    if "torch" in engines:
        try:
            import torch  # noqa: F401  (only to know whether it is installed)
        except ImportError:
            print("PyTorch is not installed: its rows are skipped")
            engines.remove("torch")
    print(f"{args.model}, batch 128 training and batch-1 inference at 32x32, 2 cores; "
          f"{args.seconds:.0f} s per measurement, {args.repeats} repeats")
    if "mm" in engines:
        report("minimobile (its own thread settings, minimobile/parallel.py)",
               measure("mm", {}, args))
        for count in filter(None, args.spin_counts.split(",")):
            report(f"minimobile with GOMP_SPINCOUNT={count}",
                   measure("mm", {"GOMP_SPINCOUNT": count}, args))
    if "torch" in engines:
        report("PyTorch 2.13, channels last, its own thread settings", measure("torch", {}, args))


if __name__ == "__main__":
    main()
