"""minimobile: MobileNet V1, V2 and V3 from scratch in NumPy and Numba, for learning.

Tiers, with imports pointing one way: kernels (each op's loops, from readable to fast) -> ops
(pure forward/backward functions) -> layers (parameters, gradients, mode) -> blocks -> models
-> training, data, cost accounting and the command line. `minimobile.kernels.use("loops")`
runs every op on its readable rung; `minimobile.tuning` holds every tuned number.
"""

from . import parallel
from .errors import SettingError

try:
    parallel.configure_blas_threads()  # before any kernel runs: see minimobile/parallel.py
    _blas_setting_error = None
except SettingError as error:  # raised by the first kernel call, not here (errors.SettingError)
    _blas_setting_error = error
parallel.configure_waiting()

from . import blocks, checkpoint, cost, data, gradcheck, layers, models, ops, optim  # noqa: E402
from . import kernels, schedules, train, tuning  # noqa: E402
from .errors import NonFiniteError  # noqa: E402  (SettingError is imported above)
from .layers import (BatchNorm2d, Conv2d, DepthwiseConv2d, Dropout, Flatten,  # noqa: E402
                     GlobalAvgPool2d, Hardsigmoid, Hardswish, Identity, Linear, Module,
                     PointwiseConv2d, ReLU, ReLU6, Sequential, SqueezeExcitation, no_grad)
from .models import (mobilenet_v1, mobilenet_v2, mobilenet_v3_large,  # noqa: E402
                     mobilenet_v3_small)
from .parallel import get_num_threads, set_num_threads  # noqa: E402

if _blas_setting_error is not None:
    kernels._defer_setting_error(_blas_setting_error)

__version__ = "0.1.0"

__all__ = [
    "blocks", "checkpoint", "cost", "data", "gradcheck", "layers", "models", "ops", "optim",
    "kernels", "parallel", "schedules", "train", "tuning",
    "NonFiniteError", "SettingError", "no_grad", "get_num_threads", "set_num_threads",
    "Module", "Sequential", "Identity", "Conv2d", "DepthwiseConv2d", "PointwiseConv2d",
    "BatchNorm2d", "ReLU", "ReLU6", "Hardswish", "Hardsigmoid", "SqueezeExcitation",
    "GlobalAvgPool2d", "Flatten", "Linear", "Dropout",
    "mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
]
