"""The layer-major reference is the eager fp32 model with validation outputs, bitwise, and checks generation
teacher-forced."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jetmoe import dtypes
from jetmoe.generate import generate
from jetmoe.model import JetMoeForCausalLM
from jetmoe.runner import EagerRunner
from tests.conftest import CONFIGS, make_model
from validate.cases import Case, default_cases, run_case
from validate.reference import reference_steps, teacher_forced_tokens

PROMPTS = [(5, 17, 9, 30), (8, 3), (12, 40, 41)]


def eager_reference(folder, dtype: str = "fp32") -> EagerRunner:
    """What the validator compared with before: the whole fp32 model in memory (fp16 / bf16: the drift control
    benchmarks/bench_fullsize.py computes layer-major)."""
    return EagerRunner(lambda: JetMoeForCausalLM.from_pretrained(folder, dtype=dtype), validation_outputs=True)


@pytest.fixture(scope="module", params=["tiny", "odd", "k3"])
def checkpoint(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    make_model(CONFIGS[request.param], seed=9).to(torch.bfloat16).save_pretrained(folder)  # stored bf16, as 8b
    return folder


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_bitwise_equal_to_the_eager_model(checkpoint, dtype):
    with eager_reference(checkpoint, dtype) as runner:
        cases = default_cases(runner.config, decode_steps=3, long_context=20) + [Case("one row", PROMPTS[:1])]
        eager = {case.name: run_case(runner, case) for case in cases}
    layered = reference_steps(checkpoint, cases, dtype=dtypes.float_dtype(dtype).torch)
    compared = 0
    for case in cases:
        assert [s.label for s in layered[case.name]] == [s.label for s in eager[case.name]]
        for ours, theirs in zip(layered[case.name], eager[case.name], strict=True):
            assert list(ours.feeds) == list(theirs.feeds) and list(ours.outputs) == list(theirs.outputs)
            for name in theirs.feeds:
                assert ours.feeds[name].dtype == theirs.feeds[name].dtype
                assert np.array_equal(ours.feeds[name], theirs.feeds[name]), (case.name, ours.label, name)
            for name in theirs.outputs:  # logits, presents, router logits, selected experts, hidden states
                assert ours.outputs[name].dtype == theirs.outputs[name].dtype
                assert np.array_equal(ours.outputs[name], theirs.outputs[name]), (case.name, ours.label, name)
                compared += 1
            assert np.array_equal(ours.real, theirs.real)
    assert any(name.startswith("selected_experts.") for name in eager[cases[0].name][0].outputs)
    print("bitwise equal arrays:", compared)


def test_teacher_forced_generation_is_the_greedy_generation(checkpoint):
    with eager_reference(checkpoint) as runner:
        tokens = generate(runner, [list(p) for p in PROMPTS], max_new_tokens=6, eos_token_id=None)
        vocab = runner.config.vocab_size
    assert teacher_forced_tokens(checkpoint, PROMPTS, tokens) == tokens
    wrong = [row[:] for row in tokens]
    wrong[1][3] = (wrong[1][3] + 1) % vocab  # a backend that picked another token at step 3 of row 1
    reference = teacher_forced_tokens(checkpoint, PROMPTS, wrong)
    assert reference[1][3] == tokens[1][3] and reference[0] == tokens[0] and reference[1][:3] == tokens[1][:3]


def test_an_untied_head_is_the_stored_one(tmp_path):
    from safetensors.torch import load_file, save_file

    make_model(CONFIGS["tiny"], seed=6).save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    save_file({**state, "lm_head.weight": torch.randn_like(state["model.embed_tokens.weight"])},
              tmp_path / "model.safetensors", metadata={"format": "pt"})
    case = Case("prompts", PROMPTS)
    with eager_reference(tmp_path) as runner:
        eager = run_case(runner, case)[0].outputs["logits"]
    assert np.array_equal(reference_steps(tmp_path, [case])["prompts"][0].outputs["logits"], eager)
