import sys

from hyperbolic.study.command import main

if __name__ == "__main__":
    sys.exit(main())
