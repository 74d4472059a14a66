"""minimobile: MobileNet V1, V2 and V3 from scratch in NumPy and Numba, for learning.

Tiers, with imports pointing one way: kernels (Numba loops) -> ops (pure forward/backward
functions) -> layers (parameters, gradients, mode) -> blocks -> models -> training, data, cost
accounting and the command line. `minimobile.reference` holds the slow references.
"""

from . import gradcheck, layers, ops, reference
from .errors import NonFiniteError
from .layers import (BatchNorm2d, Conv2d, DepthwiseConv2d, Dropout, Flatten, GlobalAvgPool2d,
                     Hardsigmoid, Hardswish, Identity, Linear, Module, PointwiseConv2d, ReLU,
                     ReLU6, Sequential, SqueezeExcitation, no_grad)

__version__ = "0.1.0"
