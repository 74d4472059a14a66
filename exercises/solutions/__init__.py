"""Reference solutions: the exercise files with every stub filled in (same names, same
signatures). Read them after trying; `MINIMOBILE_EXERCISES=solutions pytest exercises` runs the
exercise tests against them."""
