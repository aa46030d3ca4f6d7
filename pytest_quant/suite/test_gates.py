"""The gate suite: checkpoint structure, accuracy against the base, BOS sensitivity, fidelity, hardware."""

from __future__ import annotations

import pytest

from pytest_quant.build.checkpoint import Checkpoint
from pytest_quant.build.checks import checkpoint_problems, generate
from pytest_quant.session.gate_runs import run_fidelity
from pytest_quant.plugin.rows import conclude
from pytest_quant.session.session import Case, QuantSession, Target


def test_checkpoint_structure(quantized_checkpoint: Checkpoint) -> None:
    """compressed-tensors config, format, ignore list, packed weights, scale shapes, tokenizer, template."""
    problems = checkpoint_problems(quantized_checkpoint.path, quantized_checkpoint.recipe)
    assert not problems, "\n".join(problems)


def test_checkpoint_generates(quantized_checkpoint: Checkpoint) -> None:
    """The checkpoint loads back in transformers and answers a prompt with text."""
    text = generate(quantized_checkpoint.path, "What is the capital of France?")
    assert len(text.strip()) > 0, "the quantized model generated nothing"


@pytest.mark.suite_accuracy
def test_accuracy(quantized_checkpoint: Checkpoint, suite_task: str) -> None:
    """Each --quant-task's metric recovers --quant-recovery of the base model's, on paired items."""


@pytest.mark.suite_bos
def test_bos_sensitivity(quantized_checkpoint: Checkpoint, suite_task: str) -> None:
    """Exactly one BOS per prompt when asked; the quantized model loses no more without BOS than the base."""


def test_fidelity(request: pytest.FixtureRequest, quant_session: QuantSession, quant_case: Case) -> None:
    """Next-token distributions stay close to the base model's (KL and top-1 agreement per prompt)."""
    conclude(request.node, [run_fidelity(quant_session, quant_case)], quant_session.settings.get("undecided"))


def test_vllm_kernel(quant_session: QuantSession, quant_case: Case) -> None:
    """The checkpoint runs on the kernel its backend itself names for this scheme on this device (vLLM's choice)."""
    name = quant_session.eval_backend(quant_case.scheme)
    backend = quant_session.supported(name)
    expected = backend.kernel(quant_case.scheme)
    if expected is None:
        pytest.skip(quant_session.why_other(quant_case.scheme)
                    or f"checks the backend's kernel choice; {backend.title} names no kernel for {quant_case.scheme}")
    task = quant_session.settings.get("task")[0]
    ids = quant_session.order(task)[:quant_session.looks(task)[0]]
    result = quant_session.items(Target.of(quant_case, backend=name), quant_session.run(task), ids)
    assert expected in result.kernels, f"{backend.title} used {result.kernels}, its kernel choice here is {expected}"
