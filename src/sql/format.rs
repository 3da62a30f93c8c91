//! Writes query results as a pretty table, CSV, JSON or Parquet, streaming where the format
//! allows.

use arrow::array::RecordBatch;
use arrow_schema::SchemaRef;
use datafusion::execution::SendableRecordBatchStream;
use futures::StreamExt;
use std::io::Write;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Table,
    Csv,
    Json,
    Parquet,
}

/// Writes a result stream; returns the number of rows written.
pub async fn write_stream(mut stream: SendableRecordBatchStream, format: OutputFormat, out: Box<dyn Write + Send>) -> Result<u64, crate::Error> {
    let schema = stream.schema();
    let mut rows = 0u64;
    match format {
        OutputFormat::Table => {
            let mut batches = Vec::new();
            while let Some(b) = stream.next().await {
                let b = b?;
                rows += b.num_rows() as u64;
                batches.push(b);
            }
            write_table(&schema, &batches, out)?;
        }
        OutputFormat::Csv => {
            let mut w = arrow::csv::WriterBuilder::new().with_header(true).build(out);
            let mut wrote = false;
            while let Some(b) = stream.next().await {
                let b = b?;
                rows += b.num_rows() as u64;
                w.write(&b)?;
                wrote = true;
            }
            if !wrote {
                w.write(&RecordBatch::new_empty(schema.clone()))?;
            }
        }
        OutputFormat::Json => {
            let mut w = arrow::json::ArrayWriter::new(out);
            while let Some(b) = stream.next().await {
                let b = b?;
                rows += b.num_rows() as u64;
                w.write(&b)?;
            }
            w.finish()?;
            w.into_inner().write_all(b"\n")?;
        }
        OutputFormat::Parquet => {
            let mut w = parquet::arrow::ArrowWriter::try_new(out, schema.clone(), None).map_err(|e| crate::Error::Usage(e.to_string()))?;
            while let Some(b) = stream.next().await {
                let b = b?;
                rows += b.num_rows() as u64;
                w.write(&b).map_err(|e| crate::Error::Usage(e.to_string()))?;
            }
            w.close().map_err(|e| crate::Error::Usage(e.to_string()))?;
        }
    }
    Ok(rows)
}

/// A pretty table (header only when there are no rows).
pub fn write_table(schema: &SchemaRef, batches: &[RecordBatch], mut out: Box<dyn Write + Send>) -> Result<(), crate::Error> {
    let table = if batches.iter().all(|b| b.num_rows() == 0) {
        arrow::util::pretty::pretty_format_batches(&[RecordBatch::new_empty(schema.clone())])?
    } else {
        arrow::util::pretty::pretty_format_batches(batches)?
    };
    writeln!(out, "{table}")?;
    Ok(())
}
