//! Spec → plan: the ordered stage instances of a run (setup stages as iteration 0, then each
//! iteration's stages in dependency order), each with the inputs it reads and its fingerprint.

use crate::ops::{OpError, Operator};
use crate::spec::{Pipeline, Scope};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// Bump when the meaning of stored tables changes for every stage.
pub const ENGINE_FORMAT: u32 = 1;

/// An input of a stage instance: a stage at the listed iterations.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PlannedInput {
    pub stage: String,
    pub iterations: Vec<u32>,
    pub fingerprints: Vec<String>,
}

/// One stage at one iteration (0 = setup).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Instance {
    pub stage: String,
    pub iteration: u32,
    pub op: String,
    pub fingerprint: String,
    pub inputs: Vec<PlannedInput>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub pipeline: String,
    pub spec_hash: String,
    pub iterations: u32,
    pub instances: Vec<Instance>,
}

impl Plan {
    pub fn find(&self, stage: &str, iteration: u32) -> Option<&Instance> {
        self.instances.iter().find(|i| i.stage == stage && i.iteration == iteration)
    }
}

/// Stage indices of one scope in dependency order (ties keep spec order). The spec has been
/// validated acyclic.
fn topo_order(p: &Pipeline, scope: Scope) -> Vec<usize> {
    let members: Vec<usize> = (0..p.stages.len()).filter(|&i| p.stages[i].scope == scope).collect();
    let mut done: Vec<usize> = Vec::new();
    while done.len() < members.len() {
        let next = members.iter().copied().find(|&i| {
            !done.contains(&i)
                && p.stages[i].inputs.iter().filter(|r| !r.prev).all(|r| {
                    let j = p.stages.iter().position(|s| s.id == r.stage).expect("validated input");
                    p.stages[j].scope != scope || done.contains(&j)
                })
        });
        match next {
            Some(i) => done.push(i),
            None => break, // unreachable for a validated spec
        }
    }
    done
}

/// Plans every instance and its fingerprint. `ops[i]` is the operator of `p.stages[i]`.
pub async fn build(p: &Pipeline, ops: &[Box<dyn Operator>]) -> Result<Plan, OpError> {
    let setup = topo_order(p, Scope::Setup);
    let per_iter = topo_order(p, Scope::Iteration);
    let mut order: Vec<(usize, u32)> = setup.iter().map(|&i| (i, 0)).collect();
    for it in 1..=p.iterations {
        order.extend(per_iter.iter().filter(|&&i| p.stages[i].runs_at(it)).map(|&i| (i, it)));
    }
    let mut fps: HashMap<(String, u32), String> = HashMap::new();
    let mut instances = Vec::new();
    for (si, it) in order {
        let stage = &p.stages[si];
        let op = &ops[si];
        let mut inputs = Vec::new();
        for r in &stage.inputs {
            let src = p.stage(&r.stage).expect("validated input");
            let iterations: Vec<u32> = match (src.scope, r.prev) {
                (Scope::Setup, _) => vec![0],
                (Scope::Iteration, false) => (1..=it).filter(|&i| src.runs_at(i)).collect(),
                (Scope::Iteration, true) => (1..it).filter(|&i| src.runs_at(i)).collect(),
            };
            let fingerprints = iterations.iter().map(|i| fps.get(&(r.stage.clone(), *i)).cloned().unwrap_or_default()).collect();
            inputs.push(PlannedInput { stage: r.stage.clone(), iterations, fingerprints });
        }
        let extra = op.fingerprint_extra(it).await?;
        let material = json!({
            "engine": ENGINE_FORMAT,
            "op": stage.op_name,
            "op_version": op.version(),
            "stage": stage.id,
            "iteration": it,
            "seed": p.seed,
            "spec": stage.op_fields,
            "extra": extra,
            "inputs": inputs,
        });
        let fingerprint = hex::encode(Sha256::digest(material.to_string().as_bytes()));
        fps.insert((stage.id.clone(), it), fingerprint.clone());
        instances.push(Instance { stage: stage.id.clone(), iteration: it, op: stage.op_name.to_string(), fingerprint, inputs });
    }
    Ok(Plan { pipeline: p.name.clone(), spec_hash: p.spec_hash.clone(), iterations: p.iterations, instances })
}
