"""The seeds' dropout entry point: the same command line as main.py."""

import sys

from main import main

if __name__ == "__main__":
    sys.exit(main())
