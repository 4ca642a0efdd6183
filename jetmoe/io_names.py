"""Names of an exported graph's inputs and outputs: the vocabulary of the runner contract (jetmoe/runner.py),
shared by the exporter, every runner, the engine builder and the validator."""

from __future__ import annotations

import dataclasses

from jetmoe.config import JetMoeConfig


@dataclasses.dataclass(frozen=True)
class IoNames:
    num_layers: int
    task: str = "causal-lm"
    validation_outputs: bool = False

    @property
    def past(self) -> list[tuple[str, str]]:
        """Per layer, the (key, value) input names: [B, H_kv, past_seq, Dh] (none without a cache)."""
        if self.task != "causal-lm":
            return []
        return [(f"past_key_values.{i}.key", f"past_key_values.{i}.value") for i in range(self.num_layers)]

    @property
    def present(self) -> list[tuple[str, str]]:
        """Per layer, the (key, value) output names: [B, H_kv, past_seq + seq, Dh] (none without a cache)."""
        if self.task != "causal-lm":
            return []
        return [(f"present.{i}.key", f"present.{i}.value") for i in range(self.num_layers)]

    @property
    def router_logits(self) -> list[str]:
        """Per layer, MoA then MoE router logits [batch*seq, E] in float32 (validation outputs)."""
        return [f"router_logits.{i}.{part}" for i in range(self.num_layers) for part in ("moa", "moe")]

    @property
    def selected_experts(self) -> list[str]:
        """Per layer, MoA then MoE, the experts each token was routed to [batch*seq, K] int64 (validation outputs)."""
        return [f"selected_experts.{i}.{part}" for i in range(self.num_layers) for part in ("moa", "moe")]

    @property
    def hidden_states(self) -> list[str]:
        """Embeddings, then each block's output, the last one after the final norm (validation outputs)."""
        return [f"hidden_states.{i}" for i in range(self.num_layers + 1)]

    @property
    def moa_hidden_states(self) -> list[str]:
        """Per layer, the state after the MoA residual and before the MoE (validation outputs)."""
        return [f"moa_hidden_states.{i}" for i in range(self.num_layers)]

    @property
    def inputs(self) -> list[str]:
        if self.task == "causal-lm":
            return ["input_ids", "attention_mask", "position_ids"] + [n for pair in self.past for n in pair]
        return ["input_ids", "attention_mask"]

    @property
    def outputs(self) -> list[str]:
        names = ["logits"]
        if self.task == "causal-lm":
            names += [n for pair in self.present for n in pair]
        if self.validation_outputs:
            names += self.router_logits + self.selected_experts + self.hidden_states + self.moa_hidden_states
        return names

    def dim_labels(self) -> list[tuple[str, int, str]]:
        """(input, axis, label) naming the graph's symbolic dimensions."""
        labels = [("input_ids", 0, "batch"), ("input_ids", 1, "seq"), ("attention_mask", 0, "batch")]
        if self.task == "causal-lm":
            labels += [(self.past[0][0], 2, "past_seq"), ("attention_mask", 1, "total_seq")]
        else:
            labels += [("attention_mask", 1, "seq")]
        return labels


class ModelRecord:
    """What a manifest that records a model has (its `config` dict, `task`, `validation_outputs`): the config and
    the graph's names. Mixed into the export and engine manifests."""

    config: dict
    task: str
    validation_outputs: bool

    @property
    def model_config(self) -> JetMoeConfig:
        return JetMoeConfig.from_dict(self.config)

    @property
    def io_names(self) -> IoNames:
        return IoNames(self.model_config.num_hidden_layers, self.task, self.validation_outputs)
