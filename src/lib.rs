//! mstar: self-evolving training for multimodal reasoning models (M-STAR) as declarative,
//! auditable dataflow pipelines: spec → plan → operators → run store → SQL.

pub mod cancel;
pub mod data;
pub mod executor;
pub mod model;
pub mod openai;
pub mod ops;
pub mod plan;
pub mod prm;
pub mod report;
pub mod rng;
pub mod runner;
pub mod schemas;
pub mod shard;
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
    #[error(transparent)]
    Param(#[from] sql::params::ParamError),
    #[error("{0}")]
    Usage(String),
    #[error("interrupted; the lock was released and committed stages are kept")]
    Interrupted,
}

/// An error and its sources on one line, `outer: inner: …`, leaving out a source whose message
/// the text before it already says (DataFusion, Arrow and anyhow's context wrappers all repeat
/// their source's message in their own, so printing every link would say it twice).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        let msg = s.to_string();
        if !says(&out, &msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        next = s.source();
    }
    out
}

/// Whether `text` already says `msg`: it contains it, or the part after its leading `kind: `
/// (`sql parser error: X` is `ParserError("X")` in its wrapper's words).
fn says(text: &str, msg: &str) -> bool {
    let msg = msg.trim();
    if msg.is_empty() || text.contains(msg) {
        return true;
    }
    let unescaped = text.replace("\\\"", "\"");
    msg.split_once(": ").is_some_and(|(_, core)| core.len() >= 8 && (text.contains(core) || unescaped.contains(core)))
}

#[cfg(test)]
mod error_chain_tests {
    use super::*;
    use datafusion::error::DataFusionError;

    #[test]
    fn a_datafusion_error_is_said_once() {
        let arrow = arrow::error::ArrowError::ParseError("no field named x".into());
        let e = Error::from(DataFusionError::ArrowError(Box::new(arrow), None));
        let s = error_chain(&e);
        assert_eq!(s.matches("no field named x").count(), 1, "{s}");
        let ctx = DataFusionError::Context("reading t".into(), Box::new(DataFusionError::Plan("table `t` not found".into())));
        let s = error_chain(&ctx);
        assert_eq!(s.matches("table `t` not found").count(), 1, "{s}");
        let sql = DataFusionError::SQL(
            Box::new(datafusion::sql::sqlparser::parser::ParserError::ParserError("Expected: an SQL statement, found: nope".into())),
            None,
        );
        let s = error_chain(&sql);
        assert_eq!(s.matches("Expected: an SQL statement").count(), 1, "{s}");
    }

    #[test]
    fn distinct_sources_are_all_said() {
        #[derive(Debug, thiserror::Error)]
        #[error("cannot open the store")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"));
        assert_eq!(error_chain(&e), "cannot open the store: no such file");
    }
}
