#!/usr/bin/env python3
"""Makes tests/model/qwen2_5_vl/: a tiny random Qwen2.5-VL checkpoint folder in the Hugging Face
layout (config.json, model.safetensors, tokenizer.json, tokenizer_config.json, chat template,
preprocessor_config.json), two PNG images, and transformers' own outputs for three chats
(text only, one image, two images): the rendered prompt, input ids, pixel values, grid_thw and
logits (expected.safetensors), which src/model/qwen_vl/parity.rs compares with mstar.

Run: /path/to/venv/bin/python tests/model/make_qwen_fixture.py
Needs (CPU is enough): pip install torch transformers==4.57.1 pillow safetensors numpy
The slow (PIL) image processor is used: it is the reference mstar reproduces exactly."""
import json
import os

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor,
                          Qwen2TokenizerFast, Qwen2VLImageProcessor, Qwen2VLVideoProcessor)

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "qwen2_5_vl")
os.makedirs(OUT, exist_ok=True)
torch.manual_seed(0)
rng = np.random.default_rng(0)

# Qwen2's pre-tokenizer: its split regex, then byte-level without its own regex.
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
            "<|image_pad|>", "<|video_pad|>"]
CORPUS = ["You are a helpful assistant.", "What number does the red circle show?",
          "How many shapes are in the picture? Answer with a number.", "The answer is 5.",
          "Step 1: count the circles. Step 2: add the squares.", "Compare the two pictures.",
          "system user assistant", "0 1 2 3 4 5 6 7 8 9 + - = ?"] * 20
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.Sequence([
    pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
tok.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(vocab_size=360, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                              special_tokens=[])
tok.train_from_iterator(CORPUS, trainer)
tok.add_special_tokens(SPECIALS)
ids = {s: tok.token_to_id(s) for s in SPECIALS}
vocab = tok.get_vocab_size()
tokenizer = Qwen2TokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                               unk_token=None, bos_token=None)

CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in content or "
    "'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = "
    "video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}"
    "{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}")

# A 4-by-6-patch budget at most, so one image is downscaled, one upscaled, one kept.
image_processor = Qwen2VLImageProcessor(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 9)
processor = Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                video_processor=Qwen2VLVideoProcessor(),
                                chat_template=CHAT_TEMPLATE)

config = Qwen2_5_VLConfig(
    text_config=dict(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, rope_theta=1000000.0,
                     max_position_embeddings=512, rms_norm_eps=1e-6, tie_word_embeddings=False,
                     rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}),
    vision_config=dict(depth=2, hidden_size=32, intermediate_size=48, num_heads=2, out_hidden_size=64,
                       patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                       fullatt_block_indexes=[1], tokens_per_second=2, hidden_act="silu"),
    image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
    vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], tie_word_embeddings=False,
    attn_implementation="eager")
model = Qwen2_5_VLForConditionalGeneration(config).eval()
with torch.no_grad():  # larger than the default init, so attention and norms are far from trivial
    for name, p in model.named_parameters():
        if name.endswith("norm.weight") or "norm1" in name or "norm2" in name or "ln_q" in name:
            p.copy_(1.0 + 0.2 * torch.randn_like(p))
        else:
            p.copy_(0.15 * torch.randn_like(p))
model.save_pretrained(OUT, safe_serialization=True)
processor.save_pretrained(OUT)


def image(w, h, seed):
    g = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    a = np.stack([(xx * 7 + yy * 3) % 256, (yy * 5) % 256, (xx * yy) % 256], -1).astype(np.int32)
    a = (a + g.integers(0, 60, size=a.shape)) % 256
    return Image.fromarray(a.astype(np.uint8), "RGB")


images = {"a.png": image(84, 56, 1), "b.png": image(150, 110, 2), "c.png": image(40, 30, 3)}
for name, im in images.items():
    im.save(os.path.join(OUT, name))
cases = {
    "text": ([{"role": "user", "content": [{"type": "text", "text": "What is 2+3?"}]}], []),
    "one_image": ([{"role": "user", "content": [{"type": "image"}, {"type": "text",
                   "text": "How many shapes are in the picture?"}]}], ["b.png"]),
    "two_images": ([{"role": "system", "content": "Answer with a number."},
                    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Compare"},
                     {"type": "image"}, {"type": "text", "text": "the two pictures."}]}],
                   ["a.png", "c.png"]),
}
tensors, meta = {}, {}
for case, (messages, imgs) in cases.items():
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    text = prompt + "The answer is 5."
    inputs = processor(text=[text], images=[Image.open(os.path.join(OUT, i)) for i in imgs] or None,
                       return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs)
    meta[case] = {"messages": messages, "images": imgs, "prompt": prompt, "text": text}
    tensors[f"{case}.input_ids"] = inputs["input_ids"][0].to(torch.int64).contiguous()
    tensors[f"{case}.logits"] = out.logits[0].float().contiguous()
    if imgs:
        tensors[f"{case}.pixel_values"] = inputs["pixel_values"].float().contiguous()
        tensors[f"{case}.image_grid_thw"] = inputs["image_grid_thw"].to(torch.int64).contiguous()
save_file(tensors, os.path.join(OUT, "expected.safetensors"))
with open(os.path.join(OUT, "expected.json"), "w") as f:
    json.dump(meta, f, indent=1)
print({k: tuple(v.shape) for k, v in tensors.items()})

# --- LoRA: one training step's loss and gradients with peft (tests/model/qwen2_5_vl/lora/) ---
from peft import LoraConfig, get_peft_model  # noqa: E402

LORA = os.path.join(OUT, "lora")
torch.manual_seed(1)
lora_cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, bias="none", init_lora_weights=False,
                      target_modules=["q_proj", "v_proj", "gate_proj", "qkv"])
peft_model = get_peft_model(model, lora_cfg)
peft_model.train()
messages, imgs = cases["one_image"]
prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
answer = "The answer is 5.<|im_end|>"
inputs = processor(text=[prompt + answer], images=[Image.open(os.path.join(OUT, i)) for i in imgs],
                   return_tensors="pt")
n_prompt = processor(text=[prompt], images=[Image.open(os.path.join(OUT, i)) for i in imgs],
                     return_tensors="pt")["input_ids"].shape[1]
labels = inputs["input_ids"].clone()
labels[:, :n_prompt] = -100
out = peft_model(**inputs, labels=labels)
out.loss.backward()
peft_model.save_pretrained(LORA)
grads = {"loss": out.loss.detach().reshape(1), "labels": labels[0].contiguous(),
         "input_ids": inputs["input_ids"][0].contiguous()}
for name, p in peft_model.named_parameters():
    if p.requires_grad:
        key = name.replace("base_model.model.", "", 1).replace(".default", "")
        grads["grad." + key] = p.grad.detach().float().contiguous()
save_file(grads, os.path.join(LORA, "expected.safetensors"))
os.remove(os.path.join(LORA, "README.md"))  # peft's model card template
print("lora loss", out.loss.item(), "trainable", sum(1 for k in grads if k.startswith("grad.")))
