//! Golden tests of each real-format importer on tiny fixtures (tests/fixtures, made by
//! make_fixtures.py): the prompts they produce and the rows they quarantine, with reasons.

mod common;
use common::*;

fn plain_sql(q: &str) -> String {
    ok(bin().args(["sql", "--format", "csv", q])).0
}

fn import(format: &str, path: &str) -> String {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.parquet");
    let (stdout, _) = ok(bin().args(["data", "import", "--format", format]).arg(repo().join(path)).arg("--out").arg(&out));
    let prompts = plain_sql(&format!(
        "SELECT prompt_id, question, array_to_string(choices, '|') AS choices, answer, answer_type, precision, source, split, \
         cardinality(images) AS n_images, images[1]['path'] AS image_path, left(encode(sha256(images[1]['bytes']), 'hex'), 12) AS image_sha256 \
         FROM '{}' ORDER BY prompt_id",
        out.display()
    ));
    let quarantine = plain_sql(&format!("SELECT row, reason FROM '{}' ORDER BY row", out.with_extension("quarantine.parquet").display()));
    let counts = stdout.lines().next().unwrap_or("").replace(&d.path().display().to_string(), "OUT");
    format!("{counts}\n-- prompts\n{prompts}-- quarantine\n{quarantine}")
}

#[test]
fn mathvista() {
    golden("import_mathvista.txt", &import("mathvista", "tests/fixtures/mathvista/testmini.json"));
}

#[test]
fn mathv360k() {
    golden("import_mathv360k.txt", &import("mathv360k", "tests/fixtures/mathv360k/train.json"));
}

#[test]
fn hugging_face_datasets_parquet() {
    golden("import_hf.txt", &import("hf", "tests/fixtures/hf/mathvista.parquet"));
}

#[test]
fn verl_parquet() {
    golden("import_verl.txt", &import("verl", "tests/fixtures/verl/train.parquet"));
}

#[test]
fn import_operator_commits_a_queryable_quarantine() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("p.yaml");
    std::fs::write(
        &f,
        format!(
            "name: q\ndatasets:\n  mathvista: {{path: {}, format: mathvista}}\n  verl: {{path: {}, format: verl, split: train}}\nstages:\n  - id: mv\n    op: import\n    dataset: mathvista\n  - id: vl\n    op: import\n    dataset: verl\n",
            repo().join("tests/fixtures/mathvista/testmini.json").display(),
            repo().join("tests/fixtures/verl/train.parquet").display()
        ),
    )
    .unwrap();
    let store = d.path().join("store");
    let (_, err) = ok(bin().arg("run").arg(&f).arg("--store").arg(&store));
    assert!(err.contains("+ quarantine 4 rows"), "{err}");
    let s = store.to_str().unwrap();
    assert_eq!(sql_csv(s, "SELECT source, count(*) AS n FROM quarantine GROUP BY source ORDER BY source"), "source,n\nmathvista,4\nverl,2\n");
    assert_eq!(sql_csv(s, "SELECT count(*) AS n FROM mv"), "n\n4\n");
}

/// A MathVista dataset in `dir`: testmini.json with one free-form problem per image path.
fn mathvista_dataset(dir: &std::path::Path, images: &[&str]) -> std::path::PathBuf {
    let problems: Vec<String> = images
        .iter()
        .enumerate()
        .map(|(i, img)| format!("\"{0}\": {{\"pid\": \"{0}\", \"question\": \"How many?\", \"image\": \"{img}\", \"answer\": \"{0}\"}}", i + 1))
        .collect();
    let f = dir.join("testmini.json");
    std::fs::write(&f, format!("{{{}}}", problems.join(", "))).unwrap();
    f
}

#[cfg(unix)]
#[test]
fn an_image_symlinked_out_of_the_dataset_is_quarantined_not_read() {
    let d = tempfile::tempdir().unwrap();
    let ds = d.path().join("ds");
    std::fs::create_dir_all(ds.join("images")).unwrap();
    std::fs::create_dir_all(d.path().join("outside")).unwrap();
    std::fs::write(ds.join("images/ok.png"), png(1, 1)).unwrap();
    std::fs::write(d.path().join("outside/secret.png"), png(3, 3)).unwrap();
    // a symlink out of the folder, a symlinked folder out of it, and one that stays inside
    std::os::unix::fs::symlink(d.path().join("outside/secret.png"), ds.join("images/link.png")).unwrap();
    std::os::unix::fs::symlink(d.path().join("outside"), ds.join("images/dir")).unwrap();
    std::os::unix::fs::symlink("ok.png", ds.join("images/alias.png")).unwrap();
    let json = mathvista_dataset(&ds, &["images/ok.png", "images/link.png", "images/dir/secret.png", "images/alias.png"]);
    let f = d.path().join("p.yaml");
    std::fs::write(
        &f,
        format!("name: s\ndatasets:\n  mv: {{path: {}, format: mathvista}}\nstages:\n  - id: prompts\n    op: import\n    dataset: mv\n", json.display()),
    )
    .unwrap();
    let store = d.path().join("store");
    ok(bin().arg("run").arg(&f).arg("--store").arg(&store));
    let s = store.to_str().unwrap();
    // the outside image's bytes are nowhere in the table
    assert_eq!(
        sql_csv(s, "SELECT prompt_id, images[1]['path'] AS path, cardinality(images) AS n FROM prompts ORDER BY prompt_id"),
        "prompt_id,path,n\n1,images/ok.png,1\n4,images/alias.png,1\n"
    );
    let inside: String = png(1, 1).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(sql_csv(s, "SELECT DISTINCT encode(images[1]['bytes'], 'hex') AS b FROM prompts"), format!("b\n{inside}\n"));
    let q = sql_csv(s, "SELECT row, reason FROM quarantine ORDER BY row");
    let lines: Vec<&str> = q.lines().collect();
    assert_eq!(lines.len(), 3, "{q}");
    assert!(lines[1].starts_with("2,\"image path `images/link.png` escapes the dataset root (it resolves to `"), "{q}");
    assert!(lines[1].contains("outside/secret.png"), "{q}");
    assert!(lines[2].starts_with("3,\"image path `images/dir/secret.png` escapes the dataset root"), "{q}");
}

#[test]
fn an_image_above_the_pixel_limit_is_quarantined_from_its_header() {
    let d = tempfile::tempdir().unwrap();
    let ds = d.path().join("ds");
    std::fs::create_dir_all(ds.join("images")).unwrap();
    let big = png_claiming(20_000, 20_000);
    assert!(big.len() < 100);
    std::fs::write(ds.join("images/big.png"), &big).unwrap();
    std::fs::write(ds.join("images/small.png"), png(2, 2)).unwrap();
    let json = mathvista_dataset(&ds, &["images/big.png", "images/small.png"]);
    let write = |datasets: &str| {
        let f = d.path().join("p.yaml");
        std::fs::write(&f, format!("name: s\ndatasets:\n{datasets}stages:\n  - id: a\n    op: import\n    dataset: a\n")).unwrap();
        f
    };
    // the default limit (50,000,000 pixels), and a dataset's own
    let f = write(&format!("  a: {{path: {0}, format: mathvista}}\n  b: {{path: {0}, format: mathvista, max_image_pixels: 3}}\n", json.display()));
    let yaml = std::fs::read_to_string(&f).unwrap() + "  - id: b\n    op: import\n    dataset: b\n";
    std::fs::write(&f, yaml).unwrap();
    let store = d.path().join("store");
    ok(bin().arg("run").arg(&f).arg("--store").arg(&store));
    let s = store.to_str().unwrap();
    assert_eq!(sql_csv(s, "SELECT prompt_id FROM a"), "prompt_id\n2\n");
    assert_eq!(sql_csv(s, "SELECT count(*) AS n FROM b"), "n\n0\n");
    assert_eq!(
        sql_csv(s, "SELECT source, row, reason FROM quarantine ORDER BY source, row"),
        "source,row,reason\n\
         a,1,\"image is 20000x20000 = 400000000 pixels, above the limit of 50000000 (max_image_pixels) (`images/big.png`)\"\n\
         b,1,\"image is 20000x20000 = 400000000 pixels, above the limit of 3 (max_image_pixels) (`images/big.png`)\"\n\
         b,2,\"image is 2x2 = 4 pixels, above the limit of 3 (max_image_pixels) (`images/small.png`)\"\n"
    );
    // the key is checked
    let f = write(&format!("  a: {{path: {}, format: mathvista, max_image_pixels: 0}}\n", json.display()));
    let (_, _, err) = fails(bin().arg("run").arg(&f).arg("--store").arg(d.path().join("s2")));
    assert!(err.contains("max_image_pixels") && err.contains("at least 1"), "{err}");
    std::fs::write(d.path().join("d.jsonl"), "{\"a\":1}\n").unwrap();
    let f = write(&format!("  a: {{path: {}, max_image_pixels: 10}}\n", d.path().join("d.jsonl").display()));
    let (_, _, err) = fails(bin().arg("run").arg(&f).arg("--store").arg(d.path().join("s3")));
    assert!(err.contains("max_image_pixels") && err.contains("image formats only"), "{err}");
}

/// `mstar data import --max-image-pixels` applies the same header check as a dataset's
/// `max_image_pixels`: every image of the MathVista fixture is above 1 pixel.
#[test]
fn data_import_takes_a_pixel_limit() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.parquet");
    let fixture = repo().join("tests/fixtures/mathvista/testmini.json");
    ok(bin().args(["data", "import", "--format", "mathvista", "--max-image-pixels", "1"]).arg(&fixture).arg("--out").arg(&out));
    let q = plain_sql(&format!(
        "SELECT count(*) AS n FROM '{}' WHERE reason LIKE '%above the limit of 1 (max_image_pixels)%'",
        out.with_extension("quarantine.parquet").display()
    ));
    let n: usize = q.lines().nth(1).unwrap().parse().unwrap();
    assert!(n >= 1, "{q}");
    let (_, _, err) = fails(bin().args(["data", "import", "--format", "mathvista", "--max-image-pixels", "0"]).arg(&fixture).arg("--out").arg(&out));
    assert!(err.contains("--max-image-pixels must be at least 1"), "{err}");
}
