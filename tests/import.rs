//! The `import` operator on each format (Parquet, JSON array, JSONL), on a folder, and its
//! errors for missing or malformed datasets.

mod common;
use common::*;
use std::path::Path;

fn pipeline(dir: &Path, dataset: &str, extra: &str) -> std::path::PathBuf {
    let f = dir.join("p.yaml");
    std::fs::write(
        &f,
        format!(
            "name: imp\ndatasets:\n  d: {{path: {dataset}{extra}}}\nstages:\n  - id: raw\n    op: import\n    dataset: d\n  - id: total\n    op: sql\n    scope: setup\n    query: SELECT count(*) AS n, sum(a) AS s FROM raw\n"
        ),
    )
    .unwrap();
    f
}

fn totals(dir: &Path, dataset: &str, extra: &str) -> String {
    let store = dir.join(format!("store-{}", dataset.replace('/', "_")));
    ok(bin().arg("run").arg(pipeline(dir, dataset, extra)).arg("--store").arg(&store));
    sql_csv(store.to_str().unwrap(), "SELECT n, s FROM total")
}

#[test]
fn every_format_and_a_folder() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    std::fs::write(p.join("a.jsonl"), "{\"a\":1,\"b\":\"x\"}\n{\"a\":2,\"b\":\"y\"}\n").unwrap();
    std::fs::write(p.join("a.json"), "[{\"a\":1,\"b\":\"x\"},{\"a\":2},{\"a\":4,\"b\":null}]").unwrap();
    std::fs::create_dir_all(p.join("folder/sub")).unwrap();
    std::fs::write(p.join("folder/1.jsonl"), "{\"a\":10}\n").unwrap();
    std::fs::write(p.join("folder/sub/2.jsonl"), "{\"a\":20}\n{\"a\":30}\n").unwrap();
    std::fs::write(p.join("folder/notes.txt"), "ignored").unwrap();
    let parquet = p.join("a.parquet");
    ok(bin().args(["sql", "--format", "parquet", "--out", parquet.to_str().unwrap(), "SELECT * FROM (VALUES (5), (6), (7)) AS t(a)"]));
    // a file without a known extension needs `format`
    std::fs::copy(p.join("a.jsonl"), p.join("data.txt")).unwrap();

    assert_eq!(totals(p, "a.jsonl", ""), "n,s\n2,3\n");
    assert_eq!(totals(p, "a.json", ""), "n,s\n3,7\n");
    assert_eq!(totals(p, "a.parquet", ""), "n,s\n3,18\n");
    assert_eq!(totals(p, "folder", ""), "n,s\n3,60\n");
    assert_eq!(totals(p, "data.txt", ", format: jsonl"), "n,s\n2,3\n");
    // rows keep file order
    let store = p.join("store-folder");
    assert_eq!(sql_csv(store.to_str().unwrap(), "SELECT a FROM raw"), "a\n10\n20\n30\n");
}

#[test]
fn bad_datasets_say_what_and_where() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let run = |dataset: &str, extra: &str| {
        let (_, _, err) = fails(bin().arg("run").arg(pipeline(p, dataset, extra)).arg("--store").arg(p.join("s")));
        err
    };
    let err = run("missing.jsonl", "");
    assert!(err.contains("dataset `d`") && err.contains("missing.jsonl") && err.contains("no such file"), "{err}");
    // a JSONL file without one valid record (a broken line among good ones is quarantined:
    // see jsonl_broken_lines_are_quarantined_with_their_line_numbers)
    std::fs::write(p.join("bad.jsonl"), "{\"a\":\n\n[1]\n").unwrap();
    let err = run("bad.jsonl", "");
    assert!(err.contains("raw") && err.contains("bad.jsonl") && err.contains("no valid JSON record; line 1: invalid JSON"), "{err}");
    std::fs::write(p.join("obj.json"), "{\"a\":1}").unwrap();
    let err = run("obj.json", "");
    assert!(err.contains("expected a JSON array of objects"), "{err}");
    std::fs::create_dir_all(p.join("empty")).unwrap();
    let err = run("empty", "");
    assert!(err.contains("cannot tell the format") || err.contains("no "), "{err}");
    std::fs::write(p.join("data.bin"), "x").unwrap();
    let err = run("data.bin", "");
    assert!(err.contains("set `format: parquet|json|jsonl`"), "{err}");
}

#[test]
fn jsonl_broken_lines_are_quarantined_with_their_line_numbers() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    // line 3 is broken, line 5 blank, line 6 not an object; the rest imports
    std::fs::write(p.join("a.jsonl"), "{\"a\":1,\"b\":\"x\"}\n{\"a\":2,\"b\":\"y\"}\n{\"a\":3,\"b\":\n{\"a\":4}\n\n[5]\n{\"a\":6}").unwrap();
    assert_eq!(totals(p, "a.jsonl", ""), "n,s\n4,13\n");
    let store = p.join("store-a.jsonl");
    let s = store.to_str().unwrap();
    assert_eq!(sql_csv(s, "SELECT a, b FROM raw"), "a,b\n1,x\n2,y\n4,\n6,\n");
    assert_eq!(
        sql_csv(s, "SELECT source, row, reason, record FROM quarantine ORDER BY row"),
        "source,row,reason,record\n\
         d,a.jsonl:3,line 3: invalid JSON at column 11: EOF while parsing a value,\"{\"\"a\"\":3,\"\"b\"\":\"\n\
         d,a.jsonl:6,line 6: not a JSON object,[5]\n"
    );
}

#[test]
fn jsonl_records_that_do_not_fit_the_schema_are_quarantined_per_file_and_line() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    std::fs::create_dir_all(p.join("folder/sub")).unwrap();
    // the schema comes from the first 1000 records: `a` is an integer (some 70 KB, so lines
    // straddle the chunks the file is read in)
    let first: String = (0..1000).map(|i| format!("{{\"a\":{},\"pad\":\"{}\"}}\n", i % 2, "x".repeat(i % 120))).collect();
    std::fs::write(p.join("folder/1.jsonl"), first).unwrap();
    // (a byte order mark and CRLF line ends are fine)
    std::fs::write(p.join("folder/sub/2.jsonl"), "\u{feff}{\"a\":10}\r\n{\"a\":\"ten\"}\n{\"a\":20}\n{oops}\n").unwrap();
    assert_eq!(totals(p, "folder", ""), "n,s\n1002,530\n");
    let store = p.join("store-folder");
    let q = sql_csv(store.to_str().unwrap(), "SELECT row, reason FROM quarantine ORDER BY row");
    let lines: Vec<&str> = q.lines().collect();
    assert_eq!(lines.len(), 3, "{q}");
    assert!(lines[1].starts_with("sub/2.jsonl:2,\"line 2: does not fit the schema of the first records:"), "{q}");
    assert!(lines[2].starts_with("sub/2.jsonl:4,line 4: invalid JSON at column 2: key must be a string"), "{q}");
}
