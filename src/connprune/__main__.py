"""``python -m connprune ...`` (and ``torchrun ... -m connprune ...``): the ``connprune`` command line."""

from connprune.cli import main

if __name__ == "__main__":
    main()
