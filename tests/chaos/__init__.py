"""The kill harness: `python -m tests.chaos --kills 200` (see __main__)."""
