"""`python -m exercises hint ex03`: the full recipe of one exercise (the second tier of hints;
the first tier is in exercises/README.md and in every failure message)."""

import sys

from exercises.hints import RECIPES


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] != "hint" or argv[1] not in RECIPES:
        print("usage: python -m exercises hint exNN   (exNN one of "
              f"{', '.join(RECIPES)}): the full recipe; try the first hint in the failure first")
        return 2
    print(f"{argv[1]}, the full recipe (spoilers):\n")
    print(RECIPES[argv[1]])
    return 0


if __name__ == "__main__":
    sys.exit(main())
