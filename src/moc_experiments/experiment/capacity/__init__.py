"""`moc-lab run capacity`: how much knowledge does a model store, where, and at what FLOP cost?

    from moc_experiments.experiment.capacity import load_capacity, run_capacity
    results = run_capacity(load_capacity("capacity-smoke"))   # runs/capacity-smoke/{results.json,report.md}

Every model trains from scratch on the same synthetic knowledge world for the same run length with the
same seeds; then we measure what it knows (exact recall, knowledge in bits, the answer-type control) and
where (memory off, routed chapters shuffled), optionally after instruction fine-tuning too.

- :mod:`.config`: the experiment's dataclasses, presets and loader;
- :mod:`.data`: the world (single-token or compositional), real text, batches (padded or packed);
- :mod:`.metrics`: recall, bits, answer type, the memory-off and shuffled-chapter ablations;
- :mod:`.models`: parameters and FLOPs per token of the compared models;
- :mod:`.train`: one run (train, measure, fine-tune, measure);
- :mod:`.pipeline`: the whole experiment (jobs on a worker pool, resume, results.json);
- :mod:`.report`: report.md, assembled from :mod:`.analysis` (the numbers), :mod:`.tables`, :mod:`.findings`
  and :mod:`.figures` (with :mod:`.formatting` for numbers as text).
"""

from moc_experiments.experiment.capacity.config import (
    PRESET_DIR,
    CapacityConfig,
    capacity_presets,
    is_capacity,
    load_capacity,
    model_config,
)
from moc_experiments.experiment.capacity.data import make_world, mean_doc_tokens, text_corpus
from moc_experiments.experiment.capacity.metrics import (
    chapters_shuffled,
    knowledge_bits,
    memory_off,
    recall,
    recall_and_type,
    recalls,
)
from moc_experiments.experiment.capacity.models import flops_per_token
from moc_experiments.experiment.capacity.pipeline import capacity_plan, run_capacity
from moc_experiments.experiment.capacity.train import CapacityJob, train_run
from moc_experiments.experiment.pool import RESULTS_FILE

__all__ = [
    "PRESET_DIR", "RESULTS_FILE", "CapacityConfig", "CapacityJob", "capacity_plan", "capacity_presets",
    "chapters_shuffled", "flops_per_token", "is_capacity", "knowledge_bits", "load_capacity", "make_world",
    "mean_doc_tokens", "memory_off", "model_config", "recall", "recall_and_type", "recalls", "run_capacity",
    "text_corpus", "train_run",
]  # fmt: skip
