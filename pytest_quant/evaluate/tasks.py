"""The bundled lm-eval tasks, written as task YAML with absolute data paths.

- ``quant_facts``: four-way multiple-choice general knowledge (acc, acc_norm).
- ``quant_arith``: grade-school word problems, ``generate_until`` with ``#### N`` targets and the
  gsm8k ``strict-match`` / ``flexible-extract`` filters, 5-shot from its own train split.
- ``quant_text``: perplexity (``loglikelihood_rolling``) on bundled paragraphs.

Any other name is passed to lm-eval unchanged (gsm8k, arc_easy, ... for users who have the data).
"""

from __future__ import annotations

import json

import random
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from pytest_quant.infra.errors import QuantUsageError
from pytest_quant.infra.files import atomic_write_text, digest, file_digest

DATA = Path(__file__).parents[1] / "data" / "tasks"
Value = Any  # one item's value of a metric: a float, or a [loglikelihood, weight] pair
LOWER_IS_BETTER = ("perplexity", "bits_per_byte", "kl", "loss")


def _files(**splits: str) -> dict[str, Any]:
    return {"data_files": {split: str(DATA / name) for split, name in splits.items()}}


BUNDLED_TASKS: dict[str, dict[str, Any]] = {
    "quant_facts": {
        "dataset_path": "json",
        "dataset_kwargs": _files(test="quant_facts_test.jsonl", validation="quant_facts_dev.jsonl"),
        "test_split": "test",
        "fewshot_split": "validation",
        "output_type": "multiple_choice",
        "doc_to_text": "Question: {{question}}\nAnswer:",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{answer}}",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                        {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0},
    },
    "quant_arith": {
        "dataset_path": "json",
        "dataset_kwargs": _files(train="quant_arith_train.jsonl", test="quant_arith_test.jsonl"),
        "training_split": "train",
        "fewshot_split": "train",
        "test_split": "test",
        "output_type": "generate_until",
        "num_fewshot": 5,
        "doc_to_text": "Question: {{question}}\nAnswer:",
        "doc_to_target": "{{answer}}",
        "target_delimiter": " ",
        "fewshot_delimiter": "\n\n",
        "generation_kwargs": {"until": ["Question:", "\n\n", "<|im_end|>"], "do_sample": False,
                              "temperature": 0.0, "max_gen_toks": 64},
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                         "ignore_case": True, "ignore_punctuation": False,
                         "regexes_to_ignore": [",", "\\$", "(?s).*#### ", "\\.$"]}],
        "filter_list": [
            {"name": "strict-match", "filter": [{"function": "regex", "regex_pattern": "#### (\\-?[0-9\\.\\,]+)"},
                                                {"function": "take_first"}]},
            {"name": "flexible-extract", "filter": [{"function": "regex", "group_select": -1,
                                                     "regex_pattern": "(-?[$0-9.,]{2,})|(-?[0-9]+)"},
                                                    {"function": "take_first"}]},
        ],
        "metadata": {"version": 1.0},
    },
    "quant_text": {
        "dataset_path": "json",
        "dataset_kwargs": _files(test="quant_text_test.jsonl"),
        "test_split": "test",
        "output_type": "loglikelihood_rolling",
        "num_fewshot": 0,
        "doc_to_text": "",
        "doc_to_target": "{{text}}",
        "metric_list": [{"metric": "word_perplexity"}, {"metric": "byte_perplexity"}, {"metric": "bits_per_byte"}],
        "metadata": {"version": 1.0},
    },
}


PRIMARY_METRIC = {"quant_facts": "acc", "quant_arith": "exact_match,strict-match", "quant_text": "word_perplexity",
                  "gsm8k": "exact_match,strict-match", "wikitext": "word_perplexity"}


def primary_metric(task: str) -> str:
    return PRIMARY_METRIC.get(task, "acc")


def _metric_names(config: dict[str, Any]) -> set[str]:
    """'metric' or 'metric,filter' for every metric and filter of a task config (lm-eval's naming)."""
    metrics = [m["metric"] for m in config.get("metric_list") or [] if isinstance(m.get("metric"), str)]
    filters = [f["name"] for f in config.get("filter_list") or []] or ["none"]
    return {m if f == "none" else f"{m},{f}" for m in metrics for f in filters}


@lru_cache(maxsize=None)
def _manager(task: str) -> Any:
    """lm-eval's task index over the folders of its task files that mention ``task`` (None: no file does, so it is
    no lm-eval task). Indexing every folder takes 13 s here, these few about 1 s; the task's own entry, and whether
    it is a task, group or tag, come from the files that name it either way (checked against the full index on
    a sample of its names, tests/e2e/test_tasks.py)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    needle = task.encode()
    files = [p for p in (Path(lm_eval.__file__).parent / "tasks").rglob("*") if p.suffix not in (".py", ".pyc", ".md")
             and p.is_file()]  # task YAML, and templates they include under any name (a tag can live only there)
    found = {p.parent for p in files if needle in p.read_bytes()}
    folders = [str(f) for f in sorted(found) if not any(a in found for a in f.parents)]  # each indexed once
    return TaskManager(include_path=folders, include_defaults=False) if folders else None


@lru_cache(maxsize=None)
def _external_config(task: str) -> dict[str, Any]:
    manager = _manager(task)
    if manager is None or task not in manager.all_tasks:
        raise QuantUsageError(f"unknown lm-eval task {task!r}; bundled tasks are {', '.join(BUNDLED_TASKS)}, and any "
                              "task lm-eval lists with `lm_eval --tasks list`")
    if task not in manager.all_subtasks:
        raise QuantUsageError(f"lm-eval task {task!r} is a group or tag; name its tasks, whose items can be paired")
    # lm-eval 0.4.13 has no public accessor for one task's resolved YAML
    return manager._factory._load_full_config(manager.task_index[task])  # noqa: SLF001


def _hub_reachable() -> bool:
    """Whether the Hugging Face Hub answers (3 s at most); False in the hub libraries' offline modes."""
    import os
    import socket

    if any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
        return True
    except OSError:
        return False


def _cached(path: str) -> bool:
    """Whether a hub dataset has a local copy (the datasets cache or the hub cache)."""
    import os

    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    datasets_cache = Path(os.environ.get("HF_DATASETS_CACHE", home / "datasets"))
    hub_cache = Path(os.environ.get("HF_HUB_CACHE", home / "hub"))
    return (datasets_cache / path.replace("/", "___")).is_dir() or (hub_cache / f"datasets--{path.replace('/', '--')}").is_dir()


@lru_cache(maxsize=None)
def check_available(task: str, config: str) -> None:
    """Refuse, before anything loads, a task whose data lives on the Hugging Face Hub when the hub cannot be
    reached and no copy is cached (``config``: the task's resolved config as JSON). datasets would otherwise retry
    for half a minute and end in a ConnectionError that names neither the task nor what to do."""
    cfg = json.loads(config)
    path = cfg.get("dataset_path")
    if not path or "/" not in path or Path(path).exists() or _cached(path) or _hub_reachable():
        return
    name = f" (config {cfg['dataset_name']!r})" if cfg.get("dataset_name") else ""
    raise QuantUsageError(
        f"task {task!r} reads dataset {path!r}{name} from the Hugging Face Hub, which this machine cannot reach, "
        "and no copy is cached: run it once where the hub is reachable (datasets keeps a copy; HF_DATASETS_OFFLINE=1 "
        f"then works offline), or use a bundled task ({', '.join(BUNDLED_TASKS)}); a YAML config runs the task it "
        "names (--quant-task does not change it)")


def task_metrics(task: str) -> set[str]:
    """The metrics a task produces ('acc', 'exact_match,strict-match', ...); unknown task, or a hub task that
    cannot be had offline: a usage error."""
    if task in BUNDLED_TASKS:
        return _metric_names(BUNDLED_TASKS[task])
    config = _external_config(task)
    check_available(task, json.dumps(config, sort_keys=True, default=str))
    return _metric_names(config)


def check_metric(task: str, metric: str) -> None:
    """Refuse, before anything runs, a metric the task does not produce."""
    known = task_metrics(task)
    if known and metric not in known:
        raise QuantUsageError(f"task {task!r} has no metric {metric!r}; it gives {', '.join(sorted(known))}")


@lru_cache(maxsize=None)
def task_size(task: str) -> int:
    """How many items the task's evaluation split has."""
    if task in BUNDLED_TASKS:
        cfg = BUNDLED_TASKS[task]
        path = Path(cfg["dataset_kwargs"]["data_files"][cfg["test_split"]])
        return sum(1 for line in path.read_text().splitlines() if line.strip())
    _external_config(task)
    return len(_manager(task).load([task])["tasks"][task].eval_docs)


def item_order(task: str, seed: int | None) -> list[int]:
    """The order in which a task's items are drawn: a seeded random permutation, or dataset order (None)."""
    ids = list(range(task_size(task)))
    if seed is not None:
        random.Random(f"{task}:{seed}").shuffle(ids)
    return ids


def fewshot(task: str, given: int | None) -> int | None:
    """The few-shot count a run of ``task`` uses: 0 for a perplexity task, else ``given``; unset, a bundled task's
    own count (what lm-eval would use, so that an unset count and the same count given share results). None for
    another lm-eval task: its count is whatever lm-eval's task file says."""
    cfg = BUNDLED_TASKS.get(task)
    if cfg is not None and cfg.get("output_type") == "loglikelihood_rolling":
        return 0
    if given is None and cfg is not None:
        return int(cfg.get("num_fewshot", 0))
    return given


def lm_eval_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("lm_eval")


def task_digest(task: str, lm_eval_version: str) -> str:
    """Hash of a task's definition and data (for bundled ones: the data files' contents, never their paths, so
    another install or a moved checkout has the same digest) or its name and lm-eval version."""
    if task not in BUNDLED_TASKS:
        return digest({"task": task, "lm_eval": lm_eval_version})
    cfg = json.loads(json.dumps(BUNDLED_TASKS[task]))
    files = cfg["dataset_kwargs"].pop("data_files")
    data = {s: file_digest(Path(p)) for s, p in files.items()}
    return digest({"task": task, "config": cfg, "data": data})


def write_task_dir(out: Path) -> Path:
    """Write every bundled task's YAML into ``out`` (an lm-eval ``include_path``)."""
    for name, cfg in BUNDLED_TASKS.items():
        path, text = out / f"{name}.yaml", yaml.safe_dump({"task": name, **cfg}, sort_keys=False)
        if not path.is_file() or path.read_text() != text:
            atomic_write_text(path, text)  # other processes may be reading these files
    return out


def higher_is_better(metric: str) -> bool:
    """Whether larger values of ``metric`` are better: lm-eval's own answer (the ``higher_is_better`` its metric
    registry holds, for the name before a filter suffix: ``exact_match,strict-match``); by the name's words only for
    metrics lm-eval does not register (pytest-quant's ``kl``, a task's own ``loss``)."""
    known = _lm_eval_directions()
    name = metric.split(",")[0]
    if name in known:
        return known[name]
    return not any(word in metric.lower() for word in LOWER_IS_BETTER)


@lru_cache(maxsize=1)
def _lm_eval_directions() -> dict[str, bool]:
    """lm-eval's metric registry: metric name -> higher_is_better (empty where lm-eval is not installed)."""
    try:
        import lm_eval.api.metrics  # noqa: F401  (registers lm-eval's metrics; imports no torch)
        from lm_eval.api.registry import HIGHER_IS_BETTER_REGISTRY
    except ImportError:
        return {}
    return dict(HIGHER_IS_BETTER_REGISTRY)
