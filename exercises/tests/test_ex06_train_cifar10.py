"""Exercise 06: `python -m pytest exercises -m ex06`. Checks live in exercises/checks/."""

import pytest

from exercises.checks import ex06_train_cifar10 as checks, load_exercise

pytestmark = pytest.mark.ex06
ex = load_exercise("ex06_train_cifar10")


def test_every_steps_loss_matches_a_reference_loop_and_is_printed_as_training_goes(tmp_path):
    checks.check_training(ex, tmp_path)


def test_confusion_matrix_counts_true_classes_by_row_even_classes_that_never_occur():
    checks.check_confusion_matrix(ex)
