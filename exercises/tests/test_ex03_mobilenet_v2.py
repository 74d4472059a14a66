"""Exercise 03: `python -m pytest exercises -m ex03`. Checks live in exercises/checks/."""

import pytest

from exercises.checks import ex03_mobilenet_v2 as checks, load_exercise

pytestmark = pytest.mark.ex03
ex = load_exercise("ex03_mobilenet_v2")


def test_relu6_forward_matches_the_reference():
    checks.check_relu6_forward(ex)


def test_relu6_backward_matches_numerical_gradient_and_pytorch_at_the_kinks():
    checks.check_relu6_backward(ex)


def test_inverted_residual_matches_the_library_block_with_the_same_weights():
    checks.check_inverted_residual(ex)
