"""Our JetMoe against HF transformers' on the same weights, through checkpoints in both directions."""

from __future__ import annotations

import pytest
import torch

from jetmoe import JetMoeForCausalLM, JetMoeForSequenceClassification, KVCache, ops
from jetmoe.random_weights import init_random_
from tests import known_bugs
from tests.conftest import CONFIGS, make_model

FP32_TOL = 1e-5


def hf_load(transformers, directory, cls_name="JetMoeForCausalLM", dtype=torch.float32, attn="eager"):
    cls = getattr(transformers, cls_name)
    return cls.from_pretrained(directory, attn_implementation=attn, dtype=dtype).eval()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


@pytest.fixture
def pair(config, tmp_path, transformers):
    ours = make_model(config)
    ours.save_pretrained(tmp_path)
    return ours, hf_load(transformers, tmp_path)


def test_forward_matches_hf(pair, config):
    ours, hf = pair
    ids = torch.randint(0, config.vocab_size, (2, 11), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[0, :3] = -100
    with torch.no_grad():
        o = ours(ids, labels=labels, output_hidden_states=True, output_router_logits=True, output_attentions=True,
                 use_cache=False)
        h = hf(ids, labels=labels, output_hidden_states=True, output_router_logits=True, output_attentions=True,
               use_cache=False)
    print("max |logits diff|", max_diff(o.logits, h.logits))
    assert max_diff(o.logits, h.logits) < FP32_TOL
    assert abs(o.loss.item() - h.loss.item()) < FP32_TOL
    assert abs(o.aux_loss.item() - h.aux_loss.item()) < FP32_TOL
    assert len(o.router_logits) == len(h.router_logits) == 2 * config.num_hidden_layers
    for a, b in zip(o.router_logits, h.router_logits, strict=True):
        assert a.dtype == torch.float32 and max_diff(a, b) < FP32_TOL
    assert len(o.hidden_states) == len(h.hidden_states) == config.num_hidden_layers + 1
    for a, b in zip(o.hidden_states, h.hidden_states, strict=True):
        assert max_diff(a, b) < FP32_TOL
    for a, b in zip(o.attentions, h.attentions, strict=True):
        assert a.shape == b.shape and max_diff(a, b) < FP32_TOL


def test_hf_checkpoint_loads_into_ours(config, tmp_path, transformers):
    hf_config = transformers.JetMoeConfig(**{k: v for k, v in config.to_dict().items()
                                             if k not in ("model_type", "id2label", "label2id", "dtype")})
    hf = transformers.JetMoeForCausalLM(hf_config)
    init_random_(hf, seed=3)  # names match ours, so the same informative init applies
    hf.save_pretrained(tmp_path)
    ours = JetMoeForCausalLM.from_pretrained(tmp_path)
    ids = torch.randint(0, config.vocab_size, (3, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        diff = max_diff(ours(ids).logits, hf.eval()(ids).logits)
    print("max |logits diff|", diff)
    assert diff < FP32_TOL


def test_left_padded_batch_matches_hf(pair, config):
    ours, hf = pair
    ids = torch.randint(3, config.vocab_size, (3, 8), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    mask[2, :6] = 0
    with torch.no_grad():
        o = ours(ids, attention_mask=mask).logits
        h = hf(ids, attention_mask=mask).logits
        alone = ours(ids[2:, 6:]).logits  # row 2 without its padding
    real = mask.bool()
    print("max |logits diff| at real tokens", max_diff(o[real], h[real]))
    assert max_diff(o[real], h[real]) < FP32_TOL
    # padding changes nothing for real tokens (positions come from HF's rule: cumsum of the mask)
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    with torch.no_grad():
        o_pos = ours(ids, attention_mask=mask, position_ids=pos).logits
        h_pos = hf(ids, attention_mask=mask, position_ids=pos).logits
    assert max_diff(o_pos[real], h_pos[real]) < FP32_TOL
    assert max_diff(o_pos[2, 6:], alone[0]) < FP32_TOL


def test_aux_loss_leaves_padding_out_like_hf(pair, config):
    ours, hf = pair
    ids = torch.randint(3, config.vocab_size, (2, 6), generator=torch.Generator().manual_seed(10))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        o = ours(ids, attention_mask=mask, labels=ids, output_router_logits=True, use_cache=False)
        h = hf(ids, attention_mask=mask, labels=ids, output_router_logits=True, use_cache=False)
        unmasked = ours(ids, output_router_logits=True, use_cache=False).aux_loss
    assert abs(o.aux_loss.item() - h.aux_loss.item()) < FP32_TOL
    assert abs(o.loss.item() - h.loss.item()) < FP32_TOL
    assert abs(o.aux_loss.item() - unmasked.item()) > FP32_TOL  # the mask did change it


def test_cached_decoding_equals_full_forward(config):
    model = make_model(config)
    ids = torch.randint(0, config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        cache = KVCache()
        pieces = []
        for start, end in ((0, 5), (5, 6), (6, 7), (7, 10), (10, 12)):
            out = model(ids[:, start:end], past_key_values=cache, use_cache=True)
            pieces.append(out.logits)
            assert out.past_key_values is cache and cache.get_seq_length() == end
    diff = max_diff(torch.cat(pieces, dim=1), full)
    print("max |cached - full|", diff)
    assert diff < FP32_TOL
    k, v = cache[0]
    assert k.shape == v.shape == (2, config.num_key_value_heads, 12, config.kv_channels)


def test_past_key_values_as_explicit_tensors(config):
    """Export passes the cache as per-layer (key, value) tensors and reads the present back the same way."""
    model = make_model(config)
    ids = torch.randint(0, config.vocab_size, (1, 7), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        prefix = model(ids[:, :4], use_cache=True).past_key_values.to_tuple()
        step = model(ids[:, 4:], past_key_values=prefix, use_cache=True)
        full = model(ids, use_cache=False).logits
    assert isinstance(prefix, tuple) and prefix[0][0].shape[2] == 4  # the tuple given was not mutated
    assert max_diff(step.logits, full[:, 4:]) < FP32_TOL
    assert step.past_key_values.get_seq_length() == 7


def test_greedy_generation_matches_hf_on_padded_batch(pair, config):
    ours, hf = pair
    prompts = [[5, 17, 9, 30, 4], [8, 3], [12, 40, 41]]
    new = 12
    eos, pad = config.eos_token_ids[0], 0
    got = ours.generate(prompts, max_new_tokens=new, pad_token_id=pad)
    S = max(map(len, prompts))
    ids = torch.tensor([[pad] * (S - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (S - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, do_sample=False,
                          pad_token_id=pad, eos_token_id=eos)
    expected = []
    for row in out[:, S:].tolist():
        expected.append(row[:row.index(eos) + 1] if eos in row else row)
    print("ours", got, "hf", expected)
    assert got == expected


@pytest.mark.parametrize("num_labels, labels", [
    (1, torch.tensor([0.5, -1.0, 2.0])),                                   # regression
    (3, torch.tensor([0, 2, 1])),                                          # single-label
    (3, torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])),  # multi-label
])
def test_sequence_classification_matches_hf(num_labels, labels, tmp_path, transformers):
    config = CONFIGS["odd"].replace(pad_token_id=0, num_labels=num_labels)
    ours = make_model(config, cls=JetMoeForSequenceClassification)
    ours.save_pretrained(tmp_path)
    hf = hf_load(transformers, tmp_path, "JetMoeForSequenceClassification")
    ids = torch.randint(1, config.vocab_size, (3, 7), generator=torch.Generator().manual_seed(7))
    ids[0, 5:] = 0  # right padding: pooled at position 4
    with torch.no_grad():
        o = ours(ids, labels=labels)
        h = hf(ids, labels=labels)
    assert o.logits.shape == (3, num_labels)
    assert max_diff(o.logits, h.logits) < FP32_TOL
    assert abs(o.loss.item() - h.loss.item()) < FP32_TOL
    with torch.no_grad():
        alone = ours(ids[:1, :5]).logits
    assert max_diff(o.logits[:1], alone) < FP32_TOL


def test_classification_without_pad_token_needs_batch_of_one():
    model = make_model(CONFIGS["tiny"], cls=JetMoeForSequenceClassification)
    with pytest.raises(Exception, match="pad_token_id"):
        model(torch.ones(2, 3, dtype=torch.long))


def lower_index_first_topk(self, k, dim=-1, largest=True, sorted=True):
    """torch.topk with the tie rule of jetmoe.model.TopKRouter: among equal values the lower index first."""
    indices = torch.sort(self, dim=dim, descending=largest, stable=True).indices.narrow(dim, 0, k)
    return torch.return_types.topk((self.gather(dim, indices), indices))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_precision_matches_hf(config, dtype, tmp_path, transformers, monkeypatch):
    """bf16/fp16 on both sides from the same fp32 checkpoint. Tolerance: 1% of the logit range (both round at
    every op; measured: bit-identical here); router decisions must agree for >= 95% of (token, slot). HF runs its
    SDPA attention, as we do without output_attentions: its eager attention rounds the scores to bf16 before the
    softmax, which with O(10) scores is a different (less accurate) model. Exact router ties are frequent in
    bf16, and HF's `logits.topk` leaves the order of equal values unspecified, so HF runs here under our tie
    rule (the lower expert index first, as ONNX TopK specifies): the comparison is of the math, not of how an
    unspecified tie fell."""
    monkeypatch.setattr(torch.Tensor, "topk", lower_index_first_topk)
    make_model(config).save_pretrained(tmp_path)
    ours = JetMoeForCausalLM.from_pretrained(tmp_path, dtype=dtype)
    hf = hf_load(transformers, tmp_path, dtype=dtype, attn="sdpa")
    ids = torch.randint(0, config.vocab_size, (2, 10), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        o = ours(ids, output_router_logits=True)
        h = hf(ids, output_router_logits=True)
    assert o.logits.dtype == dtype
    scale = float(h.logits.float().abs().max())
    print(dtype, "max |diff| / max |logit|", max_diff(o.logits, h.logits) / scale)
    assert max_diff(o.logits, h.logits) <= 0.01 * scale
    agree = [float((a.topk(config.num_experts_per_tok).indices == b.topk(config.num_experts_per_tok).indices)
                   .float().mean()) for a, b in zip(o.router_logits, h.router_logits, strict=True)]
    assert min(agree) >= 0.95


@pytest.mark.parametrize("bug", ["block_eps", "rope_theta", "kv_interleaved", "swiglu_swapped"])
def test_parity_checks_catch_known_bugs(bug, tmp_path, transformers, monkeypatch):
    """Each bug that silently breaks JetMoe parity moves the logits well past the fp32 tolerance here."""
    config = CONFIGS["tiny"]
    ours = make_model(config)
    ours.save_pretrained(tmp_path)
    hf = hf_load(transformers, tmp_path)
    if bug == "block_eps":
        for block in ours.model.layers:
            block.input_layernorm.eps = block.post_attention_layernorm.eps = 1e-5
    elif bug == "rope_theta":
        ours.config = ours.model.config = config.replace(rope_theta=20000.0)
    elif bug == "kv_interleaved":
        known_bugs.kv_interleaved(monkeypatch)
    elif bug == "swiglu_swapped":
        known_bugs.swiglu_halves_swapped(monkeypatch)
    ids = torch.randint(0, config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        diff = max_diff(ours(ids).logits, hf(ids).logits)
    print(bug, "max |diff|", diff)
    assert diff > 100 * FP32_TOL


def loud_attention(config, seed=3):
    """A model whose first block's input norm is scaled x45: raw q.k products near 1.4e5, past fp16's 65504."""
    model = make_model(config, seed=seed)
    with torch.no_grad():
        model.model.layers[0].input_layernorm.weight.mul_(45.0)
    return model


def test_fp16_attention_does_not_overflow():
    """q is scaled before the product and the product taken in fp32 (the exported graph uses this path too)."""
    config = CONFIGS["tiny"]
    ref = loud_attention(config)
    ids = torch.randint(0, config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(2))
    moa = ref.model.layers[0].self_attention
    H, Dh = config.num_key_value_heads, config.kv_channels
    with torch.no_grad():
        x = ref.model.layers[0].input_layernorm(ref.model.embed_tokens(ids))[0]  # [T, D]
        _, idx, _ = moa.experts.router(x)
        q = ops.expert_map(x, idx, moa.experts.input_linear.weight).view(12, -1, H, Dh)  # [T, K, H, Dh]
        k = moa.kv_proj(x)[:, : H * Dh].view(12, H, Dh)  # [T, H, Dh] (no RoPE: it keeps the norms)
        assert float(torch.einsum("tkhd,shd->tkhs", q, k).abs().max()) > 65504  # an fp16 q.k would overflow
        full = ref(ids, output_attentions=True).logits
        half = ref.half()(ids, output_attentions=True)
    assert all(torch.isfinite(a).all() for a in half.attentions) and torch.isfinite(half.logits).all()
    assert max_diff(half.logits.float(), full) < 0.05 * float(full.abs().max())
