//! Extracts the final answer from a free-text model response (rule-based, no LLM) and
//! compares it with the gold answer exactly as MathVista's official scoring does.

// Normalisation mirrors `normalize_extracted_answer` + `safe_equal` + `get_most_similar`
// from MathVista's `evaluation/calculate_score.py`, including CPython's `float()`, `int()`,
// `round()` and `repr(float)` semantics, so `str(round(float(x), p))` and
// `str(int(float(x)))` come out byte-identical. The reference Python port lives in
// `tests/answer/mathvista_score.py`; `tests/answer/cases.jsonl` holds cases it generated.
//
// Deliberate differences from the official script:
// * a missing float precision is treated as 2 (MathVista calls `int(None)` and fails);
// * free-form `text` answers are stripped (MathVista leaves them untouched; extracted
//   answers are already stripped, so this only matters for raw responses);
// * `float()` accepts the Unicode 14.0 decimal digits (as CPython 3.11 does).

use std::fmt;
use std::str::FromStr;

/// MathVista's `answer_type` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerType {
    Text,
    Integer,
    Float,
    List,
}

impl AnswerType {
    /// Parses "text" | "integer" | "float" | "list" (ASCII case-insensitive, surrounding
    /// whitespace ignored).
    pub fn parse(s: &str) -> Option<AnswerType> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" => Some(AnswerType::Text),
            "integer" => Some(AnswerType::Integer),
            "float" => Some(AnswerType::Float),
            "list" => Some(AnswerType::List),
            _ => None,
        }
    }

    /// The canonical lower-case name, as used in MathVista's metadata.
    pub fn as_str(self) -> &'static str {
        match self {
            AnswerType::Text => "text",
            AnswerType::Integer => "integer",
            AnswerType::Float => "float",
            AnswerType::List => "list",
        }
    }
}

impl fmt::Display for AnswerType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AnswerType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AnswerType::parse(s).ok_or_else(|| format!("invalid answer type {s:?}: expected one of \"text\", \"integer\", \"float\", \"list\""))
    }
}

// ---------------------------------------------------------------------------
// Answer extraction
// ---------------------------------------------------------------------------

/// The final answer stated in a free-text response, or None.
///
/// Rules, first hit wins (each rule scans candidates from last to first and skips
/// candidates that are empty after cleaning):
/// 1. a line starting with `Answer:` (ASCII case-insensitive; leading whitespace and
///    markdown `*#>-_` are skipped, and `**Answer**:` is accepted);
/// 2. a `\boxed{...}` with balanced braces;
/// 3. a phrase `answer is X` or `answer:` X (ASCII case-insensitive; `answer is` must not be
///    followed by an ASCII letter/digit); X skips leading whitespace and `:` and runs up to
///    the next newline or the next `.` followed by whitespace;
/// 4. the last whitespace-separated token, stripped of ``()[]{}*.,:;!?"'$` ``, if it is a
///    single letter `A`-`Z` (e.g. "... so B." or "(C)").
///
/// Cleaning (repeated until stable): strip whitespace, surrounding `*`, one pair of
/// surrounding `$`, a `\boxed{...}` wrapping the whole candidate, and one trailing `.`.
pub fn extract_answer(response: &str) -> Option<String> {
    // 1. "Answer:" lines.
    for line in response.split('\n').rev() {
        if let Some(content) = answer_line_content(line) {
            if let Some(v) = clean_candidate(content) {
                return Some(v);
            }
        }
    }
    // 2. \boxed{...}
    let starts: Vec<usize> = response.match_indices("\\boxed{").map(|(i, _)| i).collect();
    for &i in starts.iter().rev() {
        let brace = i + "\\boxed".len();
        if let Some((inner, _)) = balanced_braces(response, brace) {
            if let Some(v) = clean_candidate(inner) {
                return Some(v);
            }
        }
    }
    // 3. "answer is X" / "answer: X" phrases.
    let bytes = response.as_bytes();
    let mut hits: Vec<usize> = Vec::new(); // byte offset just after the phrase
    for i in 0..bytes.len() {
        let rest = &bytes[i..];
        if rest.len() >= 9 && rest[..9].eq_ignore_ascii_case(b"answer is") {
            let ok = rest.get(9).is_none_or(|c| !c.is_ascii_alphanumeric());
            if ok {
                hits.push(i + 9);
            }
        } else if rest.len() >= 7 && rest[..7].eq_ignore_ascii_case(b"answer:") {
            hits.push(i + 7);
        }
    }
    for &end in hits.iter().rev() {
        let tail = response[end..].trim_start_matches(|c: char| is_py_space(c) || c == ':');
        let x = phrase_value(tail);
        if let Some(v) = clean_candidate(x) {
            return Some(v);
        }
    }
    // 4. trailing lone option letter.
    if let Some(last) = response.split(is_py_space).rfind(|t| !t.is_empty()) {
        let t = last.trim_matches(|c: char| "()[]{}*.,:;!?\"'$`".contains(c));
        let mut chars = t.chars();
        if let (Some(c), None) = (chars.next(), chars.next()) {
            if c.is_ascii_uppercase() {
                return Some(c.to_string());
            }
        }
    }
    None
}

/// Characters skipped before `Answer:` / `Step n:` at the start of a line.
fn is_lead_char(c: char) -> bool {
    is_py_space(c) || "*#>-_".contains(c)
}

/// The text after `Answer:` if `line` is an answer line.
fn answer_line_content(line: &str) -> Option<&str> {
    let t = line.trim_start_matches(is_lead_char);
    let b = t.as_bytes();
    if b.len() < 6 || !b[..6].eq_ignore_ascii_case(b"answer") {
        return None;
    }
    let rest = t[6..].trim_start_matches(|c: char| is_py_space(c) || c == '*' || c == '_');
    rest.strip_prefix(':')
}

/// Phrase value: up to the first newline or the first '.' followed by whitespace.
fn phrase_value(tail: &str) -> &str {
    let mut it = tail.char_indices().peekable();
    while let Some((i, c)) = it.next() {
        if c == '\n' {
            return &tail[..i];
        }
        if c == '.' {
            if let Some(&(_, n)) = it.peek() {
                if is_py_space(n) {
                    return &tail[..i];
                }
            }
        }
    }
    tail
}

/// Given the byte offset of a '{', the content up to its matching '}' and the offset of
/// that '}'.
fn balanced_braces(s: &str, open: usize) -> Option<(&str, usize)> {
    if s.as_bytes().get(open) != Some(&b'{') {
        return None;
    }
    let mut depth = 0usize;
    for (i, c) in s[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some((&s[open + 1..open + i], open + i));
                }
            }
            _ => {}
        }
    }
    None
}

/// Strip whitespace, surrounding `*`, `$...$`, a whole-candidate `\boxed{}` and a trailing
/// period, repeatedly; None when nothing is left.
fn clean_candidate(s: &str) -> Option<String> {
    let mut cur = s;
    loop {
        let prev = cur;
        cur = py_strip(cur);
        cur = py_strip(cur.trim_matches('*'));
        if cur.len() >= 2 && cur.starts_with('$') && cur.ends_with('$') {
            cur = &cur[1..cur.len() - 1];
        }
        cur = py_strip(cur);
        if cur.starts_with("\\boxed{") {
            if let Some((inner, close)) = balanced_braces(cur, "\\boxed".len()) {
                if close == cur.len() - 1 {
                    cur = inner;
                }
            }
        }
        if let Some(stripped) = cur.strip_suffix('.') {
            cur = stripped;
        }
        if cur == prev {
            break;
        }
    }
    if cur.is_empty() {
        None
    } else {
        Some(cur.to_string())
    }
}

/// Reasoning steps of a response.
///
/// If any line starts with `Step <n>:` or `Step <n>.` (ASCII case-insensitive, after
/// leading whitespace/markdown), each such line begins a step that continues over the
/// following lines until the next step marker or an `Answer:` line; text before the first
/// marker forms its own step. Otherwise every non-empty line is a step. An `Answer:` line
/// (with whatever follows it) is its own step. Steps are trimmed; empty ones are dropped.
pub fn split_steps(response: &str) -> Vec<String> {
    let lines: Vec<&str> = response.split('\n').collect();
    if !lines.iter().any(|l| is_step_marker(l)) {
        return lines.iter().map(|l| py_strip(l)).filter(|l| !l.is_empty()).map(str::to_string).collect();
    }
    let mut steps = Vec::new();
    let mut cur: Vec<&str> = Vec::new();
    let flush = |cur: &mut Vec<&str>, steps: &mut Vec<String>| {
        let joined = cur.iter().map(|l| l.trim_end()).collect::<Vec<_>>().join("\n");
        let t = py_strip(&joined);
        if !t.is_empty() {
            steps.push(t.to_string());
        }
        cur.clear();
    };
    for line in lines {
        if is_step_marker(line) || answer_line_content(line).is_some() {
            flush(&mut cur, &mut steps);
        }
        cur.push(line);
    }
    flush(&mut cur, &mut steps);
    steps
}

/// `Step <digits>` followed (after optional spaces / `*`) by ':' or '.'.
fn is_step_marker(line: &str) -> bool {
    let t = line.trim_start_matches(is_lead_char);
    let b = t.as_bytes();
    if b.len() < 4 || !b[..4].eq_ignore_ascii_case(b"step") {
        return false;
    }
    let rest = t[4..].trim_start_matches([' ', '\t']);
    let after_digits = rest.trim_start_matches(|c: char| c.is_ascii_digit());
    if after_digits.len() == rest.len() {
        return false;
    }
    let after = after_digits.trim_start_matches([' ', '\t', '*']);
    after.starts_with(':') || after.starts_with('.')
}

// ---------------------------------------------------------------------------
// MathVista normalisation and comparison
// ---------------------------------------------------------------------------

/// MathVista's `normalize_extracted_answer`.
///
/// `choices` `Some(non-empty)` means a multiple-choice question: the prediction is stripped;
/// if it contains `(X)` (ASCII letter) the first such letter, upper-cased, replaces it; an
/// option letter `A`, `B`, ... maps to that choice, anything else to the choice with the
/// smallest Levenshtein distance (first on ties). Otherwise by answer type:
/// integer `str(int(float(x)))`, float `str(round(float(x), precision))` (precision None
/// is treated as 2), list the string itself, text the stripped string. None when Python
/// would raise.
pub fn normalize(pred: &str, answer_type: AnswerType, precision: Option<i32>, choices: Option<&[String]>) -> Option<String> {
    if let Some(choices) = choices.filter(|c| !c.is_empty()) {
        let mut extraction: String = py_strip(pred).to_string();
        if let Some(letter) = first_paren_letter(&extraction) {
            extraction = letter.to_ascii_uppercase().to_string();
        }
        for (i, choice) in choices.iter().enumerate() {
            let option = u32::try_from(i).ok().and_then(|i| ('A' as u32).checked_add(i)).and_then(char::from_u32);
            if let Some(option) = option {
                let mut buf = [0u8; 4];
                if extraction == *option.encode_utf8(&mut buf) {
                    return Some(choice.clone());
                }
            }
        }
        return Some(get_most_similar(&extraction, choices).clone());
    }
    match answer_type {
        AnswerType::Integer => py_float(pred).and_then(py_int_str),
        AnswerType::Float => {
            let p = precision.unwrap_or(2);
            py_float(pred).and_then(|x| py_round(x, p)).map(py_float_repr)
        }
        AnswerType::List => Some(pred.to_string()),
        AnswerType::Text => Some(py_strip(pred).to_string()),
    }
}

/// MathVista's `safe_equal(normalize(pred), answer)`: plain string equality after
/// normalisation; a failed normalisation never matches.
pub fn answer_match(pred: &str, answer: &str, answer_type: AnswerType, precision: Option<i32>, choices: Option<&[String]>) -> bool {
    normalize(pred, answer_type, precision, choices).is_some_and(|n| n == answer)
}

/// Levenshtein (edit) distance over Unicode scalar values, like `Levenshtein.distance`.
pub fn levenshtein(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    if a.is_empty() {
        return b.len();
    }
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0usize; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// MathVista's `get_most_similar`: the first choice at minimal edit distance.
fn get_most_similar<'a>(prediction: &str, choices: &'a [String]) -> &'a String {
    let mut best = &choices[0];
    let mut best_d = usize::MAX;
    for c in choices {
        let d = levenshtein(prediction, c);
        if d < best_d {
            best_d = d;
            best = c;
        }
    }
    best
}

/// First match of the regex `\(([a-zA-Z])\)`.
fn first_paren_letter(s: &str) -> Option<char> {
    let b = s.as_bytes();
    b.windows(3).find(|w| w[0] == b'(' && w[1].is_ascii_alphabetic() && w[2] == b')').map(|w| w[1] as char)
}

// ---------------------------------------------------------------------------
// CPython semantics
// ---------------------------------------------------------------------------

/// `str.isspace()` / `Py_UNICODE_ISSPACE`: Unicode White_Space plus U+001C..U+001F.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// `str.strip()` with no arguments.
fn py_strip(s: &str) -> &str {
    s.trim_matches(is_py_space)
}

/// Code points of the digit zero of every Unicode 14.0 decimal-digit (Nd) block outside
/// ASCII; each block holds the ten digits 0..9 contiguously.
const ND_ZEROS: [u32; 65] = [
    0x660, 0x6F0, 0x7C0, 0x966, 0x9E6, 0xA66, 0xAE6, 0xB66, 0xBE6, 0xC66, 0xCE6, 0xD66, 0xDE6, 0xE50, 0xED0, 0xF20, 0x1040, 0x1090, 0x17E0, 0x1810, 0x1946,
    0x19D0, 0x1A80, 0x1A90, 0x1B50, 0x1BB0, 0x1C40, 0x1C50, 0xA620, 0xA8D0, 0xA900, 0xA9D0, 0xA9F0, 0xAA50, 0xABF0, 0xFF10, 0x104A0, 0x10D30, 0x11066, 0x110F0,
    0x11136, 0x111D0, 0x112F0, 0x11450, 0x114D0, 0x11650, 0x116C0, 0x11730, 0x118E0, 0x11950, 0x11C50, 0x11D50, 0x11DA0, 0x16A60, 0x16AC0, 0x16B50, 0x1D7CE,
    0x1D7D8, 0x1D7E2, 0x1D7EC, 0x1D7F6, 0x1E140, 0x1E2F0, 0x1E950, 0x1FBF0,
];

fn unicode_decimal(c: char) -> Option<u8> {
    let cp = c as u32;
    ND_ZEROS.iter().find(|&&z| cp >= z && cp < z + 10).map(|&z| (cp - z) as u8)
}

/// Python's `float(s)` for a `str` argument; None where Python raises ValueError.
pub(crate) fn py_float(s: &str) -> Option<f64> {
    // _PyUnicode_TransformDecimalAndSpaceToASCII
    let mut ascii = String::with_capacity(s.len());
    for c in s.chars() {
        if (c as u32) < 127 {
            ascii.push(c);
        } else if is_py_space(c) {
            ascii.push(' ');
        } else {
            ascii.push((b'0' + unicode_decimal(c)?) as char);
        }
    }
    // Strip ASCII whitespace (Py_ISSPACE).
    let t = ascii.trim_matches(|c: char| matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r'));
    // Underscores are only allowed between digits.
    let mut cleaned = String::with_capacity(t.len());
    let mut prev = '\0';
    for c in t.chars() {
        if c == '_' {
            if !prev.is_ascii_digit() {
                return None;
            }
        } else {
            if prev == '_' && !c.is_ascii_digit() {
                return None;
            }
            cleaned.push(c);
        }
        prev = c;
    }
    if prev == '_' {
        return None;
    }
    let (negative, body) = match cleaned.as_bytes().first() {
        Some(b'-') => (true, &cleaned[1..]),
        Some(b'+') => (false, &cleaned[1..]),
        _ => (false, cleaned.as_str()),
    };
    let lower = body.to_ascii_lowercase();
    let value = match lower.as_str() {
        "inf" | "infinity" => f64::INFINITY,
        "nan" => f64::NAN,
        _ => {
            if !is_decimal_literal(body) {
                return None;
            }
            body.parse::<f64>().ok()?
        }
    };
    Some(if negative { -value } else { value })
}

/// `digits [. digits?] | . digits`, then optional `[eE] [+-]? digits`.
fn is_decimal_literal(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    let int_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let int_digits = i - int_start;
    let mut frac_digits = 0;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let f = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        frac_digits = i - f;
    }
    if int_digits + frac_digits == 0 {
        return false;
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        let e = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == e {
            return false;
        }
    }
    i == b.len()
}

/// Python's `str(int(x))` for a float; None for inf/nan (OverflowError/ValueError).
pub(crate) fn py_int_str(x: f64) -> Option<String> {
    if !x.is_finite() {
        return None;
    }
    let t = x.trunc();
    if t.abs() < 9.0e18 {
        return Some(format!("{}", t as i64));
    }
    // |x| >= 2^53: x is an integer, m * 2^e with e >= 0.
    let (m, e) = decompose(t.abs());
    let mut big = BigDec::from_u64(m);
    big.mul_pow2(e as u32);
    let digits = big.to_decimal_string();
    Some(if t < 0.0 { format!("-{digits}") } else { digits })
}

/// `(m, e)` with `x == m * 2^e` for finite positive `x`.
fn decompose(x: f64) -> (u64, i32) {
    let bits = x.to_bits();
    let exp_bits = ((bits >> 52) & 0x7ff) as i32;
    let frac = bits & ((1u64 << 52) - 1);
    if exp_bits == 0 {
        (frac, -1074)
    } else {
        (frac | (1u64 << 52), exp_bits - 1075)
    }
}

/// Python's `round(x, ndigits)` for a float: correctly rounded, ties to even on the exact
/// binary value (CPython `double_round`); None on OverflowError.
pub(crate) fn py_round(x: f64, ndigits: i32) -> Option<f64> {
    if !x.is_finite() || x == 0.0 {
        return Some(x);
    }
    // NDIGITS_MAX = (53 + 1021) * 0.30103 = 323; NDIGITS_MIN = -(1025 * 0.30103) = -308.
    if ndigits > 323 {
        return Some(x);
    }
    if ndigits < -308 {
        return Some(0.0 * x);
    }
    let (m, e) = decompose(x.abs());
    // |x| = digits / 10^scale exactly.
    let mut big = BigDec::from_u64(m);
    let scale: i64 = if e >= 0 {
        big.mul_pow2(e as u32);
        0
    } else {
        big.mul_pow5((-e) as u32);
        -(e as i64)
    };
    let n = ndigits as i64;
    if n >= scale {
        return Some(x);
    }
    let k = (scale - n) as usize; // number of decimal digits to drop
    let ds = big.to_decimal_string();
    let (q, r): (String, String) = if ds.len() > k {
        (ds[..ds.len() - k].to_string(), ds[ds.len() - k..].to_string())
    } else {
        ("0".to_string(), format!("{}{}", "0".repeat(k - ds.len()), ds))
    };
    let rb = r.as_bytes();
    let round_up = match rb[0].cmp(&b'5') {
        std::cmp::Ordering::Greater => true,
        std::cmp::Ordering::Less => false,
        std::cmp::Ordering::Equal => {
            if rb[1..].iter().any(|&d| d != b'0') {
                true
            } else {
                q.as_bytes()[q.len() - 1] & 1 == 1
            }
        }
    };
    let q = if round_up { decimal_increment(&q) } else { q };
    let rounded: f64 = format!("{q}e{}", -n).parse().ok()?;
    if rounded.is_infinite() {
        return None;
    }
    Some(if x < 0.0 { -rounded } else { rounded })
}

fn decimal_increment(s: &str) -> String {
    let mut d: Vec<u8> = s.bytes().collect();
    let mut i = d.len();
    loop {
        if i == 0 {
            d.insert(0, b'1');
            break;
        }
        i -= 1;
        if d[i] == b'9' {
            d[i] = b'0';
        } else {
            d[i] += 1;
            break;
        }
    }
    String::from_utf8(d).expect("ascii digits")
}

/// Python's `repr(float)` / `str(float)`: shortest round-trip digits; scientific notation
/// when the decimal exponent is < -4 or >= 16; ".0" appended to integral values.
pub(crate) fn py_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".to_string();
    }
    let sign = if x.is_sign_negative() { "-" } else { "" };
    if x.is_infinite() {
        return format!("{sign}inf");
    }
    if x == 0.0 {
        return format!("{sign}0.0");
    }
    let (digits, exp) = shortest_digits(x.abs());
    let decpt = exp + 1;
    let nd = digits.len() as i32;
    let body = if decpt <= -4 || decpt > 16 {
        let mut m = digits[..1].to_string();
        if digits.len() > 1 {
            m.push('.');
            m.push_str(&digits[1..]);
        }
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{m}e{esign}{:02}", exp.abs())
    } else if decpt <= 0 {
        format!("0.{}{digits}", "0".repeat((-decpt) as usize))
    } else if decpt < nd {
        format!("{}.{}", &digits[..decpt as usize], &digits[decpt as usize..])
    } else {
        format!("{digits}{}.0", "0".repeat((decpt - nd) as usize))
    };
    format!("{sign}{body}")
}

/// Shortest round-trip decimal digits of finite positive `x` and the decimal exponent of
/// the first digit, choosing like CPython's `_Py_dg_dtoa` mode 0: the closest candidate,
/// and on an exact tie between two shortest candidates the one with an even last digit.
fn shortest_digits(x: f64) -> (String, i32) {
    // Rust's `{:e}` prints shortest round-trip digits, e.g. "1.2345e-5", but breaks exact
    // ties upwards; patch those up below.
    let sci = format!("{x:e}");
    let (mant, exp) = sci.split_once('e').expect("LowerExp has an exponent");
    let exp: i32 = exp.parse().expect("LowerExp exponent is an integer");
    let digits: String = mant.chars().filter(|c| *c != '.').collect();
    let p = exp as i64 - (digits.len() as i64 - 1); // power of ten of the last digit
    let (m, e) = decompose(x);
    let mut big = BigDec::from_u64(m);
    let scale: i64 = if e >= 0 {
        big.mul_pow2(e as u32);
        0
    } else {
        big.mul_pow5((-e) as u32);
        -(e as i64)
    };
    // x / 10^p = ds / 10^(scale + p); a tie needs exactly ".5" below the last digit.
    let drop = scale + p;
    if drop <= 0 {
        return (digits, exp);
    }
    let ds = big.to_decimal_string();
    let drop = drop as usize;
    let (q, r) = if ds.len() > drop {
        (ds[..ds.len() - drop].to_string(), ds[ds.len() - drop..].to_string())
    } else {
        ("0".to_string(), format!("{}{}", "0".repeat(drop - ds.len()), ds))
    };
    let rb = r.as_bytes();
    if rb[0] != b'5' || rb[1..].iter().any(|&d| d != b'0') {
        return (digits, exp);
    }
    let even = if q.as_bytes()[q.len() - 1] & 1 == 0 { q } else { decimal_increment(&q) };
    if even == digits || format!("{even}e{p}").parse::<f64>() != Ok(x) {
        return (digits, exp);
    }
    let new_exp = (p + even.len() as i64 - 1) as i32;
    let trimmed = even.trim_end_matches('0').to_string();
    (trimmed, new_exp)
}

/// Minimal non-negative big integer in base 10^9 (little-endian limbs).
struct BigDec {
    limbs: Vec<u32>,
}

const LIMB: u64 = 1_000_000_000;

impl BigDec {
    fn from_u64(mut v: u64) -> BigDec {
        let mut limbs = Vec::new();
        while v > 0 {
            limbs.push((v % LIMB) as u32);
            v /= LIMB;
        }
        BigDec { limbs }
    }

    fn mul_small(&mut self, f: u32) {
        let mut carry: u64 = 0;
        for l in self.limbs.iter_mut() {
            let v = *l as u64 * f as u64 + carry;
            *l = (v % LIMB) as u32;
            carry = v / LIMB;
        }
        while carry > 0 {
            self.limbs.push((carry % LIMB) as u32);
            carry /= LIMB;
        }
    }

    fn mul_pow2(&mut self, mut e: u32) {
        while e >= 29 {
            self.mul_small(1 << 29);
            e -= 29;
        }
        self.mul_small(1 << e);
    }

    fn mul_pow5(&mut self, mut e: u32) {
        while e >= 13 {
            self.mul_small(1_220_703_125); // 5^13
            e -= 13;
        }
        self.mul_small(5u32.pow(e));
    }

    fn to_decimal_string(&self) -> String {
        let mut it = self.limbs.iter().rev();
        let Some(first) = it.next() else {
            return "0".to_string();
        };
        let mut s = first.to_string();
        for l in it {
            s.push_str(&format!("{l:09}"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn answer_type_parsing() {
        assert_eq!(AnswerType::parse("Float"), Some(AnswerType::Float));
        assert_eq!(AnswerType::parse("INTEGER"), Some(AnswerType::Integer));
        assert_eq!(AnswerType::parse("text"), Some(AnswerType::Text));
        assert_eq!(AnswerType::parse("list"), Some(AnswerType::List));
        assert_eq!(AnswerType::parse("number"), None);
        assert_eq!("list".parse::<AnswerType>(), Ok(AnswerType::List));
        let err = "bool".parse::<AnswerType>().unwrap_err();
        assert!(err.contains("\"bool\"") && err.contains("integer") && err.contains("text"));
        for t in [AnswerType::Text, AnswerType::Integer, AnswerType::Float, AnswerType::List] {
            assert_eq!(t.to_string().parse::<AnswerType>(), Ok(t));
        }
    }

    /// (response, expected extraction)
    const EXTRACT: &[(&str, Option<&str>)] = &[
        ("Answer: 42", Some("42")),
        ("Some reasoning.\nanswer: 7.5", Some("7.5")),
        ("  **Answer:** B", Some("B")),
        ("**Answer**: (C) 12", Some("(C) 12")),
        ("### Answer: $x = 3$", Some("x = 3")),
        ("Answer: 1\nmore thought\nAnswer: 2.", Some("2")),
        ("Answer:\n\n5", Some("5")),
        ("Thus \\boxed{17}.", Some("17")),
        ("\\boxed{1} then \\boxed{\\frac{1}{2}}", Some("\\frac{1}{2}")),
        ("Answer: \\boxed{9}", Some("9")),
        ("$\\boxed{3.5}$", Some("3.5")),
        ("unbalanced \\boxed{12", None),
        ("So the answer is 12.", Some("12")),
        ("The final answer is 3.14. Done.", Some("3.14")),
        ("the answer is: (B)", Some("(B)")),
        ("The answer is $-2$\nbecause ...", Some("-2")),
        ("THE ANSWER IS 1,000", Some("1,000")),
        ("the answer isn't clear", None),
        ("The Final Answer: 8", Some("8")),
        ("x is 2 so the answer must be B.", Some("B")),
        ("I pick (C)", Some("C")),
        ("**D**", Some("D")),
        ("B", Some("B")),
        ("so it is b", None),
        ("", None),
        ("   \n  ", None),
        ("I cannot tell from the image", None),
        ("Answer: .", None),
        ("Answer: [1, 2, 3]", Some("[1, 2, 3]")),
        ("Answer: 2.0", Some("2.0")),
        ("Answer: 1e-5", Some("1e-5")),
        ("Answer: inf", Some("inf")),
        ("Answer: 3.", Some("3")),
        ("Answer: Yes", Some("Yes")),
        ("Answer:   -0.5  ", Some("-0.5")),
        ("the answer is 5\r\nok", Some("5")),
        ("Answer: (B)", Some("(B)")),
        ("The answer is B", Some("B")),
        ("\\boxed{[1, 2]}", Some("[1, 2]")),
        ("The correct answer is 1e-5.", Some("1e-5")),
        ("- Answer: 7", Some("7")),
        ("> answer : 9", Some("9")),
        ("It must be option (b)", None),
        ("Answer: $\\boxed{2.50}$.", Some("2.50")),
    ];

    #[test]
    fn extraction_table() {
        let mut bad = Vec::new();
        for (resp, want) in EXTRACT {
            let got = extract_answer(resp);
            if got.as_deref() != *want {
                bad.push(format!("{resp:?}: got {got:?}, want {want:?}"));
            }
        }
        assert!(bad.is_empty(), "{}", bad.join("\n"));
    }

    /// (pred, answer type, precision, choices, expected normalisation)
    #[allow(clippy::type_complexity)]
    const NORMALIZE: &[(&str, AnswerType, Option<i32>, Option<&[&str]>, Option<&str>)] = &[
        ("3.7", AnswerType::Integer, None, None, Some("3")),
        ("-2.5", AnswerType::Integer, None, None, Some("-2")),
        ("1e3", AnswerType::Integer, None, None, Some("1000")),
        ("-0.5", AnswerType::Integer, None, None, Some("0")),
        (" 12 ", AnswerType::Integer, None, None, Some("12")),
        ("1_000", AnswerType::Integer, None, None, Some("1000")),
        ("1,000", AnswerType::Integer, None, None, None),
        ("inf", AnswerType::Integer, None, None, None),
        ("nan", AnswerType::Integer, None, None, None),
        ("1e20", AnswerType::Integer, None, None, Some("100000000000000000000")),
        ("", AnswerType::Integer, None, None, None),
        ("0x10", AnswerType::Integer, None, None, None),
        ("１２", AnswerType::Integer, None, None, Some("12")),
        ("2", AnswerType::Float, Some(1), None, Some("2.0")),
        ("2.0", AnswerType::Float, Some(2), None, Some("2.0")),
        ("0.125", AnswerType::Float, Some(2), None, Some("0.12")),
        ("0.375", AnswerType::Float, Some(2), None, Some("0.38")),
        ("2.675", AnswerType::Float, Some(2), None, Some("2.67")),
        ("2.5", AnswerType::Float, Some(0), None, Some("2.0")),
        ("3.14159", AnswerType::Float, Some(3), None, Some("3.142")),
        ("3.14159", AnswerType::Float, None, None, Some("3.14")),
        ("0.00001", AnswerType::Float, Some(5), None, Some("1e-05")),
        ("1e16", AnswerType::Float, Some(1), None, Some("1e+16")),
        ("-0.001", AnswerType::Float, Some(2), None, Some("-0.0")),
        ("1234.5", AnswerType::Float, Some(-2), None, Some("1200.0")),
        ("inf", AnswerType::Float, Some(1), None, Some("inf")),
        ("-Infinity", AnswerType::Float, Some(1), None, Some("-inf")),
        ("NaN", AnswerType::Float, Some(1), None, Some("nan")),
        ("abc", AnswerType::Float, Some(1), None, None),
        ("[1, 2, 3]", AnswerType::List, None, None, Some("[1, 2, 3]")),
        ("  Yes ", AnswerType::Text, None, None, Some("Yes")),
        ("B", AnswerType::Text, None, Some(&["red", "green", "blue"]), Some("green")),
        ("(C) blue", AnswerType::Text, None, Some(&["red", "green", "blue"]), Some("blue")),
        ("(c)", AnswerType::Text, None, Some(&["red", "green", "blue"]), Some("blue")),
        ("gren", AnswerType::Text, None, Some(&["red", "green", "blue"]), Some("green")),
        ("D", AnswerType::Text, None, Some(&["red", "green", "blue"]), Some("red")),
        ("", AnswerType::Integer, None, Some(&["10", "2", "300"]), Some("2")),
        ("2", AnswerType::Float, Some(1), Some(&["2.0", "3.0"]), Some("2.0")),
    ];

    #[test]
    fn normalize_table() {
        let mut bad = Vec::new();
        for (pred, t, p, c, want) in NORMALIZE {
            let choices = c.map(ch);
            let got = normalize(pred, *t, *p, choices.as_deref());
            if got.as_deref() != *want {
                bad.push(format!("{pred:?} {t} {p:?} {c:?}: got {got:?}, want {want:?}"));
            }
        }
        assert!(bad.is_empty(), "{}", bad.join("\n"));
    }

    #[test]
    fn matching() {
        assert!(answer_match("2", "2.0", AnswerType::Float, Some(1), None));
        assert!(!answer_match("2", "2", AnswerType::Float, Some(1), None));
        assert!(answer_match("2.0", "2", AnswerType::Integer, None, None));
        assert!(!answer_match("x", "x", AnswerType::Integer, None, None));
        let c = ch(&["cat", "dog"]);
        assert!(answer_match("B", "dog", AnswerType::Text, None, Some(&c)));
        assert!(answer_match("(A) cat", "cat", AnswerType::Text, None, Some(&c)));
        assert!(!answer_match("A", "dog", AnswerType::Text, None, Some(&c)));
    }

    #[test]
    fn python_float_semantics() {
        let ok = [
            (" 5 ", 5.0),
            ("\u{a0}5\u{3000}", 5.0),
            ("٣.٥", 3.5),
            ("1e1_0", 1e10),
            ("1.e5", 1e5),
            ("5.", 5.0),
            (".5", 0.5),
            ("+.5e-3", 0.0005),
            ("1e400", f64::INFINITY),
        ];
        for (s, v) in ok {
            assert_eq!(py_float(s), Some(v), "{s:?}");
        }
        assert!(py_float("iNfInItY ").unwrap().is_infinite());
        assert!(py_float("-nan").unwrap().is_nan());
        let neg_zero = py_float("-1e-400").unwrap();
        assert!(neg_zero == 0.0 && neg_zero.is_sign_negative());
        for s in
            ["\u{1c}5", "1__0", "_1", "1_", "1_.5", "1._5", ".e5", ".", "e5", "1e", "nan(1)", "1,000", "0x10", "", "\u{7f}5", "1\u{200b}", "--1", "1e+", "in"]
        {
            assert_eq!(py_float(s), None, "{s:?}");
        }
    }

    #[test]
    fn python_repr_edge_cases() {
        let cases: &[(f64, &str)] = &[
            (0.1, "0.1"),
            (2.0, "2.0"),
            (1e-5, "1e-05"),
            (1e-4, "0.0001"),
            (1.5e16, "1.5e+16"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (123456789012345.6, "123456789012345.6"),
            (0.1 + 0.2, "0.30000000000000004"),
            (5e-324, "5e-324"),
            (f64::MAX, "1.7976931348623157e+308"),
            (-0.0, "-0.0"),
            (-1.25e-7, "-1.25e-07"),
            (1e100, "1e+100"),
            (f64::NEG_INFINITY, "-inf"),
            // Exact binary values ...843.25 / ...364.25: a tie between two shortest
            // candidates goes to the even digit (Rust alone would print .3).
            (-735_043_027_617_843.2, "-735043027617843.2"),
            (1_160_972_656_570_364.2, "1160972656570364.2"),
        ];
        for (x, want) in cases {
            assert_eq!(py_float_repr(*x), *want);
        }
        assert_eq!(py_round(f64::MAX, -308), None);
        assert_eq!(py_round(f64::MAX, -300), Some(1.79769313e308));
        assert_eq!(py_round(0.5, 0), Some(0.0));
        assert_eq!(py_round(1.5, 0), Some(2.0));
        assert_eq!(py_round(5e-324, 400), Some(5e-324));
        assert_eq!(py_int_str(1e300).unwrap().len(), 301);
        assert_eq!(py_int_str(-9.3e18).as_deref(), Some("-9300000000000000000"));
    }

    #[test]
    fn levenshtein_distances() {
        assert_eq!(levenshtein("", "abc"), 3);
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("héllo", "hello"), 1);
        assert_eq!(levenshtein("same", "same"), 0);
    }

    #[test]
    fn steps() {
        let r = "Intro line\nStep 1: look\nat the image\n**Step 2.** add\n\nAnswer: 5";
        assert_eq!(split_steps(r), vec!["Intro line", "Step 1: look\nat the image", "**Step 2.** add", "Answer: 5"]);
        assert_eq!(split_steps("a\n\n b \nAnswer: 3"), vec!["a", "b", "Answer: 3"]);
        assert!(split_steps("  \n").is_empty());
        assert_eq!(split_steps("step 10: x\nStep 11: y"), vec!["step 10: x", "Step 11: y"]);
        assert_eq!(split_steps("Steps: many\nok"), vec!["Steps: many", "ok"]);
    }

    // -- agreement with the Python port --------------------------------------------------

    #[derive(Debug, Clone, PartialEq)]
    enum Json {
        Null,
        Bool(bool),
        Num(f64),
        Str(String),
        Arr(Vec<Json>),
        Obj(Vec<(String, Json)>),
    }

    impl Json {
        fn get(&self, key: &str) -> &Json {
            match self {
                Json::Obj(kv) => kv.iter().find(|(k, _)| k == key).map(|(_, v)| v).unwrap_or(&Json::Null),
                _ => &Json::Null,
            }
        }
        fn opt_str(&self) -> Option<String> {
            match self {
                Json::Str(s) => Some(s.clone()),
                Json::Null => None,
                other => panic!("expected string or null, got {other:?}"),
            }
        }
    }

    struct Parser<'a> {
        s: &'a [u8],
        i: usize,
    }

    impl Parser<'_> {
        fn ws(&mut self) {
            while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\n' | b'\r') {
                self.i += 1;
            }
        }
        fn eat(&mut self, lit: &str) -> bool {
            if self.s[self.i..].starts_with(lit.as_bytes()) {
                self.i += lit.len();
                true
            } else {
                false
            }
        }
        fn value(&mut self) -> Json {
            self.ws();
            let c = self.s[self.i];
            let v = match c {
                b'n' if self.eat("null") => Json::Null,
                b't' if self.eat("true") => Json::Bool(true),
                b'f' if self.eat("false") => Json::Bool(false),
                b'"' => Json::Str(self.string()),
                b'[' => {
                    self.i += 1;
                    let mut items = Vec::new();
                    self.ws();
                    if !self.eat("]") {
                        loop {
                            items.push(self.value());
                            self.ws();
                            if self.eat("]") {
                                break;
                            }
                            assert!(self.eat(","), "expected , at {}", self.i);
                        }
                    }
                    Json::Arr(items)
                }
                b'{' => {
                    self.i += 1;
                    let mut kv = Vec::new();
                    self.ws();
                    if !self.eat("}") {
                        loop {
                            self.ws();
                            let k = self.string();
                            self.ws();
                            assert!(self.eat(":"), "expected : at {}", self.i);
                            kv.push((k, self.value()));
                            self.ws();
                            if self.eat("}") {
                                break;
                            }
                            assert!(self.eat(","), "expected , at {}", self.i);
                        }
                    }
                    Json::Obj(kv)
                }
                _ => {
                    let start = self.i;
                    while self.i < self.s.len() && b"+-.eE0123456789".contains(&self.s[self.i]) {
                        self.i += 1;
                    }
                    let t = std::str::from_utf8(&self.s[start..self.i]).unwrap();
                    Json::Num(t.parse().unwrap_or_else(|_| panic!("bad number {t:?}")))
                }
            };
            self.ws();
            v
        }
        fn hex4(&mut self) -> u32 {
            let h = std::str::from_utf8(&self.s[self.i..self.i + 4]).unwrap();
            self.i += 4;
            u32::from_str_radix(h, 16).unwrap()
        }
        fn string(&mut self) -> String {
            assert!(self.eat("\""), "expected string at {}", self.i);
            let mut out = String::new();
            loop {
                let start = self.i;
                while self.s[self.i] != b'"' && self.s[self.i] != b'\\' {
                    self.i += 1;
                }
                out.push_str(std::str::from_utf8(&self.s[start..self.i]).unwrap());
                let c = self.s[self.i];
                self.i += 1;
                if c == b'"' {
                    return out;
                }
                let e = self.s[self.i];
                self.i += 1;
                match e {
                    b'"' => out.push('"'),
                    b'\\' => out.push('\\'),
                    b'/' => out.push('/'),
                    b'b' => out.push('\u{8}'),
                    b'f' => out.push('\u{c}'),
                    b'n' => out.push('\n'),
                    b'r' => out.push('\r'),
                    b't' => out.push('\t'),
                    b'u' => {
                        let mut cp = self.hex4();
                        if (0xD800..0xDC00).contains(&cp) && self.eat("\\u") {
                            let lo = self.hex4();
                            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                        }
                        out.push(char::from_u32(cp).expect("valid code point"));
                    }
                    other => panic!("bad escape \\{}", other as char),
                }
            }
        }
    }

    fn parse_json(line: &str) -> Json {
        let mut p = Parser { s: line.as_bytes(), i: 0 };
        let v = p.value();
        assert_eq!(p.i, line.len(), "trailing data in {line:?}");
        v
    }

    #[test]
    fn json_reader() {
        let v = parse_json(r#"{"a": [1, null, true], "b": "x\"\u00e9\ud83d\ude00\n", "c": -2}"#);
        assert_eq!(v.get("a"), &Json::Arr(vec![Json::Num(1.0), Json::Null, Json::Bool(true)]));
        assert_eq!(v.get("b"), &Json::Str("x\"é😀\n".to_string()));
        assert_eq!(v.get("c"), &Json::Num(-2.0));
    }

    #[test]
    fn agrees_with_python_port_on_cases() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/answer/cases.jsonl");
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
        let mut n = 0;
        let mut bad = Vec::new();
        for (lineno, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            n += 1;
            let case = parse_json(line);
            let response = case.get("response").opt_str().expect("response");
            let answer = case.get("answer").opt_str().expect("answer");
            let answer_type: AnswerType = case.get("answer_type").opt_str().expect("answer_type").parse().unwrap();
            let precision = match case.get("precision") {
                Json::Num(p) => Some(*p as i32),
                Json::Null => None,
                other => panic!("bad precision {other:?}"),
            };
            let choices: Option<Vec<String>> = match case.get("choices") {
                Json::Arr(items) => Some(items.iter().map(|c| c.opt_str().unwrap()).collect()),
                Json::Null => None,
                other => panic!("bad choices {other:?}"),
            };
            let qt = case.get("question_type").opt_str().unwrap();
            let is_mc = choices.as_ref().is_some_and(|c| !c.is_empty());
            assert_eq!(qt == "multi_choice", is_mc, "line {}: question_type {qt}", lineno + 1);
            let want_extracted = case.get("extracted").opt_str();
            let want_normalized = case.get("normalized").opt_str();
            let want_correct = match case.get("correct") {
                Json::Bool(b) => *b,
                other => panic!("bad correct {other:?}"),
            };

            let extracted = extract_answer(&response);
            let pred = extracted.clone().unwrap_or_else(|| response.clone());
            let normalized = normalize(&pred, answer_type, precision, choices.as_deref());
            let correct = answer_match(&pred, &answer, answer_type, precision, choices.as_deref());
            let ctx = format!("line {} response={response:?}", lineno + 1);
            if extracted != want_extracted {
                bad.push(format!("{ctx}: extracted {extracted:?} != python {want_extracted:?}"));
            }
            if normalized != want_normalized {
                bad.push(format!("{ctx}: normalized {normalized:?} != python {want_normalized:?}"));
            }
            if correct != want_correct {
                bad.push(format!("{ctx}: correct {correct} != python {want_correct}"));
            }
        }
        assert!(n >= 300, "only {n} cases in {path}");
        assert!(bad.is_empty(), "{} mismatches over {n} cases:\n{}", bad.len(), bad.join("\n"));
    }
}
