"""pytest-xdist compatibility: each worker's GPUs, and loadgroup's group suffix where pytest 9.2 drops it."""

from __future__ import annotations

import os

import pytest

from pytest_quant.infra.hardware import visible_gpus, worker_gpus


def assign_worker_gpus(config: pytest.Config) -> None:
    """Under pytest-xdist, give each worker its own GPUs (CUDA_VISIBLE_DEVICES), unless the user set them."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None or "CUDA_VISIBLE_DEVICES" in os.environ:
        return
    gpus = worker_gpus(int(workerinput["workerid"][2:]), int(workerinput["workercount"]), visible_gpus())
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)


def group_in_node_id(item: pytest.Item, group: str) -> None:
    """xdist's loadgroup sends the group to the scheduler as a node-id suffix (``id@group``), set by assigning
    ``item._nodeid``; pytest 9.2 keeps node ids in ``item._id`` and ignores it, so tests are scheduled one by one
    (pytest-xdist#1386; seen on two H100s: both checkpoints on one worker). Set the suffix where it is missing."""
    if not getattr(item.config.option, "loadgroup", False) or item.nodeid.endswith(f"@{group}"):
        return
    node_id = getattr(item, "_id", None)
    if node_id is not None and hasattr(node_id, "parse"):
        item._id = type(node_id).parse(f"{item.nodeid}@{group}")
