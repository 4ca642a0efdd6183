"""Eager CPU latency: our `jetmoe.JetMoeForCausalLM` vs HF transformers' `JetMoeForCausalLM`, same weights.

Cases (batch 1, fp32): prefill of S=128 tokens, and one decode step on P=128 cached tokens; for the tiny preset
and for 8B widths with 2 layers. Each case checks logit parity first, warms up, then times ours and HF
alternately in one loop (validate/timing.py; ours, hf, then hf, ours, ...: the order rotates every repetition)
so that machine noise hits both alike, and reports medians and the median of back-to-back pair ratios.

    python benchmarks/bench_eager.py            # full run, writes docs/bench/eager_vs_hf.json
    python benchmarks/bench_eager.py --quick    # smoke run: tiny config, few reps
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

import torch
import transformers

from jetmoe import JetMoeConfig, JetMoeForCausalLM
from jetmoe.random_weights import init_random_
from validate.timing import alternate, paired_ratio, provenance, write_results

ROOT = Path(__file__).resolve().parents[1]
OUT_JSON = ROOT / "docs" / "bench" / "eager_vs_hf.json"
S = P = 128
THREADS = 2
PARITY_TOL = 1e-4
CONFIGS = {
    "tiny": lambda: JetMoeConfig.from_preset("tiny"),
    "8b-widths-2l": lambda: JetMoeConfig(vocab_size=32000, hidden_size=2048, num_hidden_layers=2,
                                         num_key_value_heads=16, kv_channels=128, intermediate_size=5632,
                                         num_local_experts=8, num_experts_per_tok=2),
}
# Timed reps per (config, case); an 8B-width prefill takes ~2 s per side on 2 idle cores, a decode step ~0.1 s.
DEFAULT_REPS = {("tiny", "prefill"): 200, ("tiny", "decode"): 200,
                ("8b-widths-2l", "prefill"): 20, ("8b-widths-2l", "decode"): 50}
# HF config fields copied from ours (same names); rope_theta travels as HF's rope_parameters.
HF_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_key_value_heads", "kv_channels",
             "intermediate_size", "max_position_embeddings", "activation_function", "num_local_experts",
             "num_experts_per_tok", "bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings",
             "rms_norm_eps", "initializer_range", "attention_dropout")


def build_models(config: JetMoeConfig, attn: str | None):
    ours = JetMoeForCausalLM(config).eval()
    init_random_(ours, seed=0)
    extra = {} if attn is None else {"attn_implementation": attn}
    hf_config = transformers.JetMoeConfig(**{f: getattr(config, f) for f in HF_FIELDS}, **extra,
                                          rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta})
    # Build HF on the meta device and adopt our tensors (assign=True): the weights exist once in memory.
    with torch.device("meta"):
        hf = transformers.JetMoeForCausalLM(hf_config)
    hf.load_state_dict(ours.state_dict(), assign=True, strict=True)
    hf.tie_weights()
    # Non-persistent buffers (RoPE inv_freq) are not in the state dict: rebuild that module on the CPU.
    hf.model.rotary_emb = type(hf.model.rotary_emb)(hf_config)
    assert not any(t.is_meta for t in (*hf.parameters(), *hf.buffers())), "HF model still has meta tensors"
    return ours, hf.eval()


def make_cases(ours, hf, vocab: int):
    """Per case: (ours_fn, hf_fn, after_hf) where after_hf undoes HF's cache mutation, outside the timing."""
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(vocab, (1, S), generator=gen)
    step = torch.randint(vocab, (1, 1), generator=gen)

    # Prefill: both build a fresh cache (ours KVCache, HF DynamicCache), as generation does.
    prefill = (lambda: ours(prompt, use_cache=True).logits,
               lambda: hf(prompt, use_cache=True).logits,
               lambda: None)

    # Decode: our KVCache appends in place, so keep the prefix as a tuple; each call wraps it in a fresh
    # KVCache that concatenates into new P+1 tensors and leaves the tuple untouched. HF's DynamicCache also
    # concatenates into new P+1 tensors; crop(-1) (a slice, untimed) then drops the step's token again.
    prefix = ours(prompt, use_cache=True).past_key_values.to_tuple()
    hf_cache = hf(prompt, use_cache=True).cache
    assert hf_cache.get_seq_length() == P

    def hf_decode():
        return hf(step, cache=hf_cache, use_cache=True).logits

    decode = (lambda: ours(step, past_key_values=prefix, use_cache=True).logits,
              hf_decode,
              lambda: hf_cache.crop(-1))
    return {"prefill": prefill, "decode": decode}


def time_case(ours_fn, hf_fn, after_hf, reps: int, warmup: int):
    diff = (ours_fn() - hf_fn()).abs().max().item()
    after_hf()
    if not diff < PARITY_TOL:
        raise SystemExit(f"logit mismatch: max |ours - hf| = {diff:.3g} >= {PARITY_TOL}")
    # one loop, order rotated every repetition, so slow phases of a shared machine hit both sides
    times = alternate({"ours": ours_fn, "hf": hf_fn}, reps, warmup, after={"hf": after_hf})
    t_ours, t_hf = times["ours"], times["hf"]
    med_o, med_h = statistics.median(t_ours), statistics.median(t_hf)
    return {"max_abs_logit_diff": diff, "reps": reps, "warmup": warmup,
            "ours_median_ms": 1e3 * med_o, "hf_median_ms": 1e3 * med_h, "ratio_ours_over_hf": med_o / med_h,
            "paired_ratio_median": paired_ratio(t_ours, t_hf),
            "ours_min_ms": 1e3 * min(t_ours), "hf_min_ms": 1e3 * min(t_hf)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny config only, few reps")
    parser.add_argument("--reps", type=int, help="timed repetitions per case (default: per config)")
    parser.add_argument("--hf-attn", choices=("sdpa", "eager"), default=None,
                        help="HF attention implementation (default: HF's own default, sdpa)")
    parser.add_argument("--out", type=Path, help=f"JSON results path (default: {OUT_JSON.relative_to(ROOT)}; "
                        "--quick writes none unless given)")
    args = parser.parse_args()

    torch.set_num_threads(THREADS)
    names = ["tiny"] if args.quick else list(CONFIGS)
    results, hf_attn = [], None
    load_before = os.getloadavg()  # other jobs on the machine show up here (and inflate both sides' times)
    with torch.inference_mode():
        for name in names:
            config = CONFIGS[name]()
            ours, hf = build_models(config, args.hf_attn)
            hf_attn = hf.config._attn_implementation
            for case, fns in make_cases(ours, hf, config.vocab_size).items():
                reps = args.reps or (10 if args.quick else DEFAULT_REPS[name, case])
                r = time_case(*fns, reps=reps, warmup=2 if args.quick else max(3, reps // 10))
                results.append({"config": name, "case": case, **r})
                print(f"  {name:13s} {case:8s} ours {r['ours_median_ms']:9.3f} ms  hf {r['hf_median_ms']:9.3f} ms  "
                      f"ratio {r['ratio_ours_over_hf']:.3f} paired {r['paired_ratio_median']:.3f}  "
                      f"(diff {r['max_abs_logit_diff']:.1e}, {reps} reps)", flush=True)
            del ours, hf

    header = (f"{'config':14s}{'case':9s}{'ours ms':>10s}{'hf ms':>10s}{'ours/hf':>9s}{'paired':>8s}"
              f"{'max|dlogit|':>13s}{'reps':>6s}")
    print(f"\nmedians, batch 1, fp32, S=P={S}, {THREADS} threads, HF attn_implementation={hf_attn}\n{header}")
    for r in results:
        print(f"{r['config']:14s}{r['case']:9s}{r['ours_median_ms']:10.3f}{r['hf_median_ms']:10.3f}"
              f"{r['ratio_ours_over_hf']:9.3f}{r['paired_ratio_median']:8.3f}{r['max_abs_logit_diff']:13.1e}"
              f"{r['reps']:6d}")

    report = {
        "provenance": provenance(),
        "threads": torch.get_num_threads(), "dtype": "float32", "batch": 1,
        "prefill_tokens": S, "decode_cached_tokens": P, "hf_attn_implementation": hf_attn,
        "loadavg_1_5_15_before": load_before, "loadavg_1_5_15_after": os.getloadavg(),
        "timing": "median wall time per forward (perf_counter), ours and HF alternating in one loop (validate/"
                  "timing.py alternate: order rotated per repetition); ratio_ours_over_hf = ratio of medians, "
                  "paired_ratio_median = median of back-to-back pair ratios",
        "results": results,
    }
    if args.out or not args.quick:  # --quick writes none unless given --out
        print(f"wrote {write_results(args.out or OUT_JSON, report)}")


if __name__ == "__main__":
    main()
