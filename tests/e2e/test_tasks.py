"""lm-eval's task names are looked up in the folders whose files mention them (evaluate/tasks.py ``_manager``): the
answer must be the full index's, for tasks, groups and tags (tags declared only in include templates too)."""

from __future__ import annotations

import json
import random
from typing import Any

from pytest_quant.evaluate import tasks


def _config(manager: Any, name: str) -> str:
    try:
        return json.dumps(manager._factory._load_full_config(manager.task_index[name]), sort_keys=True, default=str)
    except Exception as e:  # some lm-eval tasks need extra packages to load: the same error either way
        return type(e).__name__


def test_partial_index_answers_as_the_full_index() -> None:
    from lm_eval.tasks import TaskManager

    full = TaskManager()
    rng = random.Random(17)
    names = rng.sample(sorted(full.all_subtasks), 8) + rng.sample(sorted(full.all_groups), 3)
    names += rng.sample(sorted(full.all_tags), 3) + ["gsm8k", "mmlu", "truthfulqa_multi", "acp_bench", "no_such_task"]
    for name in names:
        tasks._manager.cache_clear()
        part = tasks._manager(name)
        kinds = [name in m.all_subtasks if m else False for m in (full, part)], \
                [name in m.all_groups if m else False for m in (full, part)], \
                [name in m.all_tags if m else False for m in (full, part)]
        assert all(a == b for a, b in kinds), (name, kinds)
        if name in full.all_subtasks:
            assert _config(full, name) == _config(part, name), name
