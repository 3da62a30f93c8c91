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

/// Replaces every `${name}`; an unknown name or an unclosed `${` is an error.
pub fn substitute(text: &str, params: &ParamSet) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let Some(end) = tail.find('}') else {
                return Err("unclosed `${` in SQL".to_string());
            };
            let name = tail[..end].trim();
            match params.0.get(name) {
                Some(v) => out.push_str(v),
                None => {
                    let known: Vec<&str> = params.0.keys().map(String::as_str).collect();
                    let mut missing: Vec<String> = Vec::new();
                    let mut scan = ParamSet::new();
                    // every parameter the text uses that is not set, in order of appearance
                    let mut t = text;
                    while let Some(p) = t.find("${") {
                        let escaped = p > 0 && t.as_bytes()[p - 1] == b'$';
                        let Some(e) = t[p + 2..].find('}') else { break };
                        let n = t[p + 2..p + 2 + e].trim().to_string();
                        if !escaped && !params.0.contains_key(&n) && !scan.0.contains_key(&n) {
                            scan.insert(&n, String::new());
                            missing.push(format!("`${{{n}}}`"));
                        }
                        t = &t[p + 2 + e + 1..];
                    }
                    return Err(format!(
                        "unknown SQL parameter {} (known: {})",
                        missing.join(", "),
                        if known.is_empty() { "none".to_string() } else { known.join(", ") }
                    ));
                }
            }
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
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
        assert!(substitute("${nope}", &p).unwrap_err().contains("nope"));
        let e = substitute("${a} $${b} ${iteration} ${c} ${a}", &p).unwrap_err();
        assert_eq!(e, "unknown SQL parameter `${a}`, `${c}` (known: iteration)");
        assert!(substitute("${iteration", &p).is_err());
    }
}
