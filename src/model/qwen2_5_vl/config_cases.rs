//! Config loading against transformers: every `config.json` of tests/model/config_cases.json
//! (made by make_config_cases.py with transformers 5.24) read as transformers reads it, or refused.

use super::config::{DecoderSpec, Generation};
use crate::model::hf::weights::canonical_name;
use crate::model::{qwen2_5_vl, qwen3_vl};
use candle_core::{DType, Device, Tensor};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Files transformers resolves silently that mstar refuses as contradictory, and the key named.
const MSTAR_REFUSES: &[(&str, &str)] = &[("q25_theta_inside_wins", "rope_theta")];

fn zeros(weights: &Value) -> HashMap<String, Tensor> {
    let obj = weights.as_object().expect("weights object");
    obj.iter()
        .map(|(k, shape)| {
            let dims: Vec<usize> = shape.as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
            (canonical_name(k), Tensor::zeros(dims, DType::F32, &Device::Cpu).unwrap())
        })
        .collect()
}

#[test]
fn configs_are_read_as_transformers_reads_them() {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/model"));
    let all: Value = serde_json::from_slice(&std::fs::read(dir.join("config_cases.json")).unwrap()).unwrap();
    let mut checked = 0;
    for case in all["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let raw = &case["config"];
        let file = Path::new("cases").join(name).join("config.json");
        let qwen3 = raw["architectures"][0] == "Qwen3VLForConditionalGeneration";
        // (decoder, vision as JSON, image token, vision start)
        let read = || -> Result<(DecoderSpec, Value, u32, u32), String> {
            if qwen3 {
                let c = qwen3_vl::Config::from_value(raw, &file).map_err(|e| e.to_string())?;
                Ok((c.decoder, serde_json::to_value(&c.vision).unwrap(), c.image_token_id, c.vision_start_token_id))
            } else {
                let c = qwen2_5_vl::Config::from_value(raw, &file).map_err(|e| e.to_string())?;
                Ok((c.decoder, serde_json::to_value(&c.vision).unwrap(), c.image_token_id, c.vision_start_token_id))
            }
        };
        let refused = case.get("error").map(|_| "mrope_section").or_else(|| MSTAR_REFUSES.iter().find(|(n, _)| *n == name).map(|(_, k)| *k));
        if let Some(key) = refused {
            let err = read().err().unwrap_or_else(|| panic!("{name}: transformers fails ({}), mstar accepted it", case["error"]));
            assert!(err.contains(&file.display().to_string()) && err.contains(key), "{name}: the error names neither the file nor `{key}`: {err}");
            checked += 1;
            continue;
        }
        let (mut dec, vision, image, start) = read().unwrap_or_else(|e| panic!("{name}: {e}"));
        let t = &case["transformers"];
        let tc = &dec.text;
        let ints = [
            ("vocab_size", tc.vocab_size),
            ("hidden_size", tc.hidden_size),
            ("intermediate_size", tc.intermediate_size),
            ("num_hidden_layers", tc.num_hidden_layers),
            ("num_attention_heads", tc.num_attention_heads),
            ("num_key_value_heads", tc.num_key_value_heads),
            ("head_dim", tc.head_dim),
            ("image_token_id", image as usize),
            ("vision_start_token_id", start as usize),
        ];
        for (k, got) in ints {
            assert_eq!(got as u64, t[k].as_u64().unwrap(), "{name}: {k}");
        }
        assert_eq!(tc.rms_norm_eps, t["rms_norm_eps"].as_f64().unwrap(), "{name}: rms_norm_eps");
        assert_eq!(tc.rope_theta, t["rope_theta"].as_f64().unwrap(), "{name}: rope_theta");
        let axes: Vec<usize> = t["mrope_axes"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
        assert_eq!(dec.mrope_axes, axes, "{name}: M-RoPE axes");
        for (k, want) in t["vision"].as_object().unwrap() {
            assert_eq!(&vision[k], want, "{name}: vision_config.{k}");
        }
        if let Some(w) = t.get("weights") {
            // the model mstar builds asks for exactly transformers' parameters, with their shapes
            let mut tensors = zeros(w);
            dec.resolve_tied_head(&mut tensors, &file).unwrap();
            assert_eq!(dec.tie_word_embeddings, t["tie_word_embeddings"].as_bool().unwrap(), "{name}: tied");
            let built = if qwen3 {
                let mut c = qwen3_vl::Config::from_value(raw, &file).unwrap();
                c.decoder = dec.clone();
                qwen3_vl::Qwen3Vl::from_tensors(&c, tensors, None, &|_| false, DType::F32, &Device::Cpu).map(|_| ())
            } else {
                let mut c = qwen2_5_vl::Config::from_value(raw, &file).unwrap();
                c.decoder = dec.clone();
                qwen2_5_vl::Qwen25Vl::from_tensors(&c, tensors, None, &|_| false, DType::F32, &Device::Cpu).map(|_| ())
            };
            built.unwrap_or_else(|e| panic!("{name}: transformers' parameters do not build mstar's model: {e}"));
        } else {
            assert_eq!(dec.tie_word_embeddings, t["tie_word_embeddings"].as_bool().unwrap(), "{name}: tied");
        }
        checked += 1;
    }
    assert_eq!(checked, all["cases"].as_array().unwrap().len());
    eprintln!("{checked} config.json layouts read as transformers {} reads them", all["transformers"]);
}

fn spec(tie: bool, qwen3_text_tie_only: bool) -> DecoderSpec {
    let mut text = serde_json::json!({"vocab_size": 4, "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
        "num_key_value_heads": 1, "head_dim": 4, "rope_parameters": {"rope_type": "default", "mrope_section": [1, 0, 1]}});
    if qwen3_text_tie_only {
        text["tie_word_embeddings"] = true.into();
        return DecoderSpec::from_value(&serde_json::json!({"text_config": text}), Path::new("c.json"), Generation::Qwen3).unwrap();
    }
    DecoderSpec::from_value(&serde_json::json!({"text_config": text, "tie_word_embeddings": tie}), Path::new("c.json"), Generation::Qwen3).unwrap()
}

#[test]
fn tied_heads_are_settled_by_the_weights_as_transformers_5_does() {
    let t = |v: f32| Tensor::full(v, (4, 8), &Device::Cpu).unwrap();
    let (head, embed) = ("lm_head.weight", "model.embed_tokens.weight");
    // tied, both stored equal: the head is the embeddings
    let mut s = spec(true, false);
    let mut w = HashMap::from([(head.to_string(), t(1.0)), (embed.to_string(), t(1.0))]);
    s.resolve_tied_head(&mut w, Path::new("c.json")).unwrap();
    assert!(s.tie_word_embeddings && !w.contains_key(head));
    // tied, stored different: not tied, the stored head is used
    let mut s = spec(true, false);
    let mut w = HashMap::from([(head.to_string(), t(1.0)), (embed.to_string(), t(2.0))]);
    s.resolve_tied_head(&mut w, Path::new("c.json")).unwrap();
    assert!(!s.tie_word_embeddings && w.contains_key(head));
    // tied, only the head stored: the embeddings come from it
    let mut s = spec(true, false);
    let mut w = HashMap::from([(head.to_string(), t(3.0))]);
    s.resolve_tied_head(&mut w, Path::new("c.json")).unwrap();
    assert!(s.tie_word_embeddings && !w.contains_key(head) && w.contains_key(embed));
    // untied: nothing moves
    let mut s = spec(false, false);
    let mut w = HashMap::from([(head.to_string(), t(1.0)), (embed.to_string(), t(1.0))]);
    s.resolve_tied_head(&mut w, Path::new("c.json")).unwrap();
    assert!(!s.tie_word_embeddings && w.contains_key(head));
    // Qwen3-VL tied only in text_config (a 4.57 save): tied when no head is stored, else untied
    let mut s = spec(false, true);
    assert!(!s.tie_word_embeddings);
    let mut w = HashMap::from([(embed.to_string(), t(1.0))]);
    s.resolve_tied_head(&mut w, Path::new("c.json")).unwrap();
    assert!(s.tie_word_embeddings);
    let mut s = spec(false, true);
    let mut w = HashMap::from([(head.to_string(), t(1.0)), (embed.to_string(), t(2.0))]);
    s.resolve_tied_head(&mut w, Path::new("c.json")).unwrap();
    assert!(!s.tie_word_embeddings && w.contains_key(head));
}

#[test]
fn bad_values_name_the_key_and_the_file() {
    let base = serde_json::json!({"vocab_size": 4, "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
        "rope_parameters": {"rope_type": "default", "mrope_section": [1, 1, 0]}});
    let cases: Vec<(Value, Generation, &str)> = vec![
        (
            serde_json::json!({"text_config": {"rope_parameters": {"rope_type": "yarn", "factor": 2.0}}}),
            Generation::Qwen25,
            "text_config.rope_parameters.rope_type",
        ),
        (
            serde_json::json!({"rope_scaling": {"type": "linear", "factor": 2.0}, "vocab_size": 4, "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1}),
            Generation::Qwen25,
            "`rope_scaling.rope_type`",
        ),
        (
            serde_json::json!({"text_config": {"rope_parameters": {"mrope_section": [1, "a", 1]}}}),
            Generation::Qwen25,
            "text_config.rope_parameters.mrope_section",
        ),
        (serde_json::json!({"text_config": {"hidden_act": "relu"}}), Generation::Qwen3, "text_config.hidden_act"),
        (serde_json::json!({"text_config": {"hidden_size": "big"}}), Generation::Qwen25, "text_config.hidden_size"),
        (serde_json::json!({"hidden_size": 16, "text_config": {}}), Generation::Qwen25, "hidden_size"),
        (serde_json::json!({"hidden_size": 8}), Generation::Qwen3, "text_config"),
        (serde_json::json!({"text_config": {"head_dim": 6}}), Generation::Qwen25, "text_config.head_dim"),
        (
            serde_json::json!({"text_config": {"rope_scaling": {"mrope_section": [1, 1]}, "rope_parameters": {"mrope_section": [2, 0]}}}),
            Generation::Qwen25,
            "mrope_section",
        ),
        (serde_json::json!({"tie_word_embeddings": "yes", "text_config": {}}), Generation::Qwen25, "tie_word_embeddings"),
    ];
    for (v, generation, key) in cases {
        let mut v = v;
        if let Some(t) = v.get_mut("text_config") {
            let mut merged = base.clone();
            merged.as_object_mut().unwrap().extend(t.as_object().unwrap().clone());
            *t = merged;
        }
        let err = DecoderSpec::from_value(&v, Path::new("dir/config.json"), generation).unwrap_err().to_string();
        assert!(err.contains("dir/config.json") && err.contains(key), "{v}: {err}");
    }
}
