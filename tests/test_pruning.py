import numpy as np
import pytest

from minimobile import checkpoint, train
from minimobile.data import Batches, minibatch_indices
from minimobile.ops import softmax_cross_entropy
from minimobile.pruning import DataPruning, sample_losses
from minimobile.train import fit

from test_train import colour_data, tiny_config, tiny_model


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_sample_losses_average_to_the_training_loss(smoothing):
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (64, 10)).astype(np.float32)
    labels = rng.integers(0, 10, 64)
    losses = sample_losses(logits, labels, smoothing)
    loss, _ = softmax_cross_entropy(logits, labels, smoothing)
    assert losses.shape == (64,) and losses.dtype == np.float64
    np.testing.assert_allclose(losses.mean(), loss, rtol=1e-5)
    # Row 0 by the definition: -sum(target * log softmax), target (1 - e) onehot + e / 10.
    z = logits[0].astype(np.float64)
    log_p = z - np.log(np.exp(z - z.max()).sum()) - z.max()
    target = np.full(10, smoothing / 10)
    target[labels[0]] += 1 - smoothing
    np.testing.assert_allclose(losses[0], -(target * log_p).sum(), rtol=1e-12)


def test_epochs_that_do_not_prune_draw_the_unpruned_runs_permutation():
    pruning = DataPruning(100, ratio=0.5, until=0.5, epochs=4)
    pruning.record(np.arange(100), np.linspace(0, 1, 100))
    assert [pruning.prunes(e) for e in range(4)] == [False, True, False, False]
    for epoch in (0, 2, 3):  # the first (no scores yet in a real run) and those after `until`
        order, weights = pruning.epoch_order(epoch, np.random.default_rng(7))
        assert np.array_equal(order, np.random.default_rng(7).permutation(100))
        assert np.all(weights == 1)
    assert not DataPruning(100, ratio=0.0, epochs=4).prunes(1)


def test_a_pruning_epoch_keeps_the_hard_and_unseen_images_and_up_weights_the_kept_easy_ones():
    pruning = DataPruning(10, ratio=0.5, epochs=8)
    pruning.record(np.arange(8), [0.1, 0.2, 0.3, 0.4, 5.0, 6.0, 7.0, 8.0])  # 8, 9 unseen
    order, weights = pruning.epoch_order(1, np.random.default_rng(0))
    # mean of the seen scores 3.375: images 0-3 are well learned, half of them are kept.
    assert len(order) == len(set(order.tolist())) == 8
    assert {4, 5, 6, 7, 8, 9} <= set(order.tolist())
    easy_kept = sorted(set(order.tolist()) & {0, 1, 2, 3})
    assert len(easy_kept) == 2
    expected = np.ones(10)
    expected[easy_kept] = 2.0
    np.testing.assert_array_equal(weights, expected)


def test_the_weighted_sum_over_the_kept_images_is_unbiased():
    # E[sum over kept i of w_i g_i] = sum of g_i: averaged over many draws, the pruned sum of
    # per-image values comes back to the full sum.
    rng = np.random.default_rng(1)
    scores, values = rng.exponential(size=200), rng.normal(1.0, 1.0, size=200)
    pruning = DataPruning(200, ratio=0.5, epochs=8)
    pruning.record(np.arange(200), scores)
    sums = []
    for _ in range(4000):
        order, weights = pruning.epoch_order(1, rng)
        sums.append((weights[order] * values[order]).sum())
        assert len(order) < 200
    assert abs(np.mean(sums) - values.sum()) < 4 * np.std(sums) / np.sqrt(len(sums))


def test_bad_settings_and_scores_name_what_was_expected():
    with pytest.raises(ValueError, match=r"ratio: expected a fraction in \[0, 1\).*got 1"):
        DataPruning(10, ratio=1)
    with pytest.raises(ValueError, match="until: expected a fraction of the epochs"):
        DataPruning(10, ratio=0.5, until=1.5)
    with pytest.raises(ValueError, match=r"pruning scores: expected shape \(10,\), got \(9,\)"):
        DataPruning(10, ratio=0.5).load_state_dict({"scores": np.zeros(9)})
    with pytest.raises(ValueError, match="prune: expected a fraction"):
        train.TrainConfig(prune=-0.1)
    with pytest.raises(ValueError, match="prune_until: expected a fraction"):
        train.TrainConfig(prune_until=2)


def test_batches_take_a_given_order_for_one_epoch_and_say_which_images_each_batch_holds():
    x = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1).repeat(3, 1).repeat(4, 2).repeat(4, 3)
    y = np.arange(10)
    batches = Batches(x, y, 3, drop_last=True, rng=np.random.default_rng(0))
    batches.order = np.array([9, 2, 5, 7, 1])
    seen = [(yb.tolist(), batches.batch_indices.tolist()) for _, yb in batches]
    assert seen == [([9, 2, 5], [9, 2, 5])]  # drop_last drops [7, 1]
    assert batches.order is None
    # The given epoch drew nothing, so the next one is the first permutation of the generator.
    expected = minibatch_indices(10, 3, np.random.default_rng(0), drop_last=True)
    assert [yb.tolist() for _, yb in batches] == [idx.tolist() for idx in expected]


def test_a_pruned_fit_trains_fewer_images_in_the_middle_epochs_on_the_same_lr_schedule(tmp_path):
    data = colour_data(n_train=512, n_test=64)
    plain = fit(tiny_config(tmp_path / "plain", epochs=6, schedule="linear"),
                model=tiny_model(0), data=data, progress=False)
    pruned = fit(tiny_config(tmp_path / "pruned", epochs=6, schedule="linear", prune=0.5),
                 model=tiny_model(0), data=data, progress=False)
    # Epoch 1 is the plain run's, bit for bit; epochs 2-5 (round(0.875 * 6) = 5) prune; the
    # last sees every image again.
    assert pruned[0] == {**plain[0], **{k: pruned[0][k] for k in ("epoch_seconds",
                                                                  "images_per_second")}}
    assert [row["train_images"] for row in plain] == [512] * 6
    images = [row["train_images"] for row in pruned]
    assert images[0] == images[5] == 512 and all(n < 512 for n in images[1:5]), images
    # The schedule follows the epochs, not the steps: each epoch ends on the plain run's lr.
    np.testing.assert_allclose([row["lr"] for row in pruned], [row["lr"] for row in plain],
                               rtol=0.2)
    assert pruned[-1]["lr"] == plain[-1]["lr"]
    assert pruned[-1]["step"] < plain[-1]["step"]
    assert pruned[-1]["test_acc"] > 0.5  # it still learns (chance is 0.1)
    arrays, _ = checkpoint.load(tmp_path / "pruned" / "last.npz")
    assert arrays[train.PRUNING_SCORES].shape == (512,)
    assert np.isfinite(arrays[train.PRUNING_SCORES]).all()  # every image trained at least once
    assert [row["train_images"] for row in train.read_history(
        tmp_path / "pruned" / "history.csv")] == images


def test_the_pruned_schedule_is_the_plain_one_when_an_epoch_keeps_every_image():
    schedule = train.make_lr_schedule(train.TrainConfig(epochs=3, schedule="linear"), 10)
    mapped = train._pruned_schedule(schedule, epoch=2, full_steps=10, first_step=10, steps=10)
    assert [mapped(s) for s in range(10, 20)] == [schedule(s) for s in range(10, 20)]
    half = train._pruned_schedule(schedule, epoch=2, full_steps=10, first_step=7, steps=5)
    assert [half(s) for s in range(7, 12)] == [schedule(s) for s in (10, 12, 14, 16, 18)]


def test_pruning_names_losses_labels_and_epochs_of_the_wrong_kind():
    pruning = DataPruning(4, 0.5, epochs=3)
    with pytest.raises(ValueError, match=r"record: losses: expected one per image, shape "
                                         r"\(2,\), got \(\)"):
        pruning.record(np.array([0, 1]), 0.7)  # a batch's mean loss, not one per image
    with pytest.raises(ValueError, match=r"record: losses: expected finite numbers"):
        pruning.record(np.array([0, 1]), np.array([0.5, np.nan]))
    with pytest.raises(ValueError, match=r"epoch_index: expected an integer in \[0, 3\)"):
        pruning.prunes(3)
    logits = np.zeros((2, 10))
    with pytest.raises(ValueError, match=r"sample_losses: labels: expected 2 integers in "
                                         r"\[0, 10\), got 'values from -1 to 3'"):
        sample_losses(logits, np.array([-1, 3]))
    with pytest.raises(ValueError, match=r"sample_losses: labels: expected 2 integers .* got "
                                         r"'int64 of shape \(3,\)'"):
        sample_losses(logits, np.array([0, 1, 2]))
