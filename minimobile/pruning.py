"""Dynamic data pruning: InfoBatch (Qin et al., ICLR 2024), fewer images per epoch, same
expected gradient.

Late in training most images are already classified with confidence: their loss is small,
and so is their gradient, yet each costs a full forward and backward pass. InfoBatch keeps
every image's most recent training loss as its score, and at the start of each epoch drops a
random fraction `ratio` of the images whose score is below the mean score (the "well
learned" ones). The well-learned images it keeps have their loss weighted by 1 / (1 - ratio),
so the expected gradient over the epoch is the full data's:

    E[sum over kept i of w_i * grad l_i] = sum over i of grad l_i,

since each well-learned image is kept with probability 1 - ratio and then weighs
1 / (1 - ratio). The images with large losses, where the gradient is, are never dropped.
Pruning stops after the fraction `until` of the epochs (InfoBatch's delta, 0.875), so the last
epochs see every image with weight 1, which anneals away the variance the rescaling added.

An image never trained on has an infinite score and is never dropped, so the first epoch sees
every image. The paper saves about 40 % of the image passes on CIFAR-10 and -100 at no loss of
accuracy (ResNet-18 and -50, 200 epochs, ratio 0.5); what it saves here is measured in
docs/API.md.

    pruning = DataPruning(len(x_train), ratio=0.5, until=0.875, epochs=40)
    order, weights = pruning.epoch_order(epoch_index, rng)   # indices to train on, in order
    ... train on batches of `order`, loss = mean(weights[idx] * losses) ...
    pruning.record(idx, losses)                                # each batch's unweighted losses
"""

import numpy as np

from .validation import is_int, is_number, require

# InfoBatch's defaults: half of the well-learned images dropped, in the first 7/8 of training.
DEFAULT_UNTIL = 0.875


def sample_losses(logits, labels, label_smoothing=0.0):
    """Each row's cross-entropy of softmax(logits) against its label (smoothed as the
    training loss is: target (1 - e) * onehot + e / classes), (N,) float64. The mean of these
    is ops.softmax_cross_entropy's loss, up to rounding (that one sums in float32)."""
    z = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    require(z.ndim == 2, "sample_losses: logits", "an array (N, classes)", z.shape)
    require(labels.shape == (len(z),) and labels.dtype.kind in "iu"
            and (labels.size == 0 or (labels.min() >= 0 and labels.max() < z.shape[1])),
            "sample_losses: labels", f"{len(z)} integers in [0, {z.shape[1]})",
            f"{labels.dtype} of shape {labels.shape}" if labels.shape != (len(z),)
            or labels.dtype.kind not in "iu" else f"values from {labels.min()} to {labels.max()}")
    require(is_number(label_smoothing) and 0 <= label_smoothing < 1,
            "sample_losses: label_smoothing", "a number in [0, 1)", label_smoothing)
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))  # (N, classes)
    nll = -log_p[np.arange(len(z)), labels]
    return (1 - label_smoothing) * nll - label_smoothing * log_p.mean(axis=1)


class DataPruning:
    """InfoBatch's scores and per-epoch draw over n training images (see the module's doc).

    scores: (n,) float64, each image's last recorded loss, +inf until it has one. Pruning
    happens in epochs with index e < round(until * epochs) (e counts from 0), and never in
    the first (no scores yet) or with ratio 0.
    """

    def __init__(self, n, ratio, until=DEFAULT_UNTIL, epochs=1):
        require(is_int(n) and n >= 1, "n", "an integer >= 1", n)
        require(is_number(ratio) and 0 <= ratio < 1, "ratio",
                "a fraction in [0, 1) (0: no pruning)", ratio)
        require(is_number(until) and 0 <= until <= 1, "until",
                "a fraction of the epochs in [0, 1]", until)
        require(is_int(epochs) and epochs >= 1, "epochs", "an integer >= 1", epochs)
        self.n, self.ratio, self.until, self.epochs = int(n), float(ratio), float(until), epochs
        self.scores = np.full(self.n, np.inf)

    def prunes(self, epoch_index):
        """True if the epoch with this 0-based index drops images."""
        require(is_int(epoch_index) and 0 <= epoch_index < self.epochs, "epoch_index",
                f"an integer in [0, {self.epochs}) (epochs count from 0)", epoch_index)
        return self.ratio > 0 and 1 <= epoch_index < round(self.until * self.epochs)

    def epoch_order(self, epoch_index, rng):
        """(order, weights) for the epoch with this 0-based index: the indices of the images
        to train on, shuffled, and every image's loss weight, (n,) float64 (1 for all but the
        kept well-learned images, 1 / (the fraction of them kept), about 1 / (1 - ratio), for
        those). An epoch that does not prune
        draws rng.permutation(n), as minibatch_indices does, so it is the unpruned run's
        epoch; one that prunes draws a choice and then a permutation."""
        weights = np.ones(self.n)
        if not self.prunes(epoch_index):
            return rng.permutation(self.n), weights
        seen = np.isfinite(self.scores)
        mean = self.scores[seen].mean() if seen.any() else np.inf
        well_learned = np.flatnonzero(self.scores < mean)  # never true for an unseen image
        kept = rng.choice(well_learned, size=round((1 - self.ratio) * len(well_learned)),
                          replace=False)
        # Each well-learned image is kept with probability len(kept) / len(well_learned),
        # about 1 - ratio (InfoBatch weighs by 1 / (1 - ratio), off by the rounding).
        weights[kept] = len(well_learned) / max(1, len(kept))
        keep = self.scores >= mean
        keep[kept] = True
        return rng.permutation(np.flatnonzero(keep)), weights

    def record(self, indices, losses):
        """Store the (unweighted) training losses of the images `indices`."""
        losses = np.asarray(losses)
        # A batch's mean loss would broadcast to every image, and a NaN score would leave
        # its image out of every pruned epoch (it is neither below nor above the mean).
        require(losses.shape == np.shape(indices), "record: losses",
                f"one per image, shape {np.shape(indices)}", losses.shape)
        require(bool(np.isfinite(losses).all()), "record: losses", "finite numbers",
                "NaN or infinite values")
        self.scores[indices] = losses

    def state_dict(self):
        return {"scores": self.scores.copy()}

    def load_state_dict(self, state):
        scores = np.asarray(state["scores"])
        require(scores.shape == (self.n,), "pruning scores", f"shape ({self.n},)", scores.shape)
        self.scores[...] = scores
