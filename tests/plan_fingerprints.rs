//! The fingerprints of every shipped pipeline's plan, against a golden file: a change to the spec
//! or plan code that changes them makes every existing run store recompute from scratch, so it
//! must be deliberate. Pipelines that read files on disk are left out (their mtimes enter the
//! fingerprints). `MSTAR_WRITE_GOLDEN=1 cargo test --test plan_fingerprints` rewrites the golden file.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn pipelines(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() && !p.ends_with("runs") && !p.ends_with("data") {
            pipelines(&p, out);
        } else if p.extension().is_some_and(|e| e == "yaml") {
            out.push(p);
        }
    }
}

#[tokio::test]
async fn shipped_pipelines_plan_to_the_same_fingerprints() {
    let repo = common::repo();
    let mut files = Vec::new();
    pipelines(&repo.join("pipelines"), &mut files);
    pipelines(&repo.join("benches"), &mut files);
    let mut got: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for f in &files {
        let rel = f.strip_prefix(&repo).unwrap().display().to_string();
        let Ok(p) = mstar::spec::load(f, &[]) else { continue };
        // files on disk (a dataset path, a model folder) enter fingerprints with their mtimes
        if p.datasets.values().any(|d| !d.path.is_empty()) || p.stages.iter().any(|s| s.op_fields.get("model").is_some()) {
            continue;
        }
        let Ok((_, plan)) = mstar::runner::make_plan(&p).await else { continue };
        let fps = plan.instances.iter().map(|i| (format!("{}/{}", i.iteration, i.stage), i.fingerprint.clone())).collect();
        got.insert(rel, fps);
    }
    assert!(got.len() >= 10, "only {} pipelines planned", got.len());
    let golden = repo.join("tests/golden/plan_fingerprints.json");
    if std::env::var("MSTAR_WRITE_GOLDEN").is_ok() {
        std::fs::write(&golden, serde_json::to_string_pretty(&got).unwrap() + "\n").unwrap();
        return;
    }
    let want: BTreeMap<String, BTreeMap<String, String>> = serde_json::from_str(&std::fs::read_to_string(&golden).unwrap()).unwrap();
    for (file, fps) in &want {
        let Some(g) = got.get(file) else { panic!("{file} no longer plans") };
        for (inst, fp) in fps {
            assert_eq!(g.get(inst), Some(fp), "{file}: fingerprint of {inst} changed");
        }
        assert_eq!(g.len(), fps.len(), "{file}: other stage instances");
    }
}
