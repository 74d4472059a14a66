"""Exercises: stubs a learner completes, one file per notebook (exNN_*.py), with reference
solutions in `exercises.solutions` and the checks that judge both in `exercises.checks`."""
