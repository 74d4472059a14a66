"""Exercise 01: `python -m pytest exercises -m ex01`. Checks live in exercises/checks/."""

import pytest

from exercises.checks import ex01_depthwise_separable as checks, load_exercise

pytestmark = pytest.mark.ex01
ex = load_exercise("ex01_depthwise_separable")


def test_by_hand_multiply_adds_and_parameters_match_the_library_count():
    checks.check_by_hand(ex)


def test_multiply_adds_and_cost_ratio_match_the_library_count():
    checks.check_macs(ex)


def test_depthwise_forward_matches_the_reference():
    checks.check_depthwise_forward(ex)


def test_depthwise_backward_matches_numerical_gradient():
    checks.check_depthwise_backward(ex)


def test_depthwise_numba_kernels_match_the_library_and_agree_across_threads():
    checks.check_depthwise_kernels(ex)


def test_timing_returns_four_positive_times():
    checks.check_timing(ex)


def test_pointwise_forward_matches_the_reference():
    checks.check_pointwise_forward(ex)


def test_pointwise_backward_matches_numerical_gradient():
    checks.check_pointwise_backward(ex)
