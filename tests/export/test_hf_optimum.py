"""Hugging Face Optimum's ORTModelForCausalLM on the tiny export: eager's logits and greedy tokens.

Optional: Optimum 2.1 pins transformers < 5, so this runs only in an environment of its own (transformers 4.57:
`pip install 'optimum[onnxruntime]' 'transformers<5'`, then `python -m pytest tests/export/test_hf_optimum.py`) and
skips elsewhere.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

optimum = pytest.importorskip("optimum.onnxruntime", reason="Optimum is not installed (it needs transformers < 5: "
                              "pip install 'optimum[onnxruntime]' 'transformers<5' in an environment of its own)")

from export.hf_optimum import load_optimum_model  # noqa: E402  (after the skip: it needs Optimum)

PROMPTS = [[5, 17, 99, 3, 44, 81, 9], [11, 12], [300, 301, 302, 303]]


def left_padded(prompts: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    S = max(map(len, prompts))
    ids = torch.full((len(prompts), S), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), S), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, S - len(prompt):] = torch.tensor(prompt)
        mask[row, S - len(prompt):] = 1
    return ids, mask


def test_plain_optimum_builds_the_cache_from_attention_heads(exported):
    model = optimum.ORTModelForCausalLM.from_pretrained(exported().parent, use_io_binding=False)
    ids = torch.tensor([[5, 17]])
    with pytest.raises(Exception, match="past_key_values"):
        model(input_ids=ids, attention_mask=torch.ones_like(ids))


@pytest.mark.parametrize("io_binding", [False, True])
def test_logits_match_eager_on_a_padded_batch(exported, tiny_checkpoint, io_binding):
    _, eager = tiny_checkpoint
    model = load_optimum_model(exported().parent, use_io_binding=io_binding)
    ids, mask = left_padded(PROMPTS, eager.config.eos_token_id)
    position_ids = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    got = model(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits
    with torch.inference_mode():
        want = eager(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits
    diff = (torch.as_tensor(np.asarray(got)) - want).abs()[mask.bool()].max().item()
    print(f"max |optimum - eager| over real tokens: {diff:.2e}")
    assert diff < 1e-4


@pytest.mark.parametrize("io_binding", [False, True])
def test_greedy_tokens_match_eager(exported, tiny_checkpoint, io_binding):
    _, eager = tiny_checkpoint
    model = load_optimum_model(exported().parent, use_io_binding=io_binding)
    pad = eager.config.eos_token_id
    ids, mask = left_padded(PROMPTS, pad)
    out = model.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=pad)
    want = eager.generate(PROMPTS, max_new_tokens=10)
    for row, tokens in enumerate(want):
        assert out[row, ids.shape[1]:ids.shape[1] + len(tokens)].tolist() == tokens, f"row {row}"
