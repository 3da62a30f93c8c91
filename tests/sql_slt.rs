//! SQL golden tests in sqllogictest's format: each `tests/slt/*.slt` file runs, record by record,
//! in a fresh mstar SQL session (`mstar::sql::new_session`, mstar's functions registered).
//!
//! Records are separated by blank lines; a line starting with `#` is a comment.
//!
//! ```text
//! statement ok              the SQL on the following lines runs without error
//! statement error TEXT      … fails, with TEXT somewhere in the error message
//! query TYPES [rowsort]     … returns the rows written after a `----` line, one a line, values
//!                           separated by one space; TYPES has a letter a column: I integer,
//!                           R float or decimal, T text, B boolean, ? anything; `rowsort` sorts
//!                           the rows got (write the expected ones sorted)
//! ```
//!
//! A SQL line `include sql/NAME.sql with k=v k2=v2` stands for that file's text with its `${k}`
//! parameters substituted (values without spaces), so the shipped queries themselves are tested.
//! Values print as NULL, `(empty)` for an empty string, text with `\n` for a newline, floats
//! rounded to 12 significant digits (summation order may move the last ones), lists and
//! structs as Arrow prints them.

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::DataType;
use arrow::util::display::array_value_to_string;
use mstar::sql::params::{substitute, ParamSet};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

enum Kind {
    Ok,
    Error(String),
    Query { types: Vec<char>, rowsort: bool, expected: Vec<(usize, String)> },
}

struct Record {
    line: usize,
    sql: String,
    /// The SQL as written (includes not expanded), on one line, for messages.
    source: String,
    kind: Kind,
}

/// Parses a file; `name` is how failures name it.
fn parse(name: &str, text: &str) -> Result<Vec<Record>, String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let head = lines[i].trim_end();
        if head.trim().is_empty() || head.starts_with('#') {
            i += 1;
            continue;
        }
        let line = i + 1;
        let words: Vec<&str> = head.split_whitespace().collect();
        let mut kind = match words.as_slice() {
            ["statement", "ok"] => Kind::Ok,
            ["statement", "error", ..] => Kind::Error(head.split_once("error").map_or("", |(_, m)| m).trim().to_string()),
            ["query", types, rest @ ..] if rest.is_empty() || rest == ["rowsort"] => {
                Kind::Query { types: types.chars().collect(), rowsort: !rest.is_empty(), expected: Vec::new() }
            }
            _ => return Err(format!("{name}:{line}: expected `statement ok`, `statement error TEXT` or `query TYPES [rowsort]`, got `{head}`")),
        };
        i += 1;
        let (mut sql, mut source) = (Vec::new(), Vec::new());
        while i < lines.len() && !lines[i].trim().is_empty() && lines[i].trim_end() != "----" {
            if !lines[i].starts_with('#') {
                sql.push(include(name, i + 1, lines[i])?);
                source.push(lines[i].trim());
            }
            i += 1;
        }
        if sql.is_empty() {
            return Err(format!("{name}:{line}: a record without SQL"));
        }
        let divider = i < lines.len() && lines[i].trim_end() == "----";
        match &mut kind {
            Kind::Query { expected, .. } => {
                if !divider {
                    return Err(format!("{name}:{line}: a query without `----` and its expected rows"));
                }
                i += 1;
                while i < lines.len() && !lines[i].trim().is_empty() {
                    expected.push((i + 1, lines[i].trim_end().to_string()));
                    i += 1;
                }
            }
            _ if divider => return Err(format!("{name}:{}: `----` after a statement (results go with `query`)", i + 1)),
            _ => {}
        }
        let mut source = source.join(" ");
        if source.chars().count() > 160 {
            source = source.chars().take(160).collect::<String>() + " …";
        }
        out.push(Record { line, sql: sql.join("\n"), source, kind });
    }
    Ok(out)
}

/// A SQL line, or the text of the file an `include` line names, its parameters substituted.
fn include(name: &str, line: usize, text: &str) -> Result<String, String> {
    let Some(rest) = text.trim().strip_prefix("include ") else {
        return Ok(text.to_string());
    };
    let mut words = rest.split_whitespace();
    let file = words.next().unwrap_or_default();
    let mut params = ParamSet::new();
    match words.next() {
        None => {}
        Some("with") => {
            for kv in words {
                let (k, v) = kv.split_once('=').ok_or_else(|| format!("{name}:{line}: `{kv}`: parameters are written k=v"))?;
                params.insert(k, v.to_string());
            }
        }
        Some(w) => return Err(format!("{name}:{line}: expected `include FILE [with k=v …]`, got `{w}` after the file")),
    }
    let body = std::fs::read_to_string(repo().join(file)).map_err(|e| format!("{name}:{line}: include {file}: {e}"))?;
    let sql = substitute(&body, &params).map_err(|e| format!("{name}:{line}: include {file}: {e}"))?;
    Ok(format!("{}\n", sql.trim_end()))
}

fn type_fits(letter: char, t: &DataType) -> bool {
    match letter {
        'I' => t.is_integer(),
        'R' => t.is_floating() || matches!(t, DataType::Decimal128(..) | DataType::Decimal256(..)),
        'T' => matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View),
        'B' => t == &DataType::Boolean,
        '?' => true,
        _ => false,
    }
}

/// A float at 12 significant digits, printed the shortest way that reads back the same.
fn round12(x: f64) -> String {
    if !x.is_finite() {
        return format!("{x}");
    }
    let r: f64 = format!("{x:.11e}").parse().expect("a float");
    format!("{r:?}")
}

fn value(col: &ArrayRef, row: usize) -> String {
    if col.is_null(row) {
        return "NULL".into();
    }
    let s = match col.data_type() {
        DataType::Float64 => round12(col.as_primitive::<arrow::datatypes::Float64Type>().value(row)),
        DataType::Float32 => round12(f64::from(col.as_primitive::<arrow::datatypes::Float32Type>().value(row))),
        _ => array_value_to_string(col, row).expect("printable"),
    };
    if s.is_empty() {
        "(empty)".into()
    } else {
        s.replace('\n', "\\n")
    }
}

async fn run_sql(ctx: &datafusion::prelude::SessionContext, sql: &str) -> Result<Vec<arrow::record_batch::RecordBatch>, String> {
    match ctx.sql(sql).await {
        Ok(df) => df.collect().await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// Runs a file's records in a fresh session; the failures, each with its file:line.
async fn run(name: &str, text: &str) -> Vec<String> {
    let records = match parse(name, text) {
        Ok(r) => r,
        Err(e) => return vec![e],
    };
    let ctx = mstar::sql::new_session();
    let mut failures = Vec::new();
    for r in records {
        let at = format!("{name}:{}", r.line);
        let shown = &r.source;
        let result = run_sql(&ctx, &r.sql).await;
        match (&r.kind, result) {
            (Kind::Ok, Ok(_)) => {}
            (Kind::Ok, Err(e)) => failures.push(format!("{at}: statement failed: {e}\n  SQL: {shown}")),
            (Kind::Error(want), Ok(_)) => failures.push(format!("{at}: expected an error containing `{want}`, the statement succeeded\n  SQL: {shown}")),
            (Kind::Error(want), Err(e)) if !e.contains(want.as_str()) => {
                failures.push(format!("{at}: expected an error containing `{want}`, got: {e}\n  SQL: {shown}"))
            }
            (Kind::Error(_), Err(_)) => {}
            (Kind::Query { .. }, Err(e)) => failures.push(format!("{at}: query failed: {e}\n  SQL: {shown}")),
            (Kind::Query { types, rowsort, expected }, Ok(batches)) => {
                let schema = batches.first().map(|b| b.schema());
                if let Some(s) = &schema {
                    let got: Vec<String> = s.fields().iter().map(|f| f.data_type().to_string()).collect();
                    let fits = s.fields().len() == types.len() && s.fields().iter().zip(types).all(|(f, t)| type_fits(*t, f.data_type()));
                    if !fits {
                        failures.push(format!("{at}: query {} does not fit the columns got ({})", types.iter().collect::<String>(), got.join(", ")));
                        continue;
                    }
                }
                let mut rows: Vec<String> = Vec::new();
                for b in &batches {
                    for i in 0..b.num_rows() {
                        rows.push(b.columns().iter().map(|c| value(c, i)).collect::<Vec<_>>().join(" "));
                    }
                }
                if *rowsort {
                    rows.sort();
                }
                let want: Vec<&str> = expected.iter().map(|(_, s)| s.as_str()).collect();
                if rows != want {
                    let bad = (0..want.len().max(rows.len())).find(|&i| want.get(i).copied() != rows.get(i).map(String::as_str)).unwrap_or(0);
                    let bad_at = expected.get(bad).map_or(at.clone(), |(l, _)| format!("{name}:{l}"));
                    let mut msg = format!("{bad_at}: query result differs (query at {at}; row {} first)\n  SQL: {shown}\n", bad + 1);
                    for i in 0..want.len().max(rows.len()) {
                        match (want.get(i), rows.get(i)) {
                            (Some(w), Some(g)) if *w == g => msg += &format!("    {w}\n"),
                            (w, g) => {
                                if let Some(w) = w {
                                    msg += &format!("  - {w}\n");
                                }
                                if let Some(g) = g {
                                    msg += &format!("  + {g}\n");
                                }
                            }
                        }
                    }
                    msg += "  (- expected, + got)";
                    failures.push(msg);
                }
            }
        }
    }
    failures
}

fn slt_files() -> Vec<PathBuf> {
    let dir = repo().join("tests/slt");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "slt")).collect();
    files.sort();
    files
}

fn rel(p: &Path) -> String {
    p.strip_prefix(repo()).unwrap_or(p).display().to_string()
}

#[tokio::test]
async fn slt_files_pass() {
    let files = slt_files();
    assert!(files.len() >= 5, "{files:?}");
    let mut failures = Vec::new();
    for f in &files {
        failures.extend(run(&rel(f), &std::fs::read_to_string(f).unwrap()).await);
    }
    assert!(failures.is_empty(), "{} failure(s):\n\n{}", failures.len(), failures.join("\n\n"));
}

/// The runner itself: a wrong row is reported at its line with the expected and the got rows,
/// and so are a wrong error, a failing statement and a type letter that does not fit.
#[tokio::test]
async fn failures_name_the_line_and_show_expected_and_got() {
    let text = "\
# a comment
statement ok
CREATE TABLE t (a INT, b VARCHAR, c DOUBLE) AS VALUES (1, 'x', 0.1), (2, '', NULL), (3, 'y', 0.30000000000000004)

query ITR rowsort
SELECT * FROM t
----
1 x 0.1
2 (empty) NULL
3 y 0.3

query ITR
SELECT * FROM t ORDER BY a
----
1 x 0.1
2 (empty) 7.0
3 y 0.3

statement error not found
SELECT * FROM nowhere

statement error some other message
SELECT * FROM nowhere

statement ok
SELECT * FROM nowhere

query II
SELECT a, b FROM t
----
1 x

query TT
SELECT b, upper(b) AS u FROM t ORDER BY a
----
";
    let f = run("inline.slt", text).await;
    assert_eq!(f.len(), 5, "{f:#?}");
    assert!(f[0].starts_with("inline.slt:16: query result differs (query at inline.slt:12; row 2 first)"), "{}", f[0]);
    assert!(f[0].contains("\n  - 2 (empty) 7.0\n  + 2 (empty) NULL\n") && f[0].contains("\n    1 x 0.1\n"), "{}", f[0]);
    assert!(f[1].starts_with("inline.slt:22: expected an error containing `some other message`, got: "), "{}", f[1]);
    assert!(f[2].starts_with("inline.slt:25: statement failed: "), "{}", f[2]);
    assert!(f[3].starts_with("inline.slt:28: query II does not fit"), "{}", f[3]);
    assert!(f[4].starts_with("inline.slt:33: query result differs (query at inline.slt:33; row 1 first)"), "{}", f[4]);
    assert!(f[4].ends_with("  + x X\n  + (empty) (empty)\n  + y Y\n  (- expected, + got)"), "{}", f[4]);
    // a record the runner cannot read stops the file at its line
    let f = run("bad.slt", "statement okay\nSELECT 1\n").await;
    assert_eq!(f, vec!["bad.slt:1: expected `statement ok`, `statement error TEXT` or `query TYPES [rowsort]`, got `statement okay`".to_string()]);
}
