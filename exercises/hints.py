"""The full recipes, one per exercise: the second tier of hints, printed on request by
`python -m exercises hint exNN` (a failing check prints them itself with MINIMOBILE_HINTS=full).
The first tier is in exercises/README.md and in each failure message. Try without these first."""

RECIPES = {
    "ex01": """\
By hand: a standard K x K conv makes C_out * H_out * W_out outputs, each a sum of C_in * K * K
products; its weight is (C_out, C_in, K, K). The depthwise conv makes C_in * H_out * W_out
outputs of K * K products (weight (C_in, 1, K, K)); the pointwise conv C_out * H_out * W_out
outputs of C_in products (weight (C_out, C_in, 1, 1)). No biases: batch norm follows.

NumPy depthwise forward: xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p))), then for each tap
(ki, kj): out += w[:, 0, ki, kj][None, :, None, None] * xp[:, :, ki:ki + stride * Ho:stride,
kj:kj + stride * Wo:stride].
Backward: the same loop; dw[:, 0, ki, kj] = sum of dout * that window over (0, 2, 3), and
dxp[window] += dout * w[:, 0, ki, kj][None, :, None, None] (+=: windows overlap); return
dxp[:, :, p:p + H, p:p + W]. In gather form, dx is dout (dilated by the stride) convolved with
the kernel flipped in both axes.

Kernels: for nc in prange(N * C) (forward) or for c in prange(C) (backward), zero what you
accumulate into (dx[:, c] = 0.0; dw[c] = 0.0), then loop i, j, ki, kj with
r = i * stride + ki - pad, s = j * stride + kj - pad, skipping r, s outside [0, H), [0, W).
Every prange step must write its own elements only: with prange over images in the backward,
two threads add into the same dw[c] and lose updates.

Pointwise: out = np.einsum("oc,nchw->nohw", w[:, :, 0, 0], x) (+ b[None, :, None, None]);
dx = einsum("oc,nohw->nchw", ...), dw = einsum("nohw,nchw->oc", dout, x) reshaped to w's shape,
db = dout.sum(axis=(0, 2, 3)) or None.""",
    "ex02": """\
Forward: mean = x.mean(axis=(0, 2, 3)), var = x.var(axis=(0, 2, 3)) (biased),
invstd = 1 / np.sqrt(var + eps), xhat = (x - mean[:, None, None]) * invstd[:, None, None],
out = gamma[:, None, None] * xhat + beta[:, None, None].
Backward, with M = N * H * W and sums over (0, 2, 3): dbeta = sum(dout),
dgamma = sum(dout * xhat), dx = gamma * invstd * (dout - dbeta / M - xhat * dgamma / M).
Running statistics: running_mean = (1 - m) * running_mean + m * mean,
running_var = (1 - m) * running_var + m * var * count / (count - 1).
DepthwiseSeparable: self.dw = ConvBNActivation(in, in, 3, stride, groups=in, activation=...,
bn_eps=..., bn_momentum=..., rng=rng, dtype=dtype); self.pw = ConvBNActivation(in, out, 1, ...);
forward pw(dw(x)), backward dw.backward(pw.backward(dout)).
MobileNetV1: stem, then one block per row of V1_SETTING with make_divisible(c * width_mult)
channels (not int(c * width_mult): 0.35 and 0.75 give channel counts that are not multiples
of 8), the avgpool, flatten and classifier, then self._init_weights(rng).""",
    "ex03": """\
relu6: np.clip(x, 0, 6); its gradient dout * ((x > 0) & (x < 6)).
InvertedResidual.__init__: hidden = int(round(in_channels * expand_ratio)); layers: if
expand_ratio != 1, ConvBNActivation(in, hidden, 1, activation=activation, bn_eps, bn_momentum,
rng, dtype); ConvBNActivation(hidden, hidden, 3, stride, groups=hidden, ...);
PointwiseConv2d(hidden, out, rng=rng, dtype=dtype); BatchNorm2d(out, eps=bn_eps,
momentum=bn_momentum, dtype=dtype); self.conv = Sequential(*layers);
use_res_connect = stride == 1 and in_channels == out_channels.
forward: walk self.conv's children in order (y = layer.forward(y)); add x when
use_res_connect. backward: walk them in reverse (g = layer.backward(g)), calling each child's
backward yourself (not self.conv.backward); then dx = g + dout when use_res_connect: the
skip hands dout to x unchanged and the two paths add.""",
    "ex04": """\
hardswish: x * np.clip(x + 3, 0, 6) / 6; slope 0 below -3, x / 3 + 1/2 on [-3, 3], 1 above.
hardsigmoid: np.clip(x + 3, 0, 6) / 6; slope 1/6 on (-3, 3) only.
SqueezeExcitation.forward: s = scale_activation(fc2(activation(fc1(avgpool(x))))), keep
(x, s), return x * s. backward: dx = dout * s, plus the path through the gate:
ds = (dout * x).sum(axis=(2, 3), keepdims=True), back through scale_activation, fc2,
activation, fc1 and avgpool, added to dx.
Bneck: layers = [ConvBNActivation(in, expanded, 1, activation=act) if expanded != in,
ConvBNActivation(expanded, expanded, K, stride, groups=expanded, activation=act),
SqueezeExcitation(expanded, make_divisible(expanded // 4, 8)) if use_se,
ConvBNActivation(expanded, out, 1, activation=None)], each with bn_eps, bn_momentum, rng and
dtype; act = ACTIVATIONS[activation]. forward and backward walk self.block's children
yourself, in order and in reverse; dx += dout when use_res_connect.""",
    "ex05": """\
v1_multiply_adds: channels = make_divisible(32 * width_mult), size = (resolution - 1) // 2 + 1,
macs = 3 * channels * 9 * size**2; for each (c, stride) of V1_SETTING: out =
make_divisible(c * width_mult), size = (size - 1) // stride + 1, macs += channels * 9 * size**2
+ channels * out * size**2, channels = out; finally macs += channels * num_classes.
measure_inference_time: for each width, model = build_model(arch, width=w,
cifar=resolution <= 64, seed=seed).eval(); cost = profile(model, (3, resolution, resolution));
x = one random float32 image (1, 3, resolution, resolution); under no_grad(): two untimed
forwards, then `repeats` timed with time.perf_counter(); seconds = the median (seconds, not
milliseconds).""",
    "ex06": """\
data = load_cifar10(data_root, download=False); x, y = data.x_train[:limit],
data.y_train[:limit]; model = mobilenet_v2(num_classes=10, width_mult=width_mult, cifar=True,
seed=seed, block=InvertedResidual); optimizer = SGD(model.named_parameters(), lr,
momentum=0.9, nesterov=True, weight_decay=5e-4), once; batches = Batches(x, y, batch_size,
augment=augment, drop_last=True, rng=np.random.default_rng(seed)), once (its rng carries on
from epoch to epoch). Then until `steps` losses: for xb, yb in batches: logits =
model.forward(xb); loss, dlogits = softmax_cross_entropy(logits, yb);
model.backward(dlogits); optimizer.step(); append loss; every print_every steps print the
mean of the last print_every losses.
confusion_matrix: np.bincount(y_true * num_classes + y_pred,
minlength=num_classes ** 2).reshape(num_classes, num_classes).""",
    "ex07": """\
scale = gamma / np.sqrt(running_var + eps); w_folded = w * scale reshaped to (C_out, 1, 1, 1)
(w.ndim - 1 ones); b_folded = (b - running_mean) * scale + beta with b = 0 when None; both
cast to w's dtype, new arrays.""",
}
