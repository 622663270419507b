"""``python -m edgekd``: the same command line as the ``edgekd`` script (used by ``torchrun -m edgekd``)."""

from edgekd._entry import main

if __name__ == "__main__":
    main()
