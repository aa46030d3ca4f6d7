"""Calibration data, prepared exactly as vLLM's W4A16 / W8A8 guides do.

Guide steps: take ``num_samples`` rows, shuffle with seed 42, render each conversation with the
tokenizer's chat template, tokenize with ``padding=False``, ``truncation=True``, ``max_length`` and
``add_special_tokens=False`` (the template already holds the special tokens).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_quant.infra.errors import QuantEnvironmentError, QuantUsageError
from pytest_quant.infra.files import digest

DATA_DIR = Path(__file__).parents[1] / "data"
BUNDLED_CALIBRATION = DATA_DIR / "calibration" / "chats.jsonl"
SHUFFLE_SEED = 42


@dataclass(frozen=True)
class CalibrationSpec:
    source: str = "bundled"  # 'bundled', hub 'dataset_id[:split]', or a .jsonl/.json/.parquet path
    num_samples: int = 512
    max_seq_length: int = 2048
    batch_size: int | str = 1  # samples per calibration batch, or 'auto' (chosen per device by the build)

    def __post_init__(self) -> None:
        for name in ("num_samples", "max_seq_length"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise QuantUsageError(f"calibration {name} must be a positive integer, got {v!r}")
        b = self.batch_size
        if b != "auto" and (not isinstance(b, int) or isinstance(b, bool) or b <= 0):
            raise QuantUsageError(f"calibration batch_size must be a positive integer or 'auto', got {b!r}")


def check_jsonl(path: Path) -> None:
    """Refuse a JSON-lines file that is empty or has a line that is not a JSON object, naming the line."""
    rows = 0
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise QuantUsageError(f"calibration file {path}, line {number}: not valid JSON ({e})") from None
            if not isinstance(row, dict):
                raise QuantUsageError(f"calibration file {path}, line {number}: expected a JSON object with "
                                      f"'messages' or 'text', got {type(row).__name__}")
            if "messages" not in row and "text" not in row:
                raise QuantUsageError(f"calibration file {path}, line {number}: needs a 'messages' (chat) or "
                                      f"'text' field; it has {', '.join(row) or 'none'}")
            rows += 1
    if rows == 0:
        raise QuantUsageError(f"calibration file {path} has no rows")


def _load_rows(source: str, num_samples: int) -> Any:
    from datasets import Dataset, load_dataset

    if source == "bundled":
        path = BUNDLED_CALIBRATION
    else:
        path = Path(source).expanduser()
    if source == "bundled" or path.suffix in {".jsonl", ".json", ".parquet"}:
        if not path.is_file():
            raise QuantUsageError(f"calibration file {source!r} does not exist")
        if path.suffix == ".jsonl":
            check_jsonl(path)
        fmt = "parquet" if path.suffix == ".parquet" else "json"
        try:
            ds = load_dataset(fmt, data_files=str(path), split="train")
        except Exception as e:  # datasets raises many types for a malformed file; name the file and the cause
            cause = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise QuantUsageError(f"calibration file {path} cannot be read as {fmt}: {cause}") from None
    else:
        dataset_id, _, split = source.partition(":")
        try:
            ds = load_dataset(dataset_id, split=f"{split or 'train'}[:{num_samples}]")
        except (ConnectionError, OSError) as e:
            raise QuantEnvironmentError(
                f"cannot load calibration dataset {source!r} from the hub ({type(e).__name__}: {e}). "
                "Connect to the network, or use --quant-calibration bundled or a local .jsonl file") from None
        except ValueError as e:
            raise QuantUsageError(f"calibration dataset {source!r}: {e}") from None
    if not isinstance(ds, Dataset) or len(ds) == 0:
        raise QuantUsageError(f"calibration data {source!r} is empty")
    if "messages" not in ds.column_names and "text" not in ds.column_names:
        raise QuantUsageError(f"calibration data {source!r} needs a 'messages' (chat) or 'text' column; "
                              f"it has {ds.column_names}")
    return ds.select(range(min(num_samples, len(ds))))


def prepare_calibration(spec: CalibrationSpec, tokenizer: Any) -> Any:
    """A tokenized ``datasets.Dataset`` (input_ids, attention_mask) ready for ``oneshot``."""
    ds = _load_rows(spec.source, spec.num_samples).shuffle(seed=SHUFFLE_SEED)
    has_template = getattr(tokenizer, "chat_template", None) is not None

    def render(example: dict[str, Any]) -> dict[str, str]:
        if "messages" in example and example["messages"]:
            if not has_template:
                raise QuantUsageError("calibration data has chat 'messages' but the tokenizer has no chat "
                                      "template; use a 'text' column or a model with a template")
            return {"text": tokenizer.apply_chat_template(example["messages"], tokenize=False)}
        return {"text": example["text"]}

    ds = ds.map(render)

    def tokenize(sample: dict[str, Any]) -> Any:
        return tokenizer(sample["text"], padding=False, max_length=spec.max_seq_length, truncation=True,
                         add_special_tokens=False)

    return ds.map(tokenize, remove_columns=ds.column_names)


def calibration_digest(ds: Any) -> str:
    """Hash of the exact token ids fed to calibration (the cache key part for data)."""
    return digest([list(map(int, ids)) for ids in ds["input_ids"]])

