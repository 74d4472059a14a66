"""Time a full training step (forward, loss, backward, optimiser step) of each network's CIFAR
variant at batch 128, for minimobile and, alternating with it in the same run, for the same
network in PyTorch where torch is installed, in three configurations at the same thread count:
float32 NCHW (pt), float32 channels-last (ptCL) and bfloat16 autocast channels-last (ptBF,
`torch.autocast("cpu", dtype=torch.bfloat16)`, which oneDNN runs on AMX units where the CPU
has them; on a CPU with neither AMX nor AVX512-BF16 it is skipped unless --torch-configs asks
for it, see NATIVE_BFLOAT16_FLAGS). Prints ms per step, images per second, the ratio to whichever PyTorch
configuration is fastest for that network (mm/best), and where minimobile's time goes by
layer type (--by-shape: by layer type and shape). minimobile itself stays in float32. --plain adds a column for minimobile with
MobileNet.defer_normalization off (every batch norm writes its output, and the depthwise
convs read it), timed in the same alternation: what normalising on reading gains. Peak memory has a benchmark of its own,
bench_train_memory.py, which runs every network and configuration in a process of its own.

    python benchmarks/bench_train_step.py [--models v1:0.5,v3-small:1.0] [--steps 10] [--plain]
        [--resolution 32]

--resolution R times the step on R x R images (the trainer's --resolution, CIFAR-10 resized),
for a recipe that trains at another resolution than the stored 32x32.
"""

import argparse
import os
import sys
import time
from collections import defaultdict

import numba
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))

from minimobile import memory, ops  # noqa: E402
from minimobile.data import MAX_RESOLUTION, MIN_RESOLUTION  # noqa: E402
from minimobile.optim import SGD  # noqa: E402
from minimobile.models import build_model  # noqa: E402

try:
    import torch
except ImportError:
    torch = None


def minimobile_step(model, optimizer, x, y):
    logits = model.forward(x)
    loss, dlogits = ops.softmax_cross_entropy(logits, y)
    model.backward(dlogits)
    optimizer.step()
    return loss


class LayerTimer:
    """Wraps every leaf module's forward and backward to sum their time by layer type."""

    def __init__(self, model, by_shape=False):
        self.by_shape = by_shape
        self.totals = defaultdict(float)
        self.originals = []
        for _, module in model.named_modules():
            if module._modules:  # containers: their children are timed
                continue
            for kind in ("forward", "backward", "forward_with_activation"):
                if not hasattr(module, kind):
                    continue
                original = getattr(module, kind)
                self.originals.append((module, kind))
                setattr(module, kind, self._wrap(original, f"{type(module).__name__}.{kind}"))

    def _wrap(self, fn, key):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            # Batch norm applies the activation itself when a block fuses them.
            label = (f"{key.replace('_with_activation', '')}+{args[1]}"
                     if key.endswith("forward_with_activation") and args[1] else key)
            if self.by_shape:  # the shape read: the input forward, the output's gradient back
                label += " " + "x".join(str(d) for d in getattr(args[0], "shape", ()))
            self.totals[label] += time.perf_counter() - t0
            return out
        return timed

    def restore(self):
        for module, kind in self.originals:
            delattr(module, kind)


def torch_step_fn(name, width, channels_last, x, y, bfloat16=False):
    """The same network in torch, built from torch_models (benchmarks' own definitions). With
    bfloat16, forward and loss run under CPU autocast to bfloat16 (weights, gradients and the
    optimiser stay float32, as in PyTorch's mixed-precision recipe); backward runs outside the
    autocast region, as the autocast documentation asks."""
    import torch_models
    model = torch_models.build(name, width, cifar=True)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)
    xt = torch.from_numpy(x)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        xt = xt.contiguous(memory_format=torch.channels_last)
    yt = torch.from_numpy(y)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16):
            loss = torch.nn.functional.cross_entropy(model(xt), yt)
        loss.backward()
        opt.step()
    return step


TORCH_CONFIGS = ("pt", "ptCL", "ptBF")  # float32 NCHW, float32 channels-last, bf16 autocast CL

# CPU flags that let oneDNN run bfloat16 in hardware. Without them it emulates bfloat16 and
# ptBF is no contender: on an AMD EPYC with AVX2 alone (2026-11-30) its step took 14-17x
# ptCL's (V1 0.5 3496 against 220 ms, V2 1.0 25779 against 1539), and timing it made a full
# run of this benchmark about three times as long.
NATIVE_BFLOAT16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_description(cpuinfo=None):
    """(model name, flags that run bfloat16 natively) from /proc/cpuinfo's text, or
    ("unknown", None) where there is no such file: None means "cannot tell"."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return "unknown", None
    name, flags = "unknown", set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and name == "unknown":
            name = value.strip()
        elif key.strip() == "flags":
            flags.update(value.split())
    return name, [f for f in NATIVE_BFLOAT16_FLAGS if f in flags]


def cpu_line(cpu_name, native_bfloat16):
    """The benchmarks' header line about the CPU: its name, and whether it runs bfloat16 in
    hardware (which decides whether PyTorch's bfloat16 autocast is a contender)."""
    flags = "cannot tell" if native_bfloat16 is None else ", ".join(native_bfloat16) or "no"
    return f"CPU: {cpu_name}; bfloat16 in hardware: {flags}"


def torch_configs(spec, native_bfloat16):
    """The PyTorch configurations to time. "auto": pt and ptCL, and ptBF where the CPU runs
    bfloat16 natively (or where that cannot be told); otherwise a comma-separated list."""
    if spec == "auto":
        return list(TORCH_CONFIGS) if native_bfloat16 is None or native_bfloat16 else \
            ["pt", "ptCL"]
    configs = [c.strip() for c in spec.split(",") if c.strip()]
    unknown = [c for c in configs if c not in TORCH_CONFIGS]
    if unknown or not configs:
        raise SystemExit(f"--torch-configs: expected 'auto' or a comma-separated list of "
                         f"{', '.join(TORCH_CONFIGS)}; got {spec!r}")
    return configs


PROFILED_STEPS = 3


def torch_profile(step, rows=30):
    """torch.profiler's table of `step`'s ops grouped by input shapes, most self time first,
    to set beside minimobile's --by-shape breakdown layer by layer."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(PROFILED_STEPS):
            step()
    return prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=40,
        max_shapes_column_width=60)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="v1:0.5,v1:1.0,v2:0.5,v2:1.0,v3-small:1.0,v3-large:1.0")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resolution", type=int, default=32,
                        help="the images' height and width (default 32, CIFAR-10's own)")
    parser.add_argument("--only", choices=["mm", "torch"], default=None)
    parser.add_argument("--torch-configs", default="auto",
                        help="PyTorch configurations to time, e.g. pt,ptCL,ptBF. auto (the "
                             "default): ptBF only where the CPU has AMX or AVX512-BF16, since "
                             "elsewhere oneDNN emulates bfloat16 at many times ptCL's time")
    parser.add_argument("--no-breakdown", action="store_true")
    parser.add_argument("--by-shape", action="store_true",
                        help="break minimobile's time down by layer type and shape (what each "
                             "layer reads: its input forward, its output's gradient backward), "
                             "and PyTorch's fastest configuration's by op and input shapes "
                             "(the profiler slows PyTorch's step, about 2.4x here: compare "
                             "shares, not milliseconds)")
    parser.add_argument("--plain", action="store_true",
                        help="also time minimobile with defer_normalization off (column plain)")
    parser.add_argument("--malloc", choices=["keep", "default"], default="keep",
                        help="keep: glibc recycles freed memory, as minimobile.train.fit sets it "
                             "(minimobile/memory.py); default: glibc's own settings. Either "
                             "way both frameworks run under the same allocator.")
    args = parser.parse_args(argv)
    if not MIN_RESOLUTION <= args.resolution <= MAX_RESOLUTION:
        raise SystemExit(f"--resolution: expected {MIN_RESOLUTION}-{MAX_RESOLUTION}, got "
                         f"{args.resolution}")
    malloc = "glibc, freed memory kept" if (args.malloc == "keep" and
                                            memory.keep_freed_memory()) else "as started"
    numba.set_num_threads(args.threads)
    use_torch = torch is not None and args.only != "mm"
    cpu_name, native_bfloat16 = cpu_description()
    configs = torch_configs(args.torch_configs, native_bfloat16)
    if use_torch:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch_size, 3, args.resolution, args.resolution)).astype(
        np.float32)
    y = rng.integers(0, 10, args.batch_size)
    print(f"batch {args.batch_size}, {args.resolution}x{args.resolution} CIFAR variants, {args.threads} threads, float32, "
          f"median of {args.steps} steps; torch "
          f"{torch.__version__ if use_torch else 'not run'}; LD_PRELOAD="
          f"{os.environ.get('LD_PRELOAD', '(unset)')}; malloc {malloc}")
    print(cpu_line(cpu_name, native_bfloat16)
          + ("" if not use_torch or "ptBF" in configs else
             " (ptBF not timed: oneDNN would emulate it; --torch-configs pt,ptCL,ptBF times it)"))
    header = (f"{'network':<14}{'mm ms':>8}{'img/s':>8}{'pt ms':>8}{'ptCL ms':>9}{'ptBF ms':>9}"
              f"{'best':>6}{'mm/best':>9}" + (f"{'plain ms':>10}{'mm/plain':>10}"
                                               if args.plain else ""))
    print(header)
    print("-" * len(header))
    breakdowns = {}
    torch_profiles = {}
    for spec in args.models.split(","):
        name, width = spec.split(":")
        width = float(width)
        runners = {}
        if args.only != "torch":
            model = build_model(name, width, cifar=True, seed=0)
            opt = SGD(model.named_parameters(), lr=0.01, momentum=0.9, nesterov=True,
                      weight_decay=5e-4)
            runners["mm"] = lambda m=model, o=opt: minimobile_step(m, o, x, y)
            if args.plain:
                plain = build_model(name, width, cifar=True, seed=0)
                plain.defer_normalization = False
                plain_opt = SGD(plain.named_parameters(), lr=0.01, momentum=0.9, nesterov=True,
                                weight_decay=5e-4)
                runners["plain"] = lambda m=plain, o=plain_opt: minimobile_step(m, o, x, y)
        if use_torch:
            for config in configs:
                runners[config] = torch_step_fn(name, width, config != "pt", x, y,
                                                bfloat16=config == "ptBF")
        for run in runners.values():  # warm-up: compile, allocate, fault pages in
            run()
            run()
        samples = defaultdict(list)
        for _ in range(args.steps):
            for key, run in runners.items():
                t0 = time.perf_counter()
                run()
                samples[key].append(time.perf_counter() - t0)
        ms = {k: 1e3 * float(np.median(v)) for k, v in samples.items()}
        # The ratio is against whichever PyTorch configuration is fastest for this network.
        best_key = min((k for k in TORCH_CONFIGS if k in ms), key=ms.get, default=None)
        best = ms[best_key] if best_key else None
        row = f"{name + ' ' + str(width):<14}"
        row += f"{ms['mm']:8.0f}{1e3 * args.batch_size / ms['mm']:8.0f}" if "mm" in ms else \
            f"{'-':>8}{'-':>8}"
        row += "".join(f"{ms[k]:{w}.0f}" if k in ms else f"{'-':>{w}}"
                       for k, w in (("pt", 8), ("ptCL", 9), ("ptBF", 9)))
        row += f"{best_key or '-':>6}"
        row += f"{ms['mm'] / best:9.2f}" if best and "mm" in ms else f"{'-':>9}"
        if "plain" in ms:
            row += f"{ms['plain']:10.0f}{ms['mm'] / ms['plain']:10.2f}"
        print(row, flush=True)
        if "mm" in runners and not args.no_breakdown:
            timer = LayerTimer(model, args.by_shape)
            for _ in range(3):
                runners["mm"]()
            timer.restore()
            breakdowns[spec] = {k: v / 3 for k, v in timer.totals.items()}
        if args.by_shape and use_torch and best_key:
            torch_profiles[spec] = (best_key, torch_profile(runners[best_key]))
    for spec, totals in breakdowns.items():
        total = sum(totals.values())
        print(f"\nwhere minimobile's {spec} step goes (ms per step, layer time only, "
              f"{total * 1e3:.0f} ms in layers):")
        for key, seconds in sorted(totals.items(), key=lambda kv: -kv[1]):
            print(f"  {key:<34}{seconds * 1e3:8.1f}  {100 * seconds / total:5.1f} %")
    for spec, (key, table) in torch_profiles.items():
        print(f"\nwhere PyTorch's {spec} step goes in its fastest configuration, {key} "
              f"(torch.profiler, {PROFILED_STEPS} steps, by op and input shapes):\n{table}")


if __name__ == "__main__":
    main()
