"""Reference JetMoe in PyTorch, numerically equal to HF transformers' `modeling_jetmoe.py`.

Reads top-down: the model classes, then the blocks (MoA, MoE, router, norm), then helpers.
Module and parameter names are HF's, so an HF checkpoint's state dict loads without a name map.

Letters: B batch, S new tokens, P cached tokens, L = P + S, T = B*S tokens, E experts, K experts per
token (top-k), D hidden, I expert ffn width, H_kv key/value heads, H = K * H_kv query heads, Dh head dim.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jetmoe import checkpoint, ops
from jetmoe.cache import KVCache, KVPairs
from jetmoe.config import JetMoeConfig
from jetmoe.errors import ConfigError, InputError
from jetmoe.generate import GenerationMixin
from jetmoe.inputs import check_length, check_mask, check_positions, check_token_ids
from jetmoe.outputs import CausalLMOutput, JetMoeModelOutput, SequenceClassifierOutput

BLOCK_NORM_EPS = 1e-6  # HF builds the per-block norms with eps 1e-6 whatever config.rms_norm_eps says


class JetMoePreTrainedModel(nn.Module):
    config: JetMoeConfig

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, dtype: torch.dtype | str | None = None,
                        device: torch.device | str = "cpu", progress: bool = False, *,
                        torch_dtype: torch.dtype | str | None = None):
        """Load an HF-format checkpoint folder. dtype None: the config's `dtype`, else fp32.
        `torch_dtype` is HF's older name for `dtype`, accepted as such."""
        if torch_dtype is not None:
            if dtype is not None and dtype != torch_dtype:
                raise InputError(f"dtype={dtype} and torch_dtype={torch_dtype} disagree; pass only dtype")
            dtype = torch_dtype
        return checkpoint.load_model(cls, directory, dtype=dtype, device=device, show_progress=progress)

    def save_pretrained(self, directory: str | os.PathLike,
                        max_shard_size: int = checkpoint.DEFAULT_SHARD_BYTES) -> None:
        """Write config.json and model.safetensors (sharded with an index above max_shard_size bytes)."""
        checkpoint.save_model(self, directory, max_shard_size=max_shard_size)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


class JetMoeModel(JetMoePreTrainedModel):
    def __init__(self, config: JetMoeConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(JetMoeBlock(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        past_key_values: KVCache | KVPairs | None = None,
        inputs_embeds: Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        output_router_logits: bool | None = None,
        return_dict: bool | None = None,
        cache_position: Tensor | None = None,
    ) -> JetMoeModelOutput | tuple:
        config = self.config
        use_cache = config.use_cache if use_cache is None else use_cache
        output_router_logits = config.output_router_logits if output_router_logits is None else output_router_logits
        if (input_ids is None) == (inputs_embeds is None):
            raise InputError("pass exactly one of input_ids and inputs_embeds")
        tracing = torch.compiler.is_compiling()  # export: value checks would be data-dependent guards
        if input_ids is not None:
            if not tracing:
                check_token_ids(input_ids, config.vocab_size)
            inputs_embeds = self.embed_tokens(input_ids)  # [B, S, D]
        B, S, _ = inputs_embeds.shape

        cache = KVCache.wrap(past_key_values) if (use_cache or past_key_values is not None) else None
        P = cache.get_seq_length() if cache is not None else 0
        L = P + S
        check_length(P, S, config.max_position_embeddings)
        device = inputs_embeds.device
        if cache_position is None:
            cache_position = torch.arange(P, L, device=device)
        if position_ids is None:
            position_ids = cache_position.unsqueeze(0).expand(B, S)
        elif not tracing:
            check_positions(position_ids, B, S, config.max_position_embeddings, broadcast=True)
        if attention_mask is not None and not tracing:
            check_mask(attention_mask, B, L)
        elif attention_mask is not None:
            # the exported graph's own guard for callers that feed it directly: a mask of another size than
            # [B, P + S] fails this Reshape (a [B, 1] decode mask would otherwise broadcast over the cache)
            attention_mask = attention_mask.reshape(B, L)

        bias = attention_bias(attention_mask, cache_position, B, L, device)  # [B or 1, 1, S, L]
        cos, sin = rope_cos_sin(position_ids, config.kv_channels, config.rope_theta, inputs_embeds.dtype)

        hidden = inputs_embeds
        all_hidden, all_moa, all_attn, all_router, all_selected = [], [], [], [], []
        for block in self.layers:
            if output_hidden_states:
                all_hidden.append(hidden)
            hidden, moa_hidden, attn, router_logits, selected = block(hidden, cos, sin, bias, cache,
                                                                      output_attentions)
            all_moa.append(moa_hidden)
            all_selected.extend(selected)
            all_attn.append(attn)
            all_router.extend(router_logits)
        hidden = self.norm(hidden)
        if output_hidden_states:
            all_hidden.append(hidden)

        out = JetMoeModelOutput(
            last_hidden_state=hidden,
            past_key_values=cache if use_cache else None,
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
            moa_hidden_states=tuple(all_moa) if output_hidden_states else None,
            attentions=tuple(all_attn) if output_attentions else None,
            router_logits=tuple(all_router) if output_router_logits else None,
            selected_experts=tuple(all_selected) if output_router_logits else None,
        )
        return out if return_dict is not False else out.to_tuple()


class JetMoeForCausalLM(GenerationMixin, JetMoePreTrainedModel):
    task = "causal-lm"

    def __init__(self, config: JetMoeConfig) -> None:
        super().__init__()
        self.config = config
        self.model = JetMoeModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        past_key_values: KVCache | KVPairs | None = None,
        inputs_embeds: Tensor | None = None,
        labels: Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        output_router_logits: bool | None = None,
        return_dict: bool | None = None,
        cache_position: Tensor | None = None,
        logits_to_keep: int = 0,
    ) -> CausalLMOutput | tuple:
        """logits_to_keep > 0 computes logits for the last that many positions only (generation)."""
        output_router_logits = (self.config.output_router_logits if output_router_logits is None
                                else output_router_logits)
        base = self.model(input_ids, attention_mask, position_ids, past_key_values, inputs_embeds, use_cache,
                          output_attentions, output_hidden_states, output_router_logits, True, cache_position)
        hidden = base.last_hidden_state[:, -logits_to_keep:] if logits_to_keep else base.last_hidden_state
        logits = self.lm_head(hidden)  # [B, S, V]

        loss = aux_loss = None
        if labels is not None:
            # position t predicts token t+1; -100 is ignored (HF ForCausalLMLoss)
            loss = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten().to(logits.device),
                                   ignore_index=-100)
        if output_router_logits:
            aux_loss = load_balancing_loss(base.router_logits, self.config.num_local_experts,
                                           self.config.num_experts_per_tok, attention_mask)
            if loss is not None:
                loss = loss + self.config.aux_loss_coef * aux_loss
        out = CausalLMOutput(loss, aux_loss, logits, base.past_key_values, base.hidden_states, base.attentions,
                             base.router_logits, base.moa_hidden_states, base.selected_experts)
        return out if return_dict is not False else out.to_tuple()


class JetMoeForSequenceClassification(JetMoePreTrainedModel):
    """Scores the last non-pad token of each row (HF: rightmost token != pad_token_id)."""

    task = "sequence-classification"

    def __init__(self, config: JetMoeConfig) -> None:
        super().__init__()
        self.config = config
        self.model = JetMoeModel(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        past_key_values: KVCache | KVPairs | None = None,
        inputs_embeds: Tensor | None = None,
        labels: Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        output_router_logits: bool | None = None,
        return_dict: bool | None = None,
        cache_position: Tensor | None = None,
    ) -> SequenceClassifierOutput | tuple:
        base = self.model(input_ids, attention_mask, position_ids, past_key_values, inputs_embeds, use_cache,
                          output_attentions, output_hidden_states, output_router_logits, True, cache_position)
        logits = self.score(base.last_hidden_state)  # [B, S, num_labels]
        B = logits.shape[0]
        pad = self.config.pad_token_id
        if pad is None and B != 1:
            raise ConfigError(f"batch of {B} rows needs config.pad_token_id to find each row's last token")
        if pad is None or input_ids is None:
            last = torch.full((B,), logits.shape[1] - 1, device=logits.device)
        else:
            positions = torch.arange(input_ids.shape[1], device=logits.device)
            last = (positions * (input_ids != pad)).argmax(-1)
        pooled = logits[torch.arange(B, device=logits.device), last]  # [B, num_labels]

        loss = None if labels is None else classification_loss(pooled, labels, self.config)
        out = SequenceClassifierOutput(loss, pooled, base.past_key_values, base.hidden_states, base.attentions,
                                       base.router_logits, base.moa_hidden_states, base.selected_experts)
        return out if return_dict is not False else out.to_tuple()


# ---- blocks -------------------------------------------------------------------------------------------


class JetMoeBlock(nn.Module):
    """x + MoA(norm1(x)), then h + MoE(norm2(h)); both norms use eps 1e-6 (HF hard-codes it)."""

    def __init__(self, config: JetMoeConfig, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, BLOCK_NORM_EPS)
        self.self_attention = MixtureOfAttention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, BLOCK_NORM_EPS)
        self.mlp = MixtureOfExperts(config)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, bias: Tensor, cache: KVCache | None,
                output_attentions: bool | None
                ) -> tuple[Tensor, Tensor, Tensor | None, tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        """Block output, the state between MoA and MoE, attention weights, (MoA, MoE) router logits and
        (MoA, MoE) selected experts."""
        attn_out, attn, moa_logits, moa_idx = self.self_attention(self.input_layernorm(x), cos, sin, bias, cache,
                                                                  output_attentions)
        h = x + attn_out
        mlp_out, moe_logits, moe_idx = self.mlp(self.post_attention_layernorm(h))
        return h + mlp_out, h, attn, (moa_logits, moe_logits), (moa_idx, moe_idx)


class MixtureOfAttention(nn.Module):
    """JetMoe MoA: per-expert query/output projections around attention with shared K/V.

    Query heads come out slot-major (head h = slot * H_kv + kv head) and K/V are tiled over the K slots, so
    query head h attends with kv head h % H_kv (HF: `key_states.repeat(1, top_k, 1, 1)`). Here the K slots
    are stacked as extra query rows per kv head instead of repeating K/V: same result, no copy.
    """

    def __init__(self, config: JetMoeConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.kv_channels
        self.top_k = config.num_experts_per_tok
        self.dropout = config.attention_dropout
        width = config.num_key_value_heads * config.kv_channels
        self.experts = ExpertPair(config.num_local_experts, config.hidden_size, width, config.num_experts_per_tok)
        self.kv_proj = nn.Linear(config.hidden_size, 2 * width, bias=False)  # keys first, then values

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, bias: Tensor, cache: KVCache | None,
                output_attentions: bool | None) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
        B, S, D = x.shape
        Hkv, Dh, K = self.num_kv_heads, self.head_dim, self.top_k
        flat = x.reshape(B * S, D)  # [T, D]
        gates, expert_idx, router_logits = self.experts.router(flat)
        q = ops.expert_map(flat, expert_idx, self.experts.input_linear.weight)  # [T, K, Hkv*Dh]
        q = apply_rope(q.view(B, S, K, Hkv, Dh), cos[:, :, None, None], sin[:, :, None, None])
        key, value = self.kv_proj(x).view(B, S, 2, Hkv, Dh).unbind(2)  # each [B, S, Hkv, Dh]
        key = apply_rope(key, cos[:, :, None], sin[:, :, None]).transpose(1, 2)  # [B, Hkv, S, Dh]
        value = value.transpose(1, 2)  # [B, Hkv, S, Dh]
        if cache is not None:
            key, value = cache.update(self.layer_idx, key, value)  # [B, Hkv, L, Dh]
        L = key.shape[2]

        q = q.permute(0, 3, 2, 1, 4).reshape(B, Hkv, K * S, Dh)  # rows slot-major per kv head
        bias = bias.repeat(1, 1, K, 1)  # [B or 1, 1, K*S, L], rows as q's
        # the explicit path when exporting too: SDPA would lower to a softmax in the activation type
        if output_attentions or (self.training and self.dropout) or torch.compiler.is_compiling():
            # scale first and multiply in fp32: a half-precision q.k can overflow (65504) before any scaling
            scores = torch.matmul((q * Dh**-0.5).float(), key.float().transpose(2, 3))  # [B, Hkv, K*S, L]
            probs = F.dropout(torch.softmax(scores.float() + bias, dim=-1), self.dropout, self.training)
            probs = probs.to(x.dtype)
            out = torch.matmul(probs, value)  # [B, Hkv, K*S, Dh]
        else:  # same math, fused; the softmax is still computed in fp32
            probs = None
            mask = bias.clamp(min=torch.finfo(q.dtype).min).to(q.dtype)  # fp16's min is not fp32's
            out = F.scaled_dot_product_attention(q, key, value, mask, scale=Dh**-0.5)
        out = out.view(B, Hkv, K, S, Dh).permute(0, 3, 2, 1, 4).reshape(B * S, K, Hkv * Dh)  # [T, K, Hkv*Dh]
        y = ops.expert_reduce(out, expert_idx, gates, self.experts.output_linear.weight, self.experts.bias)
        attn = None if probs is None else probs.view(B, Hkv, K, S, L).transpose(1, 2).reshape(B, K * Hkv, S, L)
        return y.view(B, S, D), attn, router_logits, expert_idx


class MixtureOfExperts(nn.Module):
    """JetMoe MoE: top-k of E gated MLP experts; silu(first half) * second half; one bias after the sum."""

    def __init__(self, config: JetMoeConfig) -> None:
        super().__init__()
        self.intermediate_size = config.intermediate_size
        self.activation = activation(config.activation_function)
        E, D, I = config.num_local_experts, config.hidden_size, config.intermediate_size
        self.input_linear = ExpertWeights(E, 2 * I, D)
        self.output_linear = ExpertWeights(E, D, I)
        self.router = TopKRouter(D, E, config.num_experts_per_tok)
        self.bias = nn.Parameter(torch.zeros(D))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        B, S, D = x.shape
        I = self.intermediate_size
        flat = x.reshape(B * S, D)  # [T, D]
        gates, expert_idx, router_logits = self.router(flat)
        h = ops.expert_map(flat, expert_idx, self.input_linear.weight)  # [T, K, 2I]
        h = self.activation(h[..., :I]) * h[..., I:]  # [T, K, I]
        y = ops.expert_reduce(h, expert_idx, gates, self.output_linear.weight, self.bias)  # [T, D]
        return y.view(B, S, D), router_logits, expert_idx


class ExpertPair(nn.Module):
    """The MoA's experts: query projections [E, Hkv*Dh, D], output projections [E, D, Hkv*Dh], router, bias."""

    def __init__(self, num_experts: int, hidden: int, width: int, top_k: int) -> None:
        super().__init__()
        self.input_linear = ExpertWeights(num_experts, width, hidden)
        self.output_linear = ExpertWeights(num_experts, hidden, width)
        self.router = TopKRouter(hidden, num_experts, top_k)
        self.bias = nn.Parameter(torch.zeros(hidden))


class ExpertWeights(nn.Module):
    def __init__(self, num_experts: int, out_features: int, in_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_experts, out_features, in_features))  # [E, out, in]


class TopKRouter(nn.Module):
    """Top-k over logits, then softmax over the k (JetMoE gate). Logits are fp32 after the GEMM's own dtype.

    Tie rule (every backend): among equal logits the lower expert index is chosen first, as ONNX TopK
    specifies. HF's torch.topk leaves that order unspecified; exact ties are rare in fp32 and frequent in bf16."""

    def __init__(self, hidden: int, num_experts: int, top_k: int) -> None:
        super().__init__()
        self.top_k = top_k
        self.layer = nn.Linear(hidden, num_experts, bias=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        logits = self.layer(x).float()  # [T, E]
        if torch.compiler.is_compiling():  # ONNX TopK: equal logits -> the lower expert index first (its spec)
            top_logits, expert_idx = logits.topk(self.top_k, dim=-1)  # [T, K]
        else:  # the same tie rule, explicitly (torch.topk promises no order among equal values)
            expert_idx = torch.sort(logits, dim=-1, descending=True, stable=True).indices[:, :self.top_k]  # [T, K]
            top_logits = logits.gather(-1, expert_idx)  # [T, K]
        gates = torch.softmax(top_logits, dim=-1).to(x.dtype)  # [T, K]
        return gates, expert_idx, logits


class RMSNorm(nn.Module):
    """fp32 variance; `weight * x.to(input_dtype)` (Llama style, as HF JetMoeRMSNorm)."""

    def __init__(self, hidden: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


# ---- helpers ------------------------------------------------------------------------------------------


def attention_bias(attention_mask: Tensor | None, cache_position: Tensor, B: int, L: int,
                   device: torch.device) -> Tensor:
    """Additive fp32 mask [B or 1, 1, S, L]: causal by cache position, padding keys from attention_mask.

    A fully masked row (a left-pad query) gets a uniform softmax instead of NaN; its output is never used.
    """
    allowed = torch.arange(L, device=device)[None, :] <= cache_position[:, None]  # [S, L]
    allowed = allowed[None]  # [1, S, L]
    if attention_mask is not None:
        allowed = allowed & attention_mask.bool()[:, None, :]  # [B, S, L]
    zero = torch.zeros((), dtype=torch.float32, device=device)
    return torch.where(allowed, zero, torch.finfo(torch.float32).min)[:, None]


def rope_cos_sin(position_ids: Tensor, head_dim: int, theta: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos, sin [B, S, Dh] for rotate-half RoPE over the full head dim (HF's default rope, same fp32 math)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=position_ids.device)
                                / head_dim))
    freqs = position_ids[..., None].float() * inv_freq  # [B, S, Dh/2]
    emb = torch.cat((freqs, freqs), dim=-1)  # [B, S, Dh]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def activation(name: str) -> Callable[[Tensor], Tensor]:
    table = {"silu": F.silu, "swish": F.silu, "gelu": F.gelu, "relu": F.relu,
             "gelu_pytorch_tanh": lambda t: F.gelu(t, approximate="tanh")}
    return table[name]


def load_balancing_loss(router_logits: tuple[Tensor, ...], num_experts: int, top_k: int,
                        attention_mask: Tensor | None) -> Tensor:
    """Switch-Transformer auxiliary loss over every router (HF `load_balancing_loss_func`).

    E * sum_e (fraction of top-k assignments to e) * (mean router probability of e), pooled over all routers;
    padding tokens (attention_mask 0) are left out.
    """
    counts = torch.zeros(num_experts, dtype=torch.float32, device=router_logits[0].device)
    prob_sum = torch.zeros_like(counts)
    weight = None
    if attention_mask is not None:
        S = router_logits[0].shape[0] // attention_mask.shape[0]
        weight = attention_mask[:, -S:].reshape(-1).to(counts)  # [T]
    rows = 0.0
    for logits in router_logits:
        probs = torch.softmax(logits.float(), dim=-1)  # [T, E]
        selected = probs.topk(top_k, dim=-1).indices  # [T, K]
        w = torch.ones(probs.shape[0], device=probs.device) if weight is None else weight
        counts = counts.scatter_add(0, selected.reshape(-1), w.repeat_interleave(top_k))
        prob_sum = prob_sum + (probs * w[:, None]).sum(0)
        rows = rows + w.sum()
    return (counts / rows * prob_sum / rows).sum() * num_experts


def classification_loss(pooled: Tensor, labels: Tensor, config: JetMoeConfig) -> Tensor:
    """Regression (num_labels 1), single-label (integer labels) or multi-label (float labels), as HF infers it."""
    problem = config.problem_type
    if problem is None:
        if config.num_labels == 1:
            problem = "regression"
        elif labels.dtype in (torch.long, torch.int):
            problem = "single_label_classification"
        else:
            problem = "multi_label_classification"
    labels = labels.to(pooled.device)
    if problem == "regression":
        if config.num_labels == 1:
            return F.mse_loss(pooled.squeeze(), labels.squeeze())
        return F.mse_loss(pooled, labels)
    if problem == "single_label_classification":
        return F.cross_entropy(pooled.view(-1, config.num_labels), labels.view(-1))
    return F.binary_cross_entropy_with_logits(pooled, labels)


TASKS: dict[str, type[JetMoePreTrainedModel]] = {
    "causal-lm": JetMoeForCausalLM,
    "sequence-classification": JetMoeForSequenceClassification,
}
