"""`python -m eikd_edge` (and `torchrun -m eikd_edge`) runs the CLI."""

from eikd_edge.cli import main

if __name__ == "__main__":
    main()
