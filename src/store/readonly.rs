//! A read-only view of an object store: `mstar sql` reads a run through it, so no statement
//! can write into or delete from the run store whatever the SQL engine allows.

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult,
    RenameOptions, Result,
};
use std::ops::Range;
use std::sync::Arc;

#[derive(Debug)]
pub struct ReadOnlyStore(pub Arc<dyn ObjectStore>);

impl std::fmt::Display for ReadOnlyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReadOnly({})", self.0)
    }
}

fn denied(path: &Path) -> object_store::Error {
    object_store::Error::Generic { store: "read-only run store", source: format!("refusing to modify `{path}`: the run store is opened read-only").into() }
}

#[async_trait]
impl ObjectStore for ReadOnlyStore {
    async fn put_opts(&self, location: &Path, _: PutPayload, _: PutOptions) -> Result<PutResult> {
        Err(denied(location))
    }
    async fn put_multipart_opts(&self, location: &Path, _: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
        Err(denied(location))
    }
    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.0.get_opts(location, options).await
    }
    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.0.get_ranges(location, ranges).await
    }
    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        locations
            .map(|p| match p {
                Ok(p) => Err(denied(&p)),
                Err(e) => Err(e),
            })
            .chain(stream::empty())
            .boxed()
    }
    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.0.list(prefix)
    }
    fn list_with_offset(&self, prefix: Option<&Path>, offset: &Path) -> BoxStream<'static, Result<ObjectMeta>> {
        self.0.list_with_offset(prefix, offset)
    }
    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.0.list_with_delimiter(prefix).await
    }
    async fn copy_opts(&self, _: &Path, to: &Path, _: CopyOptions) -> Result<()> {
        Err(denied(to))
    }
    async fn rename_opts(&self, from: &Path, _: &Path, _: RenameOptions) -> Result<()> {
        Err(denied(from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use object_store::ObjectStoreExt;

    #[tokio::test]
    async fn reads_pass_writes_fail() {
        let inner = Arc::new(InMemory::new());
        inner.put(&Path::from("a"), PutPayload::from_static(b"x")).await.unwrap();
        let ro = ReadOnlyStore(inner.clone());
        assert_eq!(ro.get(&Path::from("a")).await.unwrap().bytes().await.unwrap().as_ref(), b"x");
        assert!(ro.put(&Path::from("b"), PutPayload::from_static(b"y")).await.is_err());
        assert!(ro.delete(&Path::from("a")).await.is_err());
        assert!(inner.get(&Path::from("a")).await.is_ok());
    }
}
