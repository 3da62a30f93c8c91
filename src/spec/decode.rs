//! Typed decoding of spec values with serde that keeps going after an error: the bad key is
//! recorded (with its YAML path and position) and dropped, and decoding is retried.

use super::yaml::{Seg, YNode, YValue};
use super::{Origin, SpecError};
use serde::de::DeserializeOwned;
use serde_json::Value;

pub struct Decoder<'a> {
    root: &'a YNode,
    errors: Vec<SpecError>,
}

impl<'a> Decoder<'a> {
    pub fn new(root: &'a YNode) -> Self {
        Self { root, errors: Vec::new() }
    }

    pub fn into_errors(self) -> Vec<SpecError> {
        self.errors
    }

    pub fn origin(&self, path: &[Seg]) -> Origin {
        self.root.origin_of(path)
    }

    /// Index of the stage with this id in the spec's `stages` list.
    pub fn stage_index(&self, id: &str) -> Option<usize> {
        match &self.root.get("stages")?.value {
            YValue::Seq(items) => items.iter().position(|n| matches!(n.get("id"), Some(YNode { value: YValue::Str(s), .. }) if s == id)),
            _ => None,
        }
    }

    pub fn error(&mut self, path: &[Seg], message: impl Into<String>) {
        let message = message.into();
        let e = SpecError { path: self.display_path(path), origin: self.origin(path), message };
        if !self.errors.iter().any(|x| x.path == e.path && x.message == e.message) {
            self.errors.push(e);
        }
    }

    /// Dotted path; items of `stages` are named by their id.
    pub fn display_path(&self, path: &[Seg]) -> String {
        let mut out = String::new();
        for (i, seg) in path.iter().enumerate() {
            match seg {
                Seg::Key(k) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(k);
                }
                Seg::Index(ix) => {
                    let id = self.root.at(&path[..=i]).and_then(|n| match n.get("id") {
                        Some(YNode { value: YValue::Str(s), .. }) if !s.is_empty() => Some(s.clone()),
                        _ => None,
                    });
                    match id {
                        Some(id) => {
                            out.push('.');
                            out.push_str(&id);
                        }
                        None => out.push_str(&format!("[{ix}]")),
                    }
                }
            }
        }
        out
    }

    /// Decodes `value` (found at `at`) as `T`, recording every error. Returns the value
    /// decoded without the bad keys, or None when a required key is missing or bad.
    pub fn decode<T: DeserializeOwned>(&mut self, at: &[Seg], value: Value) -> Option<T> {
        self.decode_inner(at, value, None)
    }

    /// Like [`decode`] for an operator's own keys: unknown-key errors also list the keys
    /// common to every stage.
    pub fn decode_op<T: DeserializeOwned>(&mut self, at: &[Seg], op: &str, value: Value) -> Option<T> {
        self.decode_inner(at, value, Some((op, super::COMMON_KEYS)))
    }

    fn decode_inner<T: DeserializeOwned>(&mut self, at: &[Seg], mut value: Value, op: Option<(&str, &[&str])>) -> Option<T> {
        let mut removed: Vec<Vec<Seg>> = Vec::new();
        for _ in 0..256 {
            let err = match serde_path_to_error::deserialize::<_, T>(&value) {
                Ok(t) => return Some(t),
                Err(e) => e,
            };
            let mut rel: Vec<Seg> = err
                .path()
                .iter()
                .filter_map(|s| match s {
                    serde_path_to_error::Segment::Map { key } => Some(Seg::Key(key.clone())),
                    serde_path_to_error::Segment::Seq { index } => Some(Seg::Index(*index)),
                    _ => None,
                })
                .collect();
            let msg = err.inner().to_string();
            if let Some(field) = between(&msg, "unknown field `", "`") {
                if rel.last() != Some(&Seg::Key(field.clone())) {
                    rel.push(Seg::Key(field.clone()));
                }
                let expected = msg.split_once(", expected ").map(|(_, e)| e.to_string());
                let mut m = match op {
                    Some((op, _)) => format!("unknown key `{field}` for op `{op}`"),
                    None => format!("unknown key `{field}`"),
                };
                match (expected, op) {
                    (Some(e), Some((_, common))) => m.push_str(&format!(" (expected {e}, or a stage key: {})", common.join(", "))),
                    (Some(e), None) => m.push_str(&format!(" (expected {e})")),
                    (None, Some((_, common))) => m.push_str(&format!(" (it takes no keys besides: {})", common.join(", "))),
                    _ => {}
                }
                self.error(&join(at, &rel), m);
            } else if let Some(field) = between(&msg, "missing field `", "`") {
                let mut full = rel.clone();
                full.push(Seg::Key(field.clone()));
                if !removed.contains(&full) {
                    self.error(&join(at, &rel), format!("missing required key `{field}`"));
                }
                return None;
            } else {
                let m = msg.split(" at line ").next().unwrap_or(&msg).to_string();
                self.error(&join(at, &rel), m);
            }
            // Drop the innermost mapping key on the error path and try again.
            let cut = rel.iter().rposition(|s| matches!(s, Seg::Key(_)))?;
            let cut_path = rel[..=cut].to_vec();
            if !remove_key(&mut value, &cut_path) {
                return None;
            }
            removed.push(cut_path);
        }
        None
    }
}

fn join(a: &[Seg], b: &[Seg]) -> Vec<Seg> {
    a.iter().chain(b).cloned().collect()
}

fn between(s: &str, start: &str, end: &str) -> Option<String> {
    let i = s.find(start)? + start.len();
    let j = s[i..].find(end)? + i;
    Some(s[i..j].to_string())
}

fn remove_key(value: &mut Value, path: &[Seg]) -> bool {
    let Some((last, parents)) = path.split_last() else { return false };
    let mut v = value;
    for seg in parents {
        v = match (seg, v) {
            (Seg::Key(k), Value::Object(m)) => match m.get_mut(k) {
                Some(x) => x,
                None => return false,
            },
            (Seg::Index(i), Value::Array(a)) => match a.get_mut(*i) {
                Some(x) => x,
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, v) {
        (Seg::Key(k), Value::Object(m)) => m.shift_remove(k).is_some(),
        _ => false,
    }
}
