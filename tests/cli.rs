//! End-to-end tests of the `mstar` binary: runs on a folder and memory://, golden SQL results,
//! resume after SIGKILL, recomputation after an edit, --from, the lock, read-only SQL.

mod common;
use common::*;
use std::process::Stdio;
use std::time::{Duration, Instant};

const SUMMARY_SQL: &str = "SELECT iteration, CAST(max(CASE WHEN name = 'selected_rows' THEN value END) AS BIGINT) AS selected, \
    round(max(CASE WHEN name = 'pass@k' THEN value END), 3) AS pass_at_k, \
    round(max(CASE WHEN name = 'reward_pass@2' THEN value END), 3) AS reward_pass_at_2, \
    round(max(CASE WHEN name = 'sample_accuracy' THEN value END), 3) AS sample_accuracy \
    FROM metrics GROUP BY iteration ORDER BY iteration";

#[test]
fn demo_on_a_folder_matches_golden_and_second_run_skips_everything() {
    let p = project();
    let store = p.path().join("store");
    let store = store.to_str().unwrap();
    let (stdout, stderr) = run_demo(p.path(), store, &[]);
    assert!(stdout.contains("reward_pass_at_2"), "summary printed: {stdout}");
    assert_eq!(outcomes(&stderr, "computed").len(), 2 + 3 * 4, "{stderr}");

    golden("demo_summary.csv", &sql_csv(store, SUMMARY_SQL));
    golden("demo_selected.csv", &sql_csv(store, "SELECT iteration, prompt_id, sample_idx, rank FROM selected ORDER BY iteration, prompt_id, rank"));
    // JSON output of the same query
    let json =
        ok(bin().args(["sql", "--store", store, "--format", "json", "SELECT iteration, count(*) AS n FROM selected GROUP BY iteration ORDER BY iteration"])).0;
    assert_eq!(json.trim(), r#"[{"iteration":1,"n":61},{"iteration":2,"n":73},{"iteration":3,"n":79}]"#);

    let (_, stderr) = run_demo(p.path(), store, &[]);
    assert!(outcomes(&stderr, "computed").is_empty(), "{stderr}");
    assert_eq!(outcomes(&stderr, "skipped").len(), 14);

    let (status, _) = ok(bin().args(["status", store]));
    assert!(status.contains("not locked"), "{status}");
    assert_eq!(status.matches(" done ").count(), 14, "{status}");
}

#[test]
fn demo_on_memory_store() {
    let p = project();
    let (stdout, _) = run_demo(p.path(), "memory://demo/run", &["--format", "csv"]);
    let expected = std::fs::read_to_string(repo().join("tests/golden/demo_summary.csv")).unwrap();
    assert_eq!(stdout, expected);
}

#[test]
fn sql_output_to_parquet_file_and_stdin_statements() {
    let p = project();
    let store = p.path().join("store");
    let store = store.to_str().unwrap();
    run_demo(p.path(), store, &[]);
    let out = p.path().join("sel.parquet");
    ok(bin().args(["sql", "--store", store, "--format", "parquet", "--out", out.to_str().unwrap(), "SELECT * FROM selected"]));
    let q = format!("SELECT count(*) AS n FROM '{}'", out.display());
    assert_eq!(ok(bin().args(["sql", "--format", "csv", &q])).0, "n\n213\n");

    let mut child = bin().args(["sql", "--store", store, "--format", "csv"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"SELECT count(*) AS a\n FROM prompts;\nSELECT 2 AS b;\n").unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success());
    assert_eq!(text(&o.stdout), "a\n240\nb\n2\n");

    // a query file with parameters, as the pipelines' sql/*.sql; a query may start with a comment
    let file = p.path().join("per_iteration.sql");
    std::fs::write(&file, "-- selected rows of one iteration\nSELECT count(*) AS n FROM selected WHERE iteration = ${iteration}\n").unwrap();
    let file = file.to_str().unwrap();
    assert_eq!(ok(bin().args(["sql", "--store", store, "--format", "csv", "--file", file, "--param", "iteration=1"])).0, "n\n61\n");
    let (_, _, err) = fails(bin().args(["sql", "--store", store, "--file", file]));
    assert!(err.contains("per_iteration.sql") && err.contains("${iteration}") && err.contains("--param"), "{err}");
    assert_eq!(ok(bin().args(["sql", "--store", store, "--format", "csv", "-- a comment\nSELECT 3 AS c"])).0, "c\n3\n");
}

#[test]
fn sql_is_read_only() {
    let p = project();
    let store = p.path().join("store");
    let store = store.to_str().unwrap();
    run_demo(p.path(), store, &[]);
    let target = p.path().join("store/tables/selected/copy.csv");
    for q in [
        format!("COPY (SELECT 1) TO '{}'", target.display()),
        "INSERT INTO selected SELECT * FROM selected".to_string(),
        "CREATE TABLE t AS SELECT 1".to_string(),
        "DROP TABLE selected".to_string(),
        format!("CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '{}'", target.display()),
        "SET datafusion.execution.batch_size = 1".to_string(),
    ] {
        let (_, _, err) = fails(bin().args(["sql", "--store", store, &q]));
        assert!(err.contains("not supported") || err.contains("not allowed") || err.contains("read-only") || err.contains("Unsupported"), "{q}: {err}");
    }
    assert!(!target.exists());
    assert_eq!(sql_csv(store, "SELECT count(*) AS n FROM selected"), "n\n213\n");
}

#[test]
fn editing_one_stages_sql_recomputes_exactly_it_and_its_dependents() {
    let p = project();
    let store = p.path().join("store");
    let store = store.to_str().unwrap();
    run_demo(p.path(), store, &[]);
    let f = p.path().join("sql/select_topk.sql");
    let sql = std::fs::read_to_string(&f).unwrap().replace("WHERE rank <= ${k}", "WHERE rank <= ${k} - 1");
    std::fs::write(&f, sql).unwrap();
    let (_, stderr) = run_demo(p.path(), store, &[]);
    let mut computed = outcomes(&stderr, "computed");
    computed.sort();
    assert_eq!(computed, vec!["1/metrics", "1/selected", "2/metrics", "2/selected", "3/metrics", "3/selected"], "{stderr}");
    assert_eq!(sql_csv(store, "SELECT max(rank) AS r FROM selected"), "r\n1\n");
}

#[test]
fn from_forces_a_stage_and_what_depends_on_it() {
    let p = project();
    let store = p.path().join("store");
    let store = store.to_str().unwrap();
    run_demo(p.path(), store, &[]);
    let (_, stderr) = run_demo(p.path(), store, &["--from", "2/selected"]);
    let mut computed = outcomes(&stderr, "computed");
    computed.sort();
    // metrics reads `selected` of every iteration so far; selected@3 does not read selected@2
    assert_eq!(computed, vec!["2/metrics", "2/selected", "3/metrics"], "{stderr}");
    let (_, _, err) = fails(bin().arg("run").arg(p.path().join("pipelines/recorded.yaml")).args(["--store", store, "--from", "9/selected"]));
    assert!(err.contains("no stage `selected` at iteration 9"), "{err}");
}

#[test]
fn set_overrides_apply_and_are_frozen_into_the_store() {
    let p = project();
    let store = p.path().join("store");
    let store_s = store.to_str().unwrap();
    run_demo(p.path(), store_s, &["--set", "iterations=2", "--set", "stages.selected.params.k=1"]);
    assert_eq!(sql_csv(store_s, "SELECT max(iteration) AS i, max(rank) AS r FROM selected"), "i,r\n2,1\n");
    let frozen = std::fs::read_to_string(store.join("pipeline.yaml")).unwrap();
    assert!(frozen.contains("iterations: 2"), "{frozen}");
    assert!(frozen.contains("k: 1"), "{frozen}");
    assert!(frozen.contains(&format!("store: {store_s}")), "{frozen}");
}

#[test]
fn a_different_pipeline_on_the_same_store_is_refused_unless_asked() {
    let p = project();
    let store = p.path().join("store");
    let store = store.to_str().unwrap();
    run_demo(p.path(), store, &[]);
    let (_, _, err) = fails(bin().arg("run").arg(p.path().join("pipelines/recorded.yaml")).args(["--store", store, "--set", "name=other"]));
    assert!(err.contains("holds a run of pipeline `recorded`, not `other`") && err.contains("--allow-other-pipeline"), "{err}");
    run_demo(p.path(), store, &["--set", "name=other", "--allow-other-pipeline"]);
}

/// Waits until `cond` holds, polling; panics after `secs`.
fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < Duration::from_secs(secs), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn part_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".parquet")).count()).unwrap_or(0)
}

#[test]
fn sigkill_mid_stage_resumes_to_identical_tables_and_partial_files_stay_invisible() {
    let p = project();
    let store = p.path().join("store");
    let store_s = store.to_str().unwrap().to_string();
    // Slow stage: `rollouts` writes 40-row files and pauses after each.
    let mut child = bin()
        .arg("run")
        .arg(p.path().join("pipelines/recorded.yaml"))
        .args(["--store", &store_s, "--set", "rows_per_file=40"])
        .env("MSTAR_FAULT_PAUSE_MS", "rollouts:250")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let it2 = store.join("tables/rollouts/iteration=2");
    wait_for(60, "iteration 2 of rollouts to be half written", || part_files(&it2) >= 2);
    // a second run is refused while the first holds the lock
    let (_, _, err) = fails(bin().arg("run").arg(p.path().join("pipelines/recorded.yaml")).args(["--store", &store_s]));
    assert!(err.contains(&format!("locked by another run: pid {}", child.id())) && err.contains("mstar unlock"), "{err}");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(store.join("_manifests/iteration=1/rollouts.json").exists());
    assert!(!store.join("_manifests/iteration=2/rollouts.json").exists());
    assert!(part_files(&it2) >= 2);

    // The partial stage is invisible to queries; status calls it partial.
    assert_eq!(sql_csv(&store_s, "SELECT count(*) AS n FROM rollouts WHERE iteration = 2"), "n\n0\n");
    let (status, _) = ok(bin().args(["status", &store_s]));
    assert!(status.contains("locked by pid"), "{status}");
    let line = status.lines().find(|l| l.contains("| 2 ") && l.contains("rollouts")).unwrap();
    assert!(line.contains("partial"), "{status}");

    // Resume: the dead holder's lock is broken, iteration 1 is kept, the rest computed.
    let (_, stderr) = run_demo(p.path(), &store_s, &["--set", "rows_per_file=40"]);
    assert!(stderr.contains("removed a stale lock"), "{stderr}");
    let skipped = outcomes(&stderr, "skipped");
    for s in ["0/prompts", "0/rollout_pool", "1/batch", "1/rollouts", "1/selected", "1/metrics", "2/batch"] {
        assert!(skipped.contains(&s.to_string()), "{s} not skipped: {stderr}");
    }
    assert!(outcomes(&stderr, "computed").contains(&"2/rollouts".to_string()));
    // no leftovers: the folder holds exactly the committed files
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(store.join("_manifests/iteration=2/rollouts.json")).unwrap()).unwrap();
    assert_eq!(part_files(&it2), m["files"].as_array().unwrap().len());

    // Same tables as an uninterrupted run.
    let other = p.path().join("uninterrupted");
    run_demo(p.path(), other.to_str().unwrap(), &["--set", "rows_per_file=40"]);
    assert_eq!(dump_tables(&store_s, DEMO_TABLES), dump_tables(other.to_str().unwrap(), DEMO_TABLES));
}

#[test]
fn unlock_breaks_a_lock() {
    let p = project();
    let store = p.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    std::fs::write(store.join("_lock"), r#"{"pid":1,"host":"elsewhere","started_at":"2026-01-01T00:00:00Z","command":"mstar run x"}"#).unwrap();
    let store_s = store.to_str().unwrap();
    let (_, _, err) = fails(bin().arg("run").arg(p.path().join("pipelines/recorded.yaml")).args(["--store", store_s]));
    assert!(err.contains("pid 1 on host elsewhere"), "{err}");
    let (o, _) = ok(bin().args(["unlock", store_s]));
    assert!(o.contains("removed the lock of pid 1 on elsewhere"), "{o}");
    run_demo(p.path(), store_s, &[]);
    assert!(!store.join("_lock").exists());
}

#[test]
fn unlock_refuses_a_live_holder_on_this_host_unless_forced() {
    let p = project();
    let store = p.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    // a live process of this host holds the lock
    let mut holder = std::process::Command::new("sleep").arg("60").spawn().unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string();
    let lock = format!(r#"{{"pid":{},"host":"{host}","started_at":"2026-01-01T00:00:00Z","command":"mstar run x"}}"#, holder.id());
    std::fs::write(store.join("_lock"), &lock).unwrap();
    let store_s = store.to_str().unwrap();
    let (_, _, err) = fails(bin().args(["unlock", store_s]));
    assert!(err.contains(&format!("pid {} on this host, which is alive", holder.id())) && err.contains("--force"), "{err}");
    assert!(store.join("_lock").exists());
    let (o, _) = ok(bin().args(["unlock", "--force", store_s]));
    assert!(o.contains(&format!("removed the lock of pid {}", holder.id())), "{o}");
    assert!(!store.join("_lock").exists());
    holder.kill().unwrap();
    holder.wait().unwrap();
}

#[test]
fn doctor_names_the_device_and_its_smoke_test_passes() {
    let (out, _) = ok(bin().arg("doctor").env("MSTAR_DEVICE", "cpu"));
    assert!(out.contains("device") && out.contains("cpu (MSTAR_DEVICE=cpu)"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("smoke test") && l.contains("ok")), "{out}");
    // a value it does not know is an error, not silently the default
    let o = bin().arg("doctor").env("MSTAR_DTYPE", "fp16").output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("MSTAR_DTYPE=fp16: give `bf16` or `f32`"), "{err}");
}

/// A relative `--store` means the same folder to `run`, `status` and `sql`: relative to the
/// working directory, wherever the pipeline file is.
#[test]
fn a_relative_store_is_relative_to_the_working_directory_everywhere() {
    let p = project();
    let cwd = p.path().join("elsewhere");
    std::fs::create_dir_all(&cwd).unwrap();
    let pipeline = p.path().join("pipelines/recorded.yaml");
    ok(bin().current_dir(&cwd).arg("run").arg(&pipeline).args(["--store", "rel/store"]));
    assert!(cwd.join("rel/store/_manifests").is_dir(), "the store is not under the working directory");
    assert!(!p.path().join("pipelines/rel").exists(), "the store went beside the pipeline file");
    let (status, _) = ok(bin().current_dir(&cwd).args(["status", "rel/store"]));
    assert!(status.contains("pipeline recorded"), "{status}");
    let (out, _) = ok(bin().current_dir(&cwd).args(["sql", "--store", "rel/store", "--format", "csv", "SELECT count(*) > 0 AS any FROM rollouts"]));
    assert_eq!(out, "any\ntrue\n");
}

/// `mstar sql --timeout` stops a query that would run for hours, and `--memory-mb` bounds what
/// a query may hold, each with an error that says which limit.
#[test]
fn sql_has_a_time_and_a_memory_limit() {
    let started = std::time::Instant::now();
    let (_, _, err) = fails(bin().args(["sql", "--timeout", "1", "SELECT sum(a.value * b.value) FROM range(1000000000) a CROSS JOIN range(1000000000) b"]));
    assert!(err.contains("longer than --timeout 1 s"), "{err}");
    assert!(started.elapsed().as_secs() < 30, "the timeout took {:?}", started.elapsed());
    let (_, _, err) = fails(bin().args(["sql", "--timeout", "-3", "SELECT 1"]));
    assert!(err.contains("--timeout -3"), "{err}");
    // a sort that cannot spill within 1 MB of memory
    let (_, _, err) = fails(bin().args(["sql", "--memory-mb", "1", "SELECT array_agg(value ORDER BY value) FROM range(3000000)"]));
    assert!(err.contains("more memory than its limit (1 MB"), "{err}");
    let (out, _) = ok(bin().args(["sql", "--timeout", "30", "--memory-mb", "64", "--format", "csv", "SELECT count(*) AS n FROM range(1000)"]));
    assert_eq!(out, "n\n1000\n");
}

/// Files no manifest references — a dead attempt's part file, a killed write's staging file
/// (`…#1`), an abandoned checkpoint folder — are reported by `status` and removed by the next
/// run, which says how many bytes it freed; committed tables are untouched.
#[test]
fn orphaned_files_are_reported_and_removed_by_the_next_run() {
    let p = project();
    let store = p.path().join("store");
    let store_s = store.to_str().unwrap().to_string();
    run_demo(p.path(), &store_s, &[]);
    let before = dump_tables(&store_s, DEMO_TABLES);
    let (status, _) = ok(bin().args(["status", &store_s]));
    assert!(status.contains("no orphaned files"), "{status}");
    let it1 = store.join("tables/rollouts/iteration=1");
    std::fs::write(it1.join("part-deadbeef-0.parquet"), vec![7u8; 1000]).unwrap();
    std::fs::write(it1.join("part-deadbeef-1.parquet#1"), vec![7u8; 500]).unwrap();
    std::fs::create_dir_all(store.join("checkpoints/sft/iteration=1/deadbeef")).unwrap();
    std::fs::write(store.join("checkpoints/sft/iteration=1/deadbeef/model.safetensors#12"), vec![0u8; 24]).unwrap();
    let (status, _) = ok(bin().args(["status", &store_s]));
    assert!(status.contains("orphaned: 3 files, 1.5 KiB"), "{status}");
    // queries never see them
    assert_eq!(dump_tables(&store_s, DEMO_TABLES), before);
    let (_, err) = run_demo(p.path(), &store_s, &[]);
    assert!(err.contains("removed 3 orphaned files (1.5 KiB)"), "{err}");
    assert!(!it1.join("part-deadbeef-0.parquet").exists() && !it1.join("part-deadbeef-1.parquet#1").exists());
    assert!(!store.join("checkpoints/sft/iteration=1/deadbeef/model.safetensors#12").exists());
    assert_eq!(dump_tables(&store_s, DEMO_TABLES), before);
    let (status, _) = ok(bin().args(["status", &store_s]));
    assert!(status.contains("no orphaned files"), "{status}");
}

/// `mstar run` numbers its stage runs (`stage i/N`), gives an ETA after each computed one, and
/// ends with the total time and how many were computed and how many reused.
#[test]
fn run_prints_progress_an_eta_and_totals() {
    let p = project();
    let store = p.path().join("store");
    let store = store.to_str().unwrap();
    let (_, err) = run_demo(p.path(), store, &[]);
    assert!(err.contains("14 stage runs planned, 14 to compute"), "{err}");
    for i in 1..=14 {
        let line = err.lines().find(|l| l.trim_start().starts_with(&format!("stage {i:>2}/14 "))).unwrap_or_else(|| panic!("no stage {i}/14: {err}"));
        // the line keeps its stage, outcome, rows, bytes and seconds
        assert!(line.contains("computed") && line.contains(" rows ") && line.contains('s'), "{line}");
        assert_eq!(line.contains("ETA "), i < 14, "{line}");
    }
    assert!(err.contains("ETA ") && err.contains("(13 to compute)"), "{err}");
    let last = err.lines().last().unwrap();
    assert!(last.starts_with("mstar: done in ") && last.contains("14 stage runs: 14 computed, 0 skipped (already committed, reused)"), "{last}");
    let (_, err) = run_demo(p.path(), store, &[]);
    assert!(err.contains("stage 14/14  iter 3   metrics") && err.contains("skipped"), "{err}");
    assert!(!err.contains("ETA"), "{err}");
    assert!(err.lines().last().unwrap().contains("14 stage runs: 0 computed, 14 skipped"), "{err}");
}

/// `mstar status` shows the stage a live run works on as running, before it has written a
/// file, and when the last stage was committed.
#[test]
fn status_shows_the_running_stage_and_the_last_commit() {
    let p = project();
    let store = p.path().join("store");
    let store_s = store.to_str().unwrap();
    run_demo(p.path(), store_s, &[]);
    let finished = |f: &str| -> String {
        let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(store.join("_manifests").join(f)).unwrap()).unwrap();
        m["finished_at"].as_str().unwrap().to_string()
    };
    let newest = finished("iteration=3/metrics.json");
    let (status, _) = ok(bin().args(["status", store_s]));
    assert!(status.contains(&format!("last commit {newest}")) && status.contains(": iteration 3 metrics"), "{status}");

    // a live run (this host, a live pid) holds the lock; iteration 3's selected and metrics are
    // not committed: the first is being computed, the second waits
    let mut holder = std::process::Command::new("sleep").arg("60").spawn().unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string();
    std::fs::write(store.join("_lock"), format!(r#"{{"pid":{},"host":"{host}","started_at":"2026-01-01T00:00:00Z","command":"mstar run x"}}"#, holder.id()))
        .unwrap();
    let newest_left = finished("iteration=3/rollouts.json");
    for stage in ["selected", "metrics"] {
        std::fs::remove_file(store.join(format!("_manifests/iteration=3/{stage}.json"))).unwrap();
        std::fs::remove_dir_all(store.join(format!("tables/{stage}/iteration=3"))).unwrap();
    }
    let (status, _) = ok(bin().args(["status", store_s]));
    let state = |it: &str, stage: &str| {
        let line = status.lines().find(|l| l.starts_with(&format!("| {it} ")) && l.contains(&format!(" {stage} "))).unwrap_or_else(|| panic!("{status}"));
        line.split('|').nth(3).unwrap().trim().to_string()
    };
    assert_eq!(state("3", "selected"), "running", "{status}");
    assert_eq!(state("3", "metrics"), "pending", "{status}");
    assert_eq!(state("2", "selected"), "done", "{status}");
    assert!(status.contains(&format!("last commit {newest_left}")) && status.contains(": iteration 3 rollouts"), "{status}");
    holder.kill().unwrap();
    holder.wait().unwrap();
    // the holder is gone: nothing runs, the two are pending again
    let (status, _) = ok(bin().args(["status", store_s]));
    assert!(!status.contains("running"), "{status}");
}

/// A DataFusion error is said once, not once per link of its source chain.
#[test]
fn a_query_error_is_printed_once() {
    for (q, msg) in [
        ("SELECT nosuch FROM (SELECT 1 AS a)", "No field named nosuch"),
        ("SELEC 1", "Expected: an SQL statement, found: SELEC"),
        ("SELECT CAST('x' AS INT)", "Cannot cast string 'x' to value of Int32 type"),
    ] {
        let (_, _, err) = fails(bin().args(["sql", q]));
        assert_eq!(err.matches(msg).count(), 1, "{q}: {err}");
        assert_eq!(err.lines().filter(|l| l.starts_with("error: ")).count(), 1, "{q}: {err}");
    }
}

/// Output piped into a reader that stops (`| head -1`) ends the command quietly: no panic, no
/// "Broken pipe" error, exit code 0.
#[test]
fn a_closed_pipe_ends_output_quietly() {
    use std::io::BufRead;
    let p = project();
    let store = p.path().join("store");
    let store_s = store.to_str().unwrap();
    run_demo(p.path(), store_s, &[]);
    // a reader that takes one line and goes
    for args in [vec!["sql", "--format", "csv", "SELECT * FROM range(2000000)"], vec!["sql", "SELECT * FROM range(200000)"]] {
        let mut child = bin().args(&args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let mut first = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
        let o = child.wait_with_output().unwrap();
        assert!(!first.is_empty());
        assert_eq!((o.status.code(), text(&o.stderr)), (Some(0), String::new()), "{args:?}");
    }
    // a reader that is gone before anything is written
    for args in [vec!["status", store_s], vec!["sql", "--store", store_s, "SELECT * FROM rollouts"]] {
        let mut child = bin().args(&args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        drop(child.stdout.take());
        let o = child.wait_with_output().unwrap();
        assert_eq!((o.status.code(), text(&o.stderr)), (Some(0), String::new()), "{args:?}");
    }
}

/// `sql` and `status` take the store the same ways: positional or `--store` (a relative path
/// relative to the working directory either way).
#[test]
fn sql_and_status_take_the_store_positionally_or_with_store() {
    let p = project();
    let cwd = p.path().join("elsewhere");
    std::fs::create_dir_all(&cwd).unwrap();
    ok(bin().current_dir(&cwd).arg("run").arg(p.path().join("pipelines/recorded.yaml")).args(["--store", "rel/store"]));
    let q = "SELECT count(*) AS n FROM selected";
    for args in [
        vec!["sql", "--store", "rel/store", "--format", "csv", q],
        vec!["sql", "rel/store", "--format", "csv", q],
        vec!["sql", "--format", "csv", "rel/store", q],
    ] {
        assert_eq!(ok(bin().current_dir(&cwd).args(&args)).0, "n\n213\n", "{args:?}");
    }
    // a lone store: the interactive prompt over it (statements from standard input)
    let mut child = bin().current_dir(&cwd).args(["sql", "rel/store", "--format", "csv"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(format!("{q};\n").as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success());
    assert_eq!(text(&o.stdout), "n\n213\n");
    // a lone query still runs without a store; a store with --file
    assert_eq!(ok(bin().args(["sql", "--format", "csv", "SELECT 1 AS one"])).0, "one\n1\n");
    let file = p.path().join("n.sql");
    std::fs::write(&file, q).unwrap();
    assert_eq!(ok(bin().current_dir(&cwd).args(["sql", "rel/store", "--format", "csv", "--file", file.to_str().unwrap()])).0, "n\n213\n");
    let (_, _, err) = fails(bin().current_dir(&cwd).args(["sql", "--store", "rel/store", "rel/store", q]));
    assert!(err.contains("given twice"), "{err}");

    let (a, _) = ok(bin().current_dir(&cwd).args(["status", "rel/store", "--format", "csv"]));
    let (b, _) = ok(bin().current_dir(&cwd).args(["status", "--store", "rel/store", "--format", "csv"]));
    assert_eq!(a, b);
    assert_eq!(a.matches(",done,").count(), 14, "{a}");
    let (_, _, err) = fails(bin().current_dir(&cwd).args(["status"]));
    assert!(err.contains("STORE"), "{err}");
}

/// An M-STAR-shaped run without models: SQL stages with the tables `mstar report` reads
/// (eval_samples-shaped `eval_warmup` and `eval`, `rollouts`, `scored`, `selected`) and the
/// recipe's own metric SQL (eval_metrics, train_metrics) and summary (mstar_summary).
const FAKE_MSTAR: &str = r#"
name: fake_mstar
seed: 0
iterations: 2
stages:
  - id: eval_warmup
    op: sql
    scope: setup
    query: |
      SELECT split, 'p' || CAST(p AS VARCHAR) AS prompt_id, s < 0 AS greedy, CASE WHEN s < 0 THEN 0.0 ELSE 1.0 END AS temperature,
             CAST(greatest(s, 0) AS INT) AS sample_idx, 'r' AS response, 1 AS num_tokens, CAST(NULL AS VARCHAR) AS pred,
             (p * 7 + s * 3) % 5 < 2 AS correct, (p + s) % 3 = 0 AS steps_ok, CAST((p * 13 + s * 7) % 10 AS DOUBLE) / 10 AS score
      FROM (SELECT value AS p, CASE WHEN value < 40 THEN 'test' ELSE 'val' END AS split FROM range(60))
      CROSS JOIN (SELECT value - 1 AS s FROM range(5))
  - {id: warmup_metrics, op: sql, scope: setup, sql: eval_metrics, params: {samples: eval_warmup}}
  - id: eval
    op: sql
    query: |
      SELECT split, 'p' || CAST(p AS VARCHAR) AS prompt_id, s < 0 AS greedy, CASE WHEN s < 0 THEN 0.0 ELSE 1.0 END AS temperature,
             CAST(greatest(s, 0) AS INT) AS sample_idx, 'r' AS response, 1 AS num_tokens, CAST(NULL AS VARCHAR) AS pred,
             (p * 7 + s * 3 + ${iteration}) % 5 < 2 + ${iteration} AS correct, (p + s) % 3 = 0 AS steps_ok,
             CAST((p * 13 + s * 7 + ${iteration}) % 10 AS DOUBLE) / 10 AS score
      FROM (SELECT value AS p, CASE WHEN value < 40 THEN 'test' ELSE 'val' END AS split FROM range(60))
      CROSS JOIN (SELECT value - 1 AS s FROM range(5))
  - {id: eval_metrics, op: sql, sql: eval_metrics, params: {samples: eval}}
  - id: rollouts
    op: sql
    query: SELECT 'p0' AS prompt_id, 0 AS sample_idx, CASE WHEN ${iteration} = 1 THEN 0.9 ELSE 0.7 END AS temperature
  - id: scored
    op: sql
    query: |
      SELECT 'p' || CAST(p AS VARCHAR) AS prompt_id, CAST(s AS INT) AS sample_idx, (p + s + ${iteration}) % 3 > 0 AS correct,
             (p * s + ${iteration}) % 4 < 2 AS steps_ok, CAST((p * 5 + s * 3) % 7 AS DOUBLE) AS score
      FROM (SELECT value AS p FROM range(30)) CROSS JOIN (SELECT value AS s FROM range(4))
  - id: selected
    op: sql
    query: SELECT prompt_id, sample_idx, score, 1 AS rank FROM scored WHERE iteration = ${iteration} AND correct AND sample_idx < 2
  - {id: train_metrics, op: sql, sql: train_metrics}
summary:
  sql: mstar_summary
"#;

/// The numbers of an SVG's `<text>` elements with this anchor (tick labels).
fn tick_labels(svg: &str, anchor: &str) -> Vec<f64> {
    svg.split("<text ")
        .filter(|t| t.contains(&format!("text-anchor=\"{anchor}\">")))
        .filter_map(|t| t.split('>').nth(1)?.split('<').next()?.parse().ok())
        .collect()
}

/// `mstar report`'s charts: in percent, with a y-axis label, n, error bars from a seeded
/// bootstrap over prompts at every point (which also checks that sql/report_prompts.sql gives
/// the metrics of eval_metrics.sql and train_metrics.sql), the temperature as steps; the run's
/// closing summary in percent.
#[test]
fn report_charts_are_in_percent_with_n_and_bootstrap_error_bars() {
    let p = project();
    let pipeline = p.path().join("pipelines/fake_mstar.yaml");
    std::fs::write(&pipeline, FAKE_MSTAR).unwrap();
    let store = p.path().join("store");
    let store_s = store.to_str().unwrap();
    let (summary, _) = ok(bin().arg("run").arg(&pipeline).args(["--store", store_s, "--format", "csv"]));
    // the summary: shares in percent, as the report shows them
    let greedy = sql_csv(store_s, "SELECT round(100 * value, 1) AS v FROM eval_metrics WHERE iteration = 2 AND split = 'test' AND name = 'greedy_accuracy'");
    let greedy: f64 = greedy.lines().nth(1).unwrap().parse().unwrap();
    let header: Vec<&str> = summary.lines().next().unwrap().split(',').collect();
    let row: Vec<&str> = summary.lines().find(|l| l.starts_with("2,")).unwrap().split(',').collect();
    let col = header.iter().position(|h| *h == "test_greedy_%").unwrap_or_else(|| panic!("{summary}"));
    assert_eq!(row[col].parse::<f64>().unwrap(), greedy, "{summary}");
    assert!(greedy > 1.0, "{summary}");

    let out = p.path().join("report");
    ok(bin().arg("report").arg(store_s).arg("--out").arg(&out));
    let svg = |stem: &str| std::fs::read_to_string(out.join(format!("{stem}.svg"))).unwrap();
    for (stem, label, n, points) in [
        ("test_accuracy", "greedy accuracy (%)", "n = 40 prompts", 3),
        ("val_pass_at_k", "Pass@K (%)", "n = 20 prompts", 3),
        ("val_reward_pass_at_2", "Reward-Pass@2 (%)", "n = 20 prompts", 3),
        ("selected_sound_share", "sound selected rollouts (%)", "n = ", 2),
    ] {
        let s = svg(stem);
        assert!(s.contains("rotate(-90") && s.contains(&format!(">{label}</text>")), "{stem}: y label\n{s}");
        assert!(s.contains(n) && s.contains("95% bootstrap interval over prompts"), "{stem}: n\n{s}");
        assert_eq!(s.matches("class=\"error-bar\"").count(), points, "{stem}: an error bar per point\n{s}");
        assert!(tick_labels(&s, "end").iter().any(|t| *t > 1.0), "{stem}: percent ticks\n{s}");
    }
    // the temperature: steps (horizontal and vertical segments only), no error bars, as it is
    let t = svg("temperature");
    let line = t.split("<polyline").nth(1).unwrap();
    let pts: Vec<(f64, f64)> = line
        .split("points=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .split(' ')
        .map(|xy| {
            let (x, y) = xy.split_once(',').unwrap();
            (x.parse().unwrap(), y.parse().unwrap())
        })
        .collect();
    assert_eq!(pts.len(), 4, "{t}");
    assert!(pts.windows(2).all(|w| w[0].0 == w[1].0 || w[0].1 == w[1].1), "{t}");
    assert!(!t.contains("error-bar") && t.contains(">temperature</text>"), "{t}");
    assert!(tick_labels(&t, "end").iter().all(|v| *v < 1.0), "{t}");
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("n = 40 prompts per run.") && md.contains("95% bootstrap interval over prompts"), "{md}");
    // the gain over the warm-up: the final iteration's test greedy accuracy minus iteration 0's, with its paired interval
    let acc = |q: &str| -> f64 {
        sql_csv(store_s, &format!("SELECT avg(CASE WHEN correct THEN 1.0 ELSE 0.0 END) FROM {q} AND greedy AND split = 'test'"))
            .lines()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap()
    };
    let gain = 100.0 * (acc("eval WHERE iteration = 2") - acc("eval_warmup WHERE true"));
    let row = md.lines().find(|l| l.starts_with("| fake_mstar | test greedy accuracy | 40 |")).unwrap_or_else(|| panic!("{md}"));
    assert!(gain.abs() > 1.0 && row.contains(&format!("| {gain:+.1} [")) && row.matches(" [").count() == 2, "{row} vs {gain:+.1}");
    // --order: the same runs under another name are no better, no worse; a malformed order is refused
    let twin = p.path().join("twin");
    ok(bin().arg("run").arg(&pipeline).args(["--store", twin.to_str().unwrap(), "--set", "name=fake_twin"]));
    let (md, _) = ok(bin()
        .arg("report")
        .args([store_s, twin.to_str().unwrap(), "--order", "fake_mstar>fake_twin", "--order", "fake_mstar>nobody", "--out"])
        .arg(p.path().join("orders")));
    assert!(
        md.contains("| fake_mstar > fake_twin | not resolved (an interval spans 0) | fake_mstar − fake_twin: +0.0 [+0.0, +0.0] (1 seed, 40 prompts) |"),
        "{md}"
    );
    assert!(md.contains("| fake_mstar > nobody | not measured"), "{md}");
    let (_, _, err) = fails(bin().arg("report").args([store_s, "--order", "fake_mstar", "--out"]).arg(p.path().join("orders")));
    assert!(err.contains("--order `fake_mstar`: expected pipeline names separated by `>`"), "{err}");

    // seeded: the same runs give the same charts, byte for byte
    let again = p.path().join("again");
    ok(bin().arg("report").arg(store_s).arg("--out").arg(&again));
    for f in ["test_accuracy.svg", "test_accuracy.png", "selected_sound_share.svg", "report.md"] {
        assert_eq!(std::fs::read(out.join(f)).unwrap(), std::fs::read(again.join(f)).unwrap(), "{f}");
    }
}
