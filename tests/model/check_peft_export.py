"""Other tools load what mstar's LoRA training writes: the adapter folder of a `train` stage
with `lora:` loads with peft over its base folder, the folder `mstar model export` writes loads
with transformers alone, and both give the same logits (which differ from the base's).

usage: python check_peft_export.py ADAPTER_DIR MERGED_DIR   (transformers 4.57, peft 0.21, CPU)
"""
import json
import sys

import torch
from PIL import Image
from peft import PeftModel
from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

adapter, merged = sys.argv[1:3]
base = json.load(open(f"{adapter}/adapter_config.json"))["base_model_name_or_path"]
proc = AutoProcessor.from_pretrained(base)
messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many squares?"}]}]
text = proc.apply_chat_template(messages, add_generation_prompt=True) + "There are 3"
inputs = proc(text=[text], images=[Image.open(f"{base}/b.png").convert("RGB")], return_tensors="pt")

with torch.no_grad():
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(base, dtype=torch.float32).eval()
    base_logits = model(**inputs).logits
    peft_logits = PeftModel.from_pretrained(model, adapter).eval()(**inputs).logits
    plain = Qwen2_5_VLForConditionalGeneration.from_pretrained(merged, dtype=torch.float32).eval()
    merged_logits = plain(**inputs).logits

d_merged = (peft_logits - merged_logits).abs().max().item()
d_base = (peft_logits - base_logits).abs().max().item()
print(f"max |peft - merged export| = {d_merged:.2e}; max |peft - base| = {d_base:.2e}")
assert d_merged < 1e-4, "the merged export differs from the adapter loaded by peft"
assert d_base > 1e-3, "the adapter does not change the model"
