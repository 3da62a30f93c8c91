//! Streams record batches into Parquet files of a stage's folder, rolling to a new file every
//! `rows_per_file` rows, so a stage of any size is never held in memory whole.

use super::{FileEntry, Result, RunStore, StoreError};
use arrow::array::RecordBatch;
use arrow_schema::SchemaRef;
use futures::{Stream, StreamExt};
use object_store::buffered::BufWriter;
use object_store::ObjectStoreExt;
use parquet::arrow::async_writer::AsyncArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct WriteOptions {
    pub rows_per_file: u64,
    /// Pause after each finished file (fault-injection hook for crash tests).
    pub pause_per_file: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct Written {
    pub files: Vec<FileEntry>,
    pub rows: u64,
    pub bytes: u64,
    pub schema: SchemaRef,
}

struct OpenFile {
    writer: AsyncArrowWriter<BufWriter>,
    rel: String,
    rows: u64,
}

/// Writes `stream` as `dir/part-<attempt>-<n>.parquet` files. At least one file is written,
/// so an empty table still records its schema.
pub async fn write_table<S, E>(store: &RunStore, dir: &str, attempt: &str, schema: SchemaRef, mut stream: S, opts: &WriteOptions) -> Result<Written>
where
    S: Stream<Item = std::result::Result<RecordBatch, E>> + Unpin,
    E: std::fmt::Display,
{
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).expect("valid zstd level")))
        .set_max_row_group_row_count(Some(256 * 1024))
        .build();
    let rows_per_file = opts.rows_per_file.max(1);
    let mut files: Vec<FileEntry> = Vec::new();
    let mut current: Option<OpenFile> = None;
    let mut total = 0u64;

    let open = |n: usize| -> Result<OpenFile> {
        let rel = format!("{dir}/part-{attempt}-{n:05}.parquet");
        let w = BufWriter::new(store.loc.store.clone(), store.loc.path(&rel));
        let writer = AsyncArrowWriter::try_new(w, schema.clone(), Some(props.clone()))?;
        Ok(OpenFile { writer, rel, rows: 0 })
    };

    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| StoreError::Other(e.to_string()))?;
        if batch.schema().fields() != schema.fields() {
            return Err(StoreError::Other(format!("a batch's schema {:?} differs from the table's schema {:?}", batch.schema(), schema)));
        }
        let mut offset = 0usize;
        while offset < batch.num_rows() {
            if current.is_none() {
                current = Some(open(files.len())?);
            }
            let f = current.as_mut().expect("just opened");
            let room = (rows_per_file - f.rows) as usize;
            let take = room.min(batch.num_rows() - offset);
            f.writer.write(&batch.slice(offset, take)).await?;
            f.rows += take as u64;
            total += take as u64;
            offset += take;
            if f.rows >= rows_per_file {
                let done = current.take().expect("open file");
                files.push(finish(store, done).await?);
                if let Some(p) = opts.pause_per_file {
                    tokio::time::sleep(p).await;
                }
            }
        }
    }
    if let Some(done) = current.take() {
        files.push(finish(store, done).await?);
    } else if files.is_empty() {
        files.push(finish(store, open(0)?).await?);
    }
    let bytes = files.iter().map(|f| f.bytes).sum();
    Ok(Written { files, rows: total, bytes, schema })
}

async fn finish(store: &RunStore, f: OpenFile) -> Result<FileEntry> {
    f.writer.close().await?;
    let meta = store.loc.store.head(&store.loc.path(&f.rel)).await?;
    Ok(FileEntry { path: f.rel, bytes: meta.size, rows: Some(f.rows) })
}
