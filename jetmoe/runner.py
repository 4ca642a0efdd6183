"""The backend contract: every way of running JetMoe (eager PyTorch, ONNX Runtime, TensorRT) is a Runner.

    with OnnxrtRunner("out/model.onnx") as runner:               # activate / deactivate
        outputs = runner.infer({"input_ids": ids, "attention_mask": mask, "position_ids": pos,
                                **runner.empty_past(batch=2)})  # name -> torch tensor
        next_feeds = {..., **runner.carry_past(outputs)}         # present.* become past_key_values.*

Feeds and outputs use the exported graph's names (jetmoe/io_names.py); feeds may be numpy arrays or torch
tensors, outputs are torch tensors (on the backend's device). `infer` checks the feeds first, the same checks
for every backend (jetmoe/inputs.py): names (unknown ones refused), ranks, batch and length consistency, the
mask against cached + new tokens, token ids against the vocabulary. The KV cache has value semantics: a
runner never changes a tensor it was fed or returned before, so one cache can feed many steps (benchmarks time
steps from one fixed cache; the validator's teacher-forced cases branch from one). Generation
(jetmoe/generate.py), the validator's cases and `jetmoe bench` are written once, on `infer`.

Subclasses write only `activate_impl`, `deactivate_impl`, `infer_impl` and set `config`, `io_names` and
`dtype` when activated (Polygraphy's BaseRunner design; not built on it because its failures are logged to
stdout and raised as PolygraphyException, and its checks know nothing of token ids or cache lengths).
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from jetmoe import dtypes
from jetmoe.config import JetMoeConfig
from jetmoe.errors import InputError
from jetmoe.inputs import check_feeds
from jetmoe.io_names import IoNames


class Runner(abc.ABC):
    name = "runner"

    def __init__(self) -> None:
        self.is_active = False
        self.last_inference_time: float | None = None
        self.config: JetMoeConfig | None = None  # these three are set by activate_impl
        self.io_names: IoNames | None = None
        self.dtype: dtypes.DType = dtypes.FP32  # float type of the cache and the float outputs
        self.device = torch.device("cpu")
        self.max_batch: int | None = None  # None: no limit beyond memory
        self.max_seq: int | None = None  # None: the config's max_position_embeddings

    # ---- what subclasses provide --------------------------------------------------------------------------

    def activate_impl(self) -> None:  # noqa: B027  (a hook: subclasses override what they need)
        """Load the model / create the session; set config, io_names, dtype. Raise Unavailable if it cannot run."""

    def deactivate_impl(self) -> None:  # noqa: B027
        """Release what activate_impl took."""

    @abc.abstractmethod
    def infer_impl(self, feeds: dict[str, Tensor]) -> dict[str, Tensor]:
        """One inference on checked feeds (torch, the graph's dtypes); every output of io_names.outputs."""

    # ---- the contract -------------------------------------------------------------------------------------

    def __enter__(self) -> Runner:
        self.activate()
        return self

    def __exit__(self, *exc) -> None:
        self.deactivate()

    def activate(self) -> None:
        if not self.is_active:
            self.activate_impl()
            self.is_active = True

    def deactivate(self) -> None:
        if self.is_active:
            self.deactivate_impl()
            self.is_active = False

    def infer(self, feeds: Mapping[str, object]) -> dict[str, Tensor]:
        """Check `feeds` (InputError naming what is wrong), run, and return every output by name."""
        if not self.is_active:
            raise InputError(f"{self.name}: activate the runner first (`with runner:` or runner.activate())")
        tensors = check_feeds(feeds, self.config, self.io_names, self.dtype, self.max_seq, self.max_batch)
        start = time.perf_counter()
        outputs = self.infer_impl(tensors)
        self.last_inference_time = time.perf_counter() - start
        return outputs

    def empty_past(self, batch: int) -> dict[str, Tensor]:
        """The prefill feeds of the cache: every past_key_values.* as [batch, H_kv, 0, Dh]."""
        c = self.config
        empty = torch.zeros(batch, c.num_key_value_heads, 0, c.kv_channels, dtype=self.dtype.torch, device=self.device)
        return {name: empty for pair in self.io_names.past for name in pair}

    def carry_past(self, outputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The next step's cache feeds: present.{i}.key/value of `outputs` as past_key_values.{i}.key/value."""
        return {past: outputs[present] for past_pair, present_pair in zip(self.io_names.past, self.io_names.present,
                                                                          strict=True)
                for past, present in zip(past_pair, present_pair, strict=True)}


class EagerRunner(Runner):
    """The eager PyTorch model behind the runner contract: the reference of every comparison.

    `model` is a loaded JetMoe model, or a callable that loads one at activation (so a reference can stay
    unloaded until its turn: `EagerRunner(lambda: JetMoeForCausalLM.from_pretrained(ckpt))`).
    `validation_outputs` adds router logits and hidden states, as an export made with them has."""

    def __init__(self, model: torch.nn.Module | Callable[[], torch.nn.Module], *,
                 validation_outputs: bool = False) -> None:
        super().__init__()
        self._source = model
        self.validation_outputs = validation_outputs
        self.model = None
        self.name = "eager"

    def activate_impl(self) -> None:
        self.model = self._source if isinstance(self._source, torch.nn.Module) else self._source()
        self.config = self.model.config
        self.dtype = dtypes.dtype(self.model.dtype)
        self.device = self.model.device
        self.io_names = IoNames(self.config.num_hidden_layers, self.model.task, self.validation_outputs)
        self.name = f"eager-{self.dtype.name}"

    def deactivate_impl(self) -> None:
        self.model = None

    def infer_impl(self, feeds: dict[str, Tensor]) -> dict[str, Tensor]:
        names = self.io_names
        extra = self.validation_outputs
        args = {k: feeds[k].to(self.device) for k in ("input_ids", "attention_mask")}
        with torch.inference_mode():
            if names.task == "causal-lm":
                past = [(feeds[k].to(self.device), feeds[v].to(self.device)) for k, v in names.past]
                out = self.model(**args, position_ids=feeds["position_ids"].to(self.device), past_key_values=past,
                                 use_cache=True, output_router_logits=extra, output_hidden_states=extra)
            else:
                out = self.model(**args, use_cache=False, output_router_logits=extra, output_hidden_states=extra)
        values = [out.logits]
        if names.task == "causal-lm":
            values += [t for pair in out.past_key_values for t in pair]
        if extra:
            values += [*out.router_logits, *out.selected_experts, *out.hidden_states, *out.moa_hidden_states]
        return dict(zip(names.outputs, values, strict=True))
