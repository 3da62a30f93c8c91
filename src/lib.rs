//! mstar: self-evolving training for multimodal reasoning models (M-STAR) as declarative,
//! auditable dataflow pipelines: spec → plan → operators → run store → SQL.

pub mod data;
pub mod model;
pub mod openai;
pub mod ops;
pub mod plan;
pub mod prm;
pub mod report;
pub mod rng;
pub mod runner;
pub mod schemas;
pub mod spec;
pub mod sql;
pub mod status;
pub mod store;
pub mod train;

/// Errors of the library's entry points.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Spec(#[from] spec::SpecErrors),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Op(#[from] ops::OpError),
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("stage {stage} (iteration {iteration}) failed: {error}")]
    Stage { stage: String, iteration: u32, error: Box<Error> },
    #[error("{0}")]
    Usage(String),
    #[error("interrupted; the lock was released and committed stages are kept")]
    Interrupted,
}
