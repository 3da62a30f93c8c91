//! Procedural visual-reasoning task: seeded 56×56 scenes of digit-bearing shapes, questions, gold CoT.
//! `generate` is deterministic in (seed, split, index, hard); `judge` checks each step of any response.

// Step grammar (one step per line, `Step <n>: ...`, then a final `Answer: <X>` line):
// - `The <filter> shapes show <n>, <n>, ....` / `There are no <filter> shapes.`
// - `There are <n> <filter> shapes.`
// - `<a> + <b> + ... = <s>.` / `<a> - <b> = <d>.` / `<a> * <b> = <p>.`
// - `The largest is <n>.` / `The smallest is <n>.` (of the most recent listing)
// - `The <colour> <shape> shows <n>.`
// - `The <colour> numbers add up to <s>.` / `The most is <colour>.`
//
// where `<filter>` is a colour, a shape, or `<colour> <shape>`.

pub mod font;
pub mod oracle;
pub mod rng;
pub mod scene;

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

pub use oracle::{judge, Judgement, StepVerdict};
pub use scene::{Colour, Filter, Object, Scene, Shape};

use rng::Rng;

/// Question types of the train/val/test splits (sampled uniformly).
pub const QTYPES: [&str; 6] = ["count", "sum", "difference", "product", "compare_mc", "sum_mc"];
/// Compositions that only the hard split asks (half of the hard split, split evenly).
pub const HARD_ONLY_QTYPES: [&str; 2] = ["sum_minus_count", "max_times_count"];
/// Last line of every prompt.
pub const INSTRUCTION: &str = "Answer with numbered steps and a final \"Answer:\" line.";
/// Choice letters of multiple-choice questions.
pub const LETTERS: [&str; 4] = ["A", "B", "C", "D"];

/// What the oracle needs to know about a question (stored as JSON next to the scene).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuestionMeta {
    pub qtype: String,
    pub hard: bool,
    /// First filter of the question (for `product`: the colour+shape of the single object read).
    pub filter_a: Option<Filter>,
    /// Second filter (the counted / minimum side), if any.
    pub filter_b: Option<Filter>,
    /// The four options of a multiple-choice question, in letter order.
    pub choices: Option<Vec<String>>,
    /// Gold answer: decimal integer, or the choice text for multiple choice.
    pub answer: String,
    /// Gold letter ("A".."D") for multiple choice.
    pub answer_letter: Option<String>,
}

/// One generated example.
#[derive(Clone, Debug)]
pub struct Example {
    pub prompt_id: String,
    pub question: String,
    pub choices: Option<Vec<String>>,
    pub answer: String,
    pub answer_type: &'static str,
    pub image_png: Vec<u8>,
    pub scene: Scene,
    pub meta: QuestionMeta,
    pub gold_cot: String,
    pub num_steps: usize,
}

/// A question before prompt assembly.
struct Draft {
    meta: QuestionMeta,
    question: String,
    steps: Vec<String>,
}

/// Deterministic: the same (seed, split, index, hard) always gives byte-identical output, on any machine.
pub fn generate(seed: u64, split: &str, index: u64, hard: bool) -> Example {
    let mut rng = Rng::for_example(seed, split, index, hard);
    let qtype = if hard && rng.chance(1, 2) { *rng.pick(&HARD_ONLY_QTYPES) } else { *rng.pick(&QTYPES) };
    let (lo, hi) = if hard { (6, 8) } else { (3, 5) };
    // drawn once per example (not per scene attempt) so that resampling does not skew it
    let knob = rng.next_u64();
    let mut found = None;
    for _ in 0..200 {
        let n = rng.range(lo, hi) as usize;
        let scene = Scene::sample(&mut rng, n);
        if let Some(d) = build(&mut rng, &scene, qtype, hard, knob) {
            found = Some((scene, d));
            break;
        }
    }
    // Practically unreachable: fall back to counting the first object's colour.
    let (scene, draft) = found.unwrap_or_else(|| {
        let scene = Scene::sample(&mut rng, lo as usize);
        let f = Filter { colour: Some(scene.objects[0].colour), shape: None };
        let d = count_question(&scene, f, hard);
        (scene, d)
    });

    let mut question = draft.question;
    if let Some(choices) = &draft.meta.choices {
        question.push_str("\nChoices:");
        for (l, c) in LETTERS.iter().zip(choices) {
            let _ = write!(question, " ({l}) {c}");
        }
    }
    question.push('\n');
    question.push_str(INSTRUCTION);

    let mut gold_cot = String::new();
    for (i, s) in draft.steps.iter().enumerate() {
        let _ = writeln!(gold_cot, "Step {}: {}", i + 1, s);
    }
    let final_answer = draft.meta.answer_letter.as_ref().unwrap_or(&draft.meta.answer);
    let _ = write!(gold_cot, "Answer: {final_answer}");

    let choices = draft.meta.choices.clone();
    Example {
        prompt_id: format!("synth-{split}-{index:06}"),
        question,
        answer_type: if choices.is_some() { "text" } else { "integer" },
        choices,
        answer: draft.meta.answer.clone(),
        image_png: scene.to_png(),
        scene,
        meta: draft.meta,
        gold_cot,
        num_steps: draft.steps.len(),
    }
}

fn build(rng: &mut Rng, scene: &Scene, qtype: &str, hard: bool, knob: u64) -> Option<Draft> {
    match qtype {
        "count" => build_count(rng, scene, hard, knob),
        "sum" => build_sum(rng, scene, hard, false),
        "sum_mc" => build_sum(rng, scene, hard, true),
        "difference" => build_difference(rng, scene, hard),
        "product" => build_product(rng, scene, hard),
        "compare_mc" => build_compare(rng, scene, hard),
        "sum_minus_count" => build_sum_minus_count(rng, scene, hard),
        "max_times_count" => build_max_times_count(rng, scene, hard),
        _ => None,
    }
}

// ---------- step text (the exact forms the oracle parses) ----------

fn join(nums: &[i64], sep: &str) -> String {
    nums.iter().map(i64::to_string).collect::<Vec<_>>().join(sep)
}

fn listing_step(scene: &Scene, f: &Filter) -> String {
    let d = scene.digits(f);
    if d.is_empty() {
        format!("There are no {} shapes.", f.text())
    } else {
        format!("The {} shapes show {}.", f.text(), join(&d, ", "))
    }
}

fn count_step(f: &Filter, n: usize) -> String {
    format!("There are {n} {} shapes.", f.text())
}

fn add_step(terms: &[i64]) -> String {
    format!("{} = {}.", join(terms, " + "), terms.iter().sum::<i64>())
}

fn sub_step(a: i64, b: i64) -> String {
    format!("{a} - {b} = {}.", a - b)
}

fn mul_step(a: i64, b: i64) -> String {
    format!("{a} * {b} = {}.", a * b)
}

/// One warm-up drill: a one-step problem of the task's format. The question ends with the task's
/// instruction; the response is `Step 1: <a step of the chain grammar>` and, where the step yields
/// a number, `Answer: <it>`. `kind` names the skill (read, listing, count, colour_sum, add,
/// largest, smallest, sub, mul, most).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drill {
    pub kind: &'static str,
    pub question: String,
    pub response: String,
}

/// Skill drills for warm-up, read off one scene. Perception: each uniquely described object's
/// digit, each colour's and shape's listing, the listing of each colour+shape pair present, each
/// colour's count and digit sum. Arithmetic on the scene's numbers, given in the question (the
/// chains' non-visual steps): the sum, largest and smallest of each colour or shape listing of two
/// or more digits, a difference and a product per colour, and the colour whose numbers add up to
/// the most (when it is unique). Listings and `most` have no `Answer:` line (no number to give).
pub fn drills(scene: &Scene) -> Vec<Drill> {
    let mut out = Vec::new();
    let mut push = |kind: &'static str, question: String, step: String, answer: Option<i64>| {
        let answer = answer.map(|a| format!("\nAnswer: {a}")).unwrap_or_default();
        out.push(Drill { kind, question: format!("{question}\n{INSTRUCTION}"), response: format!("Step 1: {step}{answer}") })
    };
    for o in &scene.objects {
        let f = Filter { colour: Some(o.colour), shape: Some(o.shape) };
        if scene.matching(&f).len() == 1 {
            push("read", format!("What number does the {} show?", f.text()), format!("The {} shows {}.", f.text(), o.digit), Some(i64::from(o.digit)));
        }
    }
    let singles: Vec<Filter> = Colour::ALL
        .iter()
        .map(|&c| Filter { colour: Some(c), shape: None })
        .chain(Shape::ALL.iter().map(|&s| Filter { colour: None, shape: Some(s) }))
        .collect();
    let pairs = all_filters().into_iter().filter(|f| f.colour.is_some() && f.shape.is_some() && !scene.matching(f).is_empty());
    for f in singles.iter().copied().chain(pairs) {
        push("listing", format!("Which numbers do the {} shapes show?", f.text()), listing_step(scene, &f), None);
    }
    let sums = scene.colour_sums();
    for c in Colour::ALL {
        let f = Filter { colour: Some(c), shape: None };
        let n = scene.matching(&f).len() as i64;
        push("count", format!("How many {} shapes are there?", f.text()), count_step(&f, n as usize), Some(n));
        let s = sums[c.index()];
        push("colour_sum", format!("What do the {} numbers add up to?", c.name()), format!("The {} numbers add up to {s}.", c.name()), Some(s));
    }
    for f in &singles {
        let d = scene.digits(f);
        if let (true, Some(&mx), Some(&mn)) = (d.len() >= 2, d.iter().max(), d.iter().min()) {
            let list = join(&d, ", ");
            push("add", format!("What is {}?", join(&d, " + ")), add_step(&d), Some(d.iter().sum()));
            push("largest", format!("Which is the largest of {list}?"), format!("The largest is {mx}."), Some(mx));
            push("smallest", format!("Which is the smallest of {list}?"), format!("The smallest is {mn}."), Some(mn));
        }
    }
    for (i, c) in Colour::ALL.iter().enumerate() {
        let a = scene.digits(&Filter { colour: Some(*c), shape: None });
        let other = Colour::ALL[(i + 1) % Colour::ALL.len()];
        let b = scene.digits(&Filter { colour: Some(other), shape: None });
        if let (Some(&mx), Some(&mn)) = (a.iter().max(), b.iter().min()) {
            push("sub", format!("What is {mx} - {mn}?"), sub_step(mx, mn), Some(mx - mn));
        }
        let n = scene.matching(&Filter { colour: None, shape: Some(Shape::ALL[i % Shape::ALL.len()]) }).len() as i64;
        if let Some(&x) = a.first() {
            push("mul", format!("What is {x} * {n}?"), mul_step(x, n), Some(x * n));
        }
    }
    let best = *sums.iter().max().unwrap_or(&0);
    if sums.iter().filter(|&&s| s == best).count() == 1 {
        let listed: Vec<String> = Colour::ALL.iter().map(|c| format!("{} {}", c.name(), sums[c.index()])).collect();
        let top = Colour::ALL[sums.iter().position(|&s| s == best).unwrap_or(0)];
        push("most", format!("Which colour adds up to the most: {}?", listed.join(", ")), format!("The most is {}.", top.name()), None);
    }
    out
}

// ---------- filters ----------

/// A filter describing `o`: its colour (40%), its shape (30%) or both (30%).
fn filter_of(rng: &mut Rng, o: &Object) -> Filter {
    match rng.below(10) {
        0..=3 => Filter { colour: Some(o.colour), shape: None },
        4..=6 => Filter { colour: None, shape: Some(o.shape) },
        _ => Filter { colour: Some(o.colour), shape: Some(o.shape) },
    }
}

/// Every filter: 4 colours, 3 shapes, 12 colour+shape pairs (fixed order).
fn all_filters() -> Vec<Filter> {
    let mut v: Vec<Filter> = Colour::ALL.iter().map(|&c| Filter { colour: Some(c), shape: None }).collect();
    v.extend(Shape::ALL.iter().map(|&s| Filter { colour: None, shape: Some(s) }));
    for c in Colour::ALL {
        v.extend(Shape::ALL.iter().map(|&s| Filter { colour: Some(c), shape: Some(s) }));
    }
    v
}

/// A filter of a random colour/shape (may match nothing).
fn random_filter(rng: &mut Rng) -> Filter {
    let c = *rng.pick(&Colour::ALL);
    let s = *rng.pick(&Shape::ALL);
    match rng.below(10) {
        0..=3 => Filter { colour: Some(c), shape: None },
        4..=6 => Filter { colour: None, shape: Some(s) },
        _ => Filter { colour: Some(c), shape: Some(s) },
    }
}

/// A filter matching at least `min` objects, derived from a random object (None if not found quickly).
fn filter_with(rng: &mut Rng, scene: &Scene, min: usize) -> Option<Filter> {
    for _ in 0..12 {
        let o = rng.pick(&scene.objects);
        let f = filter_of(rng, o);
        if scene.matching(&f).len() >= min {
            return Some(f);
        }
    }
    None
}

fn meta(qtype: &str, hard: bool, a: Option<Filter>, b: Option<Filter>, answer: i64) -> QuestionMeta {
    QuestionMeta { qtype: qtype.to_string(), hard, filter_a: a, filter_b: b, choices: None, answer: answer.to_string(), answer_letter: None }
}

// ---------- question builders ----------

/// Count question. The wanted count comes from the per-example `knob` (10%: a random filter that may
/// match nothing; else uniform over 1..=3, or 1..=5 when hard) so that no single answer dominates;
/// None if no filter of that count exists in this scene (the caller resamples the scene).
fn build_count(rng: &mut Rng, scene: &Scene, hard: bool, knob: u64) -> Option<Draft> {
    let f = if knob.is_multiple_of(10) {
        random_filter(rng)
    } else {
        let k = 1 + ((knob / 10) % if hard { 5 } else { 3 }) as usize;
        let cands: Vec<Filter> = all_filters().into_iter().filter(|f| scene.matching(f).len() == k).collect();
        if cands.is_empty() {
            return None;
        }
        *rng.pick(&cands)
    };
    Some(count_question(scene, f, hard))
}

fn count_question(scene: &Scene, f: Filter, hard: bool) -> Draft {
    let n = scene.matching(&f).len();
    Draft {
        meta: meta("count", hard, Some(f), None, n as i64),
        question: format!("How many {} shapes are there?", f.text()),
        steps: vec![listing_step(scene, &f), count_step(&f, n)],
    }
}

fn build_sum(rng: &mut Rng, scene: &Scene, hard: bool, mc: bool) -> Option<Draft> {
    let f = filter_with(rng, scene, 2)?;
    let d = scene.digits(&f);
    let s: i64 = d.iter().sum();
    let others: Vec<i64> = scene.objects.iter().filter(|o| !f.matches(o)).map(|o| i64::from(o.digit)).collect();
    let mut m = meta(if mc { "sum_mc" } else { "sum" }, hard, Some(f), None, s);
    if mc {
        let (choices, gold) = numeric_choices(rng, s, &d, &others);
        m.answer = choices[gold].clone();
        m.answer_letter = Some(LETTERS[gold].to_string());
        m.choices = Some(choices);
    }
    Some(Draft { meta: m, question: format!("What is the sum of the numbers on the {} shapes?", f.text()), steps: vec![listing_step(scene, &f), add_step(&d)] })
}

/// Four numeric options (truth + 3 distractors) and the index of the truth.
/// Distractors are truth ±1..3 or plausible miscounts (one listed object missed, one other included);
/// the truth's rank among the options is drawn uniformly so that neither position nor rank gives it away.
fn numeric_choices(rng: &mut Rng, truth: i64, listed: &[i64], others: &[i64]) -> (Vec<String>, usize) {
    let mut below: Vec<i64> = (1..=3).map(|k| truth - k).collect();
    let mut above: Vec<i64> = (1..=3).map(|k| truth + k).collect();
    below.extend(listed.iter().filter(|&&d| d > 0).map(|d| truth - d));
    above.extend(others.iter().filter(|&&d| d > 0).map(|d| truth + d));
    below.retain(|&v| v >= 0);
    below.sort_unstable();
    below.dedup();
    above.sort_unstable();
    above.dedup();
    let n_below = rng.index(4).min(below.len());
    rng.shuffle(&mut below);
    rng.shuffle(&mut above);
    let mut opts = vec![truth];
    opts.extend_from_slice(&below[..n_below]);
    opts.extend_from_slice(&above[..3 - n_below]);
    rng.shuffle(&mut opts);
    let gold = opts.iter().position(|&v| v == truth).expect("truth is an option");
    (opts.iter().map(i64::to_string).collect(), gold)
}

fn build_difference(rng: &mut Rng, scene: &Scene, hard: bool) -> Option<Draft> {
    for _ in 0..6 {
        let fa = filter_with(rng, scene, 1)?;
        let fb = filter_with(rng, scene, 1)?;
        if fa == fb {
            continue;
        }
        let mx = *scene.digits(&fa).iter().max()?;
        let mn = *scene.digits(&fb).iter().min()?;
        // negative results are avoided; zero (often the same object matched twice) is thinned out
        if mx < mn || (mx == mn && rng.chance(2, 3)) {
            continue;
        }
        return Some(Draft {
            meta: meta("difference", hard, Some(fa), Some(fb), mx - mn),
            question: format!("What is the largest number on a {} shape minus the smallest number on a {} shape?", fa.text(), fb.text()),
            steps: vec![
                listing_step(scene, &fa),
                format!("The largest is {mx}."),
                listing_step(scene, &fb),
                format!("The smallest is {mn}."),
                sub_step(mx, mn),
            ],
        });
    }
    None
}

fn build_product(rng: &mut Rng, scene: &Scene, hard: bool) -> Option<Draft> {
    let unique: Vec<&Object> =
        scene.objects.iter().filter(|o| scene.objects.iter().filter(|p| p.colour == o.colour && p.shape == o.shape).count() == 1).collect();
    if unique.is_empty() {
        return None;
    }
    let t = *rng.pick(&unique);
    let tf = Filter { colour: Some(t.colour), shape: Some(t.shape) };
    for _ in 0..6 {
        let f = filter_with(rng, scene, 1)?;
        if f == tf {
            continue;
        }
        let n = i64::from(t.digit);
        let k = scene.matching(&f).len();
        return Some(Draft {
            meta: meta("product", hard, Some(tf), Some(f), n * k as i64),
            question: format!("What is the number on the {} {} times the number of {} shapes?", t.colour.name(), t.shape.name(), f.text()),
            steps: vec![format!("The {} {} shows {n}.", t.colour.name(), t.shape.name()), listing_step(scene, &f), count_step(&f, k), mul_step(n, k as i64)],
        });
    }
    None
}

fn build_compare(rng: &mut Rng, scene: &Scene, hard: bool) -> Option<Draft> {
    let sums = scene.colour_sums();
    let best_sum = *sums.iter().max()?;
    if sums.iter().filter(|&&s| s == best_sum).count() != 1 {
        return None; // tie: resample the scene
    }
    let best = Colour::ALL[sums.iter().position(|&s| s == best_sum)?];
    let mut order = Colour::ALL;
    rng.shuffle(&mut order);
    let gold = order.iter().position(|&c| c == best)?;
    let mut steps: Vec<String> = order.iter().map(|c| format!("The {} numbers add up to {}.", c.name(), sums[c.index()])).collect();
    steps.push(format!("The most is {}.", best.name()));
    Some(Draft {
        meta: QuestionMeta {
            qtype: "compare_mc".to_string(),
            hard,
            filter_a: None,
            filter_b: None,
            choices: Some(order.iter().map(|c| c.name().to_string()).collect()),
            answer: best.name().to_string(),
            answer_letter: Some(LETTERS[gold].to_string()),
        },
        question: "Which colour's numbers add up to the most?".to_string(),
        steps,
    })
}

fn build_sum_minus_count(rng: &mut Rng, scene: &Scene, hard: bool) -> Option<Draft> {
    for _ in 0..6 {
        let fa = filter_with(rng, scene, 2)?;
        let fb = filter_with(rng, scene, 1)?;
        if fa == fb {
            continue;
        }
        let d = scene.digits(&fa);
        let s: i64 = d.iter().sum();
        let k = scene.matching(&fb).len();
        if s < k as i64 {
            continue;
        }
        return Some(Draft {
            meta: meta("sum_minus_count", hard, Some(fa), Some(fb), s - k as i64),
            question: format!("What is the sum of the numbers on the {} shapes minus the number of {} shapes?", fa.text(), fb.text()),
            steps: vec![listing_step(scene, &fa), add_step(&d), listing_step(scene, &fb), count_step(&fb, k), sub_step(s, k as i64)],
        });
    }
    None
}

fn build_max_times_count(rng: &mut Rng, scene: &Scene, hard: bool) -> Option<Draft> {
    for _ in 0..6 {
        let fa = filter_with(rng, scene, 2)?;
        let fb = filter_with(rng, scene, 1)?;
        if fa == fb {
            continue;
        }
        let mx = *scene.digits(&fa).iter().max()?;
        let k = scene.matching(&fb).len();
        return Some(Draft {
            meta: meta("max_times_count", hard, Some(fa), Some(fb), mx * k as i64),
            question: format!("What is the largest number on a {} shape times the number of {} shapes?", fa.text(), fb.text()),
            steps: vec![listing_step(scene, &fa), format!("The largest is {mx}."), listing_step(scene, &fb), count_step(&fb, k), mul_step(mx, k as i64)],
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn deterministic_per_key_and_distinct_across_keys() {
        let a = generate(42, "train", 5, false);
        let b = generate(42, "train", 5, false);
        assert_eq!(a.image_png, b.image_png);
        assert_eq!(a.question, b.question);
        assert_eq!(a.answer, b.answer);
        assert_eq!(a.gold_cot, b.gold_cot);
        assert_eq!(a.scene, b.scene);
        assert_eq!(a.prompt_id, "synth-train-000005");
        let c = generate(42, "train", 6, false);
        assert_ne!(a.image_png, c.image_png);
        let d = generate(42, "val", 5, false);
        assert_ne!(a.image_png, d.image_png);
        let e = generate(43, "train", 5, false);
        assert_ne!(a.image_png, e.image_png);
    }

    #[test]
    fn png_decodes_and_objects_show_their_colour() {
        for i in 0..60 {
            let hard = i % 3 == 0;
            let ex = generate(1, "test", i, hard);
            let img = image::load_from_memory(&ex.image_png).expect("valid PNG").to_rgb8();
            assert_eq!((img.width(), img.height()), (56, 56));
            assert_eq!(img, ex.scene.render());
            let n = ex.scene.objects.len();
            assert!(if hard { (6..=8).contains(&n) } else { (3..=5).contains(&n) });
            for (k, o) in ex.scene.objects.iter().enumerate() {
                let (px, py) = o.probe();
                assert_eq!(img.get_pixel(px as u32, py as u32).0, o.colour.rgb());
                let (cx, cy) = o.centre();
                let c = img.get_pixel(cx as u32, cy as u32).0;
                assert!(c == o.colour.rgb() || c == o.colour.ink(), "centre of {o:?} is {c:?}");
                for p in &ex.scene.objects[k + 1..] {
                    let apart = o.x + o.w < p.x || p.x + p.w < o.x || o.y + o.h < p.y || p.y + p.h < o.y;
                    assert!(apart, "{o:?} overlaps {p:?}");
                }
            }
        }
    }

    #[test]
    fn gold_cot_passes_oracle_and_mix_is_balanced() {
        let mut mix: BTreeMap<(bool, String), usize> = BTreeMap::new();
        let mut letters = [0usize; 4];
        let mut mc = 0usize;
        let mut median_guess_right = 0usize;
        let mut sum_mc = 0usize;
        let total = 2000u64;
        for i in 0..total {
            let hard = i % 4 == 3;
            let ex = generate(7, if hard { "hard" } else { "train" }, i, hard);
            *mix.entry((hard, ex.meta.qtype.clone())).or_default() += 1;
            let j = judge(&ex.scene, &ex.meta, &ex.gold_cot);
            assert!(j.steps_ok && j.answer_correct, "gold rejected: {}\n{}\n{:?}", ex.question, ex.gold_cot, j);
            assert_eq!(j.steps.len(), ex.num_steps + 1);
            assert!((2..=5).contains(&ex.num_steps), "{}", ex.gold_cot);
            assert_eq!(ex.gold_cot.lines().filter(|l| l.starts_with("Step ")).count(), ex.num_steps);
            assert!(ex.question.ends_with(INSTRUCTION));
            assert_eq!(ex.meta.answer, ex.answer);
            assert_eq!(ex.meta.choices, ex.choices);
            let last = ex.gold_cot.lines().last().unwrap();
            match &ex.choices {
                None => {
                    assert_eq!(ex.answer_type, "integer");
                    assert!(ex.answer.parse::<i64>().unwrap() >= 0);
                    assert_eq!(last, format!("Answer: {}", ex.answer));
                    assert!(!ex.question.contains("Choices:"));
                }
                Some(ch) => {
                    mc += 1;
                    assert_eq!(ex.answer_type, "text");
                    assert!(ex.meta.qtype.ends_with("_mc"));
                    assert_eq!(ch.len(), 4);
                    let mut uniq = ch.clone();
                    uniq.sort();
                    uniq.dedup();
                    assert_eq!(uniq.len(), 4, "duplicate choices {ch:?}");
                    let letter = ex.meta.answer_letter.as_deref().unwrap();
                    let idx = LETTERS.iter().position(|l| *l == letter).unwrap();
                    assert_eq!(ch[idx], ex.answer);
                    letters[idx] += 1;
                    assert_eq!(last, format!("Answer: {letter}"));
                    let line = format!("Choices: (A) {} (B) {} (C) {} (D) {}", ch[0], ch[1], ch[2], ch[3]);
                    assert!(ex.question.contains(&line));
                    // the choice text is accepted too
                    let alt = ex.gold_cot.replace(last, &format!("Answer: {}", ex.answer));
                    assert!(judge(&ex.scene, &ex.meta, &alt).steps_ok);
                    if ex.meta.qtype == "sum_mc" {
                        sum_mc += 1;
                        let mut v: Vec<i64> = ch.iter().map(|c| c.parse().unwrap()).collect();
                        v.sort_unstable();
                        if v[1].to_string() == ex.answer || v[2].to_string() == ex.answer {
                            median_guess_right += 1;
                        }
                    }
                }
            }
            // metadata and scene survive a JSON round trip
            let m: QuestionMeta = serde_json::from_str(&serde_json::to_string(&ex.meta).unwrap()).unwrap();
            assert_eq!(m, ex.meta);
            let s: Scene = serde_json::from_str(&serde_json::to_string(&ex.scene).unwrap()).unwrap();
            assert_eq!(s, ex.scene);
        }
        let normal: usize = mix.iter().filter(|((h, _), _)| !h).map(|(_, n)| n).sum();
        for q in QTYPES {
            let n = mix.get(&(false, q.to_string())).copied().unwrap_or(0);
            assert!(n * 10 > normal && n * 4 < normal, "{q}: {n} of {normal}");
            assert!(mix.contains_key(&(true, q.to_string())));
        }
        for q in HARD_ONLY_QTYPES {
            assert!(!mix.contains_key(&(false, q.to_string())), "{q} leaked into train");
            let n = mix.get(&(true, q.to_string())).copied().unwrap_or(0);
            assert!(n * 6 > (total as usize - normal), "{q}: {n}");
        }
        for n in letters {
            assert!(n * 8 > mc && n * 3 < mc, "letter skew {letters:?}");
        }
        // a blind "pick one of the middle two values" strategy stays near 50% of 2-of-4, not above
        assert!(median_guess_right * 100 < sum_mc * 62, "{median_guess_right}/{sum_mc}");
    }

    #[test]
    fn all_scene_json_is_plain() {
        let ex = generate(3, "train", 0, false);
        let v: serde_json::Value = serde_json::to_value(&ex.scene).unwrap();
        let o = &v["objects"][0];
        assert!(o["shape"].is_string() && o["colour"].is_string() && o["digit"].is_u64());
    }

    #[test]
    fn drills_are_true_steps_of_the_chain_grammar() {
        let mut kinds = std::collections::BTreeSet::new();
        for i in 0..50 {
            let ex = generate(0, "train", i, false);
            let d = drills(&ex.scene);
            let unique = ex.scene.objects.iter().filter(|o| ex.scene.matching(&Filter { colour: Some(o.colour), shape: Some(o.shape) }).len() == 1).count();
            let pairs = all_filters().iter().filter(|f| f.colour.is_some() && f.shape.is_some() && !ex.scene.matching(f).is_empty()).count();
            let perception = d.iter().filter(|x| ["read", "listing", "count", "colour_sum"].contains(&x.kind)).count();
            assert_eq!(perception, unique + 4 + 3 + pairs + 4 + 4, "example {i}");
            for x in &d {
                kinds.insert(x.kind);
                let q = x.question.strip_suffix(INSTRUCTION).and_then(|q| q.strip_suffix('\n')).unwrap_or_else(|| panic!("no instruction: {}", x.question));
                assert!(q.ends_with('?'), "{q}");
                let mut lines = x.response.lines();
                let r = lines.next().and_then(|l| l.strip_prefix("Step 1: ")).unwrap_or_else(|| panic!("not `Step 1: …`: {}", x.response));
                let answer: Option<i64> =
                    lines.next().map(|l| l.strip_prefix("Answer: ").and_then(|a| a.parse().ok()).unwrap_or_else(|| panic!("bad answer line: {l}")));
                assert!(lines.next().is_none(), "{}", x.response);
                assert_eq!(answer.is_none(), ["listing", "most"].contains(&x.kind), "{}", x.response);
                // the numbers the question gives (arithmetic drills), in order
                let given: Vec<i64> = q.split(|c: char| !c.is_ascii_digit()).filter(|t| !t.is_empty()).map(|t| t.parse().unwrap()).collect();
                let claim = oracle::parse_claim(r.strip_suffix('.').unwrap_or(r).trim()).or_else(|| oracle::parse_claim(r));
                let claim = claim.unwrap_or_else(|| panic!("not a step of the grammar: {r}"));
                let result = match &claim {
                    oracle::Claim::Read(_, _, n)
                    | oracle::Claim::Count(_, n)
                    | oracle::Claim::ColourSum(_, n)
                    | oracle::Claim::Largest(n)
                    | oracle::Claim::Smallest(n) => Some(*n),
                    oracle::Claim::Add(_, n) | oracle::Claim::Sub(_, _, n) | oracle::Claim::Mul(_, _, n) => Some(*n),
                    _ => None,
                };
                assert_eq!(answer, result, "the answer line gives the step's result: {}", x.response);
                let truth = match claim {
                    oracle::Claim::Read(c, s, n) => ex.scene.digits(&Filter { colour: Some(c), shape: Some(s) }) == vec![n],
                    oracle::Claim::Listing(f, v) => ex.scene.digits(&f) == v,
                    oracle::Claim::Count(f, n) => ex.scene.matching(&f).len() as i64 == n,
                    oracle::Claim::ColourSum(c, n) => ex.scene.colour_sums()[c.index()] == n,
                    oracle::Claim::Add(v, s) => v == given && v.iter().sum::<i64>() == s,
                    oracle::Claim::Largest(n) => given.iter().max() == Some(&n),
                    oracle::Claim::Smallest(n) => given.iter().min() == Some(&n),
                    oracle::Claim::Sub(a, b, c) => vec![a, b] == given && a - b == c,
                    oracle::Claim::Mul(a, b, c) => vec![a, b] == given && a * b == c,
                    oracle::Claim::Most(c) => {
                        let sums = ex.scene.colour_sums();
                        given == Colour::ALL.iter().map(|c| sums[c.index()]).collect::<Vec<_>>()
                            && sums.iter().all(|&s| s < sums[c.index()] || s == sums[c.index()])
                            && sums.iter().filter(|&&s| s == sums[c.index()]).count() == 1
                    }
                };
                assert!(truth, "example {i}: `{q}` → `{r}` is false of the scene");
            }
        }
        assert_eq!(kinds.len(), 10, "every kind of drill occurs: {kinds:?}");
    }
}
