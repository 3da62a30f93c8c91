//! Step-level oracle for the synthetic task: splits any response into steps and judges each one
//! against the scene — grammar, truth of the claim, and that its operands were established earlier.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::scene::{Colour, Filter, Scene, Shape};
use super::QuestionMeta;

/// Verdict on one step (a `Step <n>:` line with its continuation lines, or the `Answer:` line).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepVerdict {
    /// The step as written (marker included; continuation lines joined with a space).
    pub text: String,
    pub ok: bool,
    /// Why the step is not ok (None when ok).
    pub reason: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Judgement {
    /// One verdict per step, in order; the `Answer:` line is the last one when present.
    pub steps: Vec<StepVerdict>,
    /// The final answer equals the gold answer (letter or choice text for multiple choice).
    pub answer_correct: bool,
    /// Every step ok, an answer given, and it is correct.
    pub steps_ok: bool,
}

/// A parsed reasoning step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// `The <f> shapes show a, b, c.` / `There are no <f> shapes.` (empty list)
    Listing(Filter, Vec<i64>),
    /// `There are <n> <f> shapes.`
    Count(Filter, i64),
    /// `The largest is <n>.`
    Largest(i64),
    /// `The smallest is <n>.`
    Smallest(i64),
    /// `The <colour> <shape> shows <n>.`
    Read(Colour, Shape, i64),
    /// `The <colour> numbers add up to <s>.`
    ColourSum(Colour, i64),
    /// `The most is <colour>.`
    Most(Colour),
    /// `a + b + ... = s.` (two or more terms)
    Add(Vec<i64>, i64),
    /// `a - b = d.`
    Sub(i64, i64, i64),
    /// `a * b = p.`
    Mul(i64, i64, i64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Marker {
    Step,
    Answer,
    Unmarked,
}

struct RawStep {
    marker: Marker,
    text: String,
    body: String,
}

fn strip_step_marker(line: &str) -> Option<&str> {
    if !line.get(..4)?.eq_ignore_ascii_case("step") {
        return None;
    }
    let rest = line[4..].trim_start();
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    rest[digits..].trim_start().strip_prefix(':').map(str::trim)
}

fn strip_answer_marker(line: &str) -> Option<&str> {
    if !line.get(..7)?.eq_ignore_ascii_case("answer:") {
        return None;
    }
    Some(line[7..].trim())
}

fn split_steps(response: &str) -> Vec<RawStep> {
    let mut out: Vec<RawStep> = Vec::new();
    for line in response.lines() {
        let t = line.trim();
        if t.is_empty() {
            continue;
        }
        if let Some(body) = strip_step_marker(t) {
            out.push(RawStep { marker: Marker::Step, text: t.to_string(), body: body.to_string() });
        } else if let Some(body) = strip_answer_marker(t) {
            out.push(RawStep { marker: Marker::Answer, text: t.to_string(), body: body.to_string() });
        } else if let Some(last) = out.last_mut() {
            last.text.push(' ');
            last.text.push_str(t);
            last.body.push(' ');
            last.body.push_str(t);
        } else {
            out.push(RawStep { marker: Marker::Unmarked, text: t.to_string(), body: t.to_string() });
        }
    }
    out
}

/// Lower-case, single spaces, no trailing full stop.
fn normalize(s: &str) -> String {
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase();
    s.trim_end_matches('.').trim_end().to_string()
}

fn parse_int(s: &str) -> Option<i64> {
    let s = s.trim();
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty() || digits.len() > 12 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_list(s: &str) -> Option<Vec<i64>> {
    s.split(',').map(parse_int).collect()
}

fn strip_shapes_suffix(s: &str) -> Option<&str> {
    s.strip_suffix(" shapes").or_else(|| s.strip_suffix(" shape"))
}

/// Parses one step body under the fixed grammar (case- and whitespace-insensitive).
pub fn parse_claim(body: &str) -> Option<Claim> {
    let s = normalize(body);
    if let Some(rest) = s.strip_prefix("there are no ").or_else(|| s.strip_prefix("there is no ")) {
        return Some(Claim::Listing(Filter::parse(strip_shapes_suffix(rest)?)?, Vec::new()));
    }
    if let Some(rest) = s.strip_prefix("there are ").or_else(|| s.strip_prefix("there is ")) {
        let (n, f) = rest.split_once(' ')?;
        return Some(Claim::Count(Filter::parse(strip_shapes_suffix(f)?)?, parse_int(n)?));
    }
    if let Some(n) = s.strip_prefix("the largest is ") {
        return Some(Claim::Largest(parse_int(n)?));
    }
    if let Some(n) = s.strip_prefix("the smallest is ") {
        return Some(Claim::Smallest(parse_int(n)?));
    }
    if let Some(c) = s.strip_prefix("the most is ") {
        return Some(Claim::Most(Colour::parse(c)?));
    }
    if let Some(rest) = s.strip_prefix("the ") {
        if let Some((f, nums)) = rest.split_once(" shapes show ").or_else(|| rest.split_once(" shape shows ")) {
            return Some(Claim::Listing(Filter::parse(f)?, parse_list(nums)?));
        }
        if let Some((c, n)) = rest.split_once(" numbers add up to ") {
            return Some(Claim::ColourSum(Colour::parse(c)?, parse_int(n)?));
        }
        if let Some((cs, n)) = rest.split_once(" shows ") {
            let (c, sh) = cs.split_once(' ')?;
            return Some(Claim::Read(Colour::parse(c)?, Shape::parse(sh)?, parse_int(n)?));
        }
        return None;
    }
    let (lhs, rhs) = s.split_once(" = ")?;
    let r = parse_int(rhs)?;
    if lhs.contains(" + ") {
        let terms = lhs.split(" + ").map(parse_int).collect::<Option<Vec<_>>>()?;
        return (terms.len() >= 2).then_some(Claim::Add(terms, r));
    }
    if let Some((a, b)) = lhs.split_once(" * ") {
        return Some(Claim::Mul(parse_int(a)?, parse_int(b)?, r));
    }
    if let Some((a, b)) = lhs.split_once(" - ") {
        return Some(Claim::Sub(parse_int(a)?, parse_int(b)?, r));
    }
    None
}

/// What earlier correct steps have established.
#[derive(Default)]
struct State {
    numbers: BTreeSet<i64>,
    texts: BTreeSet<String>,
    listed: Vec<Filter>,
    last_listing: Option<(Filter, bool)>,
    summed: [bool; 4],
}

impl State {
    fn need(&self, operands: &[i64]) -> Result<(), String> {
        match operands.iter().find(|v| !self.numbers.contains(v)) {
            Some(v) => Err(format!("operand {v} not established by an earlier correct step")),
            None => Ok(()),
        }
    }
}

fn judge_claim(scene: &Scene, st: &mut State, claim: &Claim) -> Result<(), String> {
    match claim {
        Claim::Listing(f, nums) => {
            let ok = *nums == scene.digits(f);
            st.last_listing = Some((*f, ok));
            if !ok {
                return Err(format!("wrong listing of the {} shapes", f.text()));
            }
            st.listed.push(*f);
            st.numbers.extend(nums.iter().copied());
        }
        Claim::Count(f, n) => {
            if *n != scene.matching(f).len() as i64 {
                return Err(format!("wrong count of the {} shapes", f.text()));
            }
            if !st.listed.contains(f) {
                return Err(format!("count without an earlier correct listing of the {} shapes", f.text()));
            }
            st.numbers.insert(*n);
        }
        Claim::Largest(n) | Claim::Smallest(n) => {
            let largest = matches!(claim, Claim::Largest(_));
            let Some((f, listing_ok)) = st.last_listing else {
                return Err("no earlier listing".to_string());
            };
            if !listing_ok {
                return Err("refers to a wrong listing".to_string());
            }
            let d = scene.digits(&f);
            let truth = if largest { d.iter().max() } else { d.iter().min() };
            match truth {
                None => return Err("the last listing is empty".to_string()),
                Some(t) if t != n => return Err(format!("wrong {} of the last listing", if largest { "largest" } else { "smallest" })),
                Some(_) => {}
            }
            st.numbers.insert(*n);
        }
        Claim::Read(c, s, n) => {
            let m = scene.matching(&Filter { colour: Some(*c), shape: Some(*s) });
            if m.len() != 1 {
                return Err(format!("there is not exactly one {} {}", c.name(), s.name()));
            }
            if i64::from(m[0].digit) != *n {
                return Err(format!("wrong number on the {} {}", c.name(), s.name()));
            }
            st.numbers.insert(*n);
        }
        Claim::ColourSum(c, s) => {
            if scene.colour_sums()[c.index()] != *s {
                return Err(format!("wrong sum of the {} numbers", c.name()));
            }
            st.summed[c.index()] = true;
            st.numbers.insert(*s);
        }
        Claim::Most(c) => {
            if !st.summed.iter().all(|&b| b) {
                return Err("not every colour's sum was established earlier".to_string());
            }
            let sums = scene.colour_sums();
            let best = sums[c.index()];
            if sums.iter().enumerate().any(|(i, &s)| i != c.index() && s >= best) {
                return Err(format!("{} does not have the unique largest sum", c.name()));
            }
            st.texts.insert(c.name().to_string());
        }
        Claim::Add(terms, s) => {
            let total = terms.iter().try_fold(0i64, |acc, &t| acc.checked_add(t));
            if total != Some(*s) {
                return Err("arithmetic error".to_string());
            }
            st.need(terms)?;
            st.numbers.insert(*s);
        }
        Claim::Sub(a, b, d) => {
            if a.checked_sub(*b) != Some(*d) {
                return Err("arithmetic error".to_string());
            }
            st.need(&[*a, *b])?;
            st.numbers.insert(*d);
        }
        Claim::Mul(a, b, p) => {
            if a.checked_mul(*b) != Some(*p) {
                return Err("arithmetic error".to_string());
            }
            st.need(&[*a, *b])?;
            st.numbers.insert(*p);
        }
    }
    Ok(())
}

/// Returns (answer correct, verdict). The verdict also requires the answer to have been established.
fn judge_answer(meta: &QuestionMeta, st: &State, raw: &str) -> (bool, Result<(), String>) {
    let a = normalize(raw);
    let a = a.trim_matches(|c| c == '(' || c == ')').trim();
    let (correct, chosen) = match &meta.choices {
        Some(choices) => {
            let by_letter = match a.as_bytes() {
                [l @ b'a'..=b'z'] => Some(usize::from(l - b'a')).filter(|&i| i < choices.len()),
                _ => None,
            };
            let idx = by_letter.or_else(|| choices.iter().position(|c| c.to_lowercase() == a));
            let Some(i) = idx else {
                return (false, Err("answer is not one of the choices".to_string()));
            };
            (choices[i] == meta.answer, choices[i].to_lowercase())
        }
        None => match parse_int(a) {
            Some(v) => (meta.answer.trim().parse::<i64>().ok() == Some(v), v.to_string()),
            None => return (false, Err("answer is not an integer".to_string())),
        },
    };
    if !correct {
        return (false, Err("wrong answer".to_string()));
    }
    let established = match parse_int(&chosen) {
        Some(v) => st.numbers.contains(&v),
        None => st.texts.contains(&chosen),
    };
    if !established {
        return (true, Err("answer not established by an earlier correct step".to_string()));
    }
    (true, Ok(()))
}

/// Judges every step of `response` against `scene`, and the final answer against `meta`.
pub fn judge(scene: &Scene, meta: &QuestionMeta, response: &str) -> Judgement {
    let mut st = State::default();
    let mut steps = Vec::new();
    let mut answered = false;
    let mut answer_correct = false;
    for raw in split_steps(response) {
        let verdict = if answered {
            Err("step after the answer".to_string())
        } else {
            match raw.marker {
                Marker::Answer => {
                    answered = true;
                    let (correct, v) = judge_answer(meta, &st, &raw.body);
                    answer_correct = correct;
                    v
                }
                Marker::Step => match parse_claim(&raw.body) {
                    Some(claim) => judge_claim(scene, &mut st, &claim),
                    None => Err("unrecognized step".to_string()),
                },
                Marker::Unmarked => Err("unrecognized step".to_string()),
            }
        };
        steps.push(StepVerdict { text: raw.text, ok: verdict.is_ok(), reason: verdict.err() });
    }
    let steps_ok = answered && answer_correct && steps.iter().all(|s| s.ok);
    Judgement { steps, answer_correct, steps_ok }
}

#[cfg(test)]
mod tests {
    use super::super::scene::Object;
    use super::*;

    fn obj(cell: u32, shape: Shape, colour: Colour, digit: u8) -> Object {
        let (w, h) = shape.size();
        let (row, col) = (cell / 3, cell % 3);
        Object { shape, colour, digit, row, col, x: 2 + 18 * col as i32, y: 2 + 18 * row as i32, w, h }
    }

    /// Reading order: red circle 3, blue square 2, red square 7, red triangle 1, yellow circle 4.
    fn scene() -> Scene {
        Scene {
            width: 56,
            height: 56,
            objects: vec![
                obj(0, Shape::Circle, Colour::Red, 3),
                obj(1, Shape::Square, Colour::Blue, 2),
                obj(3, Shape::Square, Colour::Red, 7),
                obj(5, Shape::Triangle, Colour::Red, 1),
                obj(7, Shape::Circle, Colour::Yellow, 4),
            ],
        }
    }

    fn meta(qtype: &str, answer: &str) -> QuestionMeta {
        QuestionMeta { qtype: qtype.into(), hard: false, filter_a: None, filter_b: None, choices: None, answer: answer.into(), answer_letter: None }
    }

    fn reasons(j: &Judgement) -> Vec<Option<String>> {
        j.steps.iter().map(|s| s.reason.clone()).collect()
    }

    const GOLD_SUM: &str = "Step 1: The red shapes show 3, 7, 1.\nStep 2: 3 + 7 + 1 = 11.\nAnswer: 11";

    #[test]
    fn accepts_gold_and_lenient_whitespace() {
        let m = meta("sum", "11");
        let j = judge(&scene(), &m, GOLD_SUM);
        assert!(j.steps_ok && j.answer_correct, "{j:?}");
        assert_eq!(j.steps.len(), 3);
        let sloppy = "\n  step 1 : the red shapes show 3,7,  1\n\nStep 2: 3 + 7\n + 1 = 11\nANSWER: 11.\n";
        let j = judge(&scene(), &m, sloppy);
        assert!(j.steps_ok, "{j:?}");
        assert_eq!(j.steps[1].text, "Step 2: 3 + 7 + 1 = 11");
    }

    #[test]
    fn rejects_wrong_listing() {
        let m = meta("sum", "11");
        let j = judge(&scene(), &m, "Step 1: The red shapes show 3, 7.\nStep 2: 3 + 7 = 10.\nAnswer: 10");
        assert!(!j.steps[0].ok && !j.answer_correct && !j.steps_ok);
        // order matters (reading order)
        let j = judge(&scene(), &m, "Step 1: The red shapes show 7, 3, 1.\nStep 2: 7 + 3 + 1 = 11.\nAnswer: 11");
        assert!(!j.steps[0].ok && !j.steps[1].ok && j.answer_correct && !j.steps_ok);
        // claiming absence of present shapes
        let j = judge(&scene(), &m, "Step 1: There are no red shapes.\nAnswer: 0");
        assert!(!j.steps[0].ok);
    }

    #[test]
    fn rejects_wrong_sum_and_wrong_answer() {
        let m = meta("sum", "11");
        let j = judge(&scene(), &m, "Step 1: The red shapes show 3, 7, 1.\nStep 2: 3 + 7 + 1 = 12.\nAnswer: 12");
        assert_eq!(reasons(&j)[1].as_deref(), Some("arithmetic error"));
        assert!(!j.answer_correct && !j.steps_ok);
        let j = judge(&scene(), &m, "Step 1: The red shapes show 3, 7, 1.\nStep 2: 3 + 7 + 1 = 11.\nAnswer: 12");
        assert!(j.steps[0].ok && j.steps[1].ok && !j.steps[2].ok && !j.answer_correct && !j.steps_ok);
        let j = judge(&scene(), &m, "Step 1: The red shapes show 3, 7, 1.\nStep 2: 3 + 7 + 1 = 11.");
        assert!(!j.answer_correct && !j.steps_ok, "no answer line");
    }

    #[test]
    fn rejects_right_answer_without_the_work() {
        let m = meta("sum", "11");
        let j = judge(&scene(), &m, "Answer: 11");
        assert!(j.answer_correct && !j.steps_ok);
        assert!(reasons(&j)[0].as_deref().unwrap().contains("not established"));
        // skipped listing: operands come from nowhere
        let j = judge(&scene(), &m, "Step 1: 3 + 7 + 1 = 11.\nAnswer: 11");
        assert!(!j.steps[0].ok && j.answer_correct && !j.steps_ok);
        // operand not established (0 never listed), arithmetic itself fine
        let j = judge(&scene(), &m, "Step 1: The red shapes show 3, 7, 1.\nStep 2: 3 + 7 + 1 + 0 = 11.\nAnswer: 11");
        assert!(j.steps[0].ok && !j.steps[1].ok && !j.steps_ok);
        assert!(reasons(&j)[1].as_deref().unwrap().contains("operand 0"));
        // count without listing
        let m = meta("count", "3");
        let j = judge(&scene(), &m, "Step 1: There are 3 red shapes.\nAnswer: 3");
        assert!(!j.steps[0].ok && !j.steps_ok);
        let j = judge(&scene(), &m, "Step 1: The red shapes show 3, 7, 1.\nStep 2: There are 3 red shapes.\nAnswer: 3");
        assert!(j.steps_ok, "{j:?}");
    }

    #[test]
    fn rejects_unrecognized_and_trailing_steps() {
        let m = meta("sum", "11");
        let r = "Step 1: Let me look at the image.\nStep 2: The red shapes show 3, 7, 1.\n\
                 Step 3: 3 + 7 + 1 = 11.\nAnswer: 11";
        let j = judge(&scene(), &m, r);
        assert_eq!(reasons(&j)[0].as_deref(), Some("unrecognized step"));
        assert!(j.answer_correct && !j.steps_ok);
        let j = judge(&scene(), &m, "Sure!\nStep 1: The red shapes show 3, 7, 1.\nStep 2: 3 + 7 + 1 = 11.\nAnswer: 11");
        assert!(!j.steps[0].ok && !j.steps_ok);
        let j = judge(&scene(), &m, &format!("{GOLD_SUM}\nStep 3: 11 + 0 = 11."));
        assert_eq!(reasons(&j)[3].as_deref(), Some("step after the answer"));
        assert!(!j.steps_ok);
    }

    #[test]
    fn difference_and_largest_smallest() {
        let m = meta("difference", "5");
        let gold = "Step 1: The red shapes show 3, 7, 1.\nStep 2: The largest is 7.\nStep 3: The square shapes show 2, 7.\n\
                    Step 4: The smallest is 2.\nStep 5: 7 - 2 = 5.\nAnswer: 5";
        assert!(judge(&scene(), &m, gold).steps_ok);
        let bad = gold.replace("The smallest is 2", "The smallest is 1");
        let j = judge(&scene(), &m, &bad);
        assert!(!j.steps[3].ok && !j.steps_ok);
        let j = judge(&scene(), &meta("x", "7"), "Step 1: The largest is 7.\nAnswer: 7");
        assert!(!j.steps[0].ok);
        assert_eq!(parse_claim("2 - 7 = -5"), Some(Claim::Sub(2, 7, -5)));
    }

    #[test]
    fn product_with_single_object_reading() {
        let m = meta("product", "12");
        let gold = "Step 1: The yellow circle shows 4.\nStep 2: The red shapes show 3, 7, 1.\n\
                    Step 3: There are 3 red shapes.\nStep 4: 4 * 3 = 12.\nAnswer: 12";
        assert!(judge(&scene(), &m, gold).steps_ok);
        let j = judge(&scene(), &m, &gold.replace("shows 4", "shows 5"));
        assert!(!j.steps[0].ok && !j.steps[3].ok);
        // a reading of a non-unique or absent object is not ok
        let j = judge(&scene(), &m, "Step 1: The green circle shows 4.\nAnswer: 4");
        assert!(!j.steps[0].ok);
    }

    #[test]
    fn multiple_choice_letter_or_text() {
        // colour sums: red 11, blue 2, green 0, yellow 4
        let mut m = meta("compare_mc", "red");
        m.choices = Some(vec!["blue".into(), "red".into(), "yellow".into(), "green".into()]);
        m.answer_letter = Some("B".into());
        let steps = "Step 1: The blue numbers add up to 2.\nStep 2: The red numbers add up to 11.\n\
                     Step 3: The yellow numbers add up to 4.\nStep 4: The green numbers add up to 0.\n\
                     Step 5: The most is red.\n";
        for ok in ["B", "(B)", "b", "red", "Red."] {
            let j = judge(&scene(), &m, &format!("{steps}Answer: {ok}"));
            assert!(j.steps_ok, "{ok}: {j:?}");
        }
        for bad in ["A", "blue", "E", "purple", "11"] {
            let j = judge(&scene(), &m, &format!("{steps}Answer: {bad}"));
            assert!(!j.answer_correct && !j.steps_ok, "{bad}");
        }
        // skipping a colour makes the conclusion unsupported
        let j = judge(&scene(), &m, &format!("{}Answer: B", steps.replace("Step 4: The green numbers add up to 0.\n", "")));
        assert!(!j.steps_ok && j.answer_correct);
        // wrong conclusion
        let j = judge(&scene(), &m, &format!("{}Answer: A", steps.replace("most is red", "most is blue")));
        assert!(!j.steps[4].ok && !j.answer_correct);

        let mut m = meta("sum_mc", "11");
        m.choices = Some(vec!["9".into(), "12".into(), "11".into(), "14".into()]);
        m.answer_letter = Some("C".into());
        let base = "Step 1: The red shapes show 3, 7, 1.\nStep 2: 3 + 7 + 1 = 11.\n";
        assert!(judge(&scene(), &m, &format!("{base}Answer: C")).steps_ok);
        assert!(judge(&scene(), &m, &format!("{base}Answer: 11")).steps_ok);
        assert!(!judge(&scene(), &m, &format!("{base}Answer: B")).answer_correct);
        assert!(!judge(&scene(), &m, "Answer: C").steps_ok);
    }

    #[test]
    fn grammar_round_trip() {
        assert_eq!(
            parse_claim("There are 0 blue triangle shapes."),
            Some(Claim::Count(Filter { colour: Some(Colour::Blue), shape: Some(Shape::Triangle) }, 0))
        );
        assert_eq!(parse_claim("There are no green shapes."), Some(Claim::Listing(Filter { colour: Some(Colour::Green), shape: None }, vec![])));
        assert_eq!(parse_claim("The circle shapes show 5."), Some(Claim::Listing(Filter { colour: None, shape: Some(Shape::Circle) }, vec![5])));
        assert_eq!(parse_claim("3 + 4 = 7."), Some(Claim::Add(vec![3, 4], 7)));
        assert_eq!(parse_claim("3 = 3."), None);
        assert_eq!(parse_claim("3 + x = 7."), None);
        assert_eq!(parse_claim("The purple shapes show 1."), None);
        assert_eq!(parse_claim("The red shapes show."), None);
        assert_eq!(parse_claim("99999999999999999 + 1 = 2"), None);
    }
}
