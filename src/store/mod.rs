//! The run store: a folder of Parquet tables, checkpoints and manifests on any object_store
//! (local path, file://, memory://, s3://bucket/prefix), with a commit-last protocol.

pub mod lock;
pub mod manifest;
pub mod readonly;
pub mod writer;

use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use url::Url;

pub use manifest::{FileEntry, Manifest};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid store location `{0}`: {1}")]
    InvalidLocation(String, String),
    /// One line that says what failed and what to check (object_store's own message repeats
    /// its causes and the server's XML); not chained, so it is not printed twice.
    #[error("{}", describe_object_store_error(.0))]
    ObjectStore(object_store::Error),
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("{path}: {message}")]
    Corrupt { path: String, message: String },
    #[error("{0}")]
    Locked(String),
    /// A conditional commit lost: another writer committed the stage first.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl From<object_store::Error> for StoreError {
    fn from(e: object_store::Error) -> Self {
        StoreError::ObjectStore(e)
    }
}

/// object_store's error as one line: the S3 error code with what to check (credentials, the
/// bucket), an unreachable endpoint with the retries spent, else object_store's first sentence.
pub fn describe_object_store_error(e: &object_store::Error) -> String {
    // the message and its causes (the connection error is only in the innermost)
    let mut full = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        full.push_str(": ");
        full.push_str(&c.to_string());
        cause = c.source();
    }
    let between = |s: &str, a: &str, b: &str| s.split(a).nth(1).and_then(|r| r.split(b).next()).map(str::to_string);
    let code = between(&full, "<Code>", "</Code>");
    // "Error performing GET http://host/bucket/key?query in 1.2ms …"
    let request = full
        .split("Error performing ")
        .skip(1)
        .find(|r| ["GET ", "PUT ", "POST ", "HEAD ", "DELETE "].iter().any(|m| r.starts_with(m)))
        .and_then(|r| r.split(" in ").next())
        .map(|r| r.split('?').next().unwrap_or(r).to_string());
    let what = request.clone().unwrap_or_else(|| "the request".into());
    let retries = between(&full, "after ", " retries").filter(|n| n.parse::<u32>().is_ok());
    match code.as_deref() {
        Some(c @ ("SignatureDoesNotMatch" | "InvalidAccessKeyId" | "AccessDenied" | "InvalidToken" | "ExpiredToken")) => {
            format!("the object store refused {what} ({c}): check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN)")
        }
        Some("NoSuchBucket") => format!("no such bucket: {what} (NoSuchBucket) — create the bucket or fix the store URL"),
        Some(c) => format!("the object store answered {what} with {c}"),
        None if full.contains("Connection refused") || full.contains("error sending request") || full.contains("timed out") => {
            let reason = if full.contains("Connection refused") {
                "connection refused"
            } else if full.contains("timed out") {
                "timed out"
            } else {
                "no answer"
            };
            let tries = retries.map(|n| format!(" after {n} retries")).unwrap_or_default();
            format!("cannot reach the object store: {what} failed{tries} ({reason}); check AWS_ENDPOINT_URL and that the server is up")
        }
        None => full.split(": Error performing").next().unwrap_or(&full).to_string(),
    }
}

/// A location on an object store: the store, a prefix inside it, and the URL DataFusion
/// uses to reach it.
#[derive(Clone, Debug)]
pub struct Location {
    pub store: Arc<dyn ObjectStore>,
    pub prefix: Path,
    /// scheme://authority, e.g. `file://`, `memory://`, `s3://bucket`.
    pub url_root: Url,
    /// As the user wrote it (absolute for local paths).
    pub display: String,
}

impl Location {
    /// Opens a location from a plain path or a file://, memory:// or s3:// URL.
    /// S3 takes endpoint, region and credentials from the AWS_* environment variables.
    pub fn open(spec: &str) -> Result<Self> {
        Self::open_opts(spec, true)
    }

    /// Opens a location that must already exist (local folders are not created).
    pub fn open_existing(spec: &str) -> Result<Self> {
        Self::open_opts(spec, false)
    }

    fn open_opts(spec: &str, create: bool) -> Result<Self> {
        let bad = |m: &str| StoreError::InvalidLocation(spec.to_string(), m.to_string());
        if let Some(rest) = spec.strip_prefix("memory://") {
            let name = rest.split('/').next().unwrap_or("").to_string();
            let prefix = rest.trim_start_matches(&name).trim_matches('/');
            let store = memory_store(&name);
            return Ok(Self {
                store,
                prefix: Path::from(prefix),
                url_root: Url::parse(&format!("memory://{name}")).map_err(|e| bad(&e.to_string()))?,
                display: spec.to_string(),
            });
        }
        if let Some(rest) = spec.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("an S3 location is s3://bucket/prefix"));
            }
            // patient retries: an endpoint that is down for a few seconds (a restart) is waited
            // out (up to ≈ 1 min of backoff per request), not turned into a failed stage
            let retry = object_store::RetryConfig {
                backoff: object_store::BackoffConfig {
                    init_backoff: std::time::Duration::from_millis(250),
                    max_backoff: std::time::Duration::from_secs(10),
                    base: 3.0,
                },
                max_retries: 12,
                retry_timeout: std::time::Duration::from_secs(180),
            };
            let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket).with_retry(retry);
            if let Ok(endpoint) = std::env::var("AWS_ENDPOINT_URL").or_else(|_| std::env::var("AWS_ENDPOINT")) {
                if endpoint.starts_with("http://") {
                    b = b.with_allow_http(true);
                }
                b = b.with_endpoint(endpoint).with_virtual_hosted_style_request(false);
            }
            if std::env::var("AWS_REGION").is_err() && std::env::var("AWS_DEFAULT_REGION").is_err() {
                b = b.with_region("us-east-1");
            }
            let store = b.build().map_err(|e| bad(&e.to_string()))?;
            return Ok(Self {
                store: Arc::new(store),
                prefix: Path::from(prefix.trim_matches('/')),
                url_root: Url::parse(&format!("s3://{bucket}")).map_err(|e| bad(&e.to_string()))?,
                display: spec.to_string(),
            });
        }
        let local = if let Some(rest) = spec.strip_prefix("file://") {
            std::path::PathBuf::from(rest)
        } else if spec.contains("://") {
            return Err(bad("supported: a path, file://, memory:// and s3:// locations"));
        } else {
            std::path::PathBuf::from(spec)
        };
        if local.as_os_str().is_empty() {
            return Err(bad("empty path"));
        }
        let abs = if local.is_absolute() { local } else { std::env::current_dir().map_err(|e| bad(&e.to_string()))?.join(local) };
        let abs = normalize(&abs);
        if !abs.exists() {
            if !create {
                return Err(bad("no such file or folder"));
            }
            std::fs::create_dir_all(&abs).map_err(|e| bad(&e.to_string()))?;
        }
        let prefix = Path::from_absolute_path(&abs).map_err(|e| bad(&e.to_string()))?;
        Ok(Self { store: Arc::new(LocalFileSystem::new()), prefix, url_root: Url::parse("file://").expect("static url"), display: abs.display().to_string() })
    }

    /// The object path of `rel` (a /-separated path below the prefix).
    pub fn path(&self, rel: &str) -> Path {
        let mut p = self.prefix.clone();
        for part in rel.split('/').filter(|s| !s.is_empty()) {
            p = p.join(part);
        }
        p
    }

    /// `rel` relative to the prefix, if below it.
    pub fn relative(&self, p: &Path) -> Option<String> {
        p.prefix_match(&self.prefix).map(|parts| parts.map(|x| x.as_ref().to_string()).collect::<Vec<_>>().join("/"))
    }

    /// The URL DataFusion uses for an object path.
    pub fn object_url(&self, p: &Path) -> String {
        let root = match self.url_root.scheme() {
            "file" => "file://".to_string(),
            scheme => format!("{scheme}://{}", self.url_root.host_str().unwrap_or("")),
        };
        format!("{root}/{}", p.as_ref())
    }

    /// The folder of a local store (None for memory:// and s3://).
    pub fn local_root(&self) -> Option<std::path::PathBuf> {
        (self.url_root.scheme() == "file").then(|| std::path::PathBuf::from(&self.display))
    }

    pub async fn list(&self, rel: &str) -> Result<Vec<object_store::ObjectMeta>> {
        let prefix = self.path(rel);
        let mut out: Vec<_> = self.store.list(Some(&prefix)).try_collect().await?;
        out.sort_by(|a, b| a.location.cmp(&b.location));
        Ok(out)
    }
}

/// object_store's local staging file of an interrupted write: `NAME#` followed by digits.
fn is_staging_file(name: &str) -> bool {
    name.rsplit_once('#').is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn normalize(p: &std::path::Path) -> std::path::PathBuf {
    let mut out = std::path::PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// memory:// stores live for the whole process and are shared by name.
fn memory_store(name: &str) -> Arc<dyn ObjectStore> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<InMemory>>>> = OnceLock::new();
    let mut map = STORES.get_or_init(Default::default).lock().expect("memory store registry");
    map.entry(name.to_string()).or_insert_with(|| Arc::new(InMemory::new())).clone()
}

/// A run store: tables, checkpoints, manifests, the frozen spec and the lock.
#[derive(Clone, Debug)]
pub struct RunStore {
    pub loc: Location,
}

pub const RUN_FILE: &str = "run.json";
pub const SPEC_FILE: &str = "pipeline.yaml";
pub const PLAN_FILE: &str = "plan.json";
pub const MANIFESTS: &str = "_manifests";

impl RunStore {
    pub fn open(spec: &str) -> Result<Self> {
        Ok(Self { loc: Location::open(spec)? })
    }

    /// Opens a store that must exist already (for reading).
    pub fn open_existing(spec: &str) -> Result<Self> {
        Ok(Self { loc: Location::open_existing(spec)? })
    }

    pub fn display(&self) -> &str {
        &self.loc.display
    }

    pub async fn exists(&self, rel: &str) -> Result<bool> {
        match self.loc.store.head(&self.loc.path(rel)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn read_bytes(&self, rel: &str) -> Result<Option<bytes::Bytes>> {
        match self.loc.store.get(&self.loc.path(rel)).await {
            Ok(r) => Ok(Some(r.bytes().await?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn read_json<T: DeserializeOwned>(&self, rel: &str) -> Result<Option<T>> {
        let Some(b) = self.read_bytes(rel).await? else { return Ok(None) };
        serde_json::from_slice(&b).map(Some).map_err(|e| StoreError::Corrupt { path: format!("{}/{rel}", self.display()), message: e.to_string() })
    }

    /// Writes a whole object (atomically replacing any previous one).
    pub async fn write_bytes(&self, rel: &str, data: Vec<u8>) -> Result<()> {
        self.loc.store.put(&self.loc.path(rel), PutPayload::from(data)).await?;
        Ok(())
    }

    pub async fn write_json<T: Serialize>(&self, rel: &str, v: &T) -> Result<()> {
        let mut data = serde_json::to_vec_pretty(v).map_err(|e| StoreError::Other(e.to_string()))?;
        data.push(b'\n');
        self.write_bytes(rel, data).await
    }

    pub async fn delete(&self, p: &Path) -> Result<()> {
        match self.loc.store.delete(p).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Folder of a stage's data files at an iteration.
    pub fn table_dir(stage: &str, iteration: u32) -> String {
        format!("tables/{stage}/iteration={iteration}")
    }

    fn manifest_rel(stage: &str, iteration: u32) -> String {
        format!("{MANIFESTS}/iteration={iteration}/{stage}.json")
    }

    /// The committed manifest of a stage at an iteration.
    pub async fn manifest(&self, stage: &str, iteration: u32) -> Result<Option<Manifest>> {
        self.read_json(&Self::manifest_rel(stage, iteration)).await
    }

    /// Every committed manifest, ordered by iteration then stage.
    pub async fn manifests(&self) -> Result<Vec<Manifest>> {
        let mut out = Vec::new();
        for meta in self.loc.list(MANIFESTS).await? {
            if !meta.location.as_ref().ends_with(".json") {
                continue;
            }
            let rel = self.loc.relative(&meta.location).unwrap_or_default();
            if let Some(m) = self.read_json::<Manifest>(&rel).await? {
                out.push(m);
            }
        }
        out.sort_by(|a, b| (a.iteration, &a.stage).cmp(&(b.iteration, &b.stage)));
        Ok(out)
    }

    /// Commits a stage: its data files must already be written. The manifest is the last
    /// object written, so readers never see a half-written stage. Files of the manifest it
    /// replaces are deleted afterwards.
    ///
    /// The commit is conditional: it succeeds only if the stored manifest is still `replaced`
    /// (none when `replaced` is None), checked by its attempt id and written with a put that
    /// the store refuses if the object changed since it was read (S3 and memory: `If-None-Match`
    /// / `If-Match` on the e_tag; a local folder: the same check under an exclusive file lock,
    /// see [`RunStore::put_if`]). A writer that lost gets [`StoreError::Conflict`] naming the
    /// stage and iteration; the winner's manifest is never overwritten.
    pub async fn commit(&self, m: &Manifest, replaced: Option<&Manifest>) -> Result<()> {
        let rel = Self::manifest_rel(&m.stage, m.iteration);
        let mut body = serde_json::to_vec_pretty(m).map_err(|e| StoreError::Other(e.to_string()))?;
        body.push(b'\n');
        let lost = |found: Option<&str>| {
            StoreError::Conflict(format!(
                "stage {} at iteration {}: another writer committed it first (the stored manifest {}, this commit expected {}); \
                 attempt {} was not committed",
                m.stage,
                m.iteration,
                found.map(|a| format!("is attempt {a}")).unwrap_or_else(|| "changed while this commit wrote it".into()),
                replaced.map(|r| format!("attempt {}", r.attempt)).unwrap_or_else(|| "no manifest".into()),
                m.attempt
            ))
        };
        let current = self.read_versioned::<Manifest>(&rel).await?;
        let found = current.as_ref().map(|(c, _)| c.attempt.as_str());
        if found != replaced.map(|r| r.attempt.as_str()) {
            return Err(lost(found));
        }
        if !self.put_if(&rel, body, current.as_ref().map(|(_, v)| v)).await? {
            return Err(lost(None));
        }
        if let Some(old) = replaced {
            for f in old.all_files() {
                if !m.all_files().any(|n| n.path == f.path) {
                    self.delete(&self.loc.path(&f.path)).await?;
                }
            }
        }
        Ok(())
    }

    /// An object decoded from JSON with the version (e_tag, version) it was read at.
    pub async fn read_versioned<T: DeserializeOwned>(&self, rel: &str) -> Result<Option<(T, UpdateVersion)>> {
        let r = match self.loc.store.get(&self.loc.path(rel)).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let version = UpdateVersion { e_tag: r.meta.e_tag.clone(), version: r.meta.version.clone() };
        let b = r.bytes().await?;
        let v = serde_json::from_slice(&b).map_err(|e| StoreError::Corrupt { path: format!("{}/{rel}", self.display()), message: e.to_string() })?;
        Ok(Some((v, version)))
    }

    /// Writes `rel` only if it is still at `expected` (None: only if it does not exist);
    /// false when another writer got there first. On S3 and memory stores this is
    /// object_store's conditional put (`PutMode::Create`, `PutMode::Update`). object_store's
    /// local file system has no `PutMode::Update`, so a local store compares the file's e_tag
    /// (inode, mtime, size) under an exclusive `flock` of `_manifests/.commit-lock`, held by
    /// every local commit, and then replaces the file by an atomic rename (readers never see
    /// it missing or half-written). That excludes every mstar writer on this host and on file
    /// systems where flock is honoured across hosts (local disks, NFSv4, Lustre with flock);
    /// a shared file system without flock is not protected.
    pub async fn put_if(&self, rel: &str, body: Vec<u8>, expected: Option<&UpdateVersion>) -> Result<bool> {
        let path = self.loc.path(rel);
        if let Some(root) = self.loc.local_root() {
            let lock_path = root.join(MANIFESTS).join(".commit-lock");
            let guard = tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
                std::fs::create_dir_all(lock_path.parent().expect("below the root"))?;
                let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path)?;
                f.lock()?;
                Ok(f)
            })
            .await
            .map_err(|e| StoreError::Other(format!("commit lock: {e}")))?
            .map_err(|e| StoreError::Other(format!("{}/{MANIFESTS}/.commit-lock: cannot lock it for a commit: {e}", self.display())))?;
            let now = match self.loc.store.head(&path).await {
                Ok(meta) => Some(meta.e_tag),
                Err(object_store::Error::NotFound { .. }) => None,
                Err(e) => return Err(e.into()),
            };
            let won = now.as_ref() == expected.map(|v| &v.e_tag);
            if won {
                self.loc.store.put(&path, PutPayload::from(body)).await?;
            }
            drop(guard);
            return Ok(won);
        }
        let mode = match expected {
            None => PutMode::Create,
            Some(v) => PutMode::Update(v.clone()),
        };
        match self.loc.store.put_opts(&path, PutPayload::from(body), PutOptions { mode, ..Default::default() }).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes a stage's committed manifest (its files stay until the stage is rewritten).
    pub async fn uncommit(&self, stage: &str, iteration: u32) -> Result<()> {
        self.delete(&self.loc.path(&Self::manifest_rel(stage, iteration))).await
    }

    /// Data files below a stage's folder that no committed manifest lists: leftovers of an
    /// attempt that crashed (or of one that is running now).
    pub async fn uncommitted_files(&self, stage: &str, iteration: u32, committed: Option<&Manifest>) -> Result<Vec<object_store::ObjectMeta>> {
        let dir = format!("{}/", Self::table_dir(stage, iteration));
        let ckpt = format!("{}/", Self::files_dir(stage, iteration));
        let mut out = Vec::new();
        for rel_dir in [dir, ckpt] {
            for meta in self.loc.list(&rel_dir).await? {
                let rel = self.loc.relative(&meta.location).unwrap_or_default();
                if !committed.is_some_and(|m| m.all_files().any(|f| f.path == rel)) {
                    out.push(meta);
                }
            }
        }
        Ok(out)
    }

    /// Files below `tables/` and `checkpoints/` that no committed manifest lists — leftovers
    /// of crashed or superseded attempts and, on a local store, the staging files (`NAME#N`,
    /// which object_store's listing hides) of writes that were killed — as (path relative to
    /// the store, bytes). Only meaningful while no run writes to the store.
    pub async fn orphans(&self) -> Result<Vec<(String, u64)>> {
        let referenced: std::collections::HashSet<String> = self.manifests().await?.iter().flat_map(|m| m.all_files().map(|f| f.path.clone())).collect();
        let mut out = Vec::new();
        for dir in ["tables", "checkpoints"] {
            for meta in self.loc.list(&format!("{dir}/")).await? {
                let rel = self.loc.relative(&meta.location).unwrap_or_default();
                if !referenced.contains(&rel) {
                    out.push((rel, meta.size));
                }
            }
            if let Some(root) = self.loc.local_root() {
                let mut stack = vec![root.join(dir)];
                while let Some(d) = stack.pop() {
                    let Ok(entries) = std::fs::read_dir(&d) else { continue };
                    for e in entries.flatten() {
                        let path = e.path();
                        let Ok(kind) = e.file_type() else { continue };
                        if kind.is_dir() {
                            stack.push(path);
                        } else if is_staging_file(&e.file_name().to_string_lossy()) {
                            let rel = path.strip_prefix(&root).map(|r| r.to_string_lossy().into_owned()).unwrap_or_default();
                            out.push((rel, e.metadata().map(|m| m.len()).unwrap_or(0)));
                        }
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Deletes `orphans()` (call while holding the run lock): how many files and bytes.
    pub async fn remove_orphans(&self) -> Result<(usize, u64)> {
        let orphans = self.orphans().await?;
        let bytes = orphans.iter().map(|(_, n)| n).sum();
        for (rel, _) in &orphans {
            match self.loc.local_root() {
                // object_store cannot address its own staging names
                Some(root) if is_staging_file(rel) => match std::fs::remove_file(root.join(rel)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(StoreError::Other(format!("{rel}: {e}"))),
                    _ => {}
                },
                _ => self.delete(&self.loc.path(rel)).await?,
            }
        }
        Ok((orphans.len(), bytes))
    }

    /// Folder for an operator that outputs files (e.g. a checkpoint) at an iteration.
    pub fn files_dir(stage: &str, iteration: u32) -> String {
        format!("checkpoints/{stage}/iteration={iteration}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_each_scheme() {
        let m = Location::open("memory://t1/runs/a").unwrap();
        assert_eq!(m.prefix.as_ref(), "runs/a");
        assert_eq!(m.object_url(&m.path("x/y.parquet")), "memory://t1/runs/a/x/y.parquet");
        let dir = tempfile::tempdir().unwrap();
        let l = Location::open(dir.path().to_str().unwrap()).unwrap();
        assert!(l.object_url(&l.path("a.json")).starts_with("file:///"));
        let f = Location::open(&format!("file://{}", dir.path().display())).unwrap();
        assert_eq!(f.prefix, l.prefix);
        assert!(Location::open("ftp://x").is_err());
        assert!(Location::open("s3://").is_err());
    }

    fn manifest(attempt: &str) -> Manifest {
        Manifest {
            format: manifest::MANIFEST_FORMAT,
            stage: "rollouts".into(),
            iteration: 2,
            op: "generate".into(),
            fingerprint: "f".into(),
            attempt: attempt.into(),
            kind: manifest::OutputKind::Table,
            files: vec![FileEntry { path: format!("tables/rollouts/iteration=2/part-{attempt}-00000.parquet"), bytes: 1, rows: Some(1) }],
            rows: 1,
            bytes: 1,
            schema: None,
            inputs: vec![],
            side: vec![],
            started_at: String::new(),
            finished_at: String::new(),
            duration_ms: 0,
            mstar_version: String::new(),
        }
    }

    /// Commits only replace the manifest they expect; a stale writer gets a conflict naming the
    /// stage and iteration, and the stored manifest stays the winner's.
    async fn commits_are_conditional(store: RunStore) {
        let (a, b, c) = (manifest("aaaa"), manifest("bbbb"), manifest("cccc"));
        store.commit(&a, None).await.unwrap();
        // a second first commit loses
        let e = store.commit(&b, None).await.unwrap_err().to_string();
        assert!(e.contains("stage rollouts at iteration 2: another writer committed it first") && e.contains("attempt aaaa"), "{e}");
        store.commit(&c, Some(&a)).await.unwrap();
        // a writer that still believes `a` is committed loses
        let e = store.commit(&b, Some(&a)).await.unwrap_err();
        assert!(matches!(e, StoreError::Conflict(_)) && e.to_string().contains("is attempt cccc, this commit expected attempt aaaa"), "{e}");
        assert_eq!(store.manifest("rollouts", 2).await.unwrap().unwrap().attempt, "cccc");
        // the put itself is conditional: a version read before another writer replaced the
        // object no longer matches
        let rel = RunStore::manifest_rel("rollouts", 2);
        let (_, v) = store.read_versioned::<Manifest>(&rel).await.unwrap().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        store.write_json(&rel, &b).await.unwrap();
        assert!(!store.put_if(&rel, b"{}".to_vec(), Some(&v)).await.unwrap());
        assert!(!store.put_if(&rel, b"{}".to_vec(), None).await.unwrap());
        assert_eq!(store.manifest("rollouts", 2).await.unwrap().unwrap().attempt, "bbbb");
        let (_, v) = store.read_versioned::<Manifest>(&rel).await.unwrap().unwrap();
        assert!(store.put_if(&rel, serde_json::to_vec(&a).unwrap(), Some(&v)).await.unwrap());
        // racing first commits: exactly one wins
        store.uncommit("rollouts", 2).await.unwrap();
        let tasks: Vec<_> = (0..8)
            .map(|k| {
                let s = store.clone();
                tokio::spawn(async move { s.commit(&manifest(&format!("w{k}")), None).await.is_ok() })
            })
            .collect();
        let mut won = 0;
        for t in tasks {
            won += t.await.unwrap() as usize;
        }
        assert_eq!(won, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn local_commits_are_conditional() {
        let dir = tempfile::tempdir().unwrap();
        commits_are_conditional(RunStore::open(dir.path().to_str().unwrap()).unwrap()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn memory_commits_are_conditional() {
        commits_are_conditional(RunStore::open("memory://conditional-commits/run").unwrap()).await;
    }
}
