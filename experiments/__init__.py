"""Experiment studies: grids of Flower simulations through the project's own apps.

Each study is one command, ``python -m experiments.<study>``, that runs its grid of cells
(one Flower simulation each, in its own process), skips the cells already finished,
shows progress, and writes ``results/<study>/``: ``rounds.csv`` (every round of every
run), ``cells.csv`` (one line per run: final figures, wall time, peak memory),
``report.md`` and PNG figures.
"""
