#!/usr/bin/env python3
"""Benchmark: generation tokens/s and SFT tokens/s of the tiny VLM on CPU, mstar (candle) vs
PyTorch eager (tests/model/torch_ref.py), same architecture, same safetensors weights, same
inputs, side by side in one run, at two model sizes.

mstar's side is `mstar model bench` (it writes the weights and inputs it used); PyTorch then
loads those files. Generation: greedy, batch B, prompt bucket as in the generate operator,
KV cache, fixed number of new tokens (EOS ignored). SFT: forward + backward + AdamW step on a
batch of synthetic examples; tokens/s counts every input position. mstar's SFT is measured twice:
its CPU path (the hand-written decoder backward) and candle's autograd (MSTAR_TRAIN_AUTOGRAD=1).

Usage: python3 benches/policy_bench.py [--mstar PATH] [--sizes tiny,small] [--threads 2] [--sft-steps 10]
Needs: pip install torch safetensors; a built mstar binary.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch
from safetensors.torch import load_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "model"))
from torch_ref import TinyVlm, masked_ce  # noqa: E402


def torch_generate(model, ids, patches, bucket_valid, new_tokens):
    b = ids.shape[0]
    cfg = model.cfg
    with torch.no_grad():
        x = model.embed(ids, model.vision(patches))
        t0 = x.shape[1]
        valid = bucket_valid.bool()
        pos = torch.cumsum(valid.long(), dim=1) - 1
        pos = torch.where(valid, pos, torch.zeros_like(pos))
        causal = torch.tril(torch.ones(t0, t0, dtype=torch.bool))
        allowed = causal[None] & (valid[:, None, :] | torch.eye(t0, dtype=torch.bool)[None])
        mask = torch.where(allowed, 0.0, -1e9)[:, None]
        cache = [None] * cfg["num_hidden_layers"]
        h = model.decode(x, pos, mask, cache)
        logits = model.logits(h[:, -1:])
        next_pos = pos[:, -1:] + 1
        for _ in range(new_tokens - 1):
            tok = logits.argmax(-1)
            valid = torch.cat([valid, torch.ones(b, 1, dtype=torch.bool)], dim=1)
            m = torch.where(valid, 0.0, -1e9)[:, None, None]
            e = torch.nn.functional.embedding(tok, model.w("model.embed_tokens.weight"))
            h = model.decode(e, next_pos, m, cache)
            logits = model.logits(h)
            next_pos = next_pos + 1
    return b * new_tokens


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mstar", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "debug", "mstar"))
    ap.add_argument("--sizes", default="tiny,small")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sft-steps", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for size in args.sizes.split(","):
        d = tempfile.mkdtemp(prefix=f"mstar-bench-{size}-")
        cmd = [args.mstar, "model", "bench", "--size", size, "--out", d, "--sft-steps", str(args.sft_steps)]
        ours = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        env = dict(os.environ, MSTAR_TRAIN_AUTOGRAD="1")
        autograd = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout)
        cfg = json.load(open(os.path.join(d, "config.json")))
        model = TinyVlm(cfg, load_file(os.path.join(d, "model.safetensors")))
        inp = load_file(os.path.join(d, "inputs.safetensors"))
        # generation
        torch_generate(model, inp["gen.ids"][:2], inp["gen.patches"][:2], inp["gen.valid"][:2], 4)  # warm up
        start = time.perf_counter()
        n = torch_generate(model, inp["gen.ids"], inp["gen.patches"], inp["gen.valid"], ours["new_tokens"])
        gen_tps = n / (time.perf_counter() - start)
        # SFT
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, eps=1e-8, weight_decay=0.0)
        def step():
            logits = model(inp["sft.ids"], inp["sft.patches"])
            loss = masked_ce(logits, inp["sft.targets"], inp["sft.weights"])
            opt.zero_grad()
            loss.backward()
            opt.step()
        step()
        start = time.perf_counter()
        for _ in range(ours["sft_steps"]):
            step()
        sft_tps = ours["sft_tokens_per_step"] * ours["sft_steps"] / (time.perf_counter() - start)
        rows.append((size, ours["params"], ours["gen_tokens_per_s"], gen_tps, ours["sft_tokens_per_s"], autograd["sft_tokens_per_s"], sft_tps))
    print(f"| size | parameters | generation tok/s mstar | PyTorch | ratio | SFT tok/s mstar | mstar, candle autograd | PyTorch | ratio (mstar / PyTorch) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for size, p, g1, g2, s1, s1a, s2 in rows:
        print(f"| {size} | {p:,} | {g1:,.0f} | {g2:,.0f} | {g1 / g2:.2f}× | {s1:,.0f} | {s1a:,.0f} | {s2:,.0f} | {s1 / s2:.2f}× |")


if __name__ == "__main__":
    main()
