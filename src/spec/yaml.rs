//! YAML documents as a tree that remembers where every value was written, so that
//! spec errors can name their YAML path and line/column; `--set` overrides edit this tree.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_saphyr::Spanned;
use std::fmt;

/// Where a value came from: a line/column in the YAML file, or a command-line override.
#[derive(Debug, Clone, PartialEq)]
pub enum Origin {
    File { line: u64, column: u64 },
    Override(String),
    Unknown,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { line, column } => write!(f, "{line}:{column}"),
            Origin::Override(s) => write!(f, "--set {s}"),
            Origin::Unknown => write!(f, "?"),
        }
    }
}

/// A YAML value with its origin.
#[derive(Debug, Clone)]
pub struct YNode {
    pub value: YValue,
    pub origin: Origin,
}

#[derive(Debug, Clone)]
pub enum YValue {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<YNode>),
    Map(Vec<(String, YNode)>),
}

/// One step of a path into a YAML document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// Parses YAML text into a located tree. A syntax error is returned as (message, origin).
pub fn parse(text: &str) -> Result<YNode, (String, Origin)> {
    if text.trim().is_empty() {
        return Ok(YNode { value: YValue::Null, origin: Origin::File { line: 1, column: 1 } });
    }
    // YAML 1.2 core booleans only: `y`, `no`, `on` … stay strings.
    let options = serde_saphyr::options! { strict_booleans: true };
    match serde_saphyr::from_str_with_options::<Spanned<Raw>>(text, options) {
        Ok(root) => Ok(from_spanned(root, None)),
        Err(e) => {
            let origin = e.location().map(|l| Origin::File { line: l.line(), column: l.column() }).unwrap_or(Origin::Unknown);
            let msg = e.to_string();
            let first = msg.lines().next().unwrap_or("invalid YAML").to_string();
            Err((first, origin))
        }
    }
}

/// A `--set key=value` override whose value is not YAML.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("--set {label}: {message}")]
pub struct OverrideValueError {
    /// The override as given, `key=value`.
    pub label: String,
    /// The YAML parser's message (its first line).
    pub message: String,
}

/// Parses the value of a `--set key=value` override as a YAML scalar or flow collection.
pub fn parse_override_value(text: &str, label: &str) -> Result<YNode, OverrideValueError> {
    let mut node = parse(text).map_err(|(message, _)| OverrideValueError { label: label.to_string(), message })?;
    if text.trim().is_empty() {
        node.value = YValue::Str(String::new());
    }
    set_origin(&mut node, &Origin::Override(label.to_string()));
    Ok(node)
}

fn set_origin(node: &mut YNode, origin: &Origin) {
    node.origin = origin.clone();
    match &mut node.value {
        YValue::Seq(items) => items.iter_mut().for_each(|n| set_origin(n, origin)),
        YValue::Map(items) => items.iter_mut().for_each(|(_, n)| set_origin(n, origin)),
        _ => {}
    }
}

/// A dotted path [`YNode::set_path`] cannot set; displayed as on the command line,
/// `--set PATH: why`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("--set {path}: {kind}")]
pub struct SetPathError {
    /// The dotted path as given.
    pub path: String,
    pub kind: SetPathErrorKind,
}

/// Why a dotted path cannot be set; `at` is the path of the node where it failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SetPathErrorKind {
    #[error("empty path segment")]
    EmptySegment,
    #[error("`{at}` has no item with id `{id}`")]
    NoItem { at: String, id: String },
    #[error("`{at}` is a scalar, it has no field `{field}`")]
    Scalar { at: String, field: String },
}

impl YNode {
    pub fn get(&self, key: &str) -> Option<&YNode> {
        match &self.value {
            YValue::Map(items) => items.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Follows a path; returns the deepest node reached.
    pub fn at(&self, path: &[Seg]) -> Option<&YNode> {
        let mut node = self;
        for seg in path {
            node = match (seg, &node.value) {
                (Seg::Key(k), YValue::Map(_)) => node.get(k)?,
                (Seg::Index(i), YValue::Seq(items)) => items.get(*i)?,
                _ => return None,
            };
        }
        Some(node)
    }

    /// The origin of the deepest existing node on `path` (a missing key points at its parent).
    pub fn origin_of(&self, path: &[Seg]) -> Origin {
        for len in (0..=path.len()).rev() {
            if let Some(n) = self.at(&path[..len]) {
                return n.origin.clone();
            }
        }
        Origin::Unknown
    }

    pub fn to_json(&self) -> Value {
        match &self.value {
            YValue::Null => Value::Null,
            YValue::Bool(b) => Value::Bool(*b),
            YValue::Int(i) => Value::from(*i),
            YValue::Float(f) => serde_json::Number::from_f64(*f).map(Value::Number).unwrap_or(Value::Null),
            YValue::Str(s) => Value::String(s.clone()),
            YValue::Seq(items) => Value::Array(items.iter().map(YNode::to_json).collect()),
            YValue::Map(items) => Value::Object(items.iter().map(|(k, v)| (k.clone(), v.to_json())).collect()),
        }
    }

    /// Sets the value at a dotted path. Map keys are created when missing; in a sequence of
    /// maps a segment selects the item whose `id` equals it, or an item by its index.
    pub fn set_path(&mut self, dotted: &str, value: YNode) -> Result<(), SetPathError> {
        let fail = |kind| SetPathError { path: dotted.to_string(), kind };
        let parts: Vec<&str> = dotted.split('.').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(fail(SetPathErrorKind::EmptySegment));
        }
        let mut node = self;
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            if matches!(node.value, YValue::Null) {
                node.value = YValue::Map(vec![]);
            }
            let here = parts[..i].join(".");
            match &mut node.value {
                YValue::Map(items) => {
                    let pos = match items.iter().position(|(k, _)| k == part) {
                        Some(p) => p,
                        None => {
                            let origin = Origin::Override(dotted.to_string());
                            items.push((part.to_string(), YNode { value: YValue::Null, origin }));
                            items.len() - 1
                        }
                    };
                    if last {
                        items[pos].1 = value;
                        return Ok(());
                    }
                    node = &mut items[pos].1;
                }
                YValue::Seq(items) => {
                    let pos = items
                        .iter()
                        .position(|n| matches!(n.get("id"), Some(YNode { value: YValue::Str(s), .. }) if s == part))
                        .or_else(|| part.parse::<usize>().ok().filter(|i| *i < items.len()));
                    let Some(pos) = pos else {
                        return Err(fail(SetPathErrorKind::NoItem { at: here, id: part.to_string() }));
                    };
                    if last {
                        items[pos] = value;
                        return Ok(());
                    }
                    node = &mut items[pos];
                }
                _ => return Err(fail(SetPathErrorKind::Scalar { at: here, field: part.to_string() })),
            }
        }
        unreachable!("loop returns on the last segment")
    }
}

fn from_spanned(s: Spanned<Raw>, _parent: Option<&Origin>) -> YNode {
    let origin = if s.referenced.line() == 0 { Origin::Unknown } else { Origin::File { line: s.referenced.line(), column: s.referenced.column() } };
    let value = match s.value {
        Raw::Null => YValue::Null,
        Raw::Bool(b) => YValue::Bool(b),
        Raw::Int(i) => YValue::Int(i),
        Raw::Float(f) => YValue::Float(f),
        Raw::Str(s) => YValue::Str(s),
        Raw::Seq(items) => YValue::Seq(items.into_iter().map(|n| from_spanned(n, Some(&origin))).collect()),
        Raw::Map(items) => YValue::Map(items.into_iter().map(|(k, v)| (k, from_spanned(v, Some(&origin)))).collect()),
    };
    YNode { value, origin }
}

/// The untyped document as serde-saphyr hands it over; children keep their spans.
enum Raw {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<Raw>>),
    Map(Vec<(String, Spanned<Raw>)>),
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }
    fn visit_none<E>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Raw, D::Error> {
        Raw::deserialize(d)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Raw, E> {
        Ok(Raw::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Raw, E> {
        Ok(Raw::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Raw, E> {
        i64::try_from(v).map(Raw::Int).or(Ok(Raw::Float(v as f64)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Raw, E> {
        Ok(Raw::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Raw, E> {
        Ok(Raw::Str(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Raw, E> {
        Ok(Raw::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Raw>>()? {
            items.push(item);
        }
        Ok(Raw::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        let mut items: Vec<(String, Spanned<Raw>)> = Vec::new();
        while let Some(key) = map.next_key::<KeyString>()? {
            let value = map.next_value::<Spanned<Raw>>()?;
            if items.iter().any(|(k, _)| *k == key.0) {
                return Err(de::Error::custom(format!("duplicate key `{}`", key.0)));
            }
            items.push((key.0, value));
        }
        Ok(Raw::Map(items))
    }
}

/// Map keys may be written as numbers or booleans; they are kept as text.
struct KeyString(String);

impl<'de> Deserialize<'de> for KeyString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyString;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a scalar mapping key")
            }
            fn visit_str<E>(self, v: &str) -> Result<KeyString, E> {
                Ok(KeyString(v.to_string()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<KeyString, E> {
                Ok(KeyString(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<KeyString, E> {
                Ok(KeyString(v.to_string()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<KeyString, E> {
                Ok(KeyString(v.to_string()))
            }
            fn visit_bool<E>(self, v: bool) -> Result<KeyString, E> {
                Ok(KeyString(v.to_string()))
            }
        }
        d.deserialize_string(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_types_and_positions() {
        let doc = parse("a: 1\nb:\n  - x: true\n    y: \"2\"\n  - 2.5\nc: ~\nd: no\n1: x\n").unwrap();
        let v = doc.to_json();
        assert_eq!(v["a"], 1);
        assert_eq!(v["b"][0]["x"], true);
        assert_eq!(v["b"][0]["y"], "2");
        assert_eq!(v["b"][1], 2.5);
        assert!(v["c"].is_null());
        assert_eq!(v["d"], "no");
        assert_eq!(v["1"], "x");
        let y = doc.at(&[Seg::Key("b".into()), Seg::Index(0), Seg::Key("y".into())]).unwrap();
        assert_eq!(y.origin, Origin::File { line: 4, column: 8 });
    }

    #[test]
    fn set_path_by_id_and_creates_keys() {
        let mut doc = parse("stages:\n  - id: a\n    n: 1\n").unwrap();
        doc.set_path("stages.a.n", parse_override_value("8", "stages.a.n=8").unwrap()).unwrap();
        doc.set_path("seed", parse_override_value("7", "seed=7").unwrap()).unwrap();
        assert_eq!(doc.to_json()["stages"][0]["n"], 8);
        assert_eq!(doc.to_json()["seed"], 7);
        let e = doc.set_path("stages.b.n", parse_override_value("1", "x").unwrap()).unwrap_err();
        assert_eq!(e.to_string(), "--set stages.b.n: `stages` has no item with id `b`");
        let e = doc.set_path("seed.x", parse_override_value("1", "x").unwrap()).unwrap_err();
        assert_eq!(e.kind, SetPathErrorKind::Scalar { at: "seed".into(), field: "x".into() });
        assert_eq!(doc.set_path("a..b", parse_override_value("1", "x").unwrap()).unwrap_err().to_string(), "--set a..b: empty path segment");
        assert!(parse_override_value("[1", "k=[1").unwrap_err().to_string().starts_with("--set k=[1: "));
    }

    #[test]
    fn syntax_error_has_position() {
        let (msg, origin) = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(!msg.is_empty());
        assert!(matches!(origin, Origin::File { .. }), "{origin:?}");
    }
}
