"""`jetmoe export --dispatch portable`: the file holds standard ONNX ops only, export.json records the dispatch, the
table lint accepts its size switch, and ONNX Runtime (through the runner contract) matches eager to 1e-4 in fp32:
a padded-batch prefill, decode steps on both sides of the switch, greedy generation."""

from __future__ import annotations

import json

import onnx
import pytest
import torch

from export.lint import lint_model, load_graph
from export.onnx_runtime import OnnxrtRunner
from jetmoe.cli import build_parser
from jetmoe.generate import generate
from jetmoe.runner import EagerRunner

FP32_TOL = 1e-4


@pytest.fixture(scope="module")
def portable(exported):
    return exported("fp32", dispatch="portable")


def max_diff(ours: dict, ref: dict, names: list[str], rows: torch.Tensor | None = None) -> float:
    worst = 0.0
    for name in names:
        diff = (ours[name].float() - ref[name].float()).abs()
        if rows is not None and name == "logits":
            diff = diff[rows]
        worst = max(worst, float(diff.max()))
    return worst


def test_padded_prefill_then_decode_matches_eager(portable, tiny_checkpoint):
    """Prefill T = 27 (the dense branch), decode batch 3 (T = 3: dense), then batch 1 (T = 1: gather)."""
    _, eager_model = tiny_checkpoint
    gen = torch.Generator().manual_seed(3)
    with OnnxrtRunner(portable) as ours, EagerRunner(eager_model) as eager:
        names = ours.io_names.outputs
        ids = torch.randint(3, ours.config.vocab_size, (3, 9), generator=gen)
        mask = torch.ones_like(ids)
        mask[1, :4] = 0
        mask[2, :8] = 0  # a one-token prompt
        feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0),
                 **ours.empty_past(3)}
        a, b = ours.infer(feeds), eager.infer(feeds)
        diff = max_diff(a, b, names, mask.bool())
        print("prefill (T = 27) max |diff|", diff)
        assert diff < FP32_TOL
        for batch in (3, 3, 1, 1):
            if batch == 1:  # keep row 0 only: a single sequence decodes one token per step
                a = {k: v[:1] for k, v in a.items()}
                mask, feeds = mask[:1], {k: v[:1] for k, v in feeds.items()}
            step = {"input_ids": torch.randint(3, ours.config.vocab_size, (batch, 1), generator=gen),
                    "attention_mask": (mask := torch.cat((mask, torch.ones(batch, 1, dtype=torch.long)), 1)),
                    "position_ids": feeds["position_ids"][:, -1:] + 1, **ours.carry_past(a)}
            a, b = ours.infer(step), eager.infer(step)
            feeds = step
            diff = max_diff(a, b, names)
            print(f"decode (T = {batch}) max |diff|", diff)
            assert diff < FP32_TOL


def test_greedy_generation_equals_eager(portable, tiny_checkpoint):
    _, eager_model = tiny_checkpoint
    prompts = [[5, 17, 9, 30, 4], [8, 3], [12, 40, 41]]
    with OnnxrtRunner(portable) as ours, EagerRunner(eager_model) as eager:
        for batch in (prompts, prompts[:1]):  # batch 3 (dense branch) and batch 1 (gather branch)
            got = generate(ours, batch, max_new_tokens=24, eos_token_id=None)
            assert got == generate(eager, batch, max_new_tokens=24, eos_token_id=None)
            assert all(len(tokens) == 24 for tokens in got)


def test_the_file_is_plugin_free_and_recorded(portable, tiny_checkpoint):
    model = onnx.load(portable, load_external_data=False)
    every = list(model.graph.node) + [n for node in model.graph.node for a in node.attribute
                                      if a.type == onnx.AttributeProto.GRAPH for n in a.g.node]
    assert not model.functions and {(o.domain, o.version) for o in model.opset_import} == {("", 21)}
    assert all(n.domain in ("", "ai.onnx") for n in every)
    assert not any(a.name.startswith("plugin_") for n in every for a in n.attribute)
    assert not {n.op_type for n in every} & {"NonZero", "Loop", "Scan", "Unique", "Compress"}
    assert sum(n.op_type == "If" for n in model.graph.node) == 4 * tiny_checkpoint[1].config.num_hidden_layers
    manifest = json.loads(portable.with_name("export.json").read_text())
    assert manifest["dispatch"] == "portable" and manifest["custom_ops"] == []
    report = lint_model(load_graph(portable), "portable", tiny_checkpoint[1].config.num_hidden_layers)
    assert report, str(report)
    onnx.checker.check_model(str(portable), full_check=True)


def test_dispatch_option(tmp_path, tiny_checkpoint):
    from export.exporter import export_checkpoint
    from jetmoe.errors import InputError

    args = build_parser().parse_args(["export", "ck", "-o", "out"])
    assert args.dispatch == "plugin"  # the default, read from export_checkpoint's signature
    assert build_parser().parse_args(["export", "ck", "-o", "out", "--dispatch", "portable"]).dispatch == "portable"
    with pytest.raises(InputError, match="dispatch 'loop' is not one of"):
        export_checkpoint(tiny_checkpoint[0], tmp_path / "out", dispatch="loop")
    assert not (tmp_path / "out").exists()
