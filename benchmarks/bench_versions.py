"""Two checkouts of minimobile timed side by side: did a change cost speed?

Each round runs a fresh process on the old tree, then one on the new (PYTHONPATH points at
each), so the machine's drift over the run hits both alike; the ratio new/old is taken round by
round and its median printed. Two payloads:

    ops    forward+backward of every op of benchmarks/bench_ops.py at batch 128 (the fast rung)
    steps  a whole training step (forward, loss, backward, SGD) of each network's CIFAR variant

    git worktree add /tmp/minimobile-old <commit>          # the old engine, beside this one
    python benchmarks/bench_versions.py /tmp/minimobile-old . --payload steps --rounds 5

Each tree's Numba cache is warmed by a first, untimed process.
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np

OPS_PAYLOAD = r"""
import json, sys, time
import numpy as np
import numba
sys.path.insert(0, {bench_dir!r})
import bench_ops
numba.set_num_threads({threads})
cases = bench_ops.make_cases(np.random.default_rng(0), set({ops!r}.split(",")) - {{""}})
result = {{}}
for case in cases:
    for _ in range(2):
        bench_ops.run_minimobile(case)
    result[case.name] = float(np.median([bench_ops.run_minimobile(case)[1]
                                         for _ in range({repeats})])) * 1e3
print(json.dumps(result))
"""

STEPS_PAYLOAD = r"""
import json, time
import numpy as np
import numba
import minimobile as mm
from minimobile import memory
from minimobile.optim import SGD
memory.keep_freed_memory()  # as minimobile.train.fit does
numba.set_num_threads({threads})
rng = np.random.default_rng(0)
x = rng.standard_normal((128, 3, 32, 32)).astype(np.float32)
y = rng.integers(0, 10, 128)
build = {{"v1": mm.mobilenet_v1, "v2": mm.mobilenet_v2, "v3-small": mm.mobilenet_v3_small,
          "v3-large": mm.mobilenet_v3_large}}
result = {{}}
for spec in "{models}".split(","):
    name, width = spec.split(":")
    model = build[name](num_classes=10, width_mult=float(width), cifar=True, seed=0)
    opt = SGD(model.named_parameters(), lr=0.01, momentum=0.9)
    times = []
    for i in range({repeats} + 2):
        t0 = time.perf_counter()
        logits = model.forward(x)
        loss, d = mm.ops.softmax_cross_entropy(logits, y)
        model.backward(d)
        opt.step()
        times.append(time.perf_counter() - t0)
    result[spec] = float(np.median(times[2:])) * 1e3
print(json.dumps(result))
"""


def run(tree, payload, args, env_extra=()):
    # Both trees run this checkout's bench_ops cases (through the public ops), so cases added
    # since the old commit are timed on the old engine too.
    code = (OPS_PAYLOAD if payload == "ops" else STEPS_PAYLOAD).format(
        threads=args.threads, repeats=args.repeats, models=args.models, ops=args.ops,
        bench_dir=os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree), **dict(env_extra))
    done = subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, capture_output=True,
                          text=True)
    if done.returncode != 0:
        sys.exit(f"bench_versions: the payload failed in {tree}:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", help="the old checkout (a folder holding minimobile/)")
    parser.add_argument("new", help="the new checkout")
    parser.add_argument("--payload", choices=["ops", "steps"], default="steps")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=10, help="timings per process")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default="v1:0.5,v2:0.5,v3-small:1.0",
                        help="steps payload: networks as name:width")
    parser.add_argument("--ops", default="",
                        help="ops payload: comma-separated bench_ops case names (default: all)")
    parser.add_argument("--old-env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable for the old side only (repeatable); with "
                             "the same tree on both sides this compares two settings")
    parser.add_argument("--new-env", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args(argv)
    for tree in (args.old, args.new):
        if not os.path.isdir(os.path.join(tree, "minimobile")):
            parser.error(f"expected a checkout of minimobile, got {tree!r} (no minimobile/)")
    trees = {"old": args.old, "new": args.new}
    envs = {}
    for label, pairs in (("old", args.old_env), ("new", args.new_env)):
        if any("=" not in p for p in pairs):
            parser.error(f"expected --{label}-env NAME=VALUE, got {pairs}")
        envs[label] = [p.split("=", 1) for p in pairs]
    for label, tree in trees.items():  # compile and cache both engines before timing anything
        run(tree, args.payload, argparse.Namespace(**{**vars(args), "repeats": 1}), envs[label])
    rounds = []
    for r in range(args.rounds):
        rounds.append({label: run(tree, args.payload, args, envs[label])
                       for label, tree in trees.items()})
        print(f"round {r + 1}: " + ", ".join(
            f"{k} {rounds[-1]['new'][k] / rounds[-1]['old'][k]:.2f}" for k in rounds[-1]["old"]),
            flush=True)
    print(f"\n{args.payload}: median of {args.repeats} per process, {args.rounds} rounds "
          f"alternating old ({args.old} {' '.join(args.old_env)}) and new ({args.new} "
          f"{' '.join(args.new_env)}); ms")
    print(f"{'case':<24}{'old ms':>9}{'new ms':>9}{'new/old':>9}{'range':>14}")
    for key in rounds[0]["old"]:
        old = [r["old"][key] for r in rounds]
        new = [r["new"][key] for r in rounds]
        ratios = [n / o for n, o in zip(new, old)]
        print(f"{key:<24}{np.median(old):9.2f}{np.median(new):9.2f}{np.median(ratios):9.2f}"
              f"{f'{min(ratios):.2f}-{max(ratios):.2f}':>14}")


if __name__ == "__main__":
    main()
