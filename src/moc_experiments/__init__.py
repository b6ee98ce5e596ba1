"""The lab: experiments built on the :mod:`moc` library, with their own command, ``moc-lab``.

- :mod:`moc_experiments.cli`: ``moc-lab run | demo | report | config`` (also ``python -m moc_experiments``);
- :mod:`moc_experiments.experiment`: the two kinds of experiment behind one shape
  (:mod:`~moc_experiments.experiment.kinds`): the paper's protocol on real text and the knowledge
  capacity experiment, their presets, worker pool, reports and plots;
- :mod:`moc_experiments.corpus`: the offline demo corpus (text, facts, probes, IFT data) and the
  synthetic knowledge world (``python -m moc_experiments.corpus``);
- :mod:`moc_experiments.errors`: its errors, subclasses of :class:`moc.errors.MocError`.

It depends on ``moc``; ``moc`` never imports it (``tests/test_library_boundary.py``).
"""
