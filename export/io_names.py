"""Names of an exported graph's inputs and outputs, shared by the exporter and every runtime that feeds it."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class IoNames:
    num_layers: int
    task: str = "causal-lm"
    validation_outputs: bool = False

    @property
    def past(self) -> list[tuple[str, str]]:
        """Per layer, the (key, value) input names: [B, H_kv, past_seq, Dh]."""
        return [(f"past_key_values.{i}.key", f"past_key_values.{i}.value") for i in range(self.num_layers)]

    @property
    def present(self) -> list[tuple[str, str]]:
        """Per layer, the (key, value) output names: [B, H_kv, past_seq + seq, Dh]."""
        return [(f"present.{i}.key", f"present.{i}.value") for i in range(self.num_layers)]

    @property
    def router_logits(self) -> list[str]:
        """Per layer, MoA then MoE router logits [batch*seq, E] in float32 (validation outputs)."""
        return [f"router_logits.{i}.{part}" for i in range(self.num_layers) for part in ("moa", "moe")]

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
            names += self.router_logits + self.hidden_states + self.moa_hidden_states
        return names

    def dim_labels(self) -> list[tuple[str, int, str]]:
        """(input, axis, label) naming the graph's symbolic dimensions."""
        labels = [("input_ids", 0, "batch"), ("input_ids", 1, "seq")]
        if self.task == "causal-lm":
            labels += [(self.past[0][0], 2, "past_seq"), ("attention_mask", 1, "total_seq")]
        return labels
