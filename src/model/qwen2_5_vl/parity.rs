//! Parity with transformers on tiny random checkpoints: tests/model/qwen2_5_vl (4.57, made by
//! tests/model/make_qwen_fixture.py) and qwen2_5_vl_v5 (5.24, make_qwen_v5_fixtures.py): chat
//! template, tokens, pixels and logits.

use crate::model::qwen_vl::{Checkpoint, QwenVl};
use candle_core::{DType, Device, Tensor};
use std::path::PathBuf;

fn fixture() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/model/qwen2_5_vl"))
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn processor_tokens_and_logits_match_transformers() {
    check_parity(&fixture());
}

/// A folder saved by transformers 5 (processor_config.json, torchvision image processor,
/// rope_parameters, sections [2, 1, 1] of head_dim 8, 4 query heads per KV head, tied head).
#[test]
fn a_transformers_5_folder_matches_transformers_5() {
    check_parity(&fixture().with_file_name("qwen2_5_vl_v5"));
}

/// The fixture folder's three chats: template, pixels, grids and ids identical, logits ≤ 1e-4.
pub(crate) fn check_parity(dir: &std::path::Path) {
    let dev = Device::Cpu;
    let ck = Checkpoint::load(dir, DType::F32, &dev).unwrap();
    let expected = candle_core::safetensors::load(dir.join("expected.safetensors"), &dev).unwrap();
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
    for case in ["text", "one_image", "two_images"] {
        let m = &meta[case];
        // the chat template renders the same prompt
        let prompt = ck.chat.render(&m["messages"], true).unwrap();
        assert_eq!(prompt, m["prompt"].as_str().unwrap(), "{case}: rendered prompt");
        // the image processor gives the same pixels and grids, bit for bit
        let mut pixels = Vec::new();
        let mut grids = Vec::new();
        for name in m["images"].as_array().unwrap() {
            let bytes = std::fs::read(dir.join(name.as_str().unwrap())).unwrap();
            let p = ck.processor.preprocess_bytes(&bytes).unwrap();
            grids.push(p.grid);
            pixels.extend(p.values);
        }
        let pixels = if grids.is_empty() {
            None
        } else {
            let want = &expected[&format!("{case}.pixel_values")];
            let got = Tensor::from_vec(pixels, want.dims(), &dev).unwrap();
            assert_eq!(max_abs(&got, want), 0.0, "{case}: pixel values");
            let want_grid: Vec<i64> = expected[&format!("{case}.image_grid_thw")].flatten_all().unwrap().to_vec1().unwrap();
            let got_grid: Vec<i64> = grids.iter().flatten().map(|&x| x as i64).collect();
            assert_eq!(got_grid, want_grid, "{case}: grids");
            Some(got)
        };
        // placeholder expansion + tokenizer give the same ids
        let text = ck.expand_image_pads(m["text"].as_str().unwrap(), &grids).unwrap();
        let ids = ck.encode(&text).unwrap();
        let want_ids: Vec<i64> = expected[&format!("{case}.input_ids")].to_vec1().unwrap();
        assert_eq!(ids.iter().map(|&x| x as i64).collect::<Vec<_>>(), want_ids, "{case}: input ids");
        // and the model the same logits
        let logits = ck.model.forward(&ids, pixels.as_ref(), &grids).unwrap().squeeze(0).unwrap();
        let want = &expected[&format!("{case}.logits")];
        let d = max_abs(&logits, want);
        let scale = want.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        eprintln!("{case}: max |Δlogit| = {d:.2e} (logits up to {scale:.2})");
        assert!(d <= 1e-4, "{case}: max |Δlogit| = {d}");
    }
}

/// A LoRA training step (adapters on q_proj, v_proj, gate_proj and the vision qkv, from peft's
/// adapter folder): the loss and every adapter gradient match peft's; merging the adapters
/// into the weights gives the adapted model's logits.
#[test]
fn lora_step_matches_peft_and_merges() {
    use crate::model::layers::masked_cross_entropy;
    let dir = fixture();
    let dev = Device::Cpu;
    let ck = Checkpoint::load_with_adapter(&dir, &dir.join("lora"), true, DType::F32, &dev).unwrap();
    let exp = candle_core::safetensors::load(dir.join("lora/expected.safetensors"), &dev).unwrap();
    let ids: Vec<u32> = exp["input_ids"].to_vec1::<i64>().unwrap().iter().map(|&x| x as u32).collect();
    let labels: Vec<i64> = exp["labels"].to_vec1().unwrap();
    let img = ck.processor.preprocess_bytes(&std::fs::read(dir.join("b.png")).unwrap()).unwrap();
    let n = img.num_patches();
    let pixels = Tensor::from_vec(img.values.clone(), (n, img.values.len() / n), &dev).unwrap();
    let logits = ck.model.forward(&ids, Some(&pixels), &[img.grid]).unwrap();
    // position t predicts label t + 1
    let t = ids.len() - 1;
    let targets: Vec<u32> = labels[1..].iter().map(|&l| l.max(0) as u32).collect();
    let weights: Vec<f32> = labels[1..].iter().map(|&l| (l >= 0) as u8 as f32).collect();
    let loss = masked_cross_entropy(
        &logits.narrow(1, 0, t).unwrap(),
        &Tensor::from_vec(targets, (1, t), &dev).unwrap(),
        &Tensor::from_vec(weights, (1, t), &dev).unwrap(),
    )
    .unwrap();
    let want = exp["loss"].to_vec1::<f32>().unwrap()[0];
    let got = loss.to_scalar::<f32>().unwrap();
    assert!((got - want).abs() < 1e-5, "loss {got} vs peft {want}");
    let grads = loss.backward().unwrap();
    let vars = ck.varmap.data().lock().unwrap();
    let (mut checked, mut worst) = (0, 0f32);
    for (name, want) in exp.iter().filter_map(|(k, v)| k.strip_prefix("grad.").map(|n| (n, v))) {
        let name = crate::model::hf::weights::canonical_name(name);
        let var = vars.get(&name).unwrap_or_else(|| panic!("no variable {name}"));
        let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}"));
        let d = max_abs(g, want);
        let scale = want.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert!(d <= 1e-5 + 1e-4 * scale, "{name}: max |Δgrad| {d} (grad up to {scale})");
        worst = worst.max(d / scale);
        checked += 1;
    }
    eprintln!("LoRA: loss {got} (peft {want}), worst |Δgrad| / max |grad| = {worst:.1e}");
    assert_eq!(checked, 20, "adapter tensors with gradients");
    // merged weights, no adapters, same logits
    drop(vars);
    let all = ck.all_tensors();
    let lc = super::lora::LoraConfig::from_file(&dir.join("lora/adapter_config.json")).unwrap();
    let merged = super::lora::merge(&all, &lc).unwrap();
    assert!(merged.keys().all(|k| !k.contains("lora_")));
    let QwenVl::Qwen25(m) = &ck.model else { panic!("a Qwen2.5-VL fixture") };
    let (plain, _, _) = super::Qwen25Vl::from_tensors(&m.cfg, merged, None, &|_| false, DType::F32, &dev).unwrap();
    let d = max_abs(&QwenVl::Qwen25(plain).forward(&ids, Some(&pixels), &[img.grid]).unwrap(), &logits);
    assert!(d < 1e-4, "merged logits differ by {d}");
}
