//! The `import` operator: a dataset file or folder (Parquet, JSON array, JSONL), local or on an
//! object store, streamed into a stage table in file order. JSONL is read line by line: a
//! line that is not a JSON object (or does not fit the schema inferred from the first records)
//! goes to the `quarantine` side table with its file and 1-based line number.

use super::{OpContext, OpError, OpOutput, Operator, Result};
use crate::spec::{DatasetFormat, Pipeline, StageCheck, StageSpec};
use crate::store::Location;
use arrow::array::RecordBatch;
use arrow_schema::SchemaRef;
use datafusion::datasource::file_format::json::JsonFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{stream, FutureExt, StreamExt};
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use serde_json::{json, Value};
use std::sync::Arc;

/// import: a dataset of the pipeline's `datasets` as a table.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportSpec {
    /// Name of an entry in `datasets`.
    pub dataset: String,
}

impl super::OpConfig for ImportSpec {
    fn check(&self, c: &mut StageCheck) {
        if let Err(known) = c.dataset(&self.dataset) {
            let known = if known.is_empty() { "none defined".to_string() } else { known.join(", ") };
            c.error("dataset", format!("unknown dataset `{}` (datasets: {known})", self.dataset));
        }
    }

    fn default_scope(&self) -> crate::spec::Scope {
        crate::spec::Scope::Setup
    }

    fn build(&self, pipeline: &Pipeline, _: &StageSpec) -> Result<Box<dyn Operator>> {
        Ok(Box::new(ImportOp::new(pipeline, self)?))
    }
}

pub struct ImportOp {
    dataset: String,
    url: String,
    format: Option<DatasetFormat>,
    /// The resolved options of a prompts format (MathVista, MathV360K, hf, verl).
    prompts: Option<crate::data::import::ImportOptions>,
    /// The dataset's limits (`max_image_pixels`), and whether it set them.
    limits: crate::data::import::ImportLimits,
    limits_set: bool,
    /// A split of the synthetic task, generated here.
    synth: Option<crate::spec::SynthSource>,
}

/// The files of a dataset, in the order they are read.
struct Files {
    loc: Location,
    files: Vec<ObjectMeta>,
    format: DatasetFormat,
}

impl ImportOp {
    pub fn new(pipeline: &Pipeline, spec: &ImportSpec) -> Result<Self> {
        let ds = pipeline.datasets.get(&spec.dataset).ok_or_else(|| OpError::Invalid(format!("unknown dataset `{}`", spec.dataset)))?;
        let url = pipeline.resolve_path(&ds.path);
        let prompts = ds.format.and_then(|f| f.prompts_format()).map(|format| crate::data::import::ImportOptions {
            format,
            path: url.clone(),
            images: ds.images.as_ref().map(|i| pipeline.resolve_path(i)),
            split: ds.split.clone(),
            source: spec.dataset.clone(),
            columns: ds.columns.clone(),
            shard: None,
        });
        let mut limits = crate::data::import::ImportLimits::default();
        if let Some(n) = ds.max_image_pixels {
            limits.max_image_pixels = n;
        }
        Ok(Self { dataset: spec.dataset.clone(), url, format: ds.format, prompts, limits, limits_set: ds.max_image_pixels.is_some(), synth: ds.synth.clone() })
    }

    fn fail(&self, msg: impl std::fmt::Display) -> OpError {
        OpError::Invalid(format!("dataset `{}` ({}): {msg}", self.dataset, self.url))
    }

    async fn files(&self) -> Result<Files> {
        let loc = Location::open_existing(&self.url).map_err(|e| self.fail(e))?;
        let is_local_dir = !self.url.contains("://") || self.url.starts_with("file://");
        let single = if is_local_dir {
            let p = self.url.strip_prefix("file://").unwrap_or(&self.url);
            std::fs::metadata(p).map_err(|e| self.fail(e))?.is_file()
        } else {
            loc.store.head(&loc.prefix).await.is_ok()
        };
        let files: Vec<ObjectMeta> =
            if single { vec![loc.store.head(&loc.prefix).await.map_err(|e| self.fail(e))?] } else { loc.list("").await.map_err(|e| self.fail(e))? };
        let format = match self.format {
            Some(f) => f,
            None => files
                .iter()
                .find_map(|f| DatasetFormat::from_extension(f.location.as_ref()))
                .ok_or_else(|| self.fail("cannot tell the format from the file names; set `format: parquet|json|jsonl`"))?,
        };
        let files: Vec<ObjectMeta> =
            if single { files } else { files.into_iter().filter(|f| DatasetFormat::from_extension(f.location.as_ref()) == Some(format)).collect() };
        if files.is_empty() {
            return Err(self.fail(format!("no {} files found", format.extension())));
        }
        Ok(Files { loc, files, format })
    }

    /// A single-partition session, so rows come out in file order.
    fn session(loc: &Location) -> SessionContext {
        let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
        ctx.register_object_store(&loc.url_root, loc.store.clone());
        ctx
    }

    async fn listing(&self, f: &Files, ctx: &SessionContext) -> Result<ListingTable> {
        let format: Arc<dyn FileFormat> = match f.format {
            DatasetFormat::Parquet => Arc::new(ParquetFormat::default()),
            _ => Arc::new(JsonFormat::default()),
        };
        let urls = f.files.iter().map(|m| ListingTableUrl::parse(f.loc.object_url(&m.location))).collect::<std::result::Result<Vec<_>, _>>()?;
        let options = ListingOptions::new(format).with_file_extension("");
        let config = ListingTableConfig::new_with_multi_paths(urls).with_listing_options(options).infer_schema(&ctx.state()).await.map_err(|e| self.fail(e))?;
        Ok(ListingTable::try_new(config)?)
    }

    /// A JSON file holding an array of objects is read whole (use JSONL or Parquet for
    /// large data).
    async fn json_array(&self, f: &Files) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        let mut rows: Vec<Value> = Vec::new();
        for m in &f.files {
            let bytes = f.loc.store.get(&m.location).await?.bytes().await?;
            let v: Value = serde_json::from_slice(&bytes).map_err(|e| self.fail(format!("{}: {e}", m.location)))?;
            let Value::Array(items) = v else {
                return Err(self.fail(format!("{}: expected a JSON array of objects (use format: jsonl for one object per line)", m.location)));
            };
            for (i, item) in items.into_iter().enumerate() {
                if !item.is_object() {
                    return Err(self.fail(format!("{}: item {i} is not a JSON object", m.location)));
                }
                rows.push(item);
            }
        }
        let schema = arrow::json::reader::infer_json_schema_from_iterator(rows.iter().map(|v| Ok(v.clone())))?;
        let schema = Arc::new(schema);
        let mut decoder = arrow::json::ReaderBuilder::new(schema.clone()).build_decoder()?;
        let mut batches = Vec::new();
        for chunk in rows.chunks(4096) {
            decoder.serialize(chunk).map_err(|e| self.fail(e))?;
            while let Some(b) = decoder.flush()? {
                batches.push(b);
            }
        }
        Ok((schema, batches))
    }
}

/// Records read to infer a JSONL dataset's schema (as DataFusion's JSON reader does).
const JSONL_INFER_RECORDS: usize = 1000;
/// Rows per record batch of a JSONL import.
const JSONL_BATCH_ROWS: usize = 1024;

impl ImportOp {
    /// The schema of a JSONL dataset, from its first valid records; broken lines are skipped
    /// here (the import quarantines them). A dataset with lines but no valid one is an error.
    async fn jsonl_schema(&self, f: &Files) -> Result<SchemaRef> {
        let mut lines = JsonlLines::new(f);
        let mut records = Vec::new();
        let mut first_bad: Option<(Line, LineError)> = None;
        while records.len() < JSONL_INFER_RECORDS {
            let Some(line) = lines.next().await.map_err(|e| self.fail(e))? else { break };
            match parse_line(&line) {
                None => {}
                Some(Ok(v)) => records.push(v),
                Some(Err(reason)) => {
                    first_bad.get_or_insert((line, reason));
                }
            }
        }
        if let (true, Some((line, reason))) = (records.is_empty(), first_bad) {
            return Err(self.fail(format!("{}: no valid JSON record; {reason}", line.file)));
        }
        let schema = arrow::json::reader::infer_json_schema_from_iterator(records.into_iter().map(Ok)).map_err(|e| self.fail(e))?;
        Ok(Arc::new(schema))
    }
}

/// One line of a JSONL file.
struct Line {
    /// The file, relative to the dataset folder (its name for a single file).
    file: Arc<str>,
    /// 1-based.
    number: usize,
    text: Vec<u8>,
}

/// Why a JSONL line is not a record; displayed, the `reason` of its quarantine row.
#[derive(Debug, thiserror::Error)]
enum LineError {
    #[error("line {line}: not a JSON object")]
    NotAnObject { line: usize },
    /// `message`: serde_json's, without its own "at line L column C".
    #[error("line {line}: invalid JSON at column {column}: {message}")]
    InvalidJson { line: usize, column: usize, message: String },
}

/// A JSONL line as a JSON object: None for a blank line, Err(why) for a broken one.
fn parse_line(line: &Line) -> Option<std::result::Result<Value, LineError>> {
    let text = line.text.strip_suffix(b"\r").unwrap_or(&line.text);
    // a byte order mark at the start of a file
    let text = if line.number == 1 { text.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(text) } else { text };
    if text.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    let n = line.number;
    Some(match serde_json::from_slice::<Value>(text) {
        Ok(v) if v.is_object() => Ok(v),
        Ok(_) => Err(LineError::NotAnObject { line: n }),
        Err(e) => {
            let full = e.to_string();
            let message = full.strip_suffix(&format!(" at line {} column {}", e.line(), e.column())).unwrap_or(&full).to_string();
            Err(LineError::InvalidJson { line: n, column: e.column(), message })
        }
    })
}

/// A JSONL file of the dataset that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {err}")]
struct ReadError {
    file: Arc<str>,
    // `err`, not `source`: the message already says it
    err: object_store::Error,
}

/// The lines of a dataset's JSONL files in order, each file read as a stream of chunks (a
/// file is never held whole).
struct JsonlLines {
    store: Arc<dyn ObjectStore>,
    files: std::vec::IntoIter<(Arc<str>, object_store::path::Path)>,
    current: Option<OpenFile>,
}

struct OpenFile {
    name: Arc<str>,
    chunks: BoxStream<'static, object_store::Result<bytes::Bytes>>,
    buf: Vec<u8>,
    /// Start of the first unread line in `buf`; `buf[pos..scanned]` holds no newline.
    pos: usize,
    scanned: usize,
    line: usize,
    eof: bool,
}

impl JsonlLines {
    fn new(f: &Files) -> Self {
        let files: Vec<(Arc<str>, object_store::path::Path)> = f
            .files
            .iter()
            .map(|m| {
                let rel = f.loc.relative(&m.location).filter(|r| !r.is_empty());
                let name = rel.unwrap_or_else(|| m.location.filename().unwrap_or(m.location.as_ref()).to_string());
                (Arc::from(name), m.location.clone())
            })
            .collect();
        Self { store: f.loc.store.clone(), files: files.into_iter(), current: None }
    }

    async fn next(&mut self) -> std::result::Result<Option<Line>, ReadError> {
        loop {
            let Some(cur) = self.current.as_mut() else {
                let Some((name, path)) = self.files.next() else { return Ok(None) };
                let chunks = self.store.get(&path).await.map_err(|err| ReadError { file: name.clone(), err })?.into_stream();
                self.current = Some(OpenFile { name, chunks, buf: Vec::new(), pos: 0, scanned: 0, line: 0, eof: false });
                continue;
            };
            if let Some(i) = cur.buf[cur.scanned..].iter().position(|&b| b == b'\n') {
                let end = cur.scanned + i;
                let text = cur.buf[cur.pos..end].to_vec();
                cur.pos = end + 1;
                cur.scanned = cur.pos;
                cur.line += 1;
                return Ok(Some(Line { file: cur.name.clone(), number: cur.line, text }));
            }
            cur.scanned = cur.buf.len();
            if cur.eof {
                if cur.pos < cur.buf.len() {
                    // the last line, without a newline
                    let text = cur.buf[cur.pos..].to_vec();
                    cur.pos = cur.buf.len();
                    cur.line += 1;
                    return Ok(Some(Line { file: cur.name.clone(), number: cur.line, text }));
                }
                self.current = None;
                continue;
            }
            if cur.pos > 0 {
                cur.buf.drain(..cur.pos);
                cur.scanned -= cur.pos;
                cur.pos = 0;
            }
            match cur.chunks.next().await {
                Some(Ok(b)) => cur.buf.extend_from_slice(&b),
                Some(Err(err)) => return Err(ReadError { file: cur.name.clone(), err }),
                None => cur.eof = true,
            }
        }
    }
}

/// Record batches of a JSONL dataset; bad lines go to `quarantine`.
struct JsonlBatches {
    lines: JsonlLines,
    schema: SchemaRef,
    source: String,
    quarantine: crate::data::import::QuarantineSink,
}

impl JsonlBatches {
    fn quarantine(&self, file: &str, number: usize, reason: String, record: String) {
        self.quarantine.lock().expect("quarantine").push(crate::data::prompts::Quarantined {
            source: self.source.clone(),
            row: format!("{file}:{number}"),
            reason,
            record: crate::data::import::truncate(record),
        });
    }

    fn decode(&self, rows: &[Value]) -> std::result::Result<Option<RecordBatch>, arrow_schema::ArrowError> {
        let mut decoder = arrow::json::ReaderBuilder::new(self.schema.clone()).with_batch_size(rows.len().max(1)).build_decoder()?;
        decoder.serialize(rows)?;
        decoder.flush()
    }

    async fn next_batch(&mut self) -> datafusion::error::Result<Option<RecordBatch>> {
        let (mut at, mut values): (Vec<(Arc<str>, usize)>, Vec<Value>) = (Vec::new(), Vec::new());
        while values.len() < JSONL_BATCH_ROWS {
            let Some(line) = self.lines.next().await.map_err(|e| datafusion::error::DataFusionError::Execution(e.to_string()))? else { break };
            match parse_line(&line) {
                None => {}
                Some(Ok(v)) => {
                    at.push((line.file, line.number));
                    values.push(v);
                }
                Some(Err(why)) => self.quarantine(&line.file, line.number, why.to_string(), String::from_utf8_lossy(&line.text).into_owned()),
            }
        }
        if values.is_empty() {
            return Ok(None);
        }
        if let Ok(Some(batch)) = self.decode(&values) {
            return Ok(Some(batch));
        }
        // some record does not fit the schema: find it, row by row
        let mut good = Vec::new();
        for ((file, number), v) in at.into_iter().zip(values) {
            match self.decode(std::slice::from_ref(&v)) {
                Ok(Some(b)) => good.push(b),
                Ok(None) => {}
                Err(e) => self.quarantine(&file, number, format!("line {number}: does not fit the schema of the first records: {e}"), v.to_string()),
            }
        }
        Ok(Some(arrow::compute::concat_batches(&self.schema, &good)?))
    }
}

/// The rows of shard `sh` of a table that carries its own `prompt_id`s (a sharded import of a
/// Parquet, JSON or JSONL table, or of the synthetic task): `shard_of(prompt_id) = i`, a
/// missing prompt_id going to shard 0. Without a shard, the stream as it is.
fn keep_shard(stream: SendableRecordBatchStream, sh: Option<crate::shard::Shard>) -> OpOutput {
    use arrow::array::{Array, AsArray, BooleanArray};
    use datafusion::error::DataFusionError;
    let Some(sh) = sh else { return OpOutput::Table(stream) };
    let schema = stream.schema();
    let mine = move |batch: RecordBatch| -> datafusion::error::Result<RecordBatch> {
        let col = batch.column_by_name("prompt_id").ok_or_else(|| {
            DataFusionError::Execution(format!(
                "a sharded import splits the rows by their `prompt_id` column, which this dataset lacks (its columns: {}); import it as one shard",
                batch.schema().fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", ")
            ))
        })?;
        let ids = arrow::compute::cast(col, &arrow_schema::DataType::Utf8)?;
        let ids = ids.as_string::<i32>();
        let keep: BooleanArray =
            (0..ids.len()).map(|i| Some(if ids.is_null(i) { sh.index == 0 } else { crate::shard::shard_of(ids.value(i), sh.count) == sh.index })).collect();
        Ok(arrow::compute::filter_record_batch(&batch, &keep)?)
    };
    OpOutput::Table(Box::pin(RecordBatchStreamAdapter::new(schema, stream.map(move |b| b.and_then(mine)))))
}

impl Operator for ImportOp {

    fn fingerprint_extra<'a>(&'a self, _iteration: u32) -> BoxFuture<'a, Result<Value>> {
        async move {
            if let Some(sy) = &self.synth {
                return Ok(json!({ "synth": sy, "generator": crate::data::synth_dataset::GENERATOR_VERSION }));
            }
            let f = self.files().await?;
            let files: Vec<Value> = f
                .files
                .iter()
                .map(|m| {
                    json!({
                        "path": f.loc.relative(&m.location).unwrap_or_else(|| m.location.to_string()),
                        "size": m.size,
                        "modified": m.last_modified.to_rfc3339(),
                        "e_tag": m.e_tag,
                    })
                })
                .collect();
            let mut extra = json!({ "format": f.format, "files": files });
            if self.limits_set {
                extra["max_image_pixels"] = json!(self.limits.max_image_pixels);
            }
            Ok(extra)
        }
        .boxed()
    }

    fn output_schema<'a>(&'a self, _ctx: &'a OpContext<'a>) -> BoxFuture<'a, Result<Option<SchemaRef>>> {
        async move {
            if self.prompts.is_some() {
                return Ok(Some(crate::data::prompts::prompts_schema()));
            }
            if self.synth.is_some() {
                return Ok(Some(crate::data::synth_dataset::schema()));
            }
            let f = self.files().await?;
            if f.format == DatasetFormat::Json {
                return Ok(Some(self.json_array(&f).await?.0));
            }
            if f.format == DatasetFormat::Jsonl {
                return Ok(Some(self.jsonl_schema(&f).await?));
            }
            let ctx = Self::session(&f.loc);
            let table = self.listing(&f, &ctx).await?;
            Ok(Some(datafusion::catalog::TableProvider::schema(&table)))
        }
        .boxed()
    }

    fn execute<'a>(&'a self, ctx: &'a OpContext<'a>) -> BoxFuture<'a, Result<OpOutput>> {
        async move {
            if let Some(sy) = self.synth.clone() {
                // generated in chunks on the blocking pool; the same rows as `mstar data synth`
                let sizes = crate::data::synth_dataset::SynthSizes { cot: sy.cot, ..Default::default() };
                let chunks: Vec<std::ops::Range<u64>> = (0..sy.count).step_by(512).map(|lo| lo..(lo + 512).min(sy.count)).collect();
                let stream = stream::iter(chunks).then(move |r| {
                    let (split, sizes) = (sy.split.clone(), sizes.clone());
                    async move {
                        tokio::task::spawn_blocking(move || crate::data::synth_dataset::batch(sy.seed, &split, r, &sizes))
                            .await
                            .map_err(|e| datafusion::error::DataFusionError::Execution(e.to_string()))
                    }
                });
                return Ok(keep_shard(Box::pin(RecordBatchStreamAdapter::new(crate::data::synth_dataset::schema(), stream)), ctx.shard));
            }
            if let Some(opts) = &self.prompts {
                let sink = crate::data::import::QuarantineSink::default();
                // a shard checks and decodes only its own records
                let opts = crate::data::import::ImportOptions { shard: ctx.shard.map(|s| (s.index, s.count)), ..opts.clone() };
                let stream = crate::data::import::import_with_limits(opts, self.limits, sink.clone()).await.map_err(|e| self.fail(e))?;
                let schema = stream.schema();
                let side = ctx.side.clone();
                // once every row is read, the bad ones become the `quarantine` side table
                let flush = stream::once(async move {
                    let rows = std::mem::take(&mut *sink.lock().expect("quarantine"));
                    side.push("quarantine", crate::data::prompts::quarantine_batch(&rows));
                })
                .filter_map(|_| async { None });
                return Ok(OpOutput::Table(Box::pin(RecordBatchStreamAdapter::new(schema, stream.chain(flush)))));
            }
            let f = self.files().await?;
            let stream: SendableRecordBatchStream = if f.format == DatasetFormat::Json {
                let (schema, batches) = self.json_array(&f).await?;
                Box::pin(RecordBatchStreamAdapter::new(schema, stream::iter(batches.into_iter().map(Ok))))
            } else if f.format == DatasetFormat::Jsonl {
                let schema = self.jsonl_schema(&f).await?;
                let sink = crate::data::import::QuarantineSink::default();
                let batches = JsonlBatches { lines: JsonlLines::new(&f), schema: schema.clone(), source: self.dataset.clone(), quarantine: sink.clone() };
                let rows = stream::unfold(Some(batches), |state| async move {
                    let mut b = state?;
                    match b.next_batch().await {
                        Ok(Some(batch)) => Some((Ok(batch), Some(b))),
                        Ok(None) => None,
                        Err(e) => Some((Err(e), None)),
                    }
                });
                // once every line is read, the bad ones become the `quarantine` side table
                let side = ctx.side.clone();
                let shard = ctx.shard;
                let flush = stream::once(async move {
                    let mut bad = std::mem::take(&mut *sink.lock().expect("quarantine"));
                    // a bad line belongs to the shard of its `file:line`, so exactly one keeps it
                    bad.retain(|q| shard.is_none_or(|s| crate::shard::shard_of(&q.row, s.count) == s.index));
                    if !bad.is_empty() {
                        side.push("quarantine", crate::data::prompts::quarantine_batch(&bad));
                    }
                })
                .filter_map(|_| async { None });
                Box::pin(RecordBatchStreamAdapter::new(schema, rows.chain(flush)))
            } else {
                let ctx = Self::session(&f.loc);
                let table = self.listing(&f, &ctx).await?;
                ctx.read_table(Arc::new(table))?.execute_stream().await?
            };
            Ok(keep_shard(stream, ctx.shard))
        }
        .boxed()
    }
}
