"""Sweeps: a grid of training runs (networks x widths x resolutions x seeds) on Ray Tune, and
the accuracy against multiply-adds that the MobileNet V1 paper plots in its Figure 4.

Each grid point is one trial: a `train.fit` run with its own folder, `SWEEP/trials/NAME`
(NAME = `v1-w0.5-r24-s0`), which reports its test accuracy to Ray after every evaluated epoch.
Ray reserves `cpus_per_trial` cores for each trial and runs as many trials at once as the
cores allow, on this machine or on a cluster (`address`). The trial sets Numba's thread pool
to its reservation; BLAS stays at one thread per caller (minimobile's rule, parallel.py).
`scheduler="asha"` stops weak trials early. Ray keeps the sweep's state in `SWEEP/ray`, so
running the same sweep again resumes it (`Tuner.restore`), and a trial cut off mid-run
resumes from its own `last.npz`, bit for bit. At the end, `SWEEP/results.csv` (one row per
trial, written atomically) and `SWEEP/accuracy_vs_macs.png` are written from the trials'
folders. Needs the optional extra: pip install -e ".[sweep]". docs/SWEEPS.md has the cluster
recipe.
"""

import csv
import dataclasses
import io
import json
import os
import socket
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from . import checkpoint, kernels
from .data import MAX_RESOLUTION, MIN_RESOLUTION, find_cifar10
from .errors import ConfigError
from .models import MAX_WIDTH, MODELS, build_model
from .train import HISTORY, LAST, RECIPES, TrainConfig, fit, read_history

INSTALL_HINT = ('minimobile sweep needs Ray Tune, an optional extra: pip install -e ".[sweep]" '
                '(or pip install "ray[tune]")')
SCHEDULERS = ("fifo", "asha")
GRID_FILE, RESULTS_CSV, PLOT = "grid.json", "results.csv", "accuracy_vs_macs.png"
TRIAL_INFO = "trial.json"
RESULT_FIELDS = ("network", "width", "resolution", "seed", "params", "macs", "accuracy",
                 "best_accuracy", "seconds_per_epoch", "epochs_run", "epochs", "status",
                 "threads", "overhead_seconds", "folder")
# What a grid file may hold; everything else a trial needs goes under [options].
GRID_KEYS = ("models", "widths", "resolutions", "seeds", "epochs", "recipe", "options", "also")
# What each [[also]] table may hold: one more cross product, at the same epochs and options.
ALSO_KEYS = ("models", "widths", "resolutions", "seeds")
# Grid-level keys that must not be set as options: they are the grid, or the sweep's own.
RESERVED_OPTIONS = ("model", "width", "resolution", "seed", "epochs", "out")


@dataclass
class Grid:
    """The trials of a sweep: every network x width x resolution x seed, each trained for
    `epochs` epochs with the TrainConfig fields in `options` (on top of the named `recipe`).
    `also`: more cross products, as dicts with some of ALSO_KEYS (a missing key is the main
    grid's), for points that are not one grid, such as the V1 paper's Table 6 (widths at one
    resolution) beside its Table 7 (resolutions at width 1.0)."""

    models: list = field(default_factory=lambda: ["v1"])
    widths: list = field(default_factory=lambda: [1.0])
    resolutions: list = field(default_factory=lambda: [32])
    seeds: list = field(default_factory=lambda: [0])
    epochs: int = 30
    recipe: str = None
    options: dict = field(default_factory=dict)
    also: list = field(default_factory=list)


def require_ray():
    """Import Ray Tune, or raise ImportError saying how to install it."""
    try:
        import ray  # noqa: F401
        from ray import tune  # noqa: F401
    except ImportError:
        raise ImportError(INSTALL_HINT) from None


def load_grid(path, **overrides):
    """A Grid from a TOML file (keys GRID_KEYS, trial options under [options], more cross
    products as [[also]] tables); `overrides` (values not None) replace the file's main grid
    and add to its options. ConfigError names the file and what is wrong."""
    try:
        with open(path, "rb") as f:
            values = tomllib.load(f)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid TOML ({e})") from None
    unknown = sorted(set(values) - set(GRID_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown keys {', '.join(unknown)}; a grid file holds "
                          f"{', '.join(GRID_KEYS)}")
    if not isinstance(values.get("options", {}), dict):
        raise ConfigError(f"{path}: expected options to be a table ([options] with one "
                          f"TrainConfig field per line), got {values['options']!r}")
    if not isinstance(values.get("recipe", ""), str):
        raise ConfigError(f"{path}: expected recipe to be a name, one of {', '.join(RECIPES)}; "
                          f"got {values['recipe']!r}")
    options = {**values.pop("options", {}), **overrides.pop("options", {})}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Grid(**values, options=options)


def trial_name(config):
    return f"{config.model}-w{config.width:g}-r{config.resolution}-s{config.seed}"


def trial_configs(grid, out):
    """The grid's TrainConfigs, one per trial (the main grid's, then each `also` grid's), each
    with its folder out/trials/NAME. Every check happens here, before any trial starts:
    ConfigError in one line for an unknown network, a width or a resolution out of range, an
    unknown or bad option, a trial given twice."""
    def as_list(name, value):
        values = value if isinstance(value, (list, tuple)) else [value]
        if not values:
            raise ConfigError(f"{name}: expected at least one value")
        return list(values)

    def points(part):  # one cross product's (model, width, resolution, seed), checked
        models = as_list("models", part.get("models", grid.models))
        bad = [m for m in models if not isinstance(m, str) or m not in MODELS]
        if bad:
            raise ConfigError(f"unknown network {bad[0]!r}: expected one of {', '.join(MODELS)}")
        widths = as_list("widths", part.get("widths", grid.widths))
        bad = [w for w in widths if isinstance(w, bool) or not isinstance(w, (int, float))
               or not 0 < w <= MAX_WIDTH]
        if bad:
            raise ConfigError(f"width {bad[0]!r} out of range: expected a multiplier in "
                              f"(0, {MAX_WIDTH:g}]")
        resolutions = as_list("resolutions", part.get("resolutions", grid.resolutions))
        bad = [r for r in resolutions if isinstance(r, bool) or not isinstance(r, int)
               or not MIN_RESOLUTION <= r <= MAX_RESOLUTION]
        if bad:
            raise ConfigError(f"resolution {bad[0]!r} out of range: expected an integer from "
                              f"{MIN_RESOLUTION} to {MAX_RESOLUTION}")
        seeds = as_list("seeds", part.get("seeds", grid.seeds))
        return [(m, w, r, s) for m in models for w in widths for r in resolutions for s in seeds]

    if grid.recipe is not None and grid.recipe not in RECIPES:
        raise ConfigError(f"unknown recipe {grid.recipe!r}: expected one of {', '.join(RECIPES)}")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(grid.options) - fields)
    if unknown:
        raise ConfigError(f"unknown option {unknown[0]!r}: expected a TrainConfig field "
                          f"({', '.join(sorted(fields - set(RESERVED_OPTIONS)))})")
    reserved = sorted(set(grid.options) & set(RESERVED_OPTIONS))
    if reserved:
        raise ConfigError(f"option {reserved[0]!r} is set by the grid itself (models, widths, "
                          "resolutions, seeds, epochs) or by the sweep (out)")
    base = {**(RECIPES[grid.recipe] if grid.recipe else {}), **grid.options}
    if base.get("data") is not None:  # trials run in other folders, maybe on other machines
        base["data"] = str(Path(base["data"]).expanduser().resolve())
    trials = Path(out).resolve() / "trials"
    also = grid.also if isinstance(grid.also, (list, tuple)) else [grid.also]
    bad = [part for part in also if not isinstance(part, dict) or set(part) - set(ALSO_KEYS)]
    if bad:
        raise ConfigError(f"also: expected tables of {', '.join(ALSO_KEYS)}, got {bad[0]!r}")
    configs = []
    for model, width, resolution, seed in [p for part in [{}, *also] for p in points(part)]:
        settings = {**base, "model": model, "width": float(width), "resolution": resolution,
                    "seed": seed, "epochs": grid.epochs}
        try:
            config = TrainConfig(**settings)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"bad trial settings: {e}") from None
        configs.append(dataclasses.replace(config, out=str(trials / trial_name(config))))
    names = [Path(config.out).name for config in configs]
    repeated = [name for i, name in enumerate(names) if name in names[:i]]
    if repeated:
        raise ConfigError(f"the grid repeats a network, width, resolution or seed "
                          f"({repeated[0]})")
    return configs


def _set_threads(cpus):
    """Numba's pool to the trial's CPU reservation (at most the node's cores), BLAS to one
    thread per caller as everywhere in minimobile; returns the Numba thread count."""
    import numba

    from . import parallel
    threads = max(1, min(int(cpus), numba.config.NUMBA_NUM_THREADS))
    parallel.set_num_threads(threads)
    parallel.configure_blas_threads()  # MINIMOBILE_BLAS_THREADS (1), whatever Ray's OMP_*
    return threads


def run_trial(settings):
    """Ray Tune's trainable: one fit run, reporting each evaluated epoch's history row.

    A trial restarted after an interruption finds its folder's last.npz and resumes from it;
    it first reports the epochs already done again, so Ray (and ASHA) see the whole curve.
    """
    from ray import tune
    start = time.perf_counter()
    config = TrainConfig(**settings["config"])
    threads = _set_threads(settings["cpus"])
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    resume = (out / LAST).is_file()
    info = {"threads": threads, "host": socket.gethostname(), "pid": os.getpid(),
            "minimobile": str(Path(__file__).resolve().parent), "resumed": resume}
    trained = [0.0]

    def report(row):
        # The trial's time outside its epochs so far: imports, reading the data, compiling or
        # loading the kernels. Written before each report, since after the last one Tune may
        # end the trial's process (ASHA stops every trial that reaches its last epoch).
        trained[0] += row["epoch_seconds"]
        if not resume:
            info["overhead_seconds"] = time.perf_counter() - start - trained[0]
            _write_json(out / TRIAL_INFO, info)
        if row["test_acc"] is not None:
            tune.report({"epoch": row["epoch"], "test_acc": row["test_acc"],
                         "train_loss": row["train_loss"], "epoch_seconds": row["epoch_seconds"]})

    _write_json(out / TRIAL_INFO, info)
    if resume:  # overhead_seconds stays unknown: the epochs before ran in another process
        for row in read_history(out / HISTORY):
            report(row)
    fit(config, resume=resume, progress=False, log=False, on_epoch=report)


def _write_json(path, value):
    with checkpoint.atomic_open(path) as f:
        f.write(json.dumps(value, indent=1).encode("utf-8"))


def start_ray(address=None, num_cpus=None):
    """ray.init for a sweep, unless Ray is already running in this process. Its workers get
    this minimobile's folder at the front of PYTHONPATH, so they import the same code as the
    driver (on a cluster, each node needs minimobile at that path or installed)."""
    import ray
    if ray.is_initialized():
        return False
    package_root = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    # "local" starts a new instance even if a `ray start` cluster runs on this machine.
    ray.init(address=address or "local", num_cpus=num_cpus if address is None else None,
             include_dashboard=False, log_to_driver=True,
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    return True


def run(grid, out, cpus_per_trial=1, address=None, scheduler="fifo", num_cpus=None,
        verbose=1):
    """Run the sweep `grid` in the folder `out` (resuming it if it was interrupted); returns
    the rows of results.csv. Bad grids raise ConfigError before Ray starts. address: an
    existing Ray cluster ("auto" or "HOST:6379"), else a local instance with num_cpus cores
    (default all). scheduler: "fifo" runs every trial to the end, "asha" stops weak ones."""
    require_ray()
    kernels.check_settings()  # a bad environment variable: one error, before Ray starts
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    if scheduler not in SCHEDULERS:
        raise ConfigError(f"unknown scheduler {scheduler!r}: expected one of "
                          f"{', '.join(SCHEDULERS)}")
    if not (isinstance(cpus_per_trial, (int, float)) and cpus_per_trial > 0):
        raise ConfigError(f"cpus per trial: expected a number > 0, got {cpus_per_trial!r}")
    out = Path(out).resolve()
    configs = trial_configs(grid, out)
    if address is None:
        # One look for the data now, so a missing CIFAR-10 is one error, not one per trial,
        # and trials do not download it side by side. On a cluster, each node looks itself.
        folder = str(find_cifar10(configs[0].data))
        configs = [dataclasses.replace(c, data=folder) for c in configs]
    _check_same_sweep(out, configs, scheduler)
    costs = {key: cost_of(*key) for key in {(c.model, c.width, c.resolution, c.cifar)
                                            for c in configs}}
    started_ray = start_ray(address, num_cpus)
    try:
        trainable = tune.with_resources(run_trial, {"cpu": cpus_per_trial})
        ray_dir = out / "ray"
        if tune.Tuner.can_restore(ray_dir):
            tuner = tune.Tuner.restore(str(ray_dir), trainable, resume_errored=True)
        else:
            if scheduler == "asha":
                chooser = ASHAScheduler(time_attr="epoch", max_t=grid.epochs, grace_period=1,
                                        reduction_factor=2)
            else:
                chooser = FIFOScheduler()
            # Ray starts the trials in this order: the most multiply-adds first, so that the
            # short trials come last and fill the slots the long ones leave (longest first).
            ordered = sorted(configs, key=lambda c: -costs[(c.model, c.width, c.resolution,
                                                            c.cifar)][1])
            space = {"config": tune.grid_search([dataclasses.asdict(c) for c in ordered]),
                     "cpus": cpus_per_trial}
            tuner = tune.Tuner(
                trainable, param_space=space,
                tune_config=tune.TuneConfig(
                    metric="test_acc", mode="max", scheduler=chooser,
                    trial_name_creator=lambda t: Path(t.config["config"]["out"]).name,
                    trial_dirname_creator=lambda t: Path(t.config["config"]["out"]).name),
                run_config=tune.RunConfig(name="ray", storage_path=str(out), verbose=verbose))
        results = tuner.fit()
        errors = {Path(r.config["config"]["out"]).name: r.error for r in results
                  if r.error is not None and r.config}
        # Ctrl-C makes Tune save its state and return early, trials left unfinished.
        interrupted = results.num_terminated + results.num_errors < len(configs)
    finally:
        if started_ray:
            import ray
            ray.shutdown()
    rows = collect(configs, costs, errors, scheduler == "asha" and not interrupted)
    write_results(out / RESULTS_CSV, rows)
    plot_results(rows, out / PLOT)
    return rows


def _check_same_sweep(out, configs, scheduler):
    """The sweep folder remembers its trials' settings and scheduler: running it again with the
    same ones resumes it, with others is an error (it would mix two sweeps in one CSV)."""
    path = out / GRID_FILE
    settings = {"scheduler": scheduler, "trials": [dataclasses.asdict(c) for c in configs]}
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved != json.loads(json.dumps(settings)):
            raise ConfigError(f"{out} holds another sweep ({GRID_FILE} differs from this grid "
                              "or scheduler): give the same ones to resume it, or another --out")
    else:
        out.mkdir(parents=True, exist_ok=True)
        _write_json(path, settings)


def cost_of(model, width, resolution, cifar=True):
    """(params, multiply-adds) of one image at resolution x resolution, from cost.profile."""
    from . import cost
    profile = cost.profile(build_model(model, width, cifar, 10, seed=0),
                           (3, resolution, resolution))
    return profile.params, profile.macs


def collect(configs, costs, errors=None, stopped_early=False):
    """One row per trial (RESULT_FIELDS) from its folder's history.csv and trial.json.
    accuracy is the last evaluated epoch's test accuracy (what the papers' tables give),
    best_accuracy the best one; status is done, error, or for a trial short of its epochs
    stopped (by ASHA, when `stopped_early`) or unfinished (an interrupted sweep)."""
    errors = errors or {}
    rows = []
    for config in configs:
        folder = Path(config.out)
        try:
            history = read_history(folder / HISTORY)
        except (FileNotFoundError, ValueError):
            history = []
        try:
            info = json.loads((folder / TRIAL_INFO).read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            info = {}
        tested = [row["test_acc"] for row in history if row["test_acc"] is not None]
        params, macs = costs[(config.model, config.width, config.resolution, config.cifar)]
        name = folder.name
        status = ("error" if name in errors else "done" if len(history) >= config.epochs
                  else "stopped" if stopped_early else "unfinished")
        rows.append({
            "network": config.model, "width": config.width, "resolution": config.resolution,
            "seed": config.seed, "params": params, "macs": macs,
            "accuracy": tested[-1] if tested else None,
            "best_accuracy": max(tested) if tested else None,
            "seconds_per_epoch": (sum(r["epoch_seconds"] for r in history) / len(history)
                                  if history else None),
            "epochs_run": len(history), "epochs": config.epochs, "status": status,
            "threads": info.get("threads"), "overhead_seconds": info.get("overhead_seconds"),
            "folder": str(Path("trials") / name)})
    return rows


def write_results(path, rows):
    """results.csv, one row per trial (RESULT_FIELDS), atomically; None is empty."""
    text = io.StringIO()
    writer = csv.DictWriter(text, RESULT_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row[k] is None else row[k] for k in RESULT_FIELDS})
    with checkpoint.atomic_open(path) as f:
        f.write(text.getvalue().encode("utf-8"))


def read_results(path):
    """The rows of a results.csv, numbers as numbers and empty cells as None."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    ints = ("resolution", "seed", "params", "macs", "epochs_run", "epochs", "threads")
    floats = ("width", "accuracy", "best_accuracy", "seconds_per_epoch", "overhead_seconds")
    return [{k: None if v == "" else int(v) if k in ints else float(v) if k in floats else v
             for k, v in row.items()} for row in rows]


def plot_results(rows, path):
    """Test accuracy against multiply-adds (log scale), one colour per network, each point
    labelled with its width and resolution: the V1 paper's Figure 4, on CIFAR-10."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter
    fig = Figure(figsize=(7, 4.8), layout="constrained")
    ax = fig.add_subplot()
    for network in dict.fromkeys(row["network"] for row in rows):
        points = [r for r in rows if r["network"] == network and r["accuracy"] is not None]
        if not points:
            continue
        ax.plot([r["macs"] / 1e6 for r in points], [100 * r["accuracy"] for r in points],
                "o", label=network)
        for r in points:
            ax.annotate(f"{r['width']:g}/{r['resolution']}", (r["macs"] / 1e6,
                                                               100 * r["accuracy"]),
                        textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:g}")  # 20, not 2 x 10^1
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel("multiply-adds per image (millions, log scale)")
    ax.set_ylabel("CIFAR-10 test accuracy (%)")
    epochs = sorted({r["epochs"] for r in rows})
    ax.set_title(f"accuracy against multiply-adds ({'/'.join(map(str, epochs))} "
                 f"epoch{'s' if epochs != [1] else ''}; labels: width/resolution)")
    ax.grid(alpha=0.3, which="both")
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    with checkpoint.atomic_open(path) as f:  # never a truncated plot
        fig.savefig(f, dpi=120, format="png")
    return Path(path)


def format_results(rows):
    """The results as a small table, best accuracy first within each network."""
    lines = [f"{'network':<9}{'width':>6}{'res':>5}{'seed':>5}{'params':>11}{'MMACs':>9}"
             f"{'acc':>8}{'s/epoch':>9}{'epochs':>8}  status"]
    for r in rows:
        acc = "" if r["accuracy"] is None else f"{r['accuracy']:.4f}"
        sec = "" if r["seconds_per_epoch"] is None else f"{r['seconds_per_epoch']:.1f}"
        lines.append(f"{r['network']:<9}{r['width']:>6g}{r['resolution']:>5}{r['seed']:>5}"
                     f"{r['params']:>11,}{r['macs'] / 1e6:>9.2f}{acc:>8}{sec:>9}"
                     f"{r['epochs_run']:>5}/{r['epochs']:<3} {r['status']}")
    return "\n".join(lines)
