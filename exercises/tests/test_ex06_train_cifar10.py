"""Exercise 06: `python -m pytest exercises -m ex06`. Checks live in exercises/checks/."""

import pytest

from exercises.checks import ex06_train_cifar10 as checks, load_exercise

pytestmark = pytest.mark.ex06
ex = load_exercise("ex06_train_cifar10")


def test_a_few_steps_with_your_block_lower_the_loss_on_a_tiny_fixture(tmp_path):
    checks.check_training(ex, tmp_path)


def test_confusion_matrix_counts_true_classes_by_row():
    checks.check_confusion_matrix(ex)
