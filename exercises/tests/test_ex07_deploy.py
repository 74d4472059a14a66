"""Exercise 07: `python -m pytest exercises -m ex07`. Checks live in exercises/checks/."""

import pytest

from exercises.checks import ex07_deploy as checks, load_exercise

pytestmark = pytest.mark.ex07
ex = load_exercise("ex07_deploy")


def test_folded_conv_gives_the_conv_followed_by_eval_mode_batchnorm():
    checks.check_fold(ex)
