#!/usr/bin/env python3
"""Makes tests/model/qwen2_5_vl_v5/ and tests/model/qwen3_vl_v5/: tiny random Qwen2.5-VL and Qwen3-VL
folders saved by transformers 5.x (its config layout: `text_config.rope_parameters` with `rope_theta`
inside, no top-level `rope_scaling`; its processor files), with configs unlike the 4.57 fixtures
(other GQA ratios, head_dim 8, a sectioned M-RoPE of [2, 1, 1] and an interleaved one of [1, 1, 2]
that does not fill head_dim/2 the usual way, window size 112 with two full-attention blocks,
DeepStack at blocks 1 and 3, tied vs untied heads), and transformers' own outputs for the same three
chats as make_qwen_fixture.py (text only, one image, two images). src/model/qwen2_5_vl/parity.rs
compares mstar with them. The Qwen3-VL folder's generation_config.json names the real Qwen3-VL
end-of-turn ids (151645, 151643), which this tiny tokenizer lacks, as a stripped-down real folder would.

Run after make_qwen_fixture.py (it reuses that folder's tokenizer, template and images):
  ~/.cache/mstar-py/bin/python tests/model/make_qwen_v5_fixtures.py
Needs (CPU is enough): pip install torch==2.15.0 torchvision transformers==5.24.0 pillow safetensors numpy
The image processor is transformers 5's default for these models, the torchvision one
(`Qwen2VLImageProcessor`, called `Qwen2VLImageProcessorFast` in 4.x)."""
import json
import os
import shutil

import torch
import transformers
from PIL import Image
from safetensors.torch import save_file
from transformers import (AutoProcessor, GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration,
                          Qwen2_5_VLProcessor, Qwen2TokenizerFast, Qwen2VLImageProcessor, Qwen3VLConfig,
                          Qwen3VLForConditionalGeneration, Qwen3VLProcessor)
from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

assert transformers.__version__ == "5.24.0", transformers.__version__
HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, "qwen2_5_vl")

tokenizer = Qwen2TokenizerFast.from_pretrained(SRC)
chat_template = open(os.path.join(SRC, "chat_template.jinja")).read()
ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ["<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"]}
tokens = dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
              vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])


def randomize(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif "norm" in name and name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))


def build(out, model, processor, generation_eos):
    os.makedirs(out, exist_ok=True)
    randomize(model)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=generation_eos).save_pretrained(out)
    # read back as a user would: the saved folder, not the objects in memory
    model = type(model).from_pretrained(out, attn_implementation="eager").eval()
    processor = AutoProcessor.from_pretrained(out)
    cases = json.load(open(os.path.join(SRC, "expected.json")))
    tensors = {}
    for case, m in cases.items():
        prompt = processor.apply_chat_template(m["messages"], add_generation_prompt=True)
        assert prompt == m["prompt"], (case, prompt)
        imgs = [Image.open(os.path.join(SRC, i)) for i in m["images"]]
        inputs = processor(text=[m["text"]], images=imgs or None, return_tensors="pt")
        with torch.no_grad():
            logits = model(**inputs).logits
        tensors[f"{case}.input_ids"] = inputs["input_ids"][0].to(torch.int64).contiguous()
        tensors[f"{case}.logits"] = logits[0].float().contiguous()
        if imgs:
            tensors[f"{case}.pixel_values"] = inputs["pixel_values"].float().contiguous()
            tensors[f"{case}.image_grid_thw"] = inputs["image_grid_thw"].to(torch.int64).contiguous()
    save_file(tensors, os.path.join(out, "expected.safetensors"))
    shutil.copy(os.path.join(SRC, "expected.json"), os.path.join(out, "expected.json"))
    for i in ["a.png", "b.png", "c.png"]:
        shutil.copy(os.path.join(SRC, i), os.path.join(out, i))
    print(out, sorted(os.listdir(out)), type(processor.image_processor).__name__)
    print({k: tuple(v.shape) for k, v in tensors.items()})


torch.manual_seed(1)
# Qwen2.5-VL: 8 query heads over 2 KV heads, head_dim 8, sections [2, 1, 1], tied head, windows of 112 px
q25 = Qwen2_5_VLConfig(
    text_config=dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=80, num_hidden_layers=2,
                     num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6,
                     rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1]}),
    vision_config=dict(depth=3, hidden_size=48, intermediate_size=64, num_heads=4, out_hidden_size=64, patch_size=14,
                       spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[0, 2]),
    tie_word_embeddings=True, **tokens)
q25_processor = Qwen2_5_VLProcessor(
    image_processor=Qwen2VLImageProcessor(size={"shortest_edge": 28 * 28 * 4, "longest_edge": 28 * 28 * 12}),
    tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor(), chat_template=chat_template)
build(os.path.join(HERE, "qwen2_5_vl_v5"), Qwen2_5_VLForConditionalGeneration(q25), q25_processor,
      tokenizer.convert_tokens_to_ids("<|im_end|>"))

torch.manual_seed(2)
# Qwen3-VL: 6 query heads over 1 KV head, head_dim 8, interleaved sections [1, 1, 2], untied head,
# 4×4 learned vision positions, DeepStack from blocks 1 and 3
q3 = Qwen3VLConfig(
    text_config=dict(vocab_size=len(tokenizer), hidden_size=48, intermediate_size=72, num_hidden_layers=3,
                     num_attention_heads=6, num_key_value_heads=1, head_dim=8, max_position_embeddings=512,
                     rms_norm_eps=1e-6, attention_bias=False,
                     rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [1, 1, 2],
                                      "mrope_interleaved": True}),
    vision_config=dict(depth=4, hidden_size=32, intermediate_size=40, num_heads=4, out_hidden_size=48, patch_size=16,
                       spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=16,
                       deepstack_visual_indexes=[1, 3], hidden_act="gelu_pytorch_tanh"),
    tie_word_embeddings=False, **tokens)
q3_processor = Qwen3VLProcessor(
    image_processor=Qwen2VLImageProcessor(size={"shortest_edge": 32 * 32 * 4, "longest_edge": 32 * 32 * 10}, patch_size=16,
                                          image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5]),
    tokenizer=tokenizer, video_processor=Qwen3VLVideoProcessor(), chat_template=chat_template)
build(os.path.join(HERE, "qwen3_vl_v5"), Qwen3VLForConditionalGeneration(q3), q3_processor, [151645, 151643])
