"""Recipes against real modules and llm-compressor's own modifiers (torch and llm-compressor, no model)."""

from __future__ import annotations

import pytest
import torch

from pytest_quant.build.recipes import RecipeSpec, check_shapes, to_modifiers
from pytest_quant.infra.errors import QuantUsageError


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj = torch.nn.Linear(576, 576)
        self.down_proj = torch.nn.Linear(1536, 576)
        self.lm_head = torch.nn.Linear(576, 100)


def test_group_size_that_does_not_divide_is_refused_with_advice() -> None:
    with pytest.raises(QuantUsageError) as e:
        check_shapes(Tiny(), RecipeSpec("W4A16"))
    msg = str(e.value)
    assert "q_proj (576)" in msg and "group_size=64" in msg and "auto" in msg
    assert "lm_head" not in msg
    assert check_shapes(Tiny(), RecipeSpec("W4A16", group_size="auto")).group_size == 64
    assert check_shapes(Tiny(), RecipeSpec("W4A16", group_size=32)).group_size == 32
    assert check_shapes(Tiny(), RecipeSpec("W8A8")).effective_group_size is None
    with pytest.raises(QuantUsageError, match="quantizes no layer"):
        check_shapes(Tiny(), RecipeSpec("W4A16", ignore=("re:.*",)))


def test_recipes_map_to_the_guides_modifiers() -> None:
    (gptq,) = to_modifiers(RecipeSpec("W4A16", group_size=64, actorder="group", dampening_frac=0.05))
    w = gptq.config_groups["group_0"].weights
    assert (w.num_bits, w.group_size, w.strategy, w.symmetric) == (4, 64, "group", True)
    assert gptq.ignore == ["lm_head"] and gptq.dampening_frac == 0.05 and gptq.actorder == "group"
    sq, gptq8 = to_modifiers(RecipeSpec("W8A8"))
    assert type(sq).__name__ == "SmoothQuantModifier" and sq.smoothing_strength == 0.8
    g = gptq8.config_groups["group_0"]
    assert (g.weights.num_bits, g.weights.strategy) == (8, "channel")
    assert (g.input_activations.num_bits, g.input_activations.strategy, g.input_activations.dynamic) == (8, "token", True)
