#!/usr/bin/env python3
"""Makes tests/model/qwen3_vl/: a tiny random Qwen3-VL checkpoint folder in the Hugging Face layout
and transformers' outputs for the same three chats as make_qwen_fixture.py (text only, one
image, two images), which src/model/qwen3_vl/parity.rs compares with mstar.

Run after make_qwen_fixture.py (it reuses that folder's tokenizer and images):
  /path/to/venv/bin/python tests/model/make_qwen3_fixture.py
Needs (CPU is enough): pip install torch transformers==4.57.1 pillow safetensors numpy
The slow (PIL) image processor is used; real Qwen3-VL folders name the fast (torchvision) one,
whose bicubic resize differs from PIL's by a grey level here and there."""
import json
import os
import shutil

import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import (Qwen2TokenizerFast, Qwen2VLImageProcessor, Qwen3VLConfig,
                          Qwen3VLForConditionalGeneration, Qwen3VLProcessor)
from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, "qwen2_5_vl")
OUT = os.path.join(HERE, "qwen3_vl")
os.makedirs(OUT, exist_ok=True)
torch.manual_seed(0)

tokenizer = Qwen2TokenizerFast.from_pretrained(SRC)
chat_template = open(os.path.join(SRC, "chat_template.jinja")).read()
ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ["<|image_pad|>", "<|video_pad|>", "<|vision_start|>",
                                                       "<|vision_end|>", "<|im_end|>", "<|endoftext|>"]}
# Qwen3-VL: 16-pixel patches (factor 32), mean/std 0.5
image_processor = Qwen2VLImageProcessor(min_pixels=32 * 32 * 4, max_pixels=32 * 32 * 9, patch_size=16,
                                        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
processor = Qwen3VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                             video_processor=Qwen3VLVideoProcessor(), chat_template=chat_template)
config = Qwen3VLConfig(
    text_config=dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=24, rope_theta=5000000.0,
                     max_position_embeddings=512, rms_norm_eps=1e-6, attention_bias=False,
                     tie_word_embeddings=True,
                     rope_scaling={"rope_type": "default", "mrope_section": [4, 4, 4], "mrope_interleaved": True}),
    vision_config=dict(depth=3, hidden_size=32, intermediate_size=48, num_heads=2, out_hidden_size=64,
                       patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=36,
                       deepstack_visual_indexes=[0, 1], hidden_act="gelu_pytorch_tanh"),
    image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
    vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    tie_word_embeddings=True, attn_implementation="eager")
model = Qwen3VLForConditionalGeneration(config).eval()
with torch.no_grad():
    for name, p in model.named_parameters():
        if "norm" in name and name.endswith("weight"):
            p.copy_(1.0 + 0.2 * torch.randn_like(p))
        elif "norm" in name and name.endswith("bias"):
            p.copy_(0.1 * torch.randn_like(p))
        else:
            p.copy_(0.15 * torch.randn_like(p))
model.save_pretrained(OUT, safe_serialization=True)
processor.save_pretrained(OUT)

cases = json.load(open(os.path.join(SRC, "expected.json")))
tensors = {}
for case, m in cases.items():
    prompt = processor.apply_chat_template(m["messages"], add_generation_prompt=True)
    assert prompt == m["prompt"]
    imgs = m["images"]
    inputs = processor(text=[m["text"]], images=[Image.open(os.path.join(SRC, i)) for i in imgs] or None,
                       return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs)
    tensors[f"{case}.input_ids"] = inputs["input_ids"][0].to(torch.int64).contiguous()
    tensors[f"{case}.logits"] = out.logits[0].float().contiguous()
    if imgs:
        tensors[f"{case}.pixel_values"] = inputs["pixel_values"].float().contiguous()
        tensors[f"{case}.image_grid_thw"] = inputs["image_grid_thw"].to(torch.int64).contiguous()
save_file(tensors, os.path.join(OUT, "expected.safetensors"))
shutil.copy(os.path.join(SRC, "expected.json"), os.path.join(OUT, "expected.json"))
for i in ["a.png", "b.png", "c.png"]:
    shutil.copy(os.path.join(SRC, i), os.path.join(OUT, i))
print({k: tuple(v.shape) for k, v in tensors.items()})
