//! The `mstar` command line: run, validate, status, sql, report, data, model and unlock.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use mstar::runner::{self, RunOptions};
use mstar::spec;
use mstar::sql::format::{write_stream, write_table, OutputFormat};
use mstar::store::RunStore;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Parser)]
#[command(name = "mstar", version, about = "Self-evolving training pipelines for multimodal reasoning models")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a pipeline: skip stages that are up to date, compute the rest.
    Run {
        pipeline: PathBuf,
        /// Override a spec field before validation, e.g. --set seed=7 --set stages.rollouts.samples=8
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Run store location (path, file://, memory://, s3://bucket/prefix); same as --set store=URL
        #[arg(long)]
        store: Option<String>,
        /// Recompute from this stage on: ITER/STAGE (ITER is a number or `setup`)
        #[arg(long, value_name = "ITER/STAGE")]
        from: Option<String>,
        /// Run even if the store holds a run of a differently named pipeline
        #[arg(long)]
        allow_other_pipeline: bool,
        /// Compute every row-parallel stage (import, generate, verify, eval, prm_label, prm_score) as N
        /// shards, one `mstar worker` process each (overrides the stages' `shards:`)
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        shards: Option<u32>,
        /// How many times a failed shard is rerun alone before its stage fails
        #[arg(long, value_name = "N", default_value_t = 1)]
        shard_retries: u32,
        /// Where the workers of row-parallel stages run: local processes, a Slurm job array or
        /// a Kubernetes Indexed Job (overrides the spec's `executor:`)
        #[arg(long, value_enum, value_name = "EXECUTOR")]
        executor: Option<mstar::executor::ExecutorKind>,
        /// How to print the summary query's result
        #[arg(long, value_enum, default_value = "table")]
        format: OutputFormat,
    },
    /// Compute one shard of a sharded stage of a running `mstar run` (which starts its workers
    /// itself; run it by hand, or as a Slurm array task or a Kubernetes Indexed Job).
    Worker {
        /// The run store (path, file://, s3://bucket/prefix)
        #[arg(long)]
        store: String,
        /// The stage's id
        #[arg(long)]
        stage: String,
        /// The iteration (0 for a setup stage)
        #[arg(long)]
        iteration: u32,
        /// i/N: shard i (0-based) of N; /N or nothing: i from SLURM_ARRAY_TASK_ID or
        /// JOB_COMPLETION_INDEX, N from the coordinator's job
        #[arg(long, value_name = "i/N")]
        shard: Option<String>,
    },
    /// Check a pipeline spec and print every error with its YAML path and position.
    Validate {
        pipeline: PathBuf,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        #[arg(long)]
        store: Option<String>,
    },
    /// Show every stage of every iteration of a run store.
    Status {
        /// Run store (path, file://, memory://, s3://bucket/prefix); or --store STORE
        #[arg(value_name = "STORE", required_unless_present = "store_flag", conflicts_with = "store_flag")]
        store: Option<String>,
        /// Run store (the same as the positional STORE, as `sql` and `run` take it)
        #[arg(long = "store", value_name = "STORE")]
        store_flag: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: OutputFormat,
    },
    /// Query a run with SQL (read-only); every stage is a table. No QUERY: interactive prompt.
    ///
    /// The store is given as `mstar sql STORE QUERY` or `mstar sql --store STORE QUERY`; a lone
    /// positional is the store when it has no whitespace (or is a folder), else the query.
    Sql {
        /// Run store to query (or the first positional)
        #[arg(long = "store", value_name = "STORE")]
        store_flag: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: OutputFormat,
        /// Write the result to this file instead of standard output
        #[arg(long)]
        out: Option<PathBuf>,
        /// Read the query from this file (e.g. one of the pipelines' `sql/*.sql`)
        #[arg(long)]
        file: Option<PathBuf>,
        /// Set a `${NAME}` parameter of the query, as a pipeline's `params:` do (repeatable)
        #[arg(long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
        /// The run store (path, file://, memory://, s3://bucket/prefix) unless --store gives it
        #[arg(value_name = "STORE", allow_hyphen_values = true)]
        first: Option<String>,
        /// The query (may start with a `--` comment)
        #[arg(value_name = "QUERY", allow_hyphen_values = true)]
        query: Option<String>,
        /// Stop the query after this many seconds (an error says so)
        #[arg(long, value_name = "SECS")]
        timeout: Option<f64>,
        /// Memory for the query's sorts, joins and aggregations before they spill or fail
        /// (default: MSTAR_MEMORY_LIMIT_MB, else 2048)
        #[arg(long, value_name = "MB")]
        memory_mb: Option<usize>,
    },
    /// Compare M-STAR runs: report.md (tables, mean ± spread over seeds) and PNG/SVG charts of
    /// the per-iteration metrics, every number from SQL over the run stores.
    Report {
        /// Run stores (several runs of one pipeline with different seeds are averaged)
        #[arg(required = true)]
        stores: Vec<String>,
        /// Folder for report.md and the charts
        #[arg(long)]
        out: PathBuf,
        /// Print the SQL the report runs
        #[arg(long)]
        explain: bool,
        /// Check an order of pipelines, best first, on final test greedy accuracy with paired
        /// bootstrap intervals (repeatable), e.g. --order "continuous>iterative_rft>rest_em"
        #[arg(long = "order", value_name = "A>B>…")]
        orders: Vec<String>,
    },
    /// Break a run store's lock (after a run died without releasing it).
    Unlock {
        store: String,
        /// Also remove a lock whose holder is a live process on this host
        #[arg(long)]
        force: bool,
    },
    /// Serve a Hugging Face checkpoint folder (Qwen2.5-VL, Qwen3-VL) with the OpenAI
    /// chat-completions API: POST /v1/chat/completions, GET /v1/models.
    Serve {
        dir: std::path::PathBuf,
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// 0 picks a free port (printed on start).
        #[arg(long, default_value_t = 8000)]
        port: u16,
        /// The model name clients use (default: the folder's name).
        #[arg(long)]
        name: Option<String>,
        /// Largest request body in MiB (larger: 413, unread).
        #[arg(long, default_value_t = 16)]
        max_body_mb: usize,
        /// Most prompt tokens of a request, images included (default: the model's context,
        /// config.json's max_position_embeddings).
        #[arg(long)]
        max_prompt_tokens: Option<usize>,
        /// Most images in one request.
        #[arg(long, default_value_t = 8)]
        max_images: usize,
        /// Most pixels (width × height, read from the header before decoding) of one image.
        #[arg(long, default_value_t = 50_000_000)]
        max_image_pixels: u64,
        /// Most choices (`n`) in one request.
        #[arg(long, default_value_t = 16)]
        max_n: u32,
        /// Seconds a client has to send a request's headers, its body, or (kept alive) the
        /// next request before its connection is closed.
        #[arg(long, default_value_t = 30)]
        read_timeout_secs: u64,
    },
    /// Print the device, dtype, threads and kernels the model operators will use, and run a
    /// forward + backward smoke test there (exit code 1 if it fails).
    Doctor,
    /// Make or import datasets.
    Data {
        #[command(subcommand)]
        cmd: DataCmd,
    },
    /// Model tools.
    Model {
        #[command(subcommand)]
        cmd: ModelCmd,
    },
}

#[derive(Subcommand)]
enum ModelCmd {
    /// Write a stage's checkpoint as a plain Hugging Face folder (LoRA adapters merged, the
    /// base's dtype) that transformers, vLLM or `mstar serve` load
    Export {
        /// Run store
        store: String,
        /// The train stage
        #[arg(long)]
        stage: String,
        /// Its checkpoint of this iteration (default: the newest)
        #[arg(long)]
        iteration: Option<u32>,
        /// A new or empty folder
        #[arg(long)]
        out: PathBuf,
    },
    /// Generation tokens/s (one prompt, `--batch` samples) and training step time of a Qwen-VL
    /// folder (random weights will do; benches/qwen_bench.py makes one and runs transformers too)
    BenchHf {
        dir: PathBuf,
        #[arg(long, default_value_t = 64)]
        batch: usize,
        #[arg(long = "new-tokens", default_value_t = 128)]
        new_tokens: usize,
        #[arg(long = "train-batch", default_value_t = 4)]
        train_batch: usize,
        #[arg(long = "train-len", default_value_t = 512)]
        train_len: usize,
        /// Train every weight instead of LoRA adapters
        #[arg(long)]
        full: bool,
        #[arg(long)]
        gradient_checkpointing: bool,
    },
    /// Generation and SFT throughput of a random policy (writes its weights and inputs to --out)
    Bench {
        #[arg(long, default_value = "tiny")]
        size: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 16)]
        batch: usize,
        #[arg(long = "new-tokens", default_value_t = 64)]
        new_tokens: usize,
        #[arg(long = "sft-steps", default_value_t = 3)]
        sft_steps: usize,
        /// cuda: the first GPU (needs a build with `--features cuda`)
        #[arg(long, default_value = "cpu", value_parser = ["cpu", "cuda"])]
        device: String,
    },
}

#[derive(Subcommand)]
enum DataCmd {
    /// Generate the synthetic visual-reasoning task: <out>/{train,unlabeled,val,test,test_hard}.parquet
    Synth {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value_t = 4000)]
        train: u64,
        /// How many train prompts (the first) carry the gold chain of thought, for warm-up
        #[arg(long, default_value_t = 600)]
        cot: u64,
        #[arg(long, default_value_t = 2000)]
        unlabeled: u64,
        #[arg(long, default_value_t = 500)]
        val: u64,
        #[arg(long, default_value_t = 1000)]
        test: u64,
        #[arg(long = "test-hard", default_value_t = 500)]
        test_hard: u64,
        /// Also write a few example images (scaled ×4) with their questions to this folder
        #[arg(long)]
        examples: Option<PathBuf>,
    },
    /// Import a dataset into a prompts Parquet file; bad rows go to <out>.quarantine.parquet
    Import {
        /// mathvista, mathv360k, hf or verl
        #[arg(long)]
        format: String,
        /// Dataset file (testmini.json, a MathV360K JSON) or Parquet file/folder
        path: String,
        #[arg(long)]
        out: PathBuf,
        /// Folder image paths are relative to (default: the dataset file's folder)
        #[arg(long)]
        images: Option<String>,
        #[arg(long)]
        split: Option<String>,
        /// hf: which column plays a role, e.g. --column question=problem
        #[arg(long = "column", value_name = "ROLE=NAME")]
        columns: Vec<String>,
        /// Images whose header says more pixels than this are quarantined, undecoded
        #[arg(long, default_value_t = mstar::data::prompts::DEFAULT_MAX_IMAGE_PIXELS)]
        max_image_pixels: u64,
    },
}

/// Set when standard output's reader went away (`mstar sql … | head -1`): the command then
/// stops quietly instead of reporting the broken pipe.
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// Standard output that notes a broken pipe.
struct Stdout;

impl Stdout {
    fn note<T>(r: std::io::Result<T>) -> std::io::Result<T> {
        if let Err(e) = &r {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                STDOUT_CLOSED.store(true, Ordering::SeqCst);
            }
        }
        r
    }
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Self::note(std::io::stdout().write(buf))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Self::note(std::io::stdout().flush())
    }
}

fn stdout() -> Box<dyn Write + Send> {
    Box::new(Stdout)
}

/// `println!` that returns an error instead of panicking when standard output is closed.
macro_rules! outln {
    ($($arg:tt)*) => { writeln!(Stdout, $($arg)*)? };
}

/// `print!` likewise.
macro_rules! out {
    ($($arg:tt)*) => { write!(Stdout, $($arg)*)? };
}

/// The environment switches, read once here and passed down as arguments (the library reads
/// none of them).
struct Settings {
    /// `MSTAR_MEMORY_LIMIT_MB`: the memory pool of every DataFusion session, unless `mstar sql
    /// --memory-mb` says otherwise (unset or not a number: 2048).
    memory_mb: Option<usize>,
    /// `MSTAR_FAULT_PAUSE_MS=stage:ms[,stage:ms]`: the crash tests' pause after each file a
    /// stage writes.
    fault_pause: std::collections::BTreeMap<String, std::time::Duration>,
    /// `MSTAR_FAULT_SERVE_EXIT_AFTER=N`: `mstar serve` takes N chat requests, then exits when
    /// the next arrives (the endpoint-pool crash test).
    serve_exit_after: Result<Option<usize>, String>,
    /// `MSTAR_TRAIN_AUTOGRAD=1`: train the tiny VLM on the CPU through candle's autograd.
    train_autograd: bool,
    /// `MSTAR_DEVICE=cpu|auto`, `MSTAR_DTYPE=bf16|f32`: where models run.
    device: Result<mstar::model::DeviceChoice, String>,
}

impl Settings {
    fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok();
        Self {
            memory_mb: var("MSTAR_MEMORY_LIMIT_MB").and_then(|v| v.parse().ok()),
            fault_pause: runner::parse_fault_pause(&var("MSTAR_FAULT_PAUSE_MS").unwrap_or_default()),
            serve_exit_after: var("MSTAR_FAULT_SERVE_EXIT_AFTER")
                .map(|v| v.parse().map_err(|_| format!("MSTAR_FAULT_SERVE_EXIT_AFTER must be a number of requests, got `{v}`")))
                .transpose(),
            train_autograd: var("MSTAR_TRAIN_AUTOGRAD").is_some_and(|v| v == "1"),
            device: mstar::model::DeviceChoice::parse(var("MSTAR_DEVICE").as_deref(), var("MSTAR_DTYPE").as_deref()),
        }
    }
}

fn main() {
    mstar::model::keep_freed_memory();
    mstar::model::parallelize_above_candle();
    let settings = Settings::from_env();
    mstar::train::force_autograd(settings.train_autograd);
    match &settings.device {
        Ok(choice) => mstar::model::choose_device(*choice),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    }
    if let Err(e) = &settings.serve_exit_after {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let code = match rt.block_on(dispatch(cli, &settings)) {
        Ok(code) => code,
        // the reader stopped reading (`| head`): nothing to report
        Err(_) if STDOUT_CLOSED.load(Ordering::SeqCst) => 0,
        Err(e) => {
            eprintln!("error: {}", mstar::error_chain(&*e));
            1
        }
    };
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}

fn overrides(set: &[String], store: &Option<String>) -> Vec<String> {
    let mut o = set.to_vec();
    if let Some(s) = store {
        o.push(format!("store={s}"));
    }
    o
}

fn load(pipeline: &Path, set: &[String], store: &Option<String>) -> Result<Option<spec::Pipeline>> {
    match spec::load(pipeline, &overrides(set, store)) {
        Ok(p) => Ok(Some(p)),
        Err(e) => {
            eprint!("{e}");
            Ok(None)
        }
    }
}

fn output(out: &Option<PathBuf>, format: OutputFormat) -> Result<Box<dyn Write + Send>> {
    Ok(match out {
        Some(p) => Box::new(std::io::BufWriter::new(std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?)),
        None if format == OutputFormat::Parquet => bail!("--format parquet needs --out FILE"),
        None => stdout(),
    })
}

async fn dispatch(cli: Cli, settings: &Settings) -> Result<i32> {
    match cli.cmd {
        Cmd::Validate { pipeline, set, store } => {
            let Some(p) = load(&pipeline, &set, &store)? else { return Ok(2) };
            let (_, plan) = runner::make_plan(&p).await?;
            outln!(
                "{}: ok — pipeline `{}`, {} stage(s), {} iteration(s), {} stage runs",
                pipeline.display(),
                p.name,
                p.stages.len(),
                p.iterations,
                plan.instances.len()
            );
            Ok(0)
        }
        Cmd::Run { pipeline, set, store, from, allow_other_pipeline, shards, shard_retries, executor, format } => {
            let Some(p) = load(&pipeline, &set, &store)? else { return Ok(2) };
            // a path on the command line is relative to the working directory (as in `sql`,
            // `status`, every CLI); one written in the pipeline file, to the file's folder
            let location = match (&store, &p.store) {
                (Some(s), _) => s.clone(),
                (None, Some(s)) => p.resolve_path(s),
                (None, None) => p.base_dir.join("runs").join(&p.name).to_string_lossy().into_owned(),
            };
            let rs = RunStore::open(&location)?;
            let from = from.map(|f| runner::parse_from(&f)).transpose()?;
            let opts = RunOptions {
                from,
                allow_other_pipeline,
                memory_mb: settings.memory_mb,
                fault_pause: settings.fault_pause.clone(),
                shards,
                shard_retries: Some(shard_retries),
                executor,
            };
            let mut report = runner::run(&p, &rs, &opts).await?;
            if let Some(batches) = report.summary.take() {
                let schema = batches.first().map(|b| b.schema()).unwrap_or_else(|| std::sync::Arc::new(arrow::datatypes::Schema::empty()));
                let stream =
                    Box::pin(datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(schema, futures::stream::iter(batches.into_iter().map(Ok))));
                write_stream(stream, format, stdout()).await?;
            }
            eprintln!("mstar: {} · store {}", report.totals(), rs.display());
            Ok(0)
        }
        Cmd::Worker { store, stage, iteration, shard } => {
            let rs = RunStore::open_existing(&store)?;
            let m = match mstar::shard::run_worker(&rs, &stage, iteration, shard.as_deref(), settings.memory_mb, &settings.fault_pause).await {
                // a worker holds no lock: say what a stopped worker leaves
                Err(mstar::Error::Interrupted) => {
                    bail!("interrupted (Ctrl-C or SIGTERM): this shard's files stay uncommitted; its coordinator reruns or resubmits it")
                }
                r => r?,
            };
            eprintln!(
                "mstar worker: shard {}/{} of stage {stage} at iteration {iteration}: {} rows in {} files, {:.2}s",
                m.shard,
                m.shards,
                m.rows,
                m.files.len(),
                m.duration_ms as f64 / 1000.0
            );
            Ok(0)
        }
        Cmd::Status { store, store_flag, format } => {
            let store = store.or(store_flag).context("name the run store: mstar status STORE")?;
            let rs = RunStore::open_existing(&store)?;
            let st = mstar::status::status(&rs).await?;
            if format == OutputFormat::Table {
                if let Some(run) = &st.run {
                    outln!(
                        "run store {} · pipeline {} · seed {} · spec {} · updated {}",
                        rs.display(),
                        run.pipeline,
                        run.seed,
                        &run.spec_hash[..12],
                        run.updated_at
                    );
                }
                match &st.lock {
                    Some(l) => outln!("locked by pid {} on {} since {} (`{}`)", l.pid, l.host, l.started_at, l.command),
                    None => outln!("not locked"),
                }
                match &st.last_commit {
                    Some((at, it, stage)) => {
                        let ago = mstar::status::ago(at, chrono::Utc::now()).map(|a| format!(" ({a})")).unwrap_or_default();
                        let label = if *it == 0 { "setup".to_string() } else { format!("iteration {it}") };
                        outln!("last commit {at}{ago}: {label} {stage}")
                    }
                    None => outln!("no stage committed yet"),
                }
                match st.orphaned {
                    Some((0, _)) => outln!("no orphaned files"),
                    Some((n, bytes)) => {
                        outln!("orphaned: {n} files, {} that no committed manifest references (the next run removes them)", mstar::runner::human_bytes(bytes))
                    }
                    None => outln!("orphaned files: not counted while a run is active"),
                }
            }
            let batch = st.to_batch()?;
            if format == OutputFormat::Table {
                write_table(&batch.schema(), &[batch], stdout())?;
            } else {
                let stream = Box::pin(datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(batch.schema(), futures::stream::iter(vec![Ok(batch)])));
                write_stream(stream, format, stdout()).await?;
            }
            Ok(0)
        }
        Cmd::Sql { store_flag, format, out, file, params, first, query, timeout, memory_mb } => {
            let (store, query) = sql_operands(store_flag, first, query, file.is_some())?;
            if let Some(t) = timeout.filter(|t| !(t.is_finite() && *t > 0.0)) {
                bail!("--timeout {t}: expected a positive number of seconds");
            }
            let query = match &file {
                Some(f) => Some(std::fs::read_to_string(f).with_context(|| format!("--file {}", f.display()))?),
                None => query,
            };
            let query = match query {
                Some(q) if !params.is_empty() || file.is_some() => {
                    let mut set = mstar::sql::params::ParamSet::new();
                    for kv in &params {
                        let Some((k, v)) = kv.split_once('=') else { bail!("--param {kv}: expected NAME=VALUE") };
                        set.insert(k.trim(), v.to_string());
                    }
                    let what = file.as_ref().map(|f| f.display().to_string()).unwrap_or_else(|| "the query".into());
                    Some(mstar::sql::params::substitute(&q, &set).map_err(|e| anyhow::anyhow!("{what}: {e} — set it with --param NAME=VALUE"))?)
                }
                q => q,
            };
            // `FROM 'file.parquet'` reads files directly, besides the run's tables
            let ctx = mstar::sql::new_session_with(memory_mb.or(settings.memory_mb)).enable_url_table();
            let mut tables = Vec::new();
            if let Some(s) = &store {
                let rs = RunStore::open_existing(s)?;
                tables = mstar::sql::register_run(&ctx, &rs).await?;
            }
            match query {
                Some(q) => {
                    let run = run_query(&ctx, &q, format, output(&out, format)?);
                    let result = match timeout {
                        Some(t) => tokio::time::timeout(std::time::Duration::from_secs_f64(t), run)
                            .await
                            .unwrap_or_else(|_| Err(anyhow::anyhow!("the query ran longer than --timeout {t} s and was stopped"))),
                        None => run.await,
                    };
                    if let Err(e) = result {
                        let msg = e.to_string();
                        if msg.contains("Resources exhausted") {
                            bail!(
                                "the query needs more memory than its limit ({} MB; raise it with --memory-mb): {msg}",
                                memory_mb.map_or("MSTAR_MEMORY_LIMIT_MB or 2048".to_string(), |m| m.to_string())
                            );
                        }
                        if msg.contains("not found") && msg.contains("table") {
                            bail!("{msg}\n  (tables in this run: {})", if tables.is_empty() { "none".to_string() } else { tables.join(", ") });
                        }
                        return Err(e);
                    }
                    Ok(0)
                }
                None => interactive(&ctx, format, &out).await,
            }
        }
        Cmd::Data { cmd } => data(cmd, settings).await,
        Cmd::Serve { dir, host, port, name, max_body_mb, max_prompt_tokens, max_images, max_image_pixels, max_n, read_timeout_secs } => {
            anyhow::ensure!(read_timeout_secs > 0, "--read-timeout-secs must be at least 1");
            let exit_after = settings.serve_exit_after.clone().unwrap_or_default();
            let dev = mstar::model::device();
            let dtype = mstar::model::hf_dtype(&dev);
            let ck = mstar::model::qwen_vl::Checkpoint::load(&dir, dtype, &dev)?;
            let eos = ck.eos_ids.clone();
            anyhow::ensure!(!eos.is_empty(), "{}: no end-of-turn token (generation_config.json, config.json or tokenizer_config.json)", dir.display());
            let name = name.unwrap_or_else(|| dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into()));
            let listener = tokio::net::TcpListener::bind((host.as_str(), port)).await?;
            eprintln!("mstar serve: {name} on http://{}/v1 ({dev:?}, {dtype:?})", listener.local_addr()?);
            let limits = mstar::openai::server::Limits {
                max_body_bytes: max_body_mb.saturating_mul(1 << 20),
                max_prompt_tokens,
                max_images,
                max_image_pixels,
                max_n,
                read_timeout: std::time::Duration::from_secs(read_timeout_secs),
            };
            mstar::openai::server::Server::new(ck, name, eos, dev).with_limits(limits).with_exit_after(exit_after).run(listener).await?;
            Ok(0)
        }
        Cmd::Doctor => {
            let d = tokio::task::spawn_blocking(mstar::model::doctor::doctor).await?;
            out!("{}", d.render());
            Ok(if d.failure.is_some() { 1 } else { 0 })
        }
        Cmd::Model { cmd: ModelCmd::BenchHf { dir, batch, new_tokens, train_batch, train_len, full, gradient_checkpointing } } => {
            let dev = mstar::model::device();
            let r = tokio::task::spawn_blocking(move || {
                mstar::model::bench::bench_hf(&dir, batch, new_tokens, train_batch, train_len, !full, gradient_checkpointing, &dev)
            })
            .await??;
            outln!("{r}");
            Ok(0)
        }
        Cmd::Model { cmd: ModelCmd::Bench { size, out, batch, new_tokens, sft_steps, device } } => {
            let dev = match device.as_str() {
                "cuda" => candle_core::Device::new_cuda(0)?,
                _ => candle_core::Device::Cpu,
            };
            let r = tokio::task::spawn_blocking(move || mstar::model::bench::bench(&size, &out, batch, new_tokens, sft_steps, &dev)).await??;
            outln!("{r}");
            Ok(0)
        }
        Cmd::Model { cmd: ModelCmd::Export { store, stage, iteration, out } } => {
            let rs = RunStore::open_existing(&store)?;
            let (it, files) = mstar::model::checkpoint::export(&rs, &stage, iteration, &out).await?;
            eprintln!("mstar: exported `{stage}` (iteration {it}) to {}: {}", out.display(), files.join(", "));
            Ok(0)
        }
        Cmd::Report { stores, out, explain, orders } => {
            let orders = orders.iter().map(|o| mstar::report::order::parse(o)).collect::<Result<Vec<_>, _>>().map_err(|e| anyhow::anyhow!(e))?;
            let r = mstar::report::report(&stores, &out, settings.memory_mb, &orders).await?;
            if explain {
                for q in &r.queries {
                    outln!("{}\n", q.trim_end());
                }
            }
            out!("{}", r.markdown);
            for n in &r.notes {
                eprintln!("mstar: {n}");
            }
            eprintln!("mstar: wrote {} to {}", r.files.join(", "), out.display());
            Ok(0)
        }
        Cmd::Unlock { store, force } => {
            let rs = RunStore::open_existing(&store)?;
            match mstar::store::lock::break_lock(&rs, force).await? {
                Some(h) => outln!("removed the lock of pid {} on {} (since {})", h.pid, h.host, h.started_at),
                None => outln!("{} was not locked", rs.display()),
            }
            Ok(0)
        }
    }
}

/// `mstar sql`'s store and query from `--store`, the positionals and whether `--file` gives
/// the query: `sql STORE QUERY`, `sql --store STORE QUERY`, `sql STORE` (interactive, or with
/// --file), `sql QUERY` (files only). A lone positional is the store when it has no whitespace
/// or is a folder; a query has whitespace.
fn sql_operands(store_flag: Option<String>, first: Option<String>, second: Option<String>, file: bool) -> Result<(Option<String>, Option<String>)> {
    Ok(match (store_flag, first, second) {
        (Some(_), Some(_), Some(_)) => bail!("the store is given twice: either --store STORE or the first positional"),
        (Some(s), Some(q), None) if file => bail!("--file gives the query: `{q}` is one too many (the store is --store {s})"),
        (Some(s), q, None) => (Some(s), q),
        (None, Some(_), Some(_)) if file => bail!("--file gives the query: name only the store beside it"),
        (None, Some(s), Some(q)) => (Some(s), Some(q)),
        (None, Some(one), None) if file || !one.chars().any(char::is_whitespace) || Path::new(&one).is_dir() => (Some(one), None),
        (None, Some(q), None) => (None, Some(q)),
        (store, None, None) => (store, None),
        (_, None, Some(_)) => unreachable!("clap fills positionals in order"),
    })
}

async fn run_query(ctx: &datafusion::prelude::SessionContext, q: &str, format: OutputFormat, out: Box<dyn Write + Send>) -> Result<u64> {
    let df = mstar::sql::query(ctx, q).await?;
    let stream = df.execute_stream().await?;
    Ok(write_stream(stream, format, out).await?)
}

/// Reads statements ending with `;` from standard input (with a prompt on a terminal).
async fn interactive(ctx: &datafusion::prelude::SessionContext, format: OutputFormat, out: &Option<PathBuf>) -> Result<i32> {
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    let mut buf = String::new();
    let mut failed = false;
    let prompt = |cont: bool| {
        if tty {
            eprint!("{}", if cont { "   ...> " } else { "mstar> " });
            let _ = std::io::stderr().flush();
        }
    };
    prompt(false);
    for line in stdin.lock().lines() {
        let line = line?;
        if buf.trim().is_empty() && matches!(line.trim(), "\\q" | "quit" | "exit") {
            break;
        }
        buf.push_str(&line);
        buf.push('\n');
        if line.trim_end().ends_with(';') {
            let q = std::mem::take(&mut buf);
            if let Err(e) = run_query(ctx, q.trim().trim_end_matches(';'), format, output(out, format)?).await {
                if STDOUT_CLOSED.load(Ordering::SeqCst) {
                    return Ok(0);
                }
                eprintln!("error: {}", mstar::error_chain(&*e));
                failed = true;
            }
        }
        prompt(!buf.trim().is_empty());
    }
    if !buf.trim().is_empty() {
        if let Err(e) = run_query(ctx, buf.trim().trim_end_matches(';'), format, output(out, format)?).await {
            if STDOUT_CLOSED.load(Ordering::SeqCst) {
                return Ok(0);
            }
            eprintln!("error: {}", mstar::error_chain(&*e));
            failed = true;
        }
    }
    Ok(if failed && !tty { 1 } else { 0 })
}

async fn data(cmd: DataCmd, settings: &Settings) -> Result<i32> {
    use mstar::data::synth_dataset;
    match cmd {
        DataCmd::Synth { out, seed, train, cot, unlabeled, val, test, test_hard, examples } => {
            let sizes = synth_dataset::SynthSizes { train, cot: cot.min(train), unlabeled, val, test, test_hard };
            let written = tokio::task::spawn_blocking({
                let out = out.clone();
                move || synth_dataset::write(&out, seed, &sizes)
            })
            .await??;
            for (split, rows) in &written {
                eprintln!("wrote {rows} rows to {}", out.join(format!("{split}.parquet")).display());
            }
            if let Some(dir) = examples {
                synth_dataset::write_examples(&dir, seed, &[("train", 6), ("test_hard", 2)], 4)?;
                eprintln!("wrote example images to {}", dir.display());
            }
            // statistics per split, by SQL over the files just written
            let ctx = mstar::sql::new_session_with(settings.memory_mb);
            ctx.register_parquet("synth", out.to_string_lossy().as_ref(), Default::default()).await?;
            for q in
                [include_str!("../sql/synth_stats_splits.sql"), include_str!("../sql/synth_stats_qtypes.sql"), include_str!("../sql/synth_stats_answers.sql")]
            {
                run_query(&ctx, q, OutputFormat::Table, stdout()).await?;
            }
            Ok(0)
        }
        DataCmd::Import { format, path, out, images, split, columns, max_image_pixels } => {
            use mstar::data::import::{import_with_limits, Format, ImportLimits, ImportOptions, QuarantineSink};
            anyhow::ensure!(max_image_pixels > 0, "--max-image-pixels must be at least 1");
            let format = match format.as_str() {
                "mathvista" => Format::MathVista,
                "mathv360k" => Format::MathV360K,
                "hf" => Format::Hf,
                "verl" => Format::Verl,
                other => bail!("unknown format `{other}` (mathvista, mathv360k, hf, verl)"),
            };
            let mut cols = std::collections::BTreeMap::new();
            for c in columns {
                let (k, v) = c.split_once('=').with_context(|| format!("--column {c}: expected ROLE=NAME"))?;
                cols.insert(k.to_string(), v.to_string());
            }
            let source = Path::new(&path).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "dataset".into());
            let sink = QuarantineSink::default();
            let stream = import_with_limits(
                ImportOptions { format, path: path.clone(), images, split, source, columns: cols, shard: None },
                ImportLimits { max_image_pixels },
                sink.clone(),
            )
            .await
            .map_err(anyhow::Error::msg)?;
            let rows = write_stream(stream, OutputFormat::Parquet, output(&Some(out.clone()), OutputFormat::Parquet)?).await?;
            let bad = std::mem::take(&mut *sink.lock().expect("quarantine"));
            let qpath = out.with_extension("quarantine.parquet");
            let batch = mstar::data::prompts::quarantine_batch(&bad);
            let qstream = Box::pin(datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(batch.schema(), futures::stream::iter(vec![Ok(batch)])));
            write_stream(qstream, OutputFormat::Parquet, output(&Some(qpath.clone()), OutputFormat::Parquet)?).await?;
            outln!("imported {rows} prompts to {}; quarantined {} rows to {}", out.display(), bad.len(), qpath.display());
            for q in bad.iter().take(20) {
                outln!("  quarantined row {}: {}", q.row, q.reason);
            }
            Ok(0)
        }
    }
}
