"""Exercise 05: `pytest exercises -m ex05`. Checks live in exercises/checks/."""

import pytest

from exercises.checks import ex05_multipliers as checks, load_exercise

pytestmark = pytest.mark.ex05
ex = load_exercise("ex05_multipliers")


def test_v1_multiply_adds_predicted_from_the_table_match_the_counter():
    checks.check_v1_prediction(ex)


def test_measurements_have_one_row_per_width_with_the_library_cost_and_a_positive_time():
    checks.check_measurements(ex)
