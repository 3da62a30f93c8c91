//! `train_external`: a training command of the user's (torchrun + TRL, a script, …) as a stage:
//! mstar exports the stage's rows as Parquet, runs the command, and commits the Hugging Face
//! folder it writes as the stage's checkpoint.
//!
//! The command runs in the pipeline's folder with the environment of mstar plus `env:` and:
//! - `MSTAR_TRAIN_DATA`: a Parquet file of this iteration's rows of `data` (all its columns),
//!   `MSTAR_TRAIN_ROWS`: their number;
//! - `MSTAR_INIT_DIR`: the folder to start from — a copy of this stage's previous checkpoint
//!   (`init: last`, from the second iteration) or the `model` folder; `MSTAR_BASE_DIR`: the
//!   `model` folder (the base of an adapter);
//! - `MSTAR_OUTPUT_DIR`: an empty folder where the command writes the checkpoint: a model folder
//!   (config.json and *.safetensors; the base's tokenizer and processor files are added when
//!   missing) or a peft adapter folder (adapter_config.json naming a local base folder, and
//!   adapter_model.safetensors); only its top-level files are committed;
//! - `MSTAR_ITERATION`, `MSTAR_SEED` (the run's seed), `MSTAR_STAGE`.
//!
//! Its output lines go to mstar's standard error, prefixed with the stage; a command that exits
//! with an error fails the stage with its status and its last lines of standard error, and
//! nothing is committed. The command leads its own process group, killed when the run is
//! interrupted (Ctrl-C, SIGTERM) and, for what it leaves running, when it ends. The fingerprint covers the command, `env`, the inputs and the contents
//! of `files` (e.g. the script): editing the script recomputes the stage.

use super::{OpContext, OpError, OpOutput, Operator, Result};
use crate::model::checkpoint;
use crate::spec::{Pipeline, Scope, StageCheck, StageSpec};
use arrow_schema::SchemaRef;
use futures::future::BoxFuture;
use futures::FutureExt;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Lines of the command's standard error kept for the error message.
const STDERR_TAIL: usize = 20;

/// Files of a base model folder that a model folder the command writes gets when it lacks them
/// (trainers often save only the config and the weights).
const BASE_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.json",
    "chat_template.jinja",
    "preprocessor_config.json",
    "processor_config.json",
    "video_preprocessor_config.json",
    "generation_config.json",
];

/// train_external: a user's training command; outputs the checkpoint folder it writes.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainExternalSpec {
    /// Stage whose rows (this iteration's) are exported for the command.
    pub data: String,
    /// The base Hugging Face checkpoint folder: where the first iteration starts.
    pub model: crate::spec::ModelPath,
    /// `last`: start from this stage's previous-iteration checkpoint when there is one;
    /// `initial`: always from `model`.
    #[serde(default)]
    pub init: super::train::Init,
    /// The program and its arguments (no shell; `[bash, -c, "..."]` for one).
    pub command: Vec<String>,
    /// Files or folders (relative to the pipeline's folder) the command depends on: their
    /// contents are part of the fingerprint.
    #[serde(default)]
    pub files: Vec<String>,
    /// Environment variables set for the command (part of the fingerprint).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

impl super::OpConfig for TrainExternalSpec {
    fn check(&self, c: &mut StageCheck) {
        if self.command.is_empty() || self.command[0].is_empty() {
            c.error("command", "name the program to run, e.g. [python3, train.py]");
        }
        for (k, _) in self.env.iter().filter(|(k, _)| k.starts_with("MSTAR_") || k.is_empty() || k.contains('=')) {
            c.error(&format!("env.{k}"), "names starting with MSTAR_ (mstar sets them), and empty names or names with `=`, are not allowed");
        }
        for (i, f) in self.files.iter().enumerate() {
            if f.is_empty() {
                c.error(&format!("files.{i}"), "an empty path");
            }
        }
        c.reads("data", &self.data);
        if self.init == super::train::Init::Last && c.scope() == Scope::Iteration {
            c.reads_own_prev();
        }
    }

    fn build(&self, pipeline: &Pipeline, stage: &StageSpec) -> Result<Box<dyn Operator>> {
        Ok(Box::new(TrainExternalOp {
            stage: stage.id.clone(),
            spec: self.clone(),
            model_dir: pipeline.resolve_path(&self.model.path),
            files: self.files.iter().map(|f| (f.clone(), PathBuf::from(pipeline.resolve_path(f)))).collect(),
            cwd: pipeline.base_dir.clone(),
        }))
    }
}

pub struct TrainExternalOp {
    stage: String,
    spec: TrainExternalSpec,
    model_dir: String,
    /// `files` as written, and resolved.
    files: Vec<(String, PathBuf)>,
    /// The pipeline's folder: where the command runs.
    cwd: PathBuf,
}

fn fail(e: impl std::fmt::Display) -> OpError {
    OpError::Invalid(format!("train_external: {e}"))
}

/// sha256 of a file, or of a folder's files (relative names and contents, in name order).
fn hash_path(path: &Path) -> std::io::Result<String> {
    let mut h = Sha256::new();
    let meta = std::fs::metadata(path)?;
    if meta.is_dir() {
        let mut stack = vec![path.to_path_buf()];
        let mut files = Vec::new();
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d)? {
                let p = e?.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    files.push(p);
                }
            }
        }
        files.sort();
        for f in files {
            h.update(f.strip_prefix(path).unwrap_or(&f).to_string_lossy().as_bytes());
            h.update([0]);
            h.update(hash_path(&f)?.as_bytes());
        }
    } else {
        let mut f = std::fs::File::open(path)?;
        std::io::copy(&mut f, &mut h)?;
    }
    Ok(hex::encode(h.finalize()))
}

/// The process group a command leads, killed (SIGKILL: torchrun's workers too) when this is
/// dropped: when the stage is interrupted, and what is left of it when the command has ended.
struct ProcessGroup(Option<i32>);

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if let Some(pgid) = self.0.take() {
            // SAFETY: kill(2) on the group the command leads (process_group(0) at spawn)
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
    }
}

/// A folder removed when dropped.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(stage: &str, iteration: u32, attempt: &str) -> Result<Self> {
        let p = std::env::temp_dir().join("mstar-train-external").join(format!("{}-{stage}-{iteration}-{attempt}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(p.join("output")).map_err(|e| fail(format!("{}: {e}", p.display())))?;
        Ok(Self(p))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl TrainExternalOp {
    /// Writes this iteration's rows of `data` to `path`; returns their number.
    async fn export(&self, ctx: &OpContext<'_>, path: &Path) -> Result<usize> {
        let data = &self.spec.data;
        let filter = ctx.this_iteration(data, "").map(|c| format!(" WHERE {c}")).unwrap_or_default();
        let df = crate::sql::query(&ctx.session, &format!("SELECT * FROM \"{data}\"{filter}")).await.map_err(|e| fail(format!("data `{data}`: {e}")))?;
        let schema: SchemaRef = std::sync::Arc::new(df.schema().as_arrow().clone());
        let mut stream = df.execute_stream().await?;
        let file = std::fs::File::create(path).map_err(|e| fail(format!("{}: {e}", path.display())))?;
        let props = parquet::file::properties::WriterProperties::builder().set_compression(parquet::basic::Compression::ZSTD(Default::default())).build();
        let mut w = parquet::arrow::ArrowWriter::try_new(file, schema, Some(props)).map_err(|e| fail(format!("{}: {e}", path.display())))?;
        let mut rows = 0;
        use futures::StreamExt;
        while let Some(b) = stream.next().await {
            let b = b?;
            rows += b.num_rows();
            w.write(&b).map_err(|e| fail(format!("{}: {e}", path.display())))?;
        }
        w.close().map_err(|e| fail(format!("{}: {e}", path.display())))?;
        Ok(rows)
    }

    /// Runs the command with `env`, relaying its output; an error names its exit status and
    /// its last lines of standard error.
    async fn run_command(&self, env: &[(String, String)]) -> Result<()> {
        use tokio::io::AsyncBufReadExt;
        let shown = self.spec.command.join(" ");
        let mut cmd = tokio::process::Command::new(&self.spec.command[0]);
        cmd.args(&self.spec.command[1..])
            .current_dir(&self.cwd)
            .envs(self.spec.env.iter())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe; the command dies with the thread that started it
        // (a runtime thread, alive until the run ends), so a SIGKILLed mstar leaves no trainer
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| fail(format!("cannot start `{shown}` (in {}): {e}", self.cwd.display())))?;
        // the runner drops this future at Ctrl-C / SIGTERM: the whole process group goes with it
        let group = ProcessGroup(child.id().map(|p| p as i32));
        let tag = self.stage.clone();
        let stdout = child.stdout.take().expect("piped");
        let out_relay = tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("    [{tag}] {line}");
            }
        });
        let tag = self.stage.clone();
        let stderr = child.stderr.take().expect("piped");
        let err_relay = tokio::spawn(async move {
            let mut tail = std::collections::VecDeque::new();
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("    [{tag}] {line}");
                if tail.len() == STDERR_TAIL {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
            tail.into_iter().collect::<Vec<_>>()
        });
        let status = child.wait().await.map_err(|e| fail(format!("`{shown}`: {e}")))?;
        // what the command left running (it would hold the pipes, and GPUs) goes too
        drop(group);
        let _ = out_relay.await;
        let tail = err_relay.await.unwrap_or_default();
        if !status.success() {
            let how = match (status.code(), std::os::unix::process::ExitStatusExt::signal(&status)) {
                (Some(c), _) => format!("exited with status {c}"),
                (None, Some(s)) => format!("was killed by signal {s}"),
                _ => "failed".to_string(),
            };
            let tail = if tail.is_empty() { " (nothing on standard error)".to_string() } else { format!("; its last lines of standard error:\n  {}", tail.join("\n  ")) };
            return Err(fail(format!("`{shown}` {how}{tail}")));
        }
        Ok(())
    }
}

/// Copies the files of folder `from` into the new folder `to`.
fn copy_files(from: &Path, to: &Path) -> Result<()> {
    let io = |p: &Path, e: std::io::Error| fail(format!("{}: {e}", p.display()));
    std::fs::create_dir_all(to).map_err(|e| io(to, e))?;
    for e in std::fs::read_dir(from).map_err(|e| io(from, e))? {
        let p = e.map_err(|e| io(from, e))?.path();
        if p.is_file() {
            std::fs::copy(&p, to.join(p.file_name().expect("a file"))).map_err(|e| io(&p, e))?;
        }
    }
    Ok(())
}

/// The top-level files of the folder the command wrote, checked to be a checkpoint: a model
/// folder (config.json, *.safetensors; the base's tokenizer and processor files added from
/// `base` when missing) or an adapter folder (adapter_config.json whose base is a local folder,
/// adapter_model.safetensors).
fn checkpoint_files(out: &Path, base: &Path) -> Result<Vec<PathBuf>> {
    let names = |dir: &Path| -> Result<Vec<String>> {
        let rd = std::fs::read_dir(dir).map_err(|e| fail(format!("{}: {e}", dir.display())))?;
        let mut v: Vec<String> = rd.filter_map(|e| e.ok()).filter(|e| e.path().is_file()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        Ok(v)
    };
    let mut files = names(out)?;
    let what = |m: &str, files: &[String]| {
        fail(format!("the command wrote no checkpoint to MSTAR_OUTPUT_DIR: {m} (it holds: {})", if files.is_empty() { "nothing".to_string() } else { files.join(", ") }))
    };
    let has = |f: &[String], n: &str| f.iter().any(|x| x == n);
    if has(&files, crate::model::qwen_vl::ADAPTER_CONFIG) {
        if !has(&files, "adapter_model.safetensors") {
            return Err(what("adapter_config.json without adapter_model.safetensors", &files));
        }
        let ac = out.join(crate::model::qwen_vl::ADAPTER_CONFIG);
        let v: Value = serde_json::from_slice(&std::fs::read(&ac).map_err(|e| fail(format!("{}: {e}", ac.display())))?)
            .map_err(|e| fail(format!("the adapter's adapter_config.json: {e}")))?;
        let b = v.get("base_model_name_or_path").and_then(Value::as_str).unwrap_or_default();
        if !Path::new(b).join("config.json").exists() {
            return Err(fail(format!("the adapter's base_model_name_or_path `{b}` is not a local model folder (set it to MSTAR_BASE_DIR)")));
        }
    } else {
        if !has(&files, "config.json") || !files.iter().any(|f| f.ends_with(".safetensors")) {
            return Err(what("a model folder needs config.json and *.safetensors weights, an adapter folder adapter_config.json", &files));
        }
        let mut added = Vec::new();
        for f in BASE_FILES.iter().filter(|f| !has(&files, f) && base.join(f).is_file()) {
            std::fs::copy(base.join(f), out.join(f)).map_err(|e| fail(format!("copying {f} from {}: {e}", base.display())))?;
            added.push(*f);
        }
        if !added.is_empty() {
            eprintln!("  train_external: added from {}: {}", base.display(), added.join(", "));
            files = names(out)?;
        }
        if !has(&files, "preprocessor_config.json") && !has(&files, "processor_config.json") {
            return Err(what("no preprocessor_config.json or processor_config.json (the base folder has none either)", &files));
        }
    }
    Ok(files.iter().map(|f| out.join(f)).collect())
}

impl Operator for TrainExternalOp {
    fn fingerprint_extra<'a>(&'a self, _iteration: u32) -> BoxFuture<'a, Result<Value>> {
        async move {
            let mut files = serde_json::Map::new();
            for (name, path) in &self.files {
                let h = hash_path(path).map_err(|e| fail(format!("files: `{name}` ({}): {e}", path.display())))?;
                files.insert(name.clone(), json!(h));
            }
            Ok(json!({"files": files, "model": super::models::folder_fingerprint(&self.model_dir)}))
        }
        .boxed()
    }

    fn output_schema<'a>(&'a self, _ctx: &'a OpContext<'a>) -> BoxFuture<'a, Result<Option<SchemaRef>>> {
        async move { Ok(None) }.boxed()
    }

    fn execute<'a>(&'a self, ctx: &'a OpContext<'a>) -> BoxFuture<'a, Result<OpOutput>> {
        async move {
            let base = PathBuf::from(&self.model_dir);
            if !base.join("config.json").is_file() {
                return Err(fail(format!("model: {} is not a model folder (no config.json)", base.display())));
            }
            let own = ctx.input_manifests.iter().find(|(n, _)| n == &self.stage).map(|(_, m)| m.as_slice()).unwrap_or(&[]);
            let prev = if self.spec.init == super::train::Init::Last { checkpoint::latest(own) } else { None };
            let scratch = ScratchDir::new(&self.stage, ctx.iteration, &ctx.attempt)?;
            // the previous checkpoint as a copy: a command that writes to MSTAR_INIT_DIR cannot
            // change a committed checkpoint (in a local store, local_dir is the store's folder)
            let init = match prev {
                Some(m) => {
                    let stored = checkpoint::local_dir(ctx.store, m).await?;
                    let copy = scratch.0.join("init");
                    copy_files(&stored, &copy)?;
                    copy
                }
                None => base.clone(),
            };
            let data = scratch.0.join("data.parquet");
            let rows = self.export(ctx, &data).await?;
            let out = scratch.0.join("output");
            let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()).to_string_lossy().into_owned();
            let env = vec![
                ("MSTAR_TRAIN_DATA".to_string(), abs(&data)),
                ("MSTAR_TRAIN_ROWS".to_string(), rows.to_string()),
                ("MSTAR_INIT_DIR".to_string(), abs(&init)),
                ("MSTAR_BASE_DIR".to_string(), abs(&base)),
                ("MSTAR_OUTPUT_DIR".to_string(), abs(&out)),
                ("MSTAR_ITERATION".to_string(), ctx.iteration.to_string()),
                ("MSTAR_SEED".to_string(), ctx.pipeline.seed.to_string()),
                ("MSTAR_STAGE".to_string(), self.stage.clone()),
            ];
            let from = match prev {
                Some(m) => format!("this stage's checkpoint of iteration {}", m.iteration),
                None => base.display().to_string(),
            };
            eprintln!("  train_external: {rows} rows of `{}`, from {from}: `{}`", self.spec.data, self.spec.command.join(" "));
            let started = std::time::Instant::now();
            self.run_command(&env).await?;
            let files = checkpoint_files(&out, &base)?;
            let dir = format!("{}/{}", ctx.files_dir(), ctx.attempt);
            let mut entries = Vec::new();
            let mut total = 0u64;
            // one file in memory at a time
            for f in &files {
                let name = f.file_name().expect("a file").to_string_lossy().into_owned();
                let bytes = std::fs::read(f).map_err(|e| fail(format!("{}: {e}", f.display())))?;
                total += bytes.len() as u64;
                entries.extend(checkpoint::write(ctx.store, &dir, vec![(name.as_str(), bytes)]).await?);
            }
            eprintln!("  train_external: the command took {:.1} s; {} files ({:.1} MB) committed", started.elapsed().as_secs_f64(), entries.len(), total as f64 / 1e6);
            drop(scratch);
            Ok(OpOutput::Files(entries))
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_hash_covers_names_and_contents() {
        let d = std::env::temp_dir().join(format!("mstar-hash-test-{}", std::process::id()));
        std::fs::create_dir_all(d.join("sub")).unwrap();
        std::fs::write(d.join("a.py"), "print(1)").unwrap();
        std::fs::write(d.join("sub/b.py"), "x = 2").unwrap();
        let h1 = hash_path(&d).unwrap();
        assert_eq!(hash_path(&d).unwrap(), h1);
        std::fs::write(d.join("sub/b.py"), "x = 3").unwrap();
        let h2 = hash_path(&d).unwrap();
        assert_ne!(h1, h2);
        std::fs::rename(d.join("sub/b.py"), d.join("sub/c.py")).unwrap();
        assert_ne!(hash_path(&d).unwrap(), h2);
        assert_eq!(hash_path(&d.join("a.py")).unwrap(), hex::encode(Sha256::digest(b"print(1)")));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn what_the_command_writes_must_be_a_checkpoint() {
        let d = std::env::temp_dir().join(format!("mstar-ckpt-test-{}", std::process::id()));
        let (out, base) = (d.join("out"), d.join("base"));
        std::fs::create_dir_all(&out).unwrap();
        std::fs::create_dir_all(&base).unwrap();
        let err = checkpoint_files(&out, &base).unwrap_err().to_string();
        assert!(err.contains("no checkpoint") && err.contains("holds: nothing"), "{err}");
        std::fs::write(out.join("config.json"), "{}").unwrap();
        let err = checkpoint_files(&out, &base).unwrap_err().to_string();
        assert!(err.contains("config.json and *.safetensors") && err.contains("holds: config.json"), "{err}");
        std::fs::write(out.join("model.safetensors"), "x").unwrap();
        let err = checkpoint_files(&out, &base).unwrap_err().to_string();
        assert!(err.contains("preprocessor_config.json"), "{err}");
        // the base's processor and tokenizer files are added
        for f in ["preprocessor_config.json", "tokenizer.json", "config.json"] {
            std::fs::write(base.join(f), "{\"base\": 1}").unwrap();
        }
        let files = checkpoint_files(&out, &base).unwrap();
        let names: Vec<String> = files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json"]);
        // the command's own config is kept
        assert_eq!(std::fs::read_to_string(out.join("config.json")).unwrap(), "{}");
        // an adapter must name a local base
        let ad = d.join("adapter");
        std::fs::create_dir_all(&ad).unwrap();
        std::fs::write(ad.join("adapter_config.json"), r#"{"base_model_name_or_path": "Qwen/Qwen2.5-VL-7B-Instruct"}"#).unwrap();
        let err = checkpoint_files(&ad, &base).unwrap_err().to_string();
        assert!(err.contains("without adapter_model.safetensors"), "{err}");
        std::fs::write(ad.join("adapter_model.safetensors"), "x").unwrap();
        let err = checkpoint_files(&ad, &base).unwrap_err().to_string();
        assert!(err.contains("not a local model folder") && err.contains("MSTAR_BASE_DIR"), "{err}");
        std::fs::write(ad.join("adapter_config.json"), format!(r#"{{"base_model_name_or_path": {:?}}}"#, base.to_str().unwrap())).unwrap();
        assert_eq!(checkpoint_files(&ad, &base).unwrap().len(), 2);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
