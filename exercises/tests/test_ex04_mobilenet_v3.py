"""Exercise 04: `python -m pytest exercises -m ex04`. Checks live in exercises/checks/."""

import pytest

from exercises.checks import ex04_mobilenet_v3 as checks, load_exercise

pytestmark = pytest.mark.ex04
ex = load_exercise("ex04_mobilenet_v3")


def test_hardswish_forward_matches_the_reference():
    checks.check_hardswish_forward(ex)


def test_hardswish_backward_matches_numerical_gradient_and_pytorch_at_the_kinks():
    checks.check_hardswish_backward(ex)


def test_hardsigmoid_forward_matches_the_reference():
    checks.check_hardsigmoid_forward(ex)


def test_hardsigmoid_backward_matches_numerical_gradient_and_pytorch_at_the_kinks():
    checks.check_hardsigmoid_backward(ex)


def test_squeeze_excitation_matches_the_library_layer_with_the_same_weights():
    checks.check_squeeze_excitation(ex)


def test_bneck_matches_the_library_block_with_the_same_weights():
    checks.check_bneck(ex)
