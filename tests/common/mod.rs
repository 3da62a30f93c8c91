//! Helpers for the integration tests: run the real `mstar` binary on real files.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mstar"));
    c.env_remove("MSTAR_FAULT_PAUSE_MS");
    c
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A PNG of `w`×`h` black pixels.
pub fn png(w: u32, h: u32) -> Vec<u8> {
    let mut out = Vec::new();
    image::DynamicImage::ImageRgb8(image::RgbImage::new(w, h)).write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).unwrap();
    out
}

/// CRC-32 (IEEE, as PNG chunks use), bit by bit.
pub fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
        }
    }
    !c
}

/// A PNG of a few dozen bytes whose header says `w`×`h` (its pixel data is a 1×1 image's): a
/// decompression bomb's header without the bomb.
pub fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut png = png(1, 1);
    // signature (8), IHDR length (4), "IHDR" (4), width (4), height (4), 5 more bytes, CRC (4)
    assert_eq!(&png[12..16], b"IHDR");
    assert_eq!(crc32(&png[12..29]).to_be_bytes(), png[29..33], "crc32 disagrees with the encoder's");
    png[16..20].copy_from_slice(&w.to_be_bytes());
    png[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    png
}

/// A scratch project: a copy of pipelines/ (without runs) and sql/.
pub fn project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&repo().join("pipelines"), &dir.path().join("pipelines"));
    copy_dir(&repo().join("sql"), &dir.path().join("sql"));
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_name() == "runs" {
            continue;
        }
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

pub fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

/// Runs and asserts success; returns (stdout, stderr).
pub fn ok(cmd: &mut Command) -> (String, String) {
    let out: Output = cmd.output().unwrap();
    let (so, se) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "command failed: {cmd:?}\nstdout:\n{so}\nstderr:\n{se}");
    (so, se)
}

/// Runs and asserts failure; returns (code, stdout, stderr).
pub fn fails(cmd: &mut Command) -> (i32, String, String) {
    let out: Output = cmd.output().unwrap();
    let (so, se) = (text(&out.stdout), text(&out.stderr));
    assert!(!out.status.success(), "command should have failed: {cmd:?}\nstdout:\n{so}\nstderr:\n{se}");
    (out.status.code().unwrap_or(-1), so, se)
}

pub fn run_demo(project: &Path, store: &str, extra: &[&str]) -> (String, String) {
    ok(bin().arg("run").arg(project.join("pipelines/recorded.yaml")).args(["--store", store]).args(extra))
}

pub fn sql_csv(store: &str, q: &str) -> String {
    ok(bin().args(["sql", "--store", store, "--format", "csv", q])).0
}

/// Stage runs the runner reports as computed / skipped, as "ITER/STAGE" (ITER 0 = setup).
pub fn outcomes(stderr: &str, what: &str) -> Vec<String> {
    let mut v = Vec::new();
    for line in stderr.lines() {
        let mut words: Vec<&str> = line.split_whitespace().collect();
        // the progress prefix, `stage 3/14`
        if words.len() > 2 && words[0] == "stage" && words[1].contains('/') {
            words.drain(..2);
        }
        let (it, rest) = match words.as_slice() {
            ["setup", rest @ ..] => ("0".to_string(), rest),
            ["iter", n, rest @ ..] => (n.to_string(), rest),
            _ => continue,
        };
        if rest.len() >= 2 && rest[1] == what {
            v.push(format!("{it}/{}", rest[0]));
        }
    }
    v
}

/// Compares with a golden file; UPDATE_GOLDEN=1 rewrites it instead.
pub fn golden(name: &str, actual: &str) {
    let path = repo().join("tests/golden").join(name);
    if std::env::var("UPDATE_GOLDEN").is_ok() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(actual, expected, "differs from golden file {}", path.display());
}

/// Every table of a run as CSV, rows in a canonical order.
pub fn dump_tables(store: &str, tables: &[&str]) -> String {
    let mut out = String::new();
    for t in tables {
        let csv = sql_csv(store, &format!("SELECT * FROM {t}"));
        let mut lines: Vec<&str> = csv.lines().collect();
        let header = lines.remove(0);
        lines.sort();
        out.push_str(&format!("== {t}\n{header}\n{}\n", lines.join("\n")));
    }
    out
}

pub const DEMO_TABLES: &[&str] = &["prompts", "rollout_pool", "batch", "rollouts", "selected", "metrics"];

/// pipelines/prm.yaml copied into `dir` with the repository's sql/ beside it (generate, prm_label,
/// the PRM trained on the labels, verify and prm_score); run it with [`PRM_MICRO`].
pub fn prm_pipeline(dir: &Path) -> PathBuf {
    let f = dir.join("p.yaml");
    std::fs::write(&f, std::fs::read_to_string(repo().join("pipelines/prm.yaml")).unwrap()).unwrap();
    let sql = dir.join("sql");
    std::fs::create_dir_all(&sql).unwrap();
    for e in std::fs::read_dir(repo().join("sql")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), sql.join(e.file_name())).unwrap();
    }
    f
}

/// `--set` overrides that shrink pipelines/prm.yaml to seconds: fewer prompts, samples,
/// completions and steps.
pub const PRM_MICRO: &[&str] = &[
    "datasets.train.synth={split: train, count: 24, cot: 16, seed: 5}",
    "datasets.test.synth={split: test, count: 6, seed: 5}",
    "stages.init.vocab_size=320",
    "stages.warmup.epochs=2",
    "stages.label_prompts.query=SELECT * FROM train_prompts WHERE gold_cot IS NULL ORDER BY prompt_id",
    "stages.label_samples.samples=2",
    "stages.label_samples.sampling={temperature: 1.0, max_new_tokens: 24}",
    "stages.step_labels.completions=3",
    "stages.step_labels.sampling={temperature: 1.0, max_new_tokens: 24}",
    "stages.prm.epochs=2",
    "stages.rollouts.samples=4",
    "stages.rollouts.sampling={temperature: 1.0, max_new_tokens: 40}",
];
