"""The checks that judge an exercise module, one file per exercise, plus the shared helpers in
`common`. The exercise tests call them on the learner's module (or the solutions'), and
`tests/test_exercises.py` calls them on deliberately wrong implementations."""

from .common import load_exercise  # noqa: F401
