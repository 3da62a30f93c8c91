//! Numeric parity of the tiny VLM's forward pass and gradients with the PyTorch reference
//! (fixture made by tests/model/make_parity_fixture.py from tests/model/torch_ref.py).

use super::layers::masked_cross_entropy;
use super::tiny_vlm::{Config, TinyVlm};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn forward_and_gradients_match_pytorch() {
    parity_on(&Device::Cpu);
}

/// The same check on the first GPU, with the same tolerances (`cargo test --features cuda cuda`).
#[cfg(feature = "cuda")]
#[test]
fn cuda_forward_and_gradients_match_pytorch() {
    parity_on(&Device::new_cuda(0).expect("a CUDA device (this test needs a GPU)"));
}

fn parity_on(dev: &Device) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/model");
    let cfg: Config = serde_json::from_slice(&std::fs::read(format!("{dir}/parity_config.json")).unwrap()).unwrap();
    let all = candle_core::safetensors::load(format!("{dir}/parity.safetensors"), dev).unwrap();
    let varmap = VarMap::new();
    let mut weights = Vec::new();
    for (k, t) in &all {
        if let Some(name) = k.strip_prefix("weight.") {
            let var = Var::from_tensor(t).unwrap();
            varmap.data().lock().unwrap().insert(name.to_string(), var.clone());
            weights.push((name.to_string(), var));
        }
    }
    let model = TinyVlm::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, dev)).unwrap();
    assert_eq!(varmap.all_vars().len(), weights.len(), "the model uses exactly the fixture's weights");
    let ids = all["input.ids"].to_dtype(DType::U32).unwrap();
    let targets = all["input.targets"].to_dtype(DType::U32).unwrap();
    let logits = model.forward(&ids, 1, &all["input.patches"]).unwrap();
    let d = max_abs(&logits, &all["expected.logits"]);
    eprintln!("{dev:?}: max |Δlogit| = {d}");
    assert!(d <= 1e-4, "max |Δlogit| = {d}");
    let loss = masked_cross_entropy(&logits, &targets, &all["input.weights"]).unwrap();
    let dl = max_abs(&loss.reshape(1).unwrap(), &all["expected.loss"]);
    eprintln!("{dev:?}: |Δloss| = {dl}");
    assert!(dl <= 1e-5, "|Δloss| = {dl}");
    let grads = loss.backward().unwrap();
    let mut worst = (0f32, String::new());
    for (name, var) in &weights {
        let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}"));
        let expected = &all[&format!("grad.{name}")];
        let scale = expected.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap().max(1e-6);
        let d = max_abs(g, expected);
        if d / scale.max(1.0) > worst.0 {
            worst = (d / scale.max(1.0), name.clone());
        }
        assert!(d <= 1e-4 * scale.max(1.0), "{name}: max |Δgrad| = {d} (scale {scale})");
    }
    eprintln!("{dev:?}: worst max |Δgrad| / max(1, scale) = {} ({})", worst.0, worst.1);
}
