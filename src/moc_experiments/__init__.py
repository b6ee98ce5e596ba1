"""The demo application built on the :mod:`moc` library: the experiment runner and its offline corpus.

- :mod:`moc_experiments.experiment`: the experiment protocol (``moc demo`` / ``moc experiment`` /
  ``moc report``), the capacity experiment, their presets, reports and plots.
- :mod:`moc_experiments.corpus`: the offline demo corpus (text, facts, probes, IFT data) and the
  synthetic knowledge world (``python -m moc_experiments.corpus``).

It depends on ``moc``; ``moc`` never imports it, except lazily inside the CLI subcommands that run it.
"""
