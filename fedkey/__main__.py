"""``python -m fedkey``: the ``fedkey`` command line (used where the console script may not be on PATH)."""

from fedkey.cli import app

app()
