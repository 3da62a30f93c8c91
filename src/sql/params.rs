//! `${name}` parameters in SQL text (`${iteration}`, `${prev_iteration}`, `${seed}`, stage and
//! pipeline `params`); `$${` writes a literal `${`.

use std::collections::BTreeMap;

/// Parameter values by name.
#[derive(Debug, Clone, Default)]
pub struct ParamSet(BTreeMap<String, String>);

impl ParamSet {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn insert(&mut self, k: &str, v: String) {
        self.0.insert(k.to_string(), v);
    }
}

/// Why SQL text's `${…}` parameters could not be substituted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    #[error("unclosed `${{` in SQL")]
    Unclosed,
    /// `missing`: the unknown names as written, `` `${name}` ``, in order of appearance;
    /// `known`: the names that were set.
    #[error("unknown SQL parameter {} (known: {})", missing.join(", "), if known.is_empty() { "none".to_string() } else { known.join(", ") })]
    Unknown { missing: Vec<String>, known: Vec<String> },
}

/// Replaces every `${name}`; unknown names (all of them, listed in order of appearance) or an
/// unclosed `${` are an error.
pub fn substitute(text: &str, params: &ParamSet) -> Result<String, ParamError> {
    let mut out = String::with_capacity(text.len());
    let mut missing: Vec<String> = Vec::new();
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let Some(end) = tail.find('}') else {
                if missing.is_empty() {
                    return Err(ParamError::Unclosed);
                }
                break;
            };
            let name = tail[..end].trim();
            match params.0.get(name) {
                Some(v) => out.push_str(v),
                None => {
                    let m = format!("`${{{name}}}`");
                    if !missing.contains(&m) {
                        missing.push(m);
                    }
                }
            }
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    if !missing.is_empty() {
        return Err(ParamError::Unknown { missing, known: params.0.keys().cloned().collect() });
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitutes_and_escapes() {
        let mut p = ParamSet::new();
        p.insert("iteration", "3".into());
        assert_eq!(substitute("a = ${iteration} and b = '$${x}' and $1", &p).unwrap(), "a = 3 and b = '${x}' and $1");
        assert!(substitute("${nope}", &p).unwrap_err().to_string().contains("nope"));
        let e = substitute("${a} $${b} ${iteration} ${c} ${a}", &p).unwrap_err();
        assert_eq!(e.to_string(), "unknown SQL parameter `${a}`, `${c}` (known: iteration)");
        assert_eq!(substitute("${iteration", &p), Err(ParamError::Unclosed));
        assert_eq!(ParamError::Unclosed.to_string(), "unclosed `${` in SQL");
        assert_eq!(substitute("${x}", &ParamSet::new()).unwrap_err().to_string(), "unknown SQL parameter `${x}` (known: none)");
    }
}
