//! Importers of real dataset formats into the prompts table: MathVista (`testmini.json` + an
//! image folder), MathV360K, Hugging Face `datasets` Parquet and verl Parquet. Bad rows go to
//! the quarantine with their reason; the import goes on.

use super::answer::extract_answer;
use super::prompts::{
    infer_answer_type, letter_to_choice, resolve_below, safe_relative, split_choices, validate_image_within, Image, ImageError, ImagePathError, PromptRow,
    PromptsBuilder, Quarantined, DEFAULT_MAX_IMAGE_PIXELS,
};
use crate::store::{Location, StoreError};
use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StructArray};
use arrow_schema::DataType;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::StreamExt;
use object_store::ObjectStoreExt;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Formats with their own importer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    MathVista,
    MathV360K,
    Hf,
    Verl,
}

#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub format: Format,
    /// The dataset file (MathVista, MathV360K) or Parquet file/folder (hf, verl).
    pub path: String,
    /// Folder image paths are relative to (default: the folder of `path`).
    pub images: Option<String>,
    /// Split recorded in the prompts table (default: test for MathVista, train otherwise).
    pub split: Option<String>,
    /// Value of the `source` column.
    pub source: String,
    /// hf: which columns hold id, question, answer, image(s), choices, answer_type, precision.
    pub columns: BTreeMap<String, String>,
    /// Shard `(i, n)` of a sharded import: only the records with `shard_of(prompt_id, n) = i`
    /// are checked and decoded (and quarantined); the rest are skipped.
    pub shard: Option<(u32, u32)>,
}

/// Limits a dataset may set besides its [`ImportOptions`] (the `max_image_pixels` of its spec).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportLimits {
    /// Images with more pixels (width × height, read from the header) are quarantined.
    pub max_image_pixels: u64,
}

impl Default for ImportLimits {
    fn default() -> Self {
        Self { max_image_pixels: DEFAULT_MAX_IMAGE_PIXELS }
    }
}

/// Bad rows, shared between the import stream and whoever writes the quarantine.
pub type QuarantineSink = Arc<Mutex<Vec<Quarantined>>>;

enum ImgRef {
    Path(String),
    Bytes(Vec<u8>, Option<String>),
}

/// A source row before its images are fetched and checked.
struct Entry {
    row: String,
    id: Option<String>,
    question: Option<String>,
    images: Vec<ImgRef>,
    choices: Option<Vec<String>>,
    answer: Option<String>,
    answer_type: Option<String>,
    precision: Option<i32>,
    record: String,
}

const BATCH_ROWS: usize = 128;

fn parent(path: &str) -> String {
    match path.trim_end_matches('/').rsplit_once('/') {
        Some((p, _)) if !p.is_empty() => p.to_string(),
        Some(_) => "/".to_string(),
        None => ".".to_string(),
    }
}

/// A quarantined record as stored: at most 2000 bytes (then `…`).
pub(crate) fn truncate(s: String) -> String {
    if s.len() <= 2000 {
        s
    } else {
        let mut end = 2000;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    }
}

/// Why a dataset cannot be imported at all (a bad row is quarantined instead, with its
/// [`RowError`]).
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Location(#[from] StoreError),
    /// The dataset file (or one of its Parquet files) could not be read.
    #[error("{path}: {err}")]
    Read { path: String, err: object_store::Error },
    /// `format`: MathVista or MathV360K.
    #[error("{format} JSON: {err}")]
    Json { format: &'static str, err: serde_json::Error },
    #[error("{format} JSON: expected {expected}")]
    Shape { format: &'static str, expected: &'static str },
    #[error("image folder: {0}")]
    ImageFolder(ImageRootError),
    #[error("{0}: no .parquet files")]
    NoParquet(String),
    /// The Parquet files' schema could not be read.
    #[error("{path}: {err}")]
    Schema { path: String, err: DataFusionError },
    #[error("{0}")]
    DataFusion(DataFusionError),
    /// hf: a `columns:` role names a column the data does not have.
    #[error("columns.{role}: the data has no column `{name}`")]
    MissingColumn { role: String, name: String },
    #[error("verl data has no `prompt` column")]
    NoVerlPrompt,
}

/// Why the folder image paths are relative to cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum ImageRootError {
    #[error(transparent)]
    Location(#[from] StoreError),
    #[error("{}: {err}", path.display())]
    Canonicalize { path: std::path::PathBuf, err: std::io::Error },
}

/// Why a source row is quarantined; displayed, its `reason`.
#[derive(Debug, thiserror::Error)]
pub enum RowError {
    #[error("missing question")]
    MissingQuestion,
    #[error("missing answer")]
    MissingAnswer,
    #[error("missing image")]
    MissingImage,
    /// An image path that escapes the folder, is missing or cannot be read from a local folder.
    #[error(transparent)]
    ImagePath(#[from] ImagePathError),
    #[error("image `{0}` is a path but no image folder is readable")]
    NoImageFolder(String),
    /// An image path that cannot be read from an object store.
    #[error("image `{path}`: {err}")]
    ImageStore { path: String, err: object_store::Error },
    /// An image that is not usable, with its dataset-relative path when it has one.
    #[error("{err}{}", path.as_ref().map(|p| format!(" (`{p}`)")).unwrap_or_default())]
    Image { err: ImageError, path: Option<String> },
    #[error("unknown answer_type `{0}` (text, integer, float or list)")]
    AnswerType(String),
}

/// Streams the prompts table of a dataset; bad rows are pushed to `quarantine`. Default
/// [`ImportLimits`].
pub async fn import(opts: ImportOptions, quarantine: QuarantineSink) -> Result<SendableRecordBatchStream, ImportError> {
    import_with_limits(opts, ImportLimits::default(), quarantine).await
}

/// The folder image paths are relative to; a local one also canonical (symlinks resolved),
/// so every image can be checked to resolve below it.
struct ImageRoot {
    loc: Location,
    local: Option<std::path::PathBuf>,
}

impl ImageRoot {
    fn open(spec: &str) -> Result<Self, ImageRootError> {
        let loc = Location::open_existing(spec)?;
        let local = match loc.local_root() {
            Some(p) => Some(std::fs::canonicalize(&p).map_err(|err| ImageRootError::Canonicalize { path: p, err })?),
            None => None,
        };
        Ok(Self { loc, local })
    }
}

/// [`import`] with a dataset's limits.
pub async fn import_with_limits(opts: ImportOptions, limits: ImportLimits, quarantine: QuarantineSink) -> Result<SendableRecordBatchStream, ImportError> {
    let split = opts.split.clone().unwrap_or_else(|| if opts.format == Format::MathVista { "test" } else { "train" }.to_string());
    let images_root = opts.images.clone().unwrap_or_else(|| parent(&opts.path));
    match opts.format {
        Format::MathVista | Format::MathV360K => {
            let loc = Location::open_existing(&opts.path)?;
            let read = |err| ImportError::Read { path: opts.path.clone(), err };
            let bytes = loc.store.get(&loc.prefix).await.map_err(read)?.bytes().await.map_err(read)?;
            let entries = if opts.format == Format::MathVista { mathvista_entries(&bytes)? } else { mathv360k_entries(&bytes)? };
            let root = ImageRoot::open(&images_root).map_err(ImportError::ImageFolder)?;
            let ctx = Arc::new(RowContext { root: Some(root), split, source: opts.source.clone(), quarantine, limits, shard: opts.shard });
            let chunks: Vec<Vec<Entry>> = chunk(entries);
            let stream = futures::stream::iter(chunks).then(move |c| {
                let ctx = ctx.clone();
                async move { Ok(ctx.build(c).await) }
            });
            Ok(Box::pin(RecordBatchStreamAdapter::new(super::prompts::prompts_schema(), stream)))
        }
        Format::Hf | Format::Verl => {
            let loc = Location::open_existing(&opts.path)?;
            let single = loc.store.head(&loc.prefix).await.is_ok();
            let files: Vec<_> = if single {
                vec![loc.store.head(&loc.prefix).await.map_err(|err| ImportError::Read { path: opts.path.clone(), err })?]
            } else {
                loc.list("").await?.into_iter().filter(|m| m.location.as_ref().ends_with(".parquet")).collect()
            };
            if files.is_empty() {
                return Err(ImportError::NoParquet(opts.path.clone()));
            }
            let sctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
            sctx.register_object_store(&loc.url_root, loc.store.clone());
            let urls =
                files.iter().map(|m| ListingTableUrl::parse(loc.object_url(&m.location))).collect::<Result<Vec<_>, _>>().map_err(ImportError::DataFusion)?;
            let config = ListingTableConfig::new_with_multi_paths(urls)
                .with_listing_options(ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(""))
                .infer_schema(&sctx.state())
                .await
                .map_err(|err| ImportError::Schema { path: opts.path.clone(), err })?;
            let table = ListingTable::try_new(config).map_err(ImportError::DataFusion)?;
            let input = sctx.read_table(Arc::new(table)).map_err(ImportError::DataFusion)?.execute_stream().await.map_err(ImportError::DataFusion)?;
            let root = ImageRoot::open(&images_root).ok();
            let ctx = Arc::new(RowContext { root, split, source: opts.source.clone(), quarantine, limits, shard: opts.shard });
            let format = opts.format;
            let columns = Arc::new(opts.columns.clone());
            let mut offset = 0usize;
            let stream = input.then(move |batch| {
                let ctx = ctx.clone();
                let columns = columns.clone();
                let start = offset;
                offset += batch.as_ref().map(|b| b.num_rows()).unwrap_or(0);
                async move {
                    let batch = batch?;
                    let entries = match format {
                        Format::Verl => verl_entries(&batch, start),
                        _ => hf_entries(&batch, start, &columns),
                    }
                    .map_err(|e| DataFusionError::Execution(e.to_string()))?;
                    Ok(ctx.build(entries).await)
                }
            });
            Ok(Box::pin(RecordBatchStreamAdapter::new(super::prompts::prompts_schema(), stream)))
        }
    }
}

fn chunk(entries: Vec<Entry>) -> Vec<Vec<Entry>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    for e in entries {
        cur.push(e);
        if cur.len() == BATCH_ROWS {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

struct RowContext {
    root: Option<ImageRoot>,
    split: String,
    source: String,
    quarantine: QuarantineSink,
    limits: ImportLimits,
    shard: Option<(u32, u32)>,
}

impl RowContext {
    async fn build(&self, entries: Vec<Entry>) -> RecordBatch {
        let mut b = PromptsBuilder::new();
        // another shard's records are not even decoded: its worker does that
        let mine = |e: &Entry| self.shard.is_none_or(|(i, n)| crate::shard::shard_of(e.id.as_deref().unwrap_or(&e.row), n) == i);
        for e in entries.into_iter().filter(mine) {
            let (row, record) = (e.row.clone(), e.record.clone());
            match self.check(e).await {
                Ok(r) => b.push(&r),
                Err(why) => self.quarantine.lock().expect("quarantine").push(Quarantined {
                    source: self.source.clone(),
                    row,
                    reason: why.to_string(),
                    record: truncate(record),
                }),
            }
        }
        b.finish()
    }

    async fn check(&self, e: Entry) -> Result<PromptRow, RowError> {
        let question = e.question.filter(|q| !q.trim().is_empty()).ok_or(RowError::MissingQuestion)?;
        let answer = e.answer.filter(|a| !a.trim().is_empty());
        if answer.is_none() && self.split != "unlabeled" {
            return Err(RowError::MissingAnswer);
        }
        if e.images.is_empty() {
            return Err(RowError::MissingImage);
        }
        let mut images = Vec::new();
        for img in e.images {
            let (bytes, path) = match img {
                ImgRef::Bytes(b, p) => (b, p),
                ImgRef::Path(p) => {
                    let rel = safe_relative(&p)?;
                    let root = self.root.as_ref().ok_or_else(|| RowError::NoImageFolder(p.clone()))?;
                    let bytes = match &root.local {
                        // a local folder: symlinks resolved, and the file must stay below the root
                        Some(dir) => {
                            let file = resolve_below(dir, &rel, &p)?;
                            tokio::fs::read(&file).await.map_err(|error| ImagePathError::Io { path: p.clone(), error })?
                        }
                        None => match root.loc.store.get(&root.loc.path(&rel)).await {
                            Ok(r) => r.bytes().await.map_err(|err| RowError::ImageStore { path: p.clone(), err })?.to_vec(),
                            Err(object_store::Error::NotFound { .. }) => return Err(ImagePathError::Missing(p).into()),
                            Err(err) => return Err(RowError::ImageStore { path: p, err }),
                        },
                    };
                    (bytes, Some(rel))
                }
            };
            if let Err(err) = validate_image_within(&bytes, self.limits.max_image_pixels) {
                return Err(RowError::Image { err, path });
            }
            images.push(Image { bytes, path });
        }
        let (answer_type, precision) = match (&e.answer_type, &answer) {
            (Some(t), _) => (t.clone(), e.precision),
            (None, Some(a)) if e.choices.is_none() => {
                let (t, p) = infer_answer_type(a);
                (t.to_string(), e.precision.or(p))
            }
            _ => ("text".to_string(), e.precision),
        };
        if crate::data::answer::AnswerType::parse(&answer_type).is_none() {
            return Err(RowError::AnswerType(answer_type));
        }
        Ok(PromptRow {
            prompt_id: e.id.unwrap_or(e.row),
            question,
            images,
            choices: e.choices,
            answer,
            answer_type,
            precision,
            source: self.source.clone(),
            split: self.split.clone(),
        })
    }
}

fn value_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        other => Some(other.to_string()),
    }
}

/// MathVista's query: the per-type hint, the question (with its unit) and the choices, as
/// its `build_query` makes them.
pub fn mathvista_query(
    question: &str,
    unit: Option<&str>,
    choices: Option<&[String]>,
    question_type: &str,
    answer_type: &str,
    precision: Option<i32>,
) -> String {
    let hint = if question_type == "multi_choice" {
        "Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end.".to_string()
    } else {
        match (answer_type, precision) {
            ("integer", _) => "Hint: Please answer the question requiring an integer answer and provide the final value, e.g., 1, 2, 3, at the end.".to_string(),
            ("float", Some(1)) => "Hint: Please answer the question requiring a floating-point number with one decimal place and provide the final value, e.g., 1.2, 1.3, 1.4, at the end.".to_string(),
            ("float", Some(2)) => "Hint: Please answer the question requiring a floating-point number with two decimal places and provide the final value, e.g., 1.23, 1.34, 1.45, at the end.".to_string(),
            ("float", Some(p)) => format!("Hint: Please answer the question requiring a floating-point number with {p} decimal places and provide the final value at the end."),
            ("list", _) => "Hint: Please answer the question requiring a Python list as an answer and provide the final list, e.g., [1, 2, 3], [1.2, 1.3, 1.4], at the end.".to_string(),
            _ => String::new(),
        }
    };
    let mut q = format!("Question: {question}");
    if let Some(u) = unit.filter(|u| !u.is_empty()) {
        q.push_str(&format!(" (Unit: {u})"));
    }
    let mut parts = vec![hint, q];
    if let Some(c) = choices {
        let mut t = vec!["Choices:".to_string()];
        t.extend(c.iter().enumerate().map(|(i, x)| format!("({}) {x}", (b'A' + i as u8) as char)));
        parts.push(t.join("\n"));
    }
    parts.into_iter().filter(|p| !p.is_empty()).collect::<Vec<_>>().join("\n").trim().to_string()
}

/// MathVista `testmini.json`: a mapping pid → problem (a list of problems is accepted too).
fn mathvista_entries(bytes: &[u8]) -> Result<Vec<Entry>, ImportError> {
    let v: Value = serde_json::from_slice(bytes).map_err(|err| ImportError::Json { format: "MathVista", err })?;
    let items: Vec<(String, Value)> = match v {
        Value::Object(m) => m.into_iter().collect(),
        Value::Array(a) => a.into_iter().enumerate().map(|(i, x)| (i.to_string(), x)).collect(),
        _ => return Err(ImportError::Shape { format: "MathVista", expected: "an object keyed by pid" }),
    };
    Ok(items
        .into_iter()
        .map(|(key, p)| {
            let record = p.to_string();
            let get = |k: &str| p.get(k);
            let pid = value_text(get("pid")).unwrap_or(key.clone());
            let choices: Option<Vec<String>> = get("choices").and_then(|c| c.as_array()).map(|a| a.iter().filter_map(|x| value_text(Some(x))).collect());
            let question_type = value_text(get("question_type")).unwrap_or_else(|| if choices.is_some() { "multi_choice".into() } else { "free_form".into() });
            let answer_type = value_text(get("answer_type"));
            let precision = get("precision").and_then(|x| x.as_f64()).map(|x| x as i32);
            let question = value_text(get("question")).map(|q| match value_text(get("query")) {
                Some(query) if !query.trim().is_empty() => query,
                _ => mathvista_query(
                    &q,
                    value_text(get("unit")).as_deref(),
                    choices.as_deref(),
                    &question_type,
                    answer_type.as_deref().unwrap_or("text"),
                    precision,
                ),
            });
            Entry {
                row: key,
                id: Some(pid),
                question,
                images: value_text(get("image")).map(ImgRef::Path).into_iter().collect(),
                choices: choices.filter(|c| !c.is_empty()),
                answer: value_text(get("answer")),
                answer_type,
                precision,
                record,
            }
        })
        .collect())
}

/// MathV360K: a list of `{id, image, conversations: [{from: human, value}, {from: gpt, value}]}`.
fn mathv360k_entries(bytes: &[u8]) -> Result<Vec<Entry>, ImportError> {
    let v: Value = serde_json::from_slice(bytes).map_err(|err| ImportError::Json { format: "MathV360K", err })?;
    let Value::Array(items) = v else { return Err(ImportError::Shape { format: "MathV360K", expected: "a list of conversations" }) };
    Ok(items
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let record = p.to_string();
            let turns = p.get("conversations").and_then(|c| c.as_array()).cloned().unwrap_or_default();
            let turn = |who: &str| turns.iter().find(|t| t.get("from").and_then(|f| f.as_str()) == Some(who)).and_then(|t| value_text(t.get("value")));
            let human = turn("human").map(|h| h.replace("<image>", "").trim().to_string());
            let (question, choices) = match &human {
                Some(h) => {
                    let (q, c) = split_choices(h);
                    (Some(if c.is_some() { h.clone() } else { q }), c)
                }
                None => (None, None),
            };
            let gpt = turn("gpt");
            let answer = gpt.map(|g| {
                let a = extract_answer(&g).unwrap_or_else(|| g.trim().to_string());
                match &choices {
                    Some(c) => letter_to_choice(&a, c).unwrap_or(a),
                    None => a,
                }
            });
            Entry {
                row: i.to_string(),
                id: value_text(p.get("id")),
                question,
                images: value_text(p.get("image")).map(ImgRef::Path).into_iter().collect(),
                answer_type: choices.as_ref().map(|_| "text".to_string()),
                choices,
                answer,
                precision: None,
                record,
            }
        })
        .collect())
}

fn column<'a>(batch: &'a RecordBatch, names: &[&str]) -> Option<&'a ArrayRef> {
    names.iter().find_map(|n| batch.column_by_name(n))
}

fn cell_text(a: &ArrayRef, i: usize) -> Option<String> {
    if a.is_null(i) {
        return None;
    }
    let s = arrow::util::display::array_value_to_string(a, i).ok()?;
    Some(s)
}

fn cell_strings(a: &ArrayRef, i: usize) -> Option<Vec<String>> {
    if a.is_null(i) {
        return None;
    }
    match a.data_type() {
        DataType::List(_) => {
            let v = a.as_list::<i32>().value(i);
            Some((0..v.len()).filter_map(|j| cell_text(&v, j)).collect())
        }
        DataType::LargeList(_) => {
            let v = a.as_list::<i64>().value(i);
            Some((0..v.len()).filter_map(|j| cell_text(&v, j)).collect())
        }
        _ => cell_text(a, i).map(|s| serde_json::from_str::<Vec<String>>(&s).unwrap_or_else(|_| vec![s])),
    }
}

/// Images in a cell: an Image struct{bytes, path}, a list of them, or a path string.
fn cell_images(a: &ArrayRef, i: usize) -> Vec<ImgRef> {
    if a.is_null(i) {
        return vec![];
    }
    fn from_struct(s: &StructArray, j: usize) -> Option<ImgRef> {
        if s.is_null(j) {
            return None;
        }
        let path = s.column_by_name("path").and_then(|p| cell_text(p, j));
        let bytes = s.column_by_name("bytes").filter(|b| !b.is_null(j)).map(|b| match b.data_type() {
            DataType::LargeBinary => b.as_binary::<i64>().value(j).to_vec(),
            DataType::BinaryView => b.as_binary_view().value(j).to_vec(),
            _ => b.as_binary::<i32>().value(j).to_vec(),
        });
        match (bytes, path) {
            (Some(b), p) => Some(ImgRef::Bytes(b, p)),
            (None, Some(p)) => Some(ImgRef::Path(p)),
            (None, None) => None,
        }
    }
    match a.data_type() {
        DataType::Struct(_) => from_struct(a.as_struct(), i).into_iter().collect(),
        DataType::List(f) if matches!(f.data_type(), DataType::Struct(_)) => {
            let v = a.as_list::<i32>().value(i);
            let s = v.as_struct();
            (0..s.len()).filter_map(|j| from_struct(s, j)).collect()
        }
        DataType::List(_) | DataType::LargeList(_) => cell_strings(a, i).unwrap_or_default().into_iter().map(ImgRef::Path).collect(),
        _ => cell_text(a, i).map(ImgRef::Path).into_iter().collect(),
    }
}

fn record_of(batch: &RecordBatch, i: usize) -> String {
    let mut m = serde_json::Map::new();
    for (f, c) in batch.schema().fields().iter().zip(batch.columns()) {
        // binary payloads (images) are not copied into the quarantine record
        let text = if format!("{:?}", c.data_type()).contains("Binary") { Some("<binary>".to_string()) } else { cell_text(c, i) };
        m.insert(f.name().clone(), text.map(Value::String).unwrap_or(Value::Null));
    }
    Value::Object(m).to_string()
}

/// Hugging Face `datasets` Parquet. Columns by name (override with `columns:`): id/pid,
/// question/query/problem, answer, image/images/decoded_image, choices, answer_type, precision.
fn hf_entries(batch: &RecordBatch, start: usize, cols: &BTreeMap<String, String>) -> Result<Vec<Entry>, ImportError> {
    let pick = |role: &str, defaults: &[&str]| -> Option<&ArrayRef> {
        match cols.get(role) {
            Some(name) => batch.column_by_name(name),
            None => column(batch, defaults),
        }
    };
    for (role, name) in cols {
        if batch.column_by_name(name).is_none() {
            return Err(ImportError::MissingColumn { role: role.clone(), name: name.clone() });
        }
    }
    let id = pick("id", &["id", "pid", "prompt_id"]);
    let question = pick("question", &["query", "question", "problem", "prompt"]);
    let answer = pick("answer", &["answer", "solution", "ground_truth"]);
    let image = pick("image", &["decoded_image", "image", "images"]);
    let choices = pick("choices", &["choices", "options"]);
    let answer_type = pick("answer_type", &["answer_type"]);
    let precision = pick("precision", &["precision"]);
    Ok((0..batch.num_rows())
        .map(|i| {
            let choices = choices.and_then(|c| cell_strings(c, i)).filter(|c| !c.is_empty());
            let answer = answer.and_then(|a| cell_text(a, i)).map(|a| match &choices {
                Some(c) if !c.contains(&a) => letter_to_choice(&a, c).unwrap_or(a),
                _ => a,
            });
            Entry {
                row: (start + i).to_string(),
                id: id.and_then(|c| cell_text(c, i)),
                question: question.and_then(|c| cell_text(c, i)),
                images: image.map(|c| cell_images(c, i)).unwrap_or_default(),
                answer_type: answer_type.and_then(|c| cell_text(c, i)).or_else(|| choices.as_ref().map(|_| "text".into())),
                choices,
                answer,
                precision: precision.and_then(|c| cell_text(c, i)).and_then(|p| p.parse::<f64>().ok()).map(|p| p as i32),
                record: record_of(batch, i),
            }
        })
        .collect())
}

/// verl Parquet: `prompt` (chat messages with `<image>` placeholders), `images`,
/// `reward_model.ground_truth`, `data_source`, `extra_info.index`.
fn verl_entries(batch: &RecordBatch, start: usize) -> Result<Vec<Entry>, ImportError> {
    let prompt = batch.column_by_name("prompt").ok_or(ImportError::NoVerlPrompt)?;
    let images = batch.column_by_name("images");
    let reward = batch.column_by_name("reward_model");
    let source = batch.column_by_name("data_source");
    let extra = batch.column_by_name("extra_info");
    Ok((0..batch.num_rows())
        .map(|i| {
            let question = (!prompt.is_null(i)).then(|| prompt.as_list::<i32>().value(i)).and_then(|msgs| {
                let s = msgs.as_struct();
                let role = s.column_by_name("role")?;
                let content = s.column_by_name("content")?;
                let texts: Vec<String> =
                    (0..s.len()).filter(|&j| cell_text(role, j).as_deref() == Some("user")).filter_map(|j| cell_text(content, j)).collect();
                (!texts.is_empty()).then(|| texts.join("\n").replace("<image>", "").trim().to_string())
            });
            let answer = reward.and_then(|r| {
                if r.is_null(i) {
                    return None;
                }
                r.as_struct().column_by_name("ground_truth").and_then(|g| cell_text(g, i))
            });
            let index = extra.and_then(|e| (!e.is_null(i)).then(|| e.as_struct().column_by_name("index").and_then(|x| cell_text(x, i))).flatten());
            let id = match (source.and_then(|s| cell_text(s, i)), index) {
                (Some(s), Some(ix)) => Some(format!("{s}-{ix}")),
                (None, Some(ix)) => Some(ix),
                _ => None,
            };
            Entry {
                row: (start + i).to_string(),
                id,
                question,
                images: images.map(|c| cell_images(c, i)).unwrap_or_default(),
                choices: None,
                answer,
                answer_type: None,
                precision: None,
                record: record_of(batch, i),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The quarantine's `reason` is a row error as displayed.
    #[test]
    fn row_errors_read_as_quarantine_reasons() {
        assert_eq!(RowError::MissingQuestion.to_string(), "missing question");
        assert_eq!(RowError::from(ImagePathError::Missing("a.png".into())).to_string(), "missing image file `a.png`");
        let too_large = || ImageError::TooLarge { width: 10, height: 10, pixels: 100, limit: 1 };
        let with_path = RowError::Image { err: too_large(), path: Some("img/a.png".into()) };
        assert_eq!(with_path.to_string(), "image is 10x10 = 100 pixels, above the limit of 1 (max_image_pixels) (`img/a.png`)");
        assert_eq!(RowError::Image { err: too_large(), path: None }.to_string(), "image is 10x10 = 100 pixels, above the limit of 1 (max_image_pixels)");
        assert_eq!(RowError::AnswerType("bool".into()).to_string(), "unknown answer_type `bool` (text, integer, float or list)");
    }

    #[test]
    fn a_bad_dataset_file_is_named() {
        let e = mathvista_entries(b"[1").err().unwrap();
        assert!(e.to_string().starts_with("MathVista JSON: "), "{e}");
        assert_eq!(mathv360k_entries(b"{}").err().unwrap().to_string(), "MathV360K JSON: expected a list of conversations");
        assert_eq!(mathvista_entries(b"3").err().unwrap().to_string(), "MathVista JSON: expected an object keyed by pid");
    }
}
