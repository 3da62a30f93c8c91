#!/usr/bin/env python3
"""Makes tests/model/config_cases.json: Qwen2.5-VL and Qwen3-VL `config.json` files in every layout
transformers 4.4x, 4.57 and 5.x write (flat or `text_config`; `rope_scaling` + `rope_theta` or
`rope_parameters` with its own `rope_theta`; sections that do or do not fill head_dim/2; tie flags
at either level; missing keys), each with what transformers itself makes of it: the text and
vision sizes, rms_norm_eps, rope_theta, the M-RoPE axis of every rotary dimension (from the
model's own rotary embedding), whether lm_head is tied, the special token ids, and the parameter
names and shapes of the model it builds — or the error it raises. src/model/qwen_vl_config_tests.rs
checks that mstar reads each file the same way (or refuses it, naming the key and the file).

  ~/.cache/mstar-py/bin/python tests/model/make_config_cases.py
Needs: pip install torch transformers==5.24.0 (CPU is enough; models are built on the meta device).
"""
import copy
import json
import os
import tempfile

import torch
import transformers
from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration, Qwen3VLForConditionalGeneration
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLRotaryEmbedding
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextRotaryEmbedding

assert transformers.__version__ == "5.24.0", transformers.__version__
HERE = os.path.dirname(os.path.abspath(__file__))

Q25 = "Qwen2_5_VLForConditionalGeneration"
Q3 = "Qwen3VLForConditionalGeneration"
TOKENS = dict(image_token_id=365, video_token_id=366, vision_start_token_id=363, vision_end_token_id=364)
V25 = dict(depth=2, hidden_size=32, intermediate_size=48, num_heads=2, out_hidden_size=64, patch_size=14,
           spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1], in_channels=3,
           hidden_act="silu", model_type="qwen2_5_vl")
V3 = dict(depth=3, hidden_size=32, intermediate_size=48, num_heads=2, out_hidden_size=64, patch_size=16,
          spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=36, deepstack_visual_indexes=[0, 1],
          hidden_act="gelu_pytorch_tanh", in_channels=3, model_type="qwen3_vl")
T25 = dict(vocab_size=367, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, hidden_act="silu", max_position_embeddings=512)
T3 = dict(vocab_size=367, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
          num_key_value_heads=2, head_dim=24, hidden_act="silu", max_position_embeddings=512, attention_bias=False)


def q25_flat(**kw):
    """The flat layout of Qwen2.5-VL hub folders (written by transformers 4.49–4.56)."""
    c = dict(architectures=[Q25], model_type="qwen2_5_vl", **TOKENS, **T25, rms_norm_eps=1e-6, rope_theta=1e6,
             rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}, tie_word_embeddings=True,
             vision_config=dict(V25))
    c.update(kw)
    return c


def q25_nested(text, **kw):
    """`text_config` as transformers ≥ 4.57 writes it."""
    c = dict(architectures=[Q25], model_type="qwen2_5_vl", **TOKENS, text_config=dict(model_type="qwen2_5_vl_text", **text),
             vision_config=dict(V25))
    c.update(kw)
    return c


def q3(text, **kw):
    c = dict(architectures=[Q3], model_type="qwen3_vl", **TOKENS, text_config=dict(model_type="qwen3_vl_text", **text),
             vision_config=dict(V3))
    c.update(kw)
    return c


R457 = {"rope_type": "default", "type": "default", "mrope_section": [2, 3, 3]}
CASES = {
    # Qwen2.5-VL
    "q25_flat_4_4x": q25_flat(),
    "q25_text_config_4_57": q25_nested(dict(T25, rms_norm_eps=1e-6, rope_theta=1e6, rope_scaling=R457), tie_word_embeddings=False),
    "q25_rope_parameters_5x": q25_nested(dict(T25, rope_parameters={"rope_type": "default", "rope_theta": 5e5, "mrope_section": [4, 2, 2]}),
                                         tie_word_embeddings=False),
    "q25_rope_scaling_mrope_type_in_text": q25_nested(dict(T25, rope_theta=2e4, rope_scaling={"type": "mrope", "mrope_section": [2, 2, 4]})),
    "q25_theta_inside_wins": q25_nested(dict(T25, rope_theta=1e4, rope_parameters={"rope_type": "default", "rope_theta": 3e4, "mrope_section": [2, 3, 3]})),
    "q25_tie_in_text_config_only": q25_nested(dict(T25, tie_word_embeddings=True, rope_scaling=R457)),
    "q25_tie_false_in_text_config": q25_nested(dict(T25, tie_word_embeddings=False, rope_scaling=R457), tie_word_embeddings=True),
    "q25_four_sections": q25_nested(dict(T25, hidden_size=32, rope_parameters={"rope_type": "default", "mrope_section": [1, 1, 1, 1]})),
    "q25_sections_below_half": q25_nested(dict(T25, rope_parameters={"rope_type": "default", "mrope_section": [1, 1, 2]})),
    "q25_sections_above_half": q25_nested(dict(T25, rope_parameters={"rope_type": "default", "mrope_section": [4, 4, 4]})),
    "q25_interleaved_flag_ignored": q25_nested(dict(T25, rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "mrope_interleaved": True})),
    "q25_defaults": q25_nested(dict(vocab_size=367, hidden_size=1024, intermediate_size=96, num_hidden_layers=1, num_attention_heads=8)),
    "q25_default_sections_do_not_fit": q25_nested(dict(T25)),
    "q25_vision_defaults": q25_nested(dict(T25, rope_scaling=R457),
                                      vision_config=dict(depth=2, hidden_size=32, intermediate_size=48, num_heads=2, out_hidden_size=64)),
    "q25_token_id_defaults": {k: v for k, v in q25_nested(dict(T25, rope_scaling=R457)).items() if k not in TOKENS},
    # Qwen3-VL
    "q3_text_config_4_57": q3(dict(T3, rms_norm_eps=1e-6, rope_theta=5e6, tie_word_embeddings=True,
                                   rope_scaling={"rope_type": "default", "mrope_section": [4, 4, 4], "mrope_interleaved": True}),
                              tie_word_embeddings=True),
    "q3_rope_parameters_5x": q3(dict(T3, head_dim=8, rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [1, 1, 2],
                                                                      "mrope_interleaved": True})),
    "q3_sections_clipped": q3(dict(T3, head_dim=8, rope_parameters={"rope_type": "default", "mrope_section": [2, 5, 5], "mrope_interleaved": True})),
    "q3_sections_short": q3(dict(T3, head_dim=16, rope_parameters={"rope_type": "default", "mrope_section": [1, 1, 1], "mrope_interleaved": True})),
    "q3_interleaved_false_ignored": q3(dict(T3, rope_parameters={"rope_type": "default", "mrope_section": [4, 4, 4], "mrope_interleaved": False})),
    "q3_two_sections": q3(dict(T3, rope_parameters={"rope_type": "default", "mrope_section": [6, 6]})),
    "q3_defaults": q3(dict(vocab_size=367, hidden_size=64, intermediate_size=96, num_hidden_layers=1, num_attention_heads=32)),
    "q3_tie_in_text_config_only": q3(dict(T3, tie_word_embeddings=True, rope_scaling={"rope_type": "default", "mrope_section": [4, 4, 4]})),
    "q3_vision_defaults": q3(dict(T3, rope_scaling={"rope_type": "default", "mrope_section": [4, 4, 4]}),
                             vision_config=dict(depth=2, hidden_size=32, intermediate_size=48, num_heads=2, out_hidden_size=64)),
}


def axes(cfg, arch):
    """The M-RoPE axis (0 temporal, 1 height, 2 width) of each rotary dimension, as transformers lays them out."""
    text = cfg.text_config
    rot = (Qwen2_5_VLRotaryEmbedding if arch == Q25 else Qwen3VLTextRotaryEmbedding)(text)
    half = rot.inv_freq.shape[0]
    freq = torch.arange(3, dtype=torch.float32).reshape(3, 1, 1, 1).expand(3, 1, 1, half).clone()
    return [int(x) for x in rot.recomposition_frequencies(freq).reshape(-1).tolist()]


def resolve(raw):
    arch = raw["architectures"][0]
    with tempfile.TemporaryDirectory() as d:
        json.dump(raw, open(os.path.join(d, "config.json"), "w"))
        cfg = AutoConfig.from_pretrained(d)
    t, v = cfg.text_config, cfg.vision_config
    head_dim = getattr(t, "head_dim", None) or t.hidden_size // t.num_attention_heads
    out = dict(
        vocab_size=t.vocab_size, hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
        num_hidden_layers=t.num_hidden_layers, num_attention_heads=t.num_attention_heads,
        num_key_value_heads=t.num_key_value_heads, head_dim=head_dim, rms_norm_eps=t.rms_norm_eps,
        rope_theta=t.rope_parameters["rope_theta"], hidden_act=t.hidden_act,
        tie_word_embeddings=bool(cfg.tie_word_embeddings),
        image_token_id=cfg.image_token_id, vision_start_token_id=cfg.vision_start_token_id,
        vision=dict(depth=v.depth, hidden_size=v.hidden_size, intermediate_size=v.intermediate_size, num_heads=v.num_heads,
                    out_hidden_size=v.out_hidden_size, patch_size=v.patch_size, spatial_merge_size=v.spatial_merge_size,
                    temporal_patch_size=v.temporal_patch_size, hidden_act=v.hidden_act),
    )
    if arch == Q25:
        out["vision"].update(window_size=v.window_size, fullatt_block_indexes=list(v.fullatt_block_indexes))
    else:
        out["vision"].update(num_position_embeddings=v.num_position_embeddings,
                             deepstack_visual_indexes=list(v.deepstack_visual_indexes))
    out["mrope_axes"] = axes(cfg, arch)
    small = t.hidden_size * t.vocab_size * t.num_hidden_layers < 10**8
    if small:
        with torch.device("meta"):
            cls = Qwen2_5_VLForConditionalGeneration if arch == Q25 else Qwen3VLForConditionalGeneration
            model = cls(cfg)
        # names as saved (the tied lm_head is not saved), as save_pretrained's state dict has them
        tied = set(model.all_tied_weights_keys) if hasattr(model, "all_tied_weights_keys") else set()
        out["weights"] = {k: list(p.shape) for k, p in model.state_dict().items() if k not in tied}
    return out


cases = []
for name, raw in CASES.items():
    case = dict(name=name, config=raw)
    try:
        case["transformers"] = resolve(copy.deepcopy(raw))
    except Exception as e:  # noqa: BLE001 — the error is the expected outcome
        case["error"] = f"{type(e).__name__}: {e}"
    cases.append(case)
    print(name, "->", case.get("error") or {k: case["transformers"][k] for k in ("head_dim", "rope_theta", "mrope_axes", "tie_word_embeddings")})
json.dump(dict(transformers=transformers.__version__, torch=torch.__version__, cases=cases),
          open(os.path.join(HERE, "config_cases.json"), "w"), indent=1)
