"""Qwen-VL speed, mstar vs transformers, side by side on one machine: a random Qwen2.5-VL
checkpoint folder (a 2B-class configuration, or a tiny one for a CPU smoke run), then

  * generation: `batch` samples of one prompt (a 448×448 image + a question), `new_tokens`
    each (EOS ignored), temperature 1 — transformers `generate(num_return_sequences=batch)`
    vs `mstar model bench-hf` (one prefill, the samples decoded as one batch);
  * one training step: LoRA r 16 on q/k/v/o/gate/up/down (peft) or every weight, AdamW,
    `train_batch` sequences of `train_len` tokens, loss on the response tokens; time per step
    after a warm-up step, and (CUDA) peak memory.

usage:
  python benches/qwen_bench.py --mstar target/release/mstar --size 2b --device cuda [--full]
  python benches/qwen_bench.py --mstar target/debug/mstar --size tiny --device cpu   (smoke)
needs torch, transformers (4.57 or 5.x; 5.24 tested), peft; the mstar binary built with --features cuda for a GPU.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import torch
from PIL import Image
from transformers import AutoProcessor, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(REPO, "tests", "model", "qwen2_5_vl")
SIZES = {
    # Qwen2-VL-2B's decoder with Qwen2.5-VL's vision tower: ≈ 2.2B parameters
    "2b": dict(text=dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
               vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=1536)),
    "tiny": dict(text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, vocab_size=4096, tie_word_embeddings=False),
                 vision=dict(depth=2, hidden_size=64, intermediate_size=96, num_heads=4, out_hidden_size=64)),
}


def make_folder(out, size):
    """A random checkpoint of `size` with the fixture's tokenizer, template and processor."""
    s = SIZES[size]
    text = dict(s["text"], rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24] if size == "2b" else [2, 3, 3]},
                max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1e6)
    vision = dict(s["vision"], patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                  fullatt_block_indexes=[7, 15, 23, 31] if size == "2b" else [1], in_channels=3)
    fixture_cfg = json.load(open(os.path.join(FIXTURE, "config.json")))
    cfg = Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=fixture_cfg["image_token_id"],
                           video_token_id=fixture_cfg["video_token_id"], vision_start_token_id=fixture_cfg["vision_start_token_id"],
                           vision_end_token_id=fixture_cfg.get("vision_end_token_id", fixture_cfg["vision_start_token_id"] + 1),
                           tie_word_embeddings=s["text"]["tie_word_embeddings"])
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(cfg).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    for f in os.listdir(FIXTURE):
        if f.endswith((".json", ".jinja", ".txt")) and f not in ("config.json", "expected.json") and not os.path.exists(os.path.join(out, f)):
            shutil.copy(os.path.join(FIXTURE, f), out)
    pp = json.load(open(os.path.join(out, "preprocessor_config.json")))
    pp.update(min_pixels=56 * 56, max_pixels=28 * 28 * 1280)  # 448 × 448 → 256 image tokens
    json.dump(pp, open(os.path.join(out, "preprocessor_config.json"), "w"), indent=2)
    return sum(p.numel() for p in model.parameters())


def image():
    import numpy as np
    y, x = np.mgrid[0:448, 0:448]
    rgb = np.stack([x % 251, y % 241, (x * y) % 239], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb)


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def bench_torch(folder, device, batch, new_tokens, train_batch, train_len, full):
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    proc = AutoProcessor.from_pretrained(folder, use_fast=False)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the picture in detail."}]}]
    text = proc.apply_chat_template(messages, add_generation_prompt=True)
    inputs = proc(text=[text], images=[image()], return_tensors="pt").to(device)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(folder, dtype=dtype).to(device).eval()
    out = {"prompt_tokens": inputs["input_ids"].shape[1]}
    with torch.no_grad():
        kw = dict(do_sample=True, temperature=1.0, top_p=1.0, top_k=0, num_return_sequences=batch, eos_token_id=None, pad_token_id=0)
        model.generate(**inputs, max_new_tokens=2, min_new_tokens=2, **kw)
        sync(device)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        g = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kw)
        sync(device)
        dt = time.perf_counter() - t0
    out.update(generate_s=dt, generate_tokens_per_s=(g.shape[1] - inputs["input_ids"].shape[1]) * batch / dt)
    if device == "cuda":
        out["generate_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    # a training step on the same layout mstar's bench uses: the prompt, then response tokens
    model.train()
    if full:
        params = [p for p in model.parameters()]
    else:
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
        params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    ids = inputs["input_ids"][0].tolist()
    text_ids = [t for t in ids if t != model.config.image_token_id]
    rows = [ids + [text_ids[(r * 7919 + i * 104729) % len(text_ids)] for i in range(max(train_len - len(ids), 1))] for r in range(train_batch)]
    input_ids = torch.tensor(rows, device=device)
    labels = input_ids.clone()
    labels[:, : len(ids)] = -100
    pix = inputs["pixel_values"].repeat(train_batch, 1)
    grid = inputs["image_grid_thw"].repeat(train_batch, 1)

    def step():
        loss = model(input_ids=input_ids, pixel_values=pix, image_grid_thw=grid, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)

    step()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(2):
        step()
    out.update(train_step_s=(time.perf_counter() - t0) / 2, train_len=input_ids.shape[1])
    if device == "cuda":
        out["train_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mstar", required=True)
    ap.add_argument("--size", default="2b", choices=sorted(SIZES))
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--train-batch", type=int, default=4)
    ap.add_argument("--train-len", type=int, default=512)
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--folder", help="reuse this checkpoint folder (made when missing)")
    ap.add_argument("--json", action="store_true", help="print one JSON object (both sides' numbers) instead of the table row")
    a = ap.parse_args()
    folder = a.folder or tempfile.mkdtemp(prefix="qwen-bench-")
    if not os.path.exists(os.path.join(folder, "config.json")):
        n = make_folder(folder, a.size)
        print(f"random {a.size} checkpoint: {n / 1e9:.2f}B parameters in {folder}", file=sys.stderr)
    env = dict(os.environ, MSTAR_DEVICE=a.device)
    cmd = [a.mstar, "model", "bench-hf", folder, "--batch", str(a.batch), "--new-tokens", str(a.new_tokens),
           "--train-batch", str(a.train_batch), "--train-len", str(a.train_len)] + (["--full"] if a.full else [])
    peak = None
    if a.device == "cuda":
        # peak GPU memory of the mstar process, polled
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
        peak = 0
        while p.poll() is None:
            q = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"], capture_output=True, text=True)
            peak = max(peak, int(q.stdout.split()[0]) if q.stdout.strip() else 0)
            time.sleep(0.2)
        m = json.loads(p.stdout.read().strip().splitlines()[-1])
    else:
        m = json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    t = bench_torch(folder, a.device, a.batch, a.new_tokens, a.train_batch, a.train_len, a.full)
    if a.json:
        print(json.dumps({"mstar": m, "torch": t, "mstar_process_peak_gib": None if peak is None else peak / 1024,
                          "generate_speedup": m["generate_tokens_per_s"] / t["generate_tokens_per_s"],
                          "train_speedup": t["train_step_s"] / m["train_step_s"]}))
        return
    what = "full" if a.full else "LoRA r16"
    print(f"| {a.size} | {a.device} | batch {a.batch} × {a.new_tokens} new tokens | {m['generate_tokens_per_s']:.0f} | {t['generate_tokens_per_s']:.0f} | "
          f"{m['generate_tokens_per_s'] / t['generate_tokens_per_s']:.2f}× | {what}, {a.train_batch} × {t['train_len']} tokens | "
          f"{m['train_step_s']:.3f} s | {t['train_step_s']:.3f} s | {t['train_step_s'] / m['train_step_s']:.2f}× |"
          + (f" mstar ≤ {peak / 1024:.1f} GiB (nvidia-smi, whole process) · torch {t.get('train_peak_gib', 0):.1f} GiB |" if peak is not None else ""))
    print(json.dumps({"mstar": m, "torch": t}), file=sys.stderr)


if __name__ == "__main__":
    main()
