"""The command line: `minimobile train | eval | plot | summary | export | quantize | sweep`
(also `python -m minimobile`).

Exit codes: 0 done; 1 an error explained in one line (data not found, unreadable checkpoint,
an output that cannot be written, a run that diverged); 2 bad arguments, with the usage and
one line saying what is wrong, or a bad MINIMOBILE_KERNELS or MINIMOBILE_BLAS_THREADS, in one
line without the usage; 130 interrupted by Ctrl-C. No user mistake ends in a traceback
(docs/TROUBLESHOOTING.md lists the messages and what to do). Ctrl-C during `train` keeps the
last completed epoch's checkpoint, and `minimobile train --out DIR --resume` continues from it
exactly; `train` refuses a folder that already holds a run unless told --resume or
--overwrite. Figures are drawn with matplotlib's Figure class, never pyplot, so no window
opens and no backend is switched.
"""

import argparse
import dataclasses
import errno
import os
import signal
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np

from . import __version__, checkpoint, kernels, parallel
from .data import MAX_RESOLUTION, MIN_RESOLUTION, load_cifar10
from .errors import (CheckpointMismatchError, ConfigError, CorruptCheckpointError,
                     CorruptDataError, CorruptHistoryError, NonFiniteError, SettingError)
from .models import MAX_WIDTH, MODELS, build_model
from .data import FLIP_MODES
from .train import (DTYPES, HISTORY, LAST, OPTIMIZER_DEFAULTS, RECIPES, SCHEDULE_NAMES,
                    TTA_MODES, TrainConfig,
                    check_resumable, confusion_matrix, evaluate, existing_run_files, fit,
                    model_from_checkpoint, prepare_out, read_config, read_history,
                    write_history)

TRAIN_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}

TRAIN_DESCRIPTION = """\
Train a MobileNet on CIFAR-10 and write last.npz, best.npz and history.csv into --out.

The defaults are a standard CIFAR-10 recipe: SGD with Nesterov momentum 0.9, lr 0.1 at batch
128 (scaled linearly with --batch-size), one epoch of linear warm-up then cosine decay to 0,
weight decay 5e-4 on weights (never on batch-norm parameters or biases), label smoothing 0.1,
random crop (4 px padding) and horizontal flip. --optimizer rmsprop defaults to lr 0.008 and
weight decay 4e-5 (torchvision's MobileNetV3 recipe at batch 128), adamw to 2e-3 and 0.05.

The fast-CIFAR techniques are off by default: --ema (weight averaging; the averaged model is
the one tested and kept as best.npz), --tta (test-time augmentation; --tta-final-only keeps
it to the last epoch's test), --flip alternate, --cutout, --schedule linear,
--start-resolution (progressive resizing: cheaper early epochs on smaller images),
--whiten-stem (stem filters that whiten the images' 3x3 patches, airbench's initialisation),
--prune (InfoBatch's data pruning: fewer well-learned images per epoch, the same expected
gradient) and --decay-norm-and-bias (to measure what skipping it buys);
--no-decay-depthwise spares the depthwise filters from weight decay.
--time-budget MINUTES sizes the run to the machine: after the first epoch it sets --epochs
(at most the one given) so that training and the final evaluation end inside the budget.
--recipe NAME sets a named bundle of them; options given explicitly override the bundle
(fast: literature defaults, measured since in results/ablation/; ninety: the first run to
90 % in two hours on two cores, docs/TOWARDS90.md):
{recipes}

Ctrl-C keeps the checkpoint of the last completed epoch (exit code 130); run the same command
with --resume to continue exactly where it stopped. With --resume, settings not given on the
command line come from the checkpoint; only --epochs, --eval-every, --tta-final-only, --data and
--limit-test may differ from it (a new --epochs stretches the schedule over the new length from then on).
A folder that already holds a run is never overwritten silently: give --resume to continue it,
--overwrite to replace it (its files are replaced epoch by epoch), or another --out.
"""


def _as_option(key, value):
    """A recipe's setting as the command-line option that gives it: a flag for True."""
    option = "--" + key.replace("_", "-")
    return option if value is True else f"{option}={value}"


TRAIN_DESCRIPTION = TRAIN_DESCRIPTION.format(recipes="\n".join(
    textwrap.fill(f"--recipe {name} = " + " ".join(_as_option(key, value)
                                                   for key, value in values.items()),
                  width=94, initial_indent="  ", subsequent_indent="      ",
                  break_on_hyphens=False)
    for name, values in RECIPES.items()))


class CommandError(Exception):
    """An error the user can fix, reported as one message with exit code 1."""


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _resolution(text):
    value = _positive_int(text)
    if not MIN_RESOLUTION <= value <= MAX_RESOLUTION:
        raise argparse.ArgumentTypeError(f"expected a resolution from {MIN_RESOLUTION} to "
                                         f"{MAX_RESOLUTION}, "
                                         f"got {text!r}")
    return value


def _non_negative_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _float(low, high=None, low_open=False, high_open=True):
    """An argparse type: a float in [low, high) (or (low, ...) with low_open)."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        too_low = value <= low if low_open else value < low
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high or not np.isfinite(value):
            left = "(" if low_open else "["
            right = ")" if high_open else "]"
            raise argparse.ArgumentTypeError(
                f"expected a number in {left}{low}, {'inf' if high is None else high}{right}, "
                f"got {text!r}")
        return value
    return parse


_WIDTH = _float(0, MAX_WIDTH, low_open=True, high_open=False)


def _cutout(text):
    value = _non_negative_int(text)
    if value > 32:
        raise argparse.ArgumentTypeError(f"expected a size from 0 to 32 (the image), got {text!r}")
    return value


def _crop_padding(text):
    value = _non_negative_int(text)
    if value > 16:
        raise argparse.ArgumentTypeError(f"expected a padding from 0 to 16 px, got {text!r}")
    return value


def _ramp(text):
    """Two fractions A,B with 0 <= A <= B <= 1 (--resolution-ramp)."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 2 or not 0 <= values[0] <= values[1] <= 1:
        raise argparse.ArgumentTypeError(f"expected two fractions A,B with 0 <= A <= B <= 1, "
                                         f"got {text!r}")
    return values


def _default(name):
    value = TRAIN_DEFAULTS[name]
    return "the optimiser's" if value is None and name in ("lr", "weight_decay") else value


def _add_train(sub):
    p = sub.add_parser("train", help="train a MobileNet on CIFAR-10",
                       usage="minimobile train [options]   (minimobile train --help lists them)",
                       description=TRAIN_DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    # Every option defaults to None, so that "given on the command line" can be told from "left
    # at its default": a resumed run takes the ungiven ones from its checkpoint. The defaults
    # themselves live in one place, TrainConfig.
    p.add_argument("--model", choices=list(MODELS), help=f"architecture (default "
                   f"{_default('model')})")
    p.add_argument("--width", type=_WIDTH, metavar="W",
                   help=f"width multiplier, at most {MAX_WIDTH:g} (default {_default('width')})")
    p.add_argument("--epochs", type=_positive_int, metavar="N",
                   help=f"epochs to train (default {_default('epochs')})")
    p.add_argument("--batch-size", type=_positive_int, metavar="N",
                   help=f"minibatch size (default {_default('batch_size')})")
    p.add_argument("--lr", type=_float(0, low_open=True), metavar="LR",
                   help="peak learning rate (default: per optimiser, see above)")
    p.add_argument("--optimizer", choices=list(OPTIMIZER_DEFAULTS),
                   help=f"(default {_default('optimizer')})")
    p.add_argument("--momentum", type=_float(0, 1), metavar="M",
                   help=f"SGD and RMSprop momentum (default {_default('momentum')})")
    p.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None,
                   help=f"Nesterov momentum for SGD (default {_default('nesterov')})")
    p.add_argument("--weight-decay", type=_float(0), metavar="WD",
                   help="weight decay (default: per optimiser, see above)")
    p.add_argument("--schedule", choices=list(SCHEDULE_NAMES),
                   help=f"learning-rate schedule (default {_default('schedule')})")
    p.add_argument("--warmup-epochs", type=_float(0), metavar="E",
                   help=f"linear warm-up for the cosine and linear schedules (default "
                   f"{_default('warmup_epochs')})")
    p.add_argument("--label-smoothing", type=_float(0, 1), metavar="E",
                   help=f"(default {_default('label_smoothing')})")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random crop and flip of training images (default on)")
    p.add_argument("--dropout", type=_float(0, 1), metavar="P",
                   help="dropout before the classifier (default: the model's, 0 for v1, 0.2 "
                   "for v2 and v3)")
    p.add_argument("--cifar", action=argparse.BooleanOptionalAction, default=None,
                   help="the 32x32 variant with early strides 1 (default on)")
    p.add_argument("--resolution", type=_resolution, metavar="R",
                   help="resize training and test images from 32x32 to R x R (bilinear, after "
                   "augmentation), the resolution multiplier (default 32: as stored)")
    p.add_argument("--start-resolution", type=_resolution, metavar="R0",
                   help="progressive resizing: train the first epochs at R0 x R0, rising to "
                   "--resolution over --resolution-ramp (cheaper early epochs); tests are "
                   "always at --resolution (default: off)")
    p.add_argument("--resolution-ramp", type=_ramp, metavar="A,B",
                   help="with --start-resolution: the resolution stays R0 until the fraction A "
                   "of the epochs is done, rises linearly in 4 px steps, and is full from B "
                   "on; A = B jumps (default 0.5,0.75)")
    p.add_argument("--data", metavar="PATH",
                   help="CIFAR-10 folder or archive (default: $MINIMOBILE_DATA, else "
                   "~/.cache/minimobile, downloading it there if missing)")
    p.add_argument("--out", metavar="DIR",
                   help="run folder for checkpoints and history (default runs/MODEL-wWIDTH)")
    p.add_argument("--seed", type=_non_negative_int, metavar="S",
                   help=f"seed of the weights and the data order (default {_default('seed')})")
    p.add_argument("--eval-every", type=_positive_int, metavar="N",
                   help="evaluate on the test set every N epochs, and after the last (default 1)")
    p.add_argument("--limit-train", type=_positive_int, metavar="N",
                   help="train on the first N training images only (quick runs)")
    p.add_argument("--limit-test", type=_positive_int, metavar="N",
                   help="evaluate on the first N test images only")
    p.add_argument("--dtype", choices=list(DTYPES), help="(default float32)")
    p.add_argument("--recipe", choices=list(RECIPES),
                   help="a named bundle of settings (listed above); explicit options override it")
    p.add_argument("--ema", type=_float(0, 1), metavar="DECAY",
                   help="keep an exponential moving average of the weights and batch-norm "
                   "statistics with this decay, e.g. 0.999, and test it instead of the "
                   "live weights (default 0: off)")
    p.add_argument("--ema-warmup", action=argparse.BooleanOptionalAction, default=None,
                   help="warm the EMA's decay up as min(DECAY, (1 + t) / (10 + t)) at update "
                   "t, TensorFlow's rule (default on)")
    p.add_argument("--tta", choices=list(TTA_MODES),
                   help="test-time augmentation: average the logits over each test image and "
                   "its mirror (flip), and its 1 px diagonal shifts too (flip,translate); "
                   "costs 2 or 6 forward passes (default none)")
    p.add_argument("--tta-final-only", action=argparse.BooleanOptionalAction, default=None,
                   help="with --tta: augment only the last epoch's test; the earlier ones "
                   "(--eval-every) take one forward pass (default off)")
    p.add_argument("--flip", choices=list(FLIP_MODES),
                   help="random: each image mirrored with probability 1/2 each epoch; "
                   "alternate: a random half mirrored in odd epochs, the other half in even "
                   "ones (airbench) (default random)")
    p.add_argument("--cutout", type=_cutout, metavar="SIZE",
                   help="zero one random SIZE x SIZE square of each training image "
                   "(DeVries and Taylor, 2017) (default 0: off)")
    p.add_argument("--crop-padding", type=_crop_padding, metavar="PX",
                   help="random crops from PX px of zero padding, shifts of up to PX each way "
                   "(default 4, the standard CIFAR augmentation; airbench shifts by 2)")
    p.add_argument("--prune", type=_float(0, 1), metavar="R",
                   help="dynamic data pruning (InfoBatch): each epoch, drop the fraction R of "
                   "the training images whose last loss is below the mean, and weigh the "
                   "rest of those 1/(1-R), so the expected gradient is unchanged; InfoBatch "
                   "uses 0.5 (default 0: off)")
    p.add_argument("--prune-until", type=_float(0, 1, high_open=False), metavar="F",
                   help="with --prune: prune in the first fraction F of the epochs only, so "
                   "the last ones see every image (default 0.875, InfoBatch's)")
    p.add_argument("--whiten-stem", action=argparse.BooleanOptionalAction, default=None,
                   help="initialise the stem conv's filters as +-v/sqrt(lambda + 5e-4) for the "
                   "eigenvectors v of the covariance of 3x3 patches of 5000 training images "
                   "(airbench's patch whitening) instead of at random (default off)")
    p.add_argument("--decay-norm-and-bias", action=argparse.BooleanOptionalAction,
                   default=None, help="weight decay on batch-norm parameters and biases too "
                   "(default off: only conv and linear weights decay)")
    p.add_argument("--decay-depthwise", action=argparse.BooleanOptionalAction, default=None,
                   help="weight decay on the depthwise filters (default on; the MobileNet "
                   "paper puts little or none on them)")
    p.add_argument("--time-budget", type=_float(0, low_open=True), metavar="MINUTES",
                   help="size the run to this much wall time: after the first epoch, train "
                   "the most epochs (up to --epochs) whose training and evaluations, the "
                   "final test-time-augmented one included, end within MINUTES of the start; "
                   "the run is then the same as one given that --epochs, which it prints "
                   "(needs --schedule linear or cosine with --warmup-epochs 1 or more, or "
                   "constant)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last.npz")
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run in an --out that already holds one, replacing it")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (one line per epoch is still printed)")
    p.set_defaults(run=_train, command_parser=p)


def _add_eval(sub):
    p = sub.add_parser("eval", help="test accuracy, per-class accuracy, confusion matrix",
                       description="Evaluate a checkpoint written by `minimobile train` on the "
                       "CIFAR-10 test set: print the accuracy, the per-class accuracy and the "
                       "confusion matrix, and save the matrix as a PNG.")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a best.npz or last.npz")
    p.add_argument("--data", metavar="PATH", help="CIFAR-10 location (default: the one the "
                   "run was trained on, else $MINIMOBILE_DATA or ~/.cache/minimobile)")
    p.add_argument("--out", metavar="DIR", help="folder for the PNG (default: the "
                   "checkpoint's folder)")
    p.add_argument("--batch-size", type=_positive_int, default=256, metavar="N",
                   help="(default 256)")
    p.add_argument("--limit-test", type=_positive_int, metavar="N",
                   help="evaluate on the first N test images only")
    p.add_argument("--tta", choices=list(TTA_MODES),
                   help="test-time augmentation, as train --tta (default: the run's own)")
    p.add_argument("--resolution", type=_resolution, metavar="R",
                   help="resize the test images to R x R, as train --resolution (default: the "
                   "run's own)")
    p.add_argument("--weights", choices=("ema", "live"), default="ema",
                   help="of a run trained with --ema: its averaged weights (ema, the default, "
                   "the model it tested) or the live ones the optimiser trained (live)")
    p.set_defaults(run=_eval, command_parser=p)


def _add_plot(sub):
    p = sub.add_parser("plot", help="loss and accuracy curves of a run as PNG",
                       description="Draw loss.png and accuracy.png from RUN/history.csv.")
    p.add_argument("run_dir", metavar="RUN", help="a run folder, as given to train --out (or a "
                   "file in it, such as its best.npz)")
    p.add_argument("--out", metavar="DIR", help="folder for the PNGs (default: RUN)")
    p.set_defaults(run=_plot, command_parser=p)


def _add_summary(sub):
    p = sub.add_parser("summary", help="per-layer parameters and multiply-adds of a model",
                       description="Print the per-layer table of parameters and MACs of one "
                       "model on one image, with totals.")
    p.add_argument("model", choices=list(MODELS))
    p.add_argument("--width", type=_WIDTH, default=1.0, metavar="W",
                   help=f"width multiplier, at most {MAX_WIDTH:g} (default 1.0)")
    p.add_argument("--resolution", type=_resolution, metavar="R",
                   help="input R x R (default 224, or 32 with --cifar)")
    p.add_argument("--cifar", action="store_true",
                   help="the 32x32 CIFAR-10 variant with 10 classes")
    p.set_defaults(run=_summary, command_parser=p)


def _add_export(sub):
    p = sub.add_parser("export", help="write a checkpoint's network as an ONNX file",
                       description="Export the network of a checkpoint written by `minimobile "
                       "train` to ONNX (opset 17), batch norms folded into the convs, for ONNX "
                       "Runtime and other engines. Needs the onnx extra: pip install -e "
                       "\".[onnx]\".")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a best.npz or last.npz")
    p.add_argument("output", metavar="OUTPUT", help="the .onnx file to write")
    p.add_argument("--resolution", type=_resolution, metavar="R",
                   help="input R x R (default 32 for a CIFAR model, else 224)")
    p.add_argument("--no-fuse", action="store_true",
                   help="keep batch norms as BatchNormalization nodes instead of folding them")
    p.set_defaults(run=_export, command_parser=p)


def _add_quantize(sub):
    p = sub.add_parser("quantize", help="int8 post-training quantisation of a checkpoint",
                       description="Quantise the network of a checkpoint written by `minimobile "
                       "train` to int8 (batch norms folded, per-channel weights, activation "
                       "scales calibrated on training images) and report accuracy and weight "
                       "size before and after. Also `python -m minimobile.quantize`.")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a best.npz or last.npz")
    p.add_argument("--data", metavar="PATH", help="CIFAR-10 location (default: the one the "
                   "run was trained on, else $MINIMOBILE_DATA or ~/.cache/minimobile)")
    p.add_argument("--calibration", type=_positive_int, default=512, metavar="N",
                   help="training images to calibrate on (default 512)")
    p.add_argument("--limit-test", type=_positive_int, metavar="N",
                   help="evaluate on the first N test images only")
    p.add_argument("--batch-size", type=_positive_int, default=256, metavar="N",
                   help="(default 256)")
    p.set_defaults(run=_quantize, command_parser=p)


def _list_of(parse, what):
    """An argparse type: comma-separated values, each read by `parse` (e.g. 0.25,0.5)."""
    def parse_list(text):
        try:
            values = [parse(item) for item in text.split(",") if item.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}")
        if not values:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}")
        return values
    return parse_list


def _setting(text):
    """KEY=VALUE for --set: VALUE read as a TOML value (64, 0.1, true, "flip"), else as text."""
    import tomllib
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        pass  # a bare word such as flip or v2: the text itself
    return key.strip().replace("-", "_"), value


SWEEP_DESCRIPTION = """\
Train a grid of networks x widths x resolutions x seeds on CIFAR-10 with Ray Tune, and write
results.csv (network, width, resolution, params, multiply-adds at that resolution, test
accuracy, seconds per epoch, epochs run) and accuracy_vs_macs.png (the MobileNet V1 paper's
Figure 4) into --out. Each trial is a `minimobile train` run in --out/trials/NAME.

The grid comes from the options below or from a TOML file (keys models, widths, resolutions,
seeds, epochs, recipe, trial settings under [options], and [[also]] tables that add more
networks x widths x resolutions x seeds); options given override the file's main grid.
--set KEY=VALUE passes any `minimobile train` setting (a TrainConfig field: batch_size,
limit_train, ema, ...) to every trial.

Runs on a local Ray instance using every core, or on a running cluster with --address; each
trial reserves --cpus-per-trial cores and runs that many Numba threads. Ctrl-C saves the
sweep's state: run the same command again to resume it (each unfinished trial continues from
its last epoch). Needs the sweep extra: pip install -e ".[sweep]". See docs/SWEEPS.md.
"""


def _add_sweep(sub):
    p = sub.add_parser("sweep", help="train a grid of networks, widths and resolutions on Ray",
                       usage="minimobile sweep [GRID.toml] [options]   (minimobile sweep --help)",
                       description=SWEEP_DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("grid", metavar="GRID.toml", nargs="?",
                   help="a grid file (options given on the command line override it)")
    p.add_argument("--models", type=_list_of(str, "networks"), metavar="M,...",
                   help=f"networks, from {', '.join(MODELS)} (default v1)")
    p.add_argument("--widths", type=_list_of(float, "numbers"), metavar="W,...",
                   help="width multipliers (default 1.0)")
    p.add_argument("--resolutions", type=_list_of(int, "integers"), metavar="R,...",
                   help="input resolutions, CIFAR's 32x32 resized to R x R (default 32)")
    p.add_argument("--seeds", type=_list_of(int, "integers"), metavar="S,...",
                   help="seeds, one trial each (default 0)")
    p.add_argument("--epochs", type=_positive_int, metavar="N",
                   help="epochs per trial, the same for all (default 30)")
    p.add_argument("--recipe", choices=list(RECIPES), help="a train --recipe for every trial")
    p.add_argument("--data", metavar="PATH", help="CIFAR-10 location, as train --data")
    p.add_argument("--set", type=_setting, action="append", default=[], metavar="KEY=VALUE",
                   dest="settings", help="a training setting for every trial, e.g. "
                   "--set batch_size=64 --set limit_train=5000 (repeatable)")
    p.add_argument("--out", metavar="DIR", help="the sweep folder (default sweeps/GRID, the "
                   "grid file's name, or sweeps/sweep)")
    p.add_argument("--cpus-per-trial", type=_float(0, low_open=True), default=1, metavar="N",
                   help="cores reserved by each trial, and its Numba threads (default 1)")
    p.add_argument("--address", metavar="ADDR", help="a running Ray cluster: auto, or "
                   "HOST:PORT of its head (default: start a local Ray instance)")
    p.add_argument("--num-cpus", type=_positive_int, metavar="N",
                   help="cores the local Ray instance may use (default all)")
    p.add_argument("--scheduler", choices=["fifo", "asha"], default="fifo",
                   help="fifo runs every trial to the end; asha stops weak trials early, "
                   "after each epoch (default fifo)")
    p.add_argument("--quiet", action="store_true", help="no progress tables from Ray")
    p.set_defaults(run=_sweep, command_parser=p)


def build_parser():
    """The argparse parser of all subcommands (also what `minimobile --help` prints)."""
    parser = argparse.ArgumentParser(
        prog="minimobile", description="MobileNet V1, V2 and V3 from scratch in NumPy and "
        "Numba: train on CIFAR-10, evaluate, plot, count parameters and multiply-adds, "
        "export to ONNX and quantise to int8.")
    parser.add_argument("--version", action="version", version=f"minimobile {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_train(sub)
    _add_eval(sub)
    _add_plot(sub)
    _add_summary(sub)
    _add_export(sub)
    _add_quantize(sub)
    _add_sweep(sub)
    return parser


def given_train_settings(args):
    """The TrainConfig fields that parsed `minimobile train` arguments set: the options given
    on the command line over the --recipe's bundle; the rest keep TrainConfig's defaults."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    if args.recipe is not None:
        given = {**RECIPES[args.recipe], **given}
    return given


def _rewrite_history(out, history):
    """history.csv rewritten from last.npz's copy of the history, for a finished run given
    --resume: the one way to repair a history.csv that was edited or cut short (an unfinished
    run's resume rewrites it too, in fit). Returns what to add to the message."""
    if not (isinstance(history, list) and all(isinstance(row, dict) for row in history)):
        return ""
    try:
        write_history(out / HISTORY, history)
    except OSError as e:
        raise CommandError(f"could not rewrite {out / HISTORY} ({e.strerror or e})") from None
    return f" ({HISTORY} rewritten from {LAST})"


def _train(args):
    given = given_train_settings(args)
    error = args.command_parser.error
    if args.resume and args.overwrite:
        error("--resume continues the run in --out and --overwrite replaces it: give one")
    try:
        config = TrainConfig(**given)
    except ValueError as e:
        error(str(e))
    out = Path(config.out)
    if args.resume:
        last = out / LAST
        if not last.is_file():
            raise CommandError(f"cannot resume: {last} does not exist (did an epoch of this run "
                               "finish? is --out right?); start without --resume")
        saved = read_config(last)
        config = dataclasses.replace(saved, **{**given, "out": config.out})
        try:
            check_resumable(saved, config)
        except ValueError as e:
            error(str(e))
        meta = checkpoint.load_meta(last)
        done = meta.get("epoch")
        if isinstance(done, int) and done >= config.epochs:
            rewritten = _rewrite_history(out, meta.get("history"))
            print(f"minimobile: {out} already finished epoch {done} of {done}: nothing to do"
                  f"{rewritten}. Give --epochs N with N above {done} to train it longer.",
                  file=sys.stderr)
            return 0
    else:
        existing = existing_run_files(out)
        if existing and not args.overwrite:
            error(f"{out} already holds a run ({', '.join(existing)}): add --resume to continue "
                  "it, --overwrite to replace it, or choose another --out")
    prepare_out(out)  # a folder that cannot be written fails now, not after an epoch
    print(parallel.describe(), flush=True)
    try:
        history = fit(config, resume=args.resume, progress=not args.no_progress, log=True)
    except ConfigError as e:  # found once the data is loaded: a batch larger than the data
        error(str(e))
    tested = [row for row in history if row["test_acc"] is not None]
    if tested:
        best = max(tested, key=lambda row: row["test_acc"])
        print(f"best test accuracy {best['test_acc']:.4f} (epoch {best['epoch']}); "
              f"checkpoints and history.csv in {config.out}")
    return 0


def _eval(args):
    path = Path(args.checkpoint)
    config, model = _model_from_checkpoint(path, ema=args.weights == "ema")
    live = bool(config.ema) and args.weights == "live"
    out = _output_folder(args.out if args.out is not None else path.parent)
    data = load_cifar10(args.data if args.data is not None else config.data)
    x, y = data.x_test[:args.limit_test], data.y_test[:args.limit_test]
    tta = config.tta if args.tta is None else args.tta
    resolution = config.resolution if args.resolution is None else args.resolution
    print(parallel.describe(), flush=True)
    result = evaluate(model, x, y, args.batch_size, config.label_smoothing, progress=True,
                      tta=tta, resolution=resolution)
    cm = confusion_matrix(y, result.predictions, len(data.classes))
    print(f"{path}: {config.model} width {config.width:g}, {len(y)} test images"
          + ("" if resolution == 32 else f" at {resolution}x{resolution}")
          + ("" if tta == "none" else f", test-time augmentation {tta}")
          + ("" if not config.ema else ", live weights (not the EMA)" if live
             else f", EMA weights (decay {config.ema:g})"))
    smoothing = (f", label smoothing {config.label_smoothing:g} as in training"
                 if config.label_smoothing else "")
    print(f"test accuracy {result.accuracy:.4f}, loss {result.loss:.4f} (cross-entropy"
          f"{smoothing})\n")
    print(format_confusion_matrix(cm, data.classes))
    png = out / f"{path.stem}{'_live' if live else ''}_confusion_matrix.png"
    plot_confusion_matrix(cm, data.classes, png,
                          title=f"{config.model} width {config.width:g}: "
                          f"test accuracy {result.accuracy:.2%}")
    print(f"\nsaved {png}")
    return 0


def _output_folder(path):
    """The folder for a command's PNGs, created if needed, checked before any work is done."""
    try:
        return prepare_out(path, what="the output folder")
    except OSError as e:
        raise CommandError(str(e)) from None


def _model_from_checkpoint(path, ema=True):
    """(config, model) of a trainer checkpoint, its weights loaded; one-line errors."""
    try:
        return model_from_checkpoint(path, ema)
    except ValueError as e:
        raise CommandError(str(e)) from None


def _plot(args):
    run = Path(args.run_dir)
    if run.is_file():
        # `eval` takes a checkpoint file: accept one (or the history itself) for its folder.
        if run.suffix != ".npz" and run.name != HISTORY:
            raise CommandError(f"{run} is a file: `minimobile plot` takes a run folder, such "
                               f"as {run.parent}")
        run = run.parent
    try:
        history = read_history(run / "history.csv")
    except FileNotFoundError:
        raise CommandError(f"{run / 'history.csv'} does not exist: is {run} a run folder "
                           "written by `minimobile train --out`?") from None
    if not history:
        raise CommandError(f"{run / 'history.csv'} has no epochs yet")
    out = _output_folder(args.out if args.out is not None else run)
    for png in plot_history(history, out, title=run.name):
        print(f"saved {png}")
    return 0


def _summary(args):
    from . import cost  # the cost module runs a model: import it only for this command
    resolution = args.resolution or (32 if args.cifar else 224)
    model = build_model(args.model, args.width, args.cifar, 10 if args.cifar else 1000, seed=0)
    print(f"MobileNet {args.model}, width {args.width:g}, input 3x{resolution}x{resolution}"
          f"{', CIFAR variant' if args.cifar else ''}")
    print(str(cost.profile(model, (3, resolution, resolution))))
    return 0


def _export(args):
    from . import onnx_export  # onnx itself is imported only when exporting
    config, model = _model_from_checkpoint(Path(args.checkpoint))
    if args.resolution is None and config.resolution != 32:
        # A run trained at another resolution exports for the images it was trained on.
        args.resolution = config.resolution
    try:
        path = onnx_export.export(model.eval(), args.output, args.resolution,
                                  fuse=not args.no_fuse)
    except ImportError as e:
        raise CommandError(str(e)) from None
    except ValueError as e:  # NaN weights, a resolution too small for the network
        raise CommandError(f"{args.checkpoint}: {e}") from None
    resolution = args.resolution or (32 if model.cifar else 224)
    print(f"wrote {path}: {type(model).__name__}, input (N, 3, {resolution}, {resolution}), "
          f"{'batch norms kept' if args.no_fuse else 'batch norms folded'}")
    return 0


def _quantize(args):
    from . import quantize  # the int8 kernels compile only for this command
    path = Path(args.checkpoint)
    config, model = _model_from_checkpoint(path)
    model.eval()
    data = load_cifar10(args.data if args.data is not None else config.data)
    x_test, y_test = data.x_test[:args.limit_test], data.y_test[:args.limit_test]
    try:
        result = quantize.report(model, quantize.calibration_images(data.x_train,
                                                                    args.calibration),
                                 x_test, y_test, args.batch_size, progress=True)
    except ValueError as e:  # NaN weights
        raise CommandError(f"{path}: {e}") from None
    print(f"{path}: {type(model).__name__} width {model.width_mult:g}")
    print(result)
    return 0


def _sweep(args):
    from . import sweep  # Ray is imported only for this command
    error = args.command_parser.error
    try:
        sweep.require_ray()
    except ImportError as e:
        # One line without the usage: the arguments are not what is wrong.
        print(f"minimobile sweep: error: {e}", file=sys.stderr)
        return 2
    options = dict(args.settings)
    if args.data is not None:
        options["data"] = args.data
    given = {"models": args.models, "widths": args.widths, "resolutions": args.resolutions,
             "seeds": args.seeds, "epochs": args.epochs, "recipe": args.recipe}
    try:
        if args.grid is not None:
            grid = sweep.load_grid(args.grid, **given, options=options)
        else:
            grid = sweep.Grid(**{k: v for k, v in given.items() if v is not None},
                              options=options)
        out = args.out or f"sweeps/{Path(args.grid).stem if args.grid else 'sweep'}"
        sweep.trial_configs(grid, out)  # every check, before Ray starts
    except FileNotFoundError:
        error(f"grid file {args.grid} does not exist")
    except (ConfigError, TypeError) as e:
        error(str(e))
    try:
        rows = sweep.run(grid, out, args.cpus_per_trial, args.address, args.scheduler,
                         args.num_cpus, verbose=0 if args.quiet else 1)
    except ConfigError as e:  # another sweep already in --out
        error(str(e))
    print(sweep.format_results(rows))
    print(f"wrote {Path(out) / sweep.RESULTS_CSV} and {Path(out) / sweep.PLOT}")
    unfinished = sum(row["status"] == "unfinished" for row in rows)
    if unfinished:
        print(f"minimobile: sweep interrupted with {unfinished} trial{'s' * (unfinished > 1)} "
              "unfinished; run the same command again to resume it", file=sys.stderr)
        return 130
    failed = [row["folder"] for row in rows if row["status"] == "error"]
    if failed:
        print(f"minimobile: error: {len(failed)} of {len(rows)} trials failed "
              f"({', '.join(failed)}, under {out}; Ray printed each one's error above); run "
              "the same command again to retry them", file=sys.stderr)
        return 1
    return 0


def format_confusion_matrix(cm, classes):
    """Per-class accuracy, then the counts: one row per true class, one column per predicted."""
    totals = cm.sum(axis=1)
    width = max(len(name) for name in classes)
    lines = ["per-class accuracy:"]
    for i, name in enumerate(classes):
        accuracy = cm[i, i] / totals[i] if totals[i] else float("nan")
        lines.append(f"  {i} {name:<{width}}  {accuracy:.4f}  ({cm[i, i]}/{totals[i]})")
    cell = max(5, len(str(cm.max())) + 1)
    lines += ["", "confusion matrix (rows: true class, columns: predicted class):",
              " " * (width + 4) + "".join(f"{j:>{cell}}" for j in range(len(classes)))]
    for i, name in enumerate(classes):
        lines.append(f"  {i} {name:<{width}}" + "".join(f"{n:>{cell}}" for n in cm[i]))
    return "\n".join(lines)


def plot_confusion_matrix(cm, classes, path, title=""):
    """Save the confusion matrix `cm` (true x predicted counts) as a PNG heat map at `path`."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(7.5, 6.5), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(cm, cmap="Blues")
    fig.colorbar(image, ax=ax, shrink=0.8)
    ticks = np.arange(len(classes))
    ax.set_xticks(ticks, classes, rotation=45, ha="right")
    ax.set_yticks(ticks, classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            # White on the dark cells, black on the light ones, so every count stays legible.
            dark = cm[i, j] > cm.max() / 2
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if dark else "black")
    _save_png(fig, path)
    return Path(path)


def _save_png(fig, path):
    """A figure as a PNG at `path`, written atomically (an interruption leaves the old file or
    none, never a truncated one)."""
    with checkpoint.atomic_open(path) as f:
        fig.savefig(f, dpi=120, format="png")


def plot_history(history, out_dir, title=""):
    """Save loss.png and accuracy.png (train and test against epoch) in out_dir; return both
    paths. Epochs without a test evaluation (--eval-every) are simply left out of the test curve."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator
    out_dir = Path(out_dir)
    paths = []
    for metric, label in (("loss", "loss"), ("acc", "accuracy")):
        fig = Figure(figsize=(6.5, 4.5), layout="constrained")
        ax = fig.add_subplot()
        for split in ("train", "test"):
            points = [(row["epoch"], row[f"{split}_{metric}"]) for row in history
                      if row.get(f"{split}_{metric}") is not None]
            if points:
                epochs, values = zip(*points)
                ax.plot(epochs, values, marker="o", markersize=3, label=split)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.set_title(f"{title}: {label}" if title else label)
        ax.grid(alpha=0.3)
        ax.legend()
        path = out_dir / f"{label}.png"
        _save_png(fig, path)
        paths.append(path)
    return paths


def _exit_code(exc):
    # SystemExit carries None (success), an int, or a message (failure, printed by Python).
    if exc.code is None:
        return 0
    return exc.code if isinstance(exc.code, int) else 1


# What to do about the system's errors that a user's path can cause.
_OS_HINTS = {
    errno.ENOTDIR: "a folder on that path is a file: choose another path",
    errno.EISDIR: "that is a folder: give a file name",
    errno.EACCES: "permission denied: choose a path you can write to",
    errno.EROFS: "the file system is read-only: choose another path",
    errno.ENOSPC: "the disk is full: free some space",
}


def _os_error_message(e):
    """One line for an OSError: ours carry a full message, the system's a reason and a path."""
    if e.filename and e.errno in _OS_HINTS:
        return f"{e.filename}: {_OS_HINTS[e.errno]}"
    if e.strerror and e.filename:
        return f"{e.filename}: {e.strerror}"
    return str(e)


def _ignore_ctrl_c_from_now_on():
    # The command is over: a Ctrl-C while Python shuts down (threads joined, files closed)
    # would print a traceback from the interpreter's own code, outside main's reach.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def main(argv=None):
    """Run the command line on argv (default sys.argv[1:]); returns the exit code."""
    try:
        return _main(argv)
    finally:
        if argv is None:  # the process's own command line, not a call from Python
            _ignore_ctrl_c_from_now_on()


def _main(argv):
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        kernels.check_settings()  # a bad MINIMOBILE_KERNELS or _BLAS_THREADS: errors.SettingError
        return args.run(args)
    except SystemExit as e:  # argparse: --help and --version (0), bad arguments (2)
        return _exit_code(e)
    except SettingError as e:  # a bad environment variable: a usage error, like bad arguments
        print(f"minimobile: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`minimobile summary v2 | head`): not an error of ours.
        sys.stdout = open(os.devnull, "w")
        return 0
    except KeyboardInterrupt:
        # fit has already said which checkpoint was kept and how to resume.
        print("minimobile: interrupted", file=sys.stderr)
        return 130
    except (CommandError, CorruptDataError, CorruptCheckpointError, CorruptHistoryError,
            CheckpointMismatchError, NonFiniteError) as e:
        print(f"minimobile: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        # FileNotFoundError covers DataNotFoundError, whose message says where we looked;
        # OutputError says what could not be written and what is kept.
        print(f"minimobile: error: {_os_error_message(e)}", file=sys.stderr)
        return 1
    except MemoryError:
        print("minimobile: error: out of memory: lower --batch-size or --width",
              file=sys.stderr)
        return 1
