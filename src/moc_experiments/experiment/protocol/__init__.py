"""`moc-lab run demo | smoke | paper`: the paper's protocol on real text, end to end.

    from moc_experiments.experiment.protocol import load_experiment, run_experiment
    results = run_experiment(load_experiment("demo"))      # runs/demo/{results.json, report.md, *.png}

Every model pretrains on the same tokens, then fine-tunes (IFT) with the same recipe; after each phase
we measure validation loss, router usage and the knowledge probes, over several seeds.

- :mod:`.config`: the experiment's dataclasses, presets (``presets/``) and loader;
- :mod:`.data`: the corpus, tokenizer and prepared token files, the probes' knowledge-free baselines;
- :mod:`.models`: the compared models (MoC, its backbone, the iso-FLOP dense model) and each phase's config;
- :mod:`.plan`: what a run would train (``--plan``), and the model and phase records of results.json;
- :mod:`.jobs`: one training or probe job on the worker pool;
- :mod:`.runner`: the whole experiment (jobs, resume, results.json);
- :mod:`.report`: report.md from :mod:`.summary` (the numbers), :mod:`.verdict` (the findings) and
  :mod:`.plots`.
"""

from moc_experiments.experiment.protocol.config import ExperimentConfig, experiment_presets, load_experiment
from moc_experiments.experiment.protocol.report import write_report
from moc_experiments.experiment.protocol.runner import run_experiment

__all__ = ["ExperimentConfig", "experiment_presets", "load_experiment", "run_experiment", "write_report"]
