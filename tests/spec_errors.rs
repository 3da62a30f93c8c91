//! `mstar validate` reports every class of spec error, all at once, each with its YAML path
//! and line:column.

mod common;
use common::*;

fn validate(yaml: &str, extra: &[&str]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("p.yaml");
    std::fs::write(&f, yaml).unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("data/d.jsonl"), "{\"a\":1}\n").unwrap();
    let out = bin().arg("validate").arg(&f).args(extra).output().unwrap();
    let err = text(&out.stderr);
    (out.status.code().unwrap_or(-1), err.replace(&f.display().to_string(), "p.yaml"))
}

const GOOD: &str = "name: t
datasets:
  d: {path: data/d.jsonl}
stages:
  - id: raw
    op: import
    dataset: d
  - id: b
    op: sql
    query: SELECT a FROM raw
";

#[test]
fn a_good_spec_validates() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("p.yaml");
    std::fs::write(&f, GOOD).unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("data/d.jsonl"), "{\"a\":1}\n").unwrap();
    let (o, _) = ok(bin().arg("validate").arg(&f));
    assert!(o.contains("ok — pipeline `t`, 2 stage(s)"), "{o}");
    let (o, _) = ok(bin().arg("validate").arg(repo().join("pipelines/demo.yaml")));
    assert!(o.contains("ok"), "{o}");
}

#[test]
fn unknown_keys() {
    let (code, err) = validate(&format!("{GOOD}    samples: 8\nbogus: 1\n"), &[]);
    assert_eq!(code, 2);
    assert!(err.contains("p.yaml:11:14: stages.b.samples: unknown key `samples` for op `sql`"), "{err}");
    assert!(err.contains("p.yaml:12:8: bogus: unknown key `bogus`"), "{err}");
}

#[test]
fn wrong_types() {
    let (code, err) = validate(&GOOD.replace("name: t", "name: t\nseed: lots\niterations: [1]"), &[]);
    assert_eq!(code, 2);
    assert!(err.contains("p.yaml:2:7: seed: invalid type: string \"lots\", expected u64"), "{err}");
    assert!(err.contains("p.yaml:3:13: iterations: invalid type"), "{err}");
}

#[test]
fn missing_stage_and_dataset_references() {
    let yaml = GOOD.replace("dataset: d", "dataset: nope").replace("FROM raw", "FROM raw JOIN ghost ON true") + "    inputs: [phantom]\n";
    let (code, err) = validate(&yaml, &[]);
    assert_eq!(code, 2);
    assert!(err.contains("p.yaml:7:14: stages.raw.dataset: unknown dataset `nope` (datasets: d)"), "{err}");
    assert!(err.contains("stages.b.inputs[0]: stage `b` reads unknown stage `phantom`"), "{err}");
    assert!(err.contains("p.yaml:10:12: stages.b.query: stage `b` reads unknown stage `ghost`"), "{err}");
}

#[test]
fn duplicate_ids() {
    let (code, err) = validate(&format!("{GOOD}  - id: b\n    op: sql\n    query: SELECT 1\n"), &[]);
    assert_eq!(code, 2);
    assert!(err.contains("p.yaml:11:9: stages.b.id: duplicate stage id `b` (first defined at 8:9)"), "{err}");
}

#[test]
fn cycles() {
    let yaml = format!("{GOOD}  - id: c\n    op: sql\n    query: SELECT * FROM d2\n  - id: d2\n    op: sql\n    query: SELECT * FROM c\n");
    let (code, err) = validate(&yaml, &[]);
    assert_eq!(code, 2);
    assert!(err.contains("dependency cycle: c → d2 → c") || err.contains("dependency cycle: d2 → c → d2"), "{err}");
    assert!(err.contains("stages.d2.inputs") || err.contains("stages.c.inputs"), "{err}");
    // reading an earlier iteration breaks the cycle
    let fixed = yaml.replace("query: SELECT * FROM d2", "query: SELECT * FROM d2\n    inputs: [d2@prev]");
    assert_eq!(validate(&fixed, &[]).0, 0, "{}", validate(&fixed, &[]).1);
}

#[test]
fn sql_problems() {
    let yaml = GOOD.replace("query: SELECT a FROM raw", "query: SELEC a FROM raw")
        + "  - id: e\n    op: sql\n    query: SELECT ${nope} FROM raw\n  - id: f\n    op: sql\n    sql: missing_file\n";
    let (code, err) = validate(&yaml, &[]);
    assert_eq!(code, 2);
    assert!(err.contains("stages.b.query: SQL"), "{err}");
    assert!(err.contains("stages.e.query: unknown SQL parameter `${nope}`"), "{err}");
    assert!(err.contains("stages.f.sql: no SQL file `missing_file.sql`"), "{err}");
}

#[test]
fn all_errors_are_reported_at_once() {
    let yaml = "name: t
seed: x
oops: 1
datasets:
  d: {path: data/d.jsonl, kind: csv}
stages:
  - id: a
    op: import
    dataset: none
  - id: a
    op: sql
    query: SELECT 1
  - id: g
    op: frobnicate
  - id: h
    op: sql
    query: SELECT * FROM zz
";
    let (code, err) = validate(yaml, &[]);
    assert_eq!(code, 2);
    for needle in [
        "p.yaml:2:7: seed:",
        "p.yaml:3:7: oops: unknown key",
        "datasets.d.kind: unknown key `kind`",
        "stages.a.dataset: unknown dataset `none`",
        "stages.a.id: duplicate stage id `a`",
        "stages.g.op: unknown op `frobnicate` (known ops: import, sql, verify, model_init, train, train_external, generate, eval, prm_label, prm_score)",
        "stages.h.query: stage `h` reads unknown stage `zz`",
    ] {
        assert!(err.contains(needle), "missing `{needle}` in:\n{err}");
    }
    assert!(err.contains("7 error(s)"), "{err}");
}

#[test]
fn overrides_are_validated_and_named() {
    let (code, err) = validate(GOOD, &["--set", "iterations=many", "--set", "stages.b.colour=red"]);
    assert_eq!(code, 2);
    assert!(err.contains("p.yaml (--set iterations=many): iterations: invalid type"), "{err}");
    assert!(err.contains("p.yaml (--set stages.b.colour=red): stages.b.colour: unknown key `colour`"), "{err}");
    let (code, err) = validate(GOOD, &["--set", "stages.nosuch.x=1"]);
    assert_eq!(code, 2);
    assert!(err.contains("`stages` has no item with id `nosuch`"), "{err}");
}

#[test]
fn yaml_syntax_error_has_a_position() {
    let (code, err) = validate("name: t\nstages: [\n", &[]);
    assert_eq!(code, 2);
    assert!(err.contains("YAML syntax"), "{err}");
    assert!(err.contains("p.yaml:"), "{err}");
}

#[test]
fn every_pipeline_in_the_repository_validates() {
    let mut files = vec![];
    for dir in ["pipelines", "pipelines/ablations"] {
        for e in std::fs::read_dir(repo().join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "yaml") {
                files.push(p);
            }
        }
    }
    assert!(files.len() >= 12, "{files:?}");
    for f in files {
        let (o, _) = ok(bin().arg("validate").arg(&f));
        assert!(o.contains("ok"), "{}: {o}", f.display());
    }
    // an ablation is M-STAR with a few keys changed (and stages removed)
    let (o, _) = ok(bin().arg("validate").arg(repo().join("pipelines/ablations/rest_em.yaml")));
    let (m, _) = ok(bin().arg("validate").arg(repo().join("pipelines/mstar.yaml")));
    assert!(o.contains("pipeline `rest_em`, 36 stage(s)") && m.contains("pipeline `mstar`, 38 stage(s)"), "{o}{m}");
}

#[test]
fn extends_and_every_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("data/d.jsonl"), "{\"a\":1}\n").unwrap();
    std::fs::write(dir.path().join("base.yaml"), format!("{GOOD}iterations: 3\n")).unwrap();
    let check = |name: &str, yaml: &str| {
        let f = dir.path().join(name);
        std::fs::write(&f, yaml).unwrap();
        let out = bin().arg("validate").arg(&f).output().unwrap();
        (out.status.code().unwrap_or(-1), text(&out.stdout) + &text(&out.stderr))
    };
    // a child replaces top-level keys and sets nested ones; a stage set to null is removed
    let (code, o) = check("child.yaml", "extends: base.yaml\nname: child\nset:\n  stages.b.query: SELECT a + 1 AS a FROM raw\n  stages.b.every: 2\n");
    assert_eq!(code, 0, "{o}");
    assert!(o.contains("pipeline `child`, 2 stage(s), 3 iteration(s), 3 stage runs"), "{o}");
    let (code, o) = check("gone.yaml", "extends: child.yaml\nname: gone\nset:\n  stages.b: null\n");
    assert_eq!(code, 0, "{o}");
    assert!(o.contains("pipeline `gone`, 1 stage(s)"), "{o}");
    let (code, o) = check("missing.yaml", "extends: nowhere.yaml\nname: x\n");
    assert_eq!(code, 2);
    assert!(o.contains("extends") && o.contains("nowhere.yaml"), "{o}");
    let (code, o) = check("loop.yaml", "extends: loop.yaml\nname: x\n");
    assert_eq!(code, 2);
    assert!(o.contains("loops"), "{o}");
    let (code, o) = check("bad_set.yaml", "extends: base.yaml\nset:\n  stages.nope.query: SELECT 1\n");
    assert_eq!(code, 2);
    assert!(o.contains("no item with id `nope`"), "{o}");
    let (code, o) = check("every.yaml", "extends: base.yaml\nset:\n  stages.b.every: 0\n  stages.raw.every: 2\n");
    assert_eq!(code, 2);
    assert!(o.contains("every must be at least 1") && o.contains("`every: 2` applies to iteration stages"), "{o}");
}

#[test]
fn unusable_learning_rate_schedules() {
    let train = |schedule: &str| {
        format!("{GOOD}  - {{id: init, op: model_init, corpus: raw}}\n  - id: t\n    op: train\n    data: b\n    base: init\n    schedule: {schedule}\n")
    };
    let (code, err) = validate(&train("{kind: constant, lr: -0.001}"), &[]);
    assert_eq!(code, 2);
    assert!(err.contains("p.yaml:16:36: stages.t.schedule.lr: lr must be a positive finite number, got -0.001"), "{err}");
    let (code, err) = validate(&train("{kind: warmup_cosine, lr: 0.001, min_lr: 0.01, warmup_steps: 50, total_steps: 10}"), &[]);
    assert_eq!(code, 2);
    assert!(err.contains("stages.t.schedule.min_lr: min_lr must be between 0 and lr (0.001), got 0.01"), "{err}");
    assert!(err.contains("stages.t.schedule.warmup_steps: warmup_steps (50) must not exceed total_steps (10)"), "{err}");
    assert!(err.contains("p.yaml:16:"), "{err}");
    let (code, err) = validate(&train("{kind: constant, lr: 1e39}"), &[]);
    assert_eq!(code, 0, "{err}");
}
