"""Exercise 05: `python -m pytest exercises -m ex05`. Checks live in exercises/checks/."""

import pytest

from exercises.checks import ex05_multipliers as checks, load_exercise

pytestmark = pytest.mark.ex05
ex = load_exercise("ex05_multipliers")


def test_v1_multiply_adds_predicted_from_the_table_match_the_counter():
    checks.check_v1_prediction(ex)


def test_latency_is_measured_in_eval_mode_after_a_warm_up_on_one_image_in_seconds():
    checks.check_measurements(ex)
