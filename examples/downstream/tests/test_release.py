"""Release gates for our quantized SmolLM2."""

import pytest


@pytest.mark.quant_accuracy(task="quant_facts", metric="acc", min_value=0.4, recovery=0.9)
def test_knowledge_is_kept(quantized_checkpoint):
    assert quantized_checkpoint.recipe.scheme == "W8A8"


def test_still_knows_paris(capital_of_france):
    assert "Paris" in capital_of_france
