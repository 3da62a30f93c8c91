"""SFT of a Qwen2.5-VL folder with TRL, as mstar's `train_external` command (see qwen_vl_trl.yaml).

NOT RUN IN CI (it needs torch, transformers, trl, peft, datasets, GPUs and a real checkpoint);
mstar's own test of `train_external` uses tests/fixtures/train_external/train.py instead. On
2026-12-03 it ran by hand as one CPU process (`command: [python, sft_trl.py]`, trl 1.16,
transformers 5.24, datasets 5.2, peft 0.21) on the tiny fixture tests/model/qwen2_5_vl: LoRA over
three iterations and full SFT over two, each checkpoint sampled by the next iteration's generate.
torchrun on several GPUs has not been run.

Launch with torchrun (one process per GPU, data parallel); mstar sets:
  MSTAR_TRAIN_DATA  Parquet of this iteration's rows: question, images (list of {bytes, path}), response
  MSTAR_INIT_DIR    where to start: this stage's previous checkpoint, or the base model folder
  MSTAR_BASE_DIR    the base model folder (what LoRA adapters sit on)
  MSTAR_OUTPUT_DIR  empty folder to write the checkpoint to (a model folder, or a peft adapter folder)
  MSTAR_ITERATION, MSTAR_SEED, MSTAR_STAGE, MSTAR_TRAIN_ROWS
and the stage's `env:` adds the knobs below (LORA, LR, EPOCHS, BATCH, GRAD_ACCUM, FSDP).
"""

import json
import os

import torch
from datasets import Image, List, load_dataset
from transformers import AutoModelForImageTextToText, AutoProcessor
from trl import SFTConfig, SFTTrainer

env = os.environ
init, base, out = env["MSTAR_INIT_DIR"], env["MSTAR_BASE_DIR"], env["MSTAR_OUTPUT_DIR"]
lora = env.get("LORA", "1") == "1"
rank0 = int(env.get("RANK", "0")) == 0
seed = int(env["MSTAR_SEED"]) * 1000 + int(env["MSTAR_ITERATION"])


def conversation(row):
    """A row of mstar's table as TRL's vision-language format: messages, beside the images."""
    content = [{"type": "image"} for _ in row["images"] or []] + [{"type": "text", "text": row["question"]}]
    return {
        "messages": [
            {"role": "user", "content": content},
            {"role": "assistant", "content": [{"type": "text", "text": row["response"]}]},
        ]
    }


data = load_dataset("parquet", data_files=env["MSTAR_TRAIN_DATA"], split="train")
# mstar's images are lists of {bytes, path}: Hugging Face's Image encoding
data = data.cast_column("images", List(Image()))
data = data.map(conversation, remove_columns=[c for c in data.column_names if c != "images"])

processor = AutoProcessor.from_pretrained(base)
adapter = os.path.exists(os.path.join(init, "adapter_config.json"))
dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
model = AutoModelForImageTextToText.from_pretrained(base if adapter else init, dtype=dtype)
peft_config = None
if adapter:
    # continue the previous iteration's adapters
    from peft import PeftModel

    model = PeftModel.from_pretrained(model, init, is_trainable=True)
elif lora:
    from peft import LoraConfig

    peft_config = LoraConfig(
        r=16,
        lora_alpha=32,
        lora_dropout=0.05,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        task_type="CAUSAL_LM",
    )

fsdp = {}
if env.get("FSDP") == "1" and not (lora or adapter):
    # full SFT of a model too large for one GPU: shard it; save one full state dict
    fsdp = {
        "fsdp": "full_shard auto_wrap",
        "fsdp_config": {"transformer_layer_cls_to_wrap": ["Qwen2_5_VLDecoderLayer"], "state_dict_type": "FULL_STATE_DICT"},
    }

config = SFTConfig(
    output_dir=os.path.join(out, "_trainer"),
    num_train_epochs=float(env.get("EPOCHS", "1")),
    per_device_train_batch_size=int(env.get("BATCH", "2")),
    gradient_accumulation_steps=int(env.get("GRAD_ACCUM", "4")),
    learning_rate=float(env.get("LR", "1e-4" if (lora or adapter) else "1e-5")),
    lr_scheduler_type="cosine",
    warmup_steps=0.03,  # a fraction of the steps (transformers 5)
    bf16=torch.cuda.is_available(),
    gradient_checkpointing=True,
    logging_steps=10,
    save_strategy="no",
    report_to=[],
    seed=seed,
    max_length=None,
    **fsdp,
)
trainer = SFTTrainer(model=model, args=config, train_dataset=data, processing_class=processor, peft_config=peft_config)
trainer.train()
trainer.save_model(out)
if rank0:
    processor.save_pretrained(out)
    ac = os.path.join(out, "adapter_config.json")
    if os.path.exists(ac):
        # mstar loads adapters over a local base folder
        with open(ac) as f:
            cfg = json.load(f)
        cfg["base_model_name_or_path"] = os.path.abspath(base)
        with open(ac, "w") as f:
            json.dump(cfg, f, indent=2)
    # only the top-level files are committed; the trainer's scratch folder is not needed
    import shutil

    shutil.rmtree(os.path.join(out, "_trainer"), ignore_errors=True)
