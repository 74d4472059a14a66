"""Exercise 02: `python -m pytest exercises -m ex02`. Checks live in exercises/checks/."""

import pytest

from exercises.checks import ex02_mobilenet_v1 as checks, load_exercise

pytestmark = pytest.mark.ex02
ex = load_exercise("ex02_mobilenet_v1")


def test_batchnorm_forward_matches_the_reference():
    checks.check_forward(ex)


def test_batchnorm_backward_matches_numerical_gradient():
    checks.check_backward(ex)


def test_running_statistics_follow_pytorchs_convention():
    checks.check_running_statistics(ex)


def test_depthwise_separable_matches_the_library_block_with_the_same_weights():
    checks.check_depthwise_separable(ex)


def test_mobilenet_v1_from_the_table_matches_the_library_model_with_the_same_weights():
    checks.check_mobilenet_v1(ex)
