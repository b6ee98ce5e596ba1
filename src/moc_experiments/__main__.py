"""``python -m moc_experiments``: the same as the ``moc-lab`` command."""

from moc_experiments.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
