"""Experiments: the paper's protocol end to end (``moc-lab run``, ``moc-lab demo``) and its report.

from moc_experiments.experiment import load_experiment, run_experiment
exp = load_experiment("demo", ["seeds=2"])          # presets: demo, smoke, paper; or a YAML file
results = run_experiment(exp)                        # runs/demo/{results.json, report.md, *.png}

from moc_experiments.experiment.protocol.report import write_report
write_report("runs/demo/results.json")              # regenerate the report from the results
"""

from moc_experiments.errors import ExperimentError
from moc_experiments.experiment.protocol.config import ExperimentConfig, experiment_presets, load_experiment
from moc_experiments.experiment.protocol.runner import run_experiment

__all__ = ["ExperimentConfig", "ExperimentError", "experiment_presets", "load_experiment", "run_experiment"]
