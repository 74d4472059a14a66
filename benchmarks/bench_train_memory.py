"""Peak memory of a training step (forward, loss, backward, optimiser step) at batch 128, for
minimobile and for the same network in PyTorch's three configurations of
bench_train_step.py (float32 NCHW pt, float32 channels-last ptCL, bfloat16 autocast
channels-last ptBF). Prints MB per configuration and minimobile's against the smallest
PyTorch figure (mm/least). --plain adds minimobile with MobileNet.defer_normalization off
(every batch norm writes its output for the depthwise conv to read, and the conv keeps it for
its backward): the memory that normalising on reading saves.

    python benchmarks/bench_train_memory.py [--models v1:0.5,v3-small:1.0] [--steps 3] [--plain]
        [--resolution 32]

--resolution R measures the step on R x R images (the trainer's --resolution), as
bench_train_step.py times it: activations grow with the square of R.

What is measured: every (network, configuration) runs in a process of its own, so nothing
one leaves behind counts against the next. The process imports its framework, makes the
batch, and runs two steps of the same network at batch 2, which loads or compiles every
kernel the step needs (Numba's, oneDNN's) and is then deleted; its resident set at that
point is the base. Then it builds the network, runs two warm-up steps at the full batch,
resets the kernel's peak-resident-set mark (writing 5 to /proc/self/clear_refs) and runs
--steps more. The figure is that peak minus the base: weights, gradients, optimiser state,
activations kept for backward and whatever buffers the framework holds, not its code, its
compiled kernels or the batch. Both frameworks run under the same allocator setting, glibc
keeping freed memory (minimobile/memory.py, which `fit` applies), as in bench_train_step.py;
with --malloc default, glibc's own. Memory, unlike time, does not depend on what else the
machine runs, so this benchmark needs no quiet machine.
"""

import argparse
import json
import os
import subprocess
import sys

BENCHMARKS = os.path.dirname(os.path.abspath(__file__))
CONFIGS = ("mm", "pt", "ptCL", "ptBF")  # minimobile, then bench_train_step.TORCH_CONFIGS
PLAIN = "plain"  # minimobile without deferred normalisation (--plain)


def status_mb(field):
    """VmRSS (resident now) or VmHWM (peak resident since start or the last reset), in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"/proc/self/status has no {field}: this benchmark needs Linux")


def reset_peak():
    """Set the peak-resident-set mark to the resident set now (Linux 4.0 and later)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def step_function(config, name, width, x, y):
    """One training step of `name` at `width` on (x, y), as bench_train_step.py times it."""
    import bench_train_step as bench
    if config in ("mm", PLAIN):
        from minimobile.models import build_model
        from minimobile.optim import SGD
        model = build_model(name, width, cifar=True, seed=0)
        model.defer_normalization = config == "mm"
        opt = SGD(model.named_parameters(), lr=0.01, momentum=0.9, nesterov=True,
                  weight_decay=5e-4)
        return lambda: bench.minimobile_step(model, opt, x, y)
    return bench.torch_step_fn(name, width, config in ("ptCL", "ptBF"), x, y,
                               bfloat16=config == "ptBF")


def measure(config, spec, batch_size, steps, threads, malloc, resolution=32):
    """Runs in the child process: the step's peak memory in MB, as the docstring says."""
    sys.path.insert(0, BENCHMARKS)
    import numba
    import numpy as np

    from minimobile import memory
    if malloc == "keep":
        memory.keep_freed_memory()
    numba.set_num_threads(threads)
    if config not in ("mm", PLAIN):
        import torch
        torch.set_num_threads(threads)
    name, width = spec.split(":")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch_size, 3, resolution, resolution)).astype(np.float32)
    y = rng.integers(0, 10, batch_size)
    warm = step_function(config, name, float(width), x[:2].copy(), y[:2].copy())
    warm()
    warm()
    del warm
    base = status_mb("VmRSS")
    step = step_function(config, name, float(width), x, y)
    step()
    step()
    reset_peak()
    for _ in range(steps):
        step()
    return {"base_mb": base, "peak_mb": status_mb("VmHWM")}


def child_figures(config, spec, args):
    """Run one measurement in a fresh process; its figures, or None if it failed."""
    argv = [sys.executable, os.path.abspath(__file__), "--child", config, "--models", spec,
            "--batch-size", str(args.batch_size), "--steps", str(args.steps),
            "--threads", str(args.threads), "--malloc", args.malloc,
            "--resolution", str(args.resolution)]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"  {spec} {config} failed (exit {done.returncode}): "
              f"{done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def torch_available():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="v1:0.5,v1:1.0,v2:0.5,v2:1.0,v3-small:1.0,v3-large:1.0")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--malloc", choices=["keep", "default"], default="keep")
    parser.add_argument("--resolution", type=int, default=32,
                        help="the images' height and width (default 32, CIFAR-10's own)")
    parser.add_argument("--plain", action="store_true",
                        help="also measure minimobile with defer_normalization off")
    parser.add_argument("--child", choices=CONFIGS + (PLAIN,), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sys.path.insert(0, BENCHMARKS)
    from minimobile.data import MAX_RESOLUTION, MIN_RESOLUTION
    if not MIN_RESOLUTION <= args.resolution <= MAX_RESOLUTION:
        raise SystemExit(f"--resolution: expected {MIN_RESOLUTION}-{MAX_RESOLUTION}, got "
                         f"{args.resolution}")
    if args.child:
        print(json.dumps(measure(args.child, args.models, args.batch_size, args.steps,
                                 args.threads, args.malloc, args.resolution)))
        return 0
    configs = (CONFIGS if torch_available() else ("mm",)) + ((PLAIN,) if args.plain else ())
    print(f"peak memory of a training step, MB above the process's base (see the docstring); "
          f"batch {args.batch_size}, {args.resolution}x{args.resolution} CIFAR variants, {args.threads} threads, "
          f"{args.steps} steps after 2 of warm-up, one process per cell; malloc "
          f"{'glibc, freed memory kept' if args.malloc == 'keep' else 'glibc default'}"
          + ("" if len(configs) > 1 else "; torch not installed: minimobile only"))
    from bench_train_step import cpu_description, cpu_line
    # PyTorch's bfloat16 step keeps another amount of memory where oneDNN emulates bfloat16
    # (on an AMD EPYC without AMX, V1 1.0 250-267 MB, against 339 on a CPU with it).
    print(cpu_line(*cpu_description()))
    header = (f"{'network':<14}{'mm MB':>8}{'pt MB':>8}{'ptCL MB':>9}{'ptBF MB':>9}"
              f"{'least':>7}{'mm/least':>10}" + (f"{'plain MB':>10}" if args.plain else ""))
    print(header)
    print("-" * len(header))
    for spec in args.models.split(","):
        figures = {c: child_figures(c, spec, args) for c in configs}
        mb = {c: f["peak_mb"] - f["base_mb"] for c, f in figures.items() if f}
        least = min((c for c in CONFIGS[1:] if c in mb), key=mb.get, default=None)
        row = f"{spec.replace(':', ' '):<14}"
        row += "".join(f"{mb[c]:{w}.0f}" if c in mb else f"{'-':>{w}}"
                       for c, w in (("mm", 8), ("pt", 8), ("ptCL", 9), ("ptBF", 9)))
        row += f"{least or '-':>7}"
        row += f"{mb['mm'] / mb[least]:10.2f}" if least and "mm" in mb else f"{'-':>10}"
        if args.plain:
            row += f"{mb[PLAIN]:10.0f}" if PLAIN in mb else f"{'-':>10}"
        print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
