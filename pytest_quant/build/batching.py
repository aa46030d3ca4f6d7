"""Calibration in padded batches that gathers the statistics one sample at a time would.

llm-compressor 0.14 calibrates one sample per forward pass by default (``batch_size=1``). Its batching
collators either cut every sample of a batch to the shortest (``truncation``: tokens lost) or pad
(``padding``), and padded positions then enter the statistics (line numbers of llmcompressor 0.14.0.1):

- GPTQ adds every row of a Linear layer's input to its Hessian: ``modifiers/gptq/helpers.py``,
  ``accumulate_hessian`` (line 40): ``inp.reshape((-1, inp.shape[-1]))`` (line 62), then
  ``hessian += inp.matmul(inp.t())`` (line 75), with no mask; it counts ``inp.shape[0]`` samples (line 58).
- SmoothQuant takes each channel's min and max over every row of the smoothed norm's output:
  ``modifiers/transform/smoothquant/base.py``, ``_setup_scale_hooks`` (line 251): ``out.view(-1, hidden_dim)``
  then ``torch.min`` / ``torch.max`` over dim 0 (lines 264-266); the range ``max - min`` sets the smoothing
  scales in ``_apply_smoothing`` (lines 345-348).

So here batches are sorted by length (longest first, as llm-compressor's ``LengthAwareSampler``), padded on
the right, and while llm-compressor's calibration pass runs (its hooks enabled, ``state.current_batch_idx``
naming the batch) two hooks keep padded positions out:

- every ``nn.Linear`` sees its input with padded rows set to zero, which add nothing to ``X X^T``;
- every norm layer's output has each padded row replaced by the sequence's last real row, which moves no
  channel's min or max.

With right padding and causal attention no real token attends to a padded one, so real tokens' activations
are those of the unpadded samples. GPTQ counts samples per sequence, as at batch size 1.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch


def padded_batches(dataset: Any, batch_size: int, pad_id: int) -> tuple[Any, list[torch.Tensor]]:
    """A DataLoader of right-padded, length-sorted batches and each batch's padding mask (True = padded)."""
    from torch.utils.data import DataLoader

    rows = [list(map(int, ids)) for ids in dataset["input_ids"]]
    order = sorted(range(len(rows)), key=lambda i: (-len(rows[i]), i))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    masks = []
    for batch in batches:
        width = max(len(rows[i]) for i in batch)
        masks.append(torch.tensor([[j >= len(rows[i]) for j in range(width)] for i in batch]))

    def collate(features: list[list[int]]) -> dict[str, torch.Tensor]:
        width = max(len(f) for f in features)
        ids = torch.tensor([f + [pad_id] * (width - len(f)) for f in features])
        mask = torch.tensor([[1] * len(f) + [0] * (width - len(f)) for f in features])
        return {"input_ids": ids, "attention_mask": mask}

    return DataLoader(rows, batch_sampler=batches, collate_fn=collate), masks


def _current(masks: list[torch.Tensor], device: torch.device) -> torch.Tensor | None:
    """The padding mask of the batch llm-compressor is calibrating on, or None outside calibration passes."""
    from llmcompressor.core import active_session
    from llmcompressor.modifiers.utils.hooks import HooksMixin

    if HooksMixin._HOOKS_DISABLED:  # noqa: SLF001  (the propagation pass: statistics are not gathered)
        return None
    index = active_session().state.current_batch_idx
    if not 0 <= index < len(masks):
        return None
    return masks[index].to(device)


def _check(mask: torch.Tensor, x: torch.Tensor, module: torch.nn.Module) -> None:
    if x.dim() != 3 or tuple(x.shape[:2]) != tuple(mask.shape):
        raise RuntimeError(f"batched calibration cannot mask padding for {type(module).__name__}: its input has "
                           f"shape {tuple(x.shape)}, the batch {tuple(mask.shape)}; use a calibration batch size of 1")


@contextmanager
def pad_masking(model: torch.nn.Module, masks: list[torch.Tensor]) -> Iterator[None]:
    """Keep padded positions out of GPTQ's and SmoothQuant's statistics while calibrating ``model``."""
    def zero_padded_rows(module: torch.nn.Module, args: tuple) -> tuple | None:
        mask = _current(masks, args[0].device)
        if mask is None:
            return None
        _check(mask, args[0], module)
        return (args[0].masked_fill(mask.unsqueeze(-1), 0), *args[1:])

    def repeat_last_real_row(module: torch.nn.Module, args: tuple, out: Any) -> Any:
        x = out[0] if isinstance(out, tuple) else out
        mask = _current(masks, x.device)
        if mask is None or x.dim() != 3:  # per-head norms (4-D) feed no smoothed layer
            return None
        _check(mask, x, module)
        last = (~mask).sum(dim=1, keepdim=True) - 1
        position = torch.where(mask, last, torch.arange(mask.shape[1], device=x.device).expand_as(mask))
        x = x.gather(1, position.unsqueeze(-1).expand_as(x))
        return (x, *out[1:]) if isinstance(out, tuple) else x

    handles = []
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            handles.append(module.register_forward_pre_hook(zero_padded_rows))
        elif "norm" in type(module).__name__.lower():
            handles.append(module.register_forward_hook(repeat_last_real_row))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
