"""Exercise 07, with notebooks/07_deploy.ipynb: fold a batch norm into the convolution before
it, so that inference runs one layer instead of two.

In eval mode batch norm is a fixed affine map per channel, bn(z) = gamma * (z - mean) /
sqrt(var + eps) + beta, and z = conv(x, w) + b is linear in w and b: so bn(conv(x, w) + b) is
one conv with new weights and bias. Find them.

Check: `python -m pytest exercises -m ex07` (this exercise needs no other). The signature is the
library's (`minimobile.deploy.fold_batchnorm`): keep it.
"""

import numpy as np  # noqa: F401


def fold_batchnorm(w, b, gamma, beta, running_mean, running_var, eps=1e-5):
    """Return (w_folded, b_folded) with conv(x, w_folded) + b_folded equal to
    bn(conv(x, w) + b) in eval mode.

    w: (C_out, ...) any conv layout whose first axis is the output channel (standard
    (C_out, C_in, K, K), depthwise (C, 1, K, K), pointwise (C_out, C_in, 1, 1)); b: (C_out,) or
    None for a conv without bias; gamma, beta, running_mean, running_var: (C_out,). Both results
    in w's dtype; b_folded is always an array. Do not modify the arguments.
    """
    raise NotImplementedError("ex07: implement fold_batchnorm")
