//! The `import` operator: a dataset file or folder (Parquet, JSON array, JSONL), local or on an
//! object store, streamed into a stage table in file order.

use super::{OpContext, OpError, OpOutput, Operator, Result};
use crate::spec::{DatasetFormat, ImportSpec, Pipeline};
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
use futures::{stream, FutureExt, StreamExt};
use object_store::{ObjectMeta, ObjectStoreExt};
use serde_json::{json, Value};
use std::sync::Arc;

pub struct ImportOp {
    dataset: String,
    url: String,
    format: Option<DatasetFormat>,
    /// The resolved options of a prompts format (MathVista, MathV360K, hf, verl).
    prompts: Option<crate::data::import::ImportOptions>,
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
        let ds = pipeline
            .datasets
            .get(&spec.dataset)
            .ok_or_else(|| OpError::Invalid(format!("unknown dataset `{}`", spec.dataset)))?;
        let url = pipeline.resolve_path(&ds.path);
        let prompts = ds.format.and_then(|f| f.prompts_format()).map(|format| crate::data::import::ImportOptions {
            format,
            path: url.clone(),
            images: ds.images.as_ref().map(|i| pipeline.resolve_path(i)),
            split: ds.split.clone(),
            source: spec.dataset.clone(),
            columns: ds.columns.clone(),
        });
        Ok(Self { dataset: spec.dataset.clone(), url, format: ds.format, prompts, synth: ds.synth.clone() })
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
        let files: Vec<ObjectMeta> = if single {
            vec![loc.store.head(&loc.prefix).await.map_err(|e| self.fail(e))?]
        } else {
            loc.list("").await.map_err(|e| self.fail(e))?
        };
        let format = match self.format {
            Some(f) => f,
            None => files
                .iter()
                .find_map(|f| DatasetFormat::from_extension(f.location.as_ref()))
                .ok_or_else(|| self.fail("cannot tell the format from the file names; set `format: parquet|json|jsonl`"))?,
        };
        let files: Vec<ObjectMeta> = if single {
            files
        } else {
            files
                .into_iter()
                .filter(|f| DatasetFormat::from_extension(f.location.as_ref()) == Some(format))
                .collect()
        };
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
        let urls = f
            .files
            .iter()
            .map(|m| ListingTableUrl::parse(f.loc.object_url(&m.location)))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let options = ListingOptions::new(format).with_file_extension("");
        let config = ListingTableConfig::new_with_multi_paths(urls)
            .with_listing_options(options)
            .infer_schema(&ctx.state())
            .await
            .map_err(|e| self.fail(e))?;
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

impl Operator for ImportOp {
    fn name(&self) -> &'static str {
        "import"
    }

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
            Ok(json!({ "format": f.format, "files": files }))
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
                return Ok(OpOutput::Table(Box::pin(RecordBatchStreamAdapter::new(crate::data::synth_dataset::schema(), stream))));
            }
            if let Some(opts) = &self.prompts {
                let sink = crate::data::import::QuarantineSink::default();
                let stream = crate::data::import::import(opts.clone(), sink.clone()).await.map_err(|e| self.fail(e))?;
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
            } else {
                let ctx = Self::session(&f.loc);
                let table = self.listing(&f, &ctx).await?;
                ctx.read_table(Arc::new(table))?.execute_stream().await?
            };
            Ok(OpOutput::Table(stream))
        }
        .boxed()
    }
}
