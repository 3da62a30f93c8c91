//! The run lock: one `mstar run` per store at a time, by a conditional put (create-if-absent,
//! which S3 honours too), released on exit; a dead holder on this host is detected and replaced.

use super::{Result, RunStore, StoreError};
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

pub const LOCK_FILE: &str = "_lock";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockInfo {
    pub pid: u32,
    pub host: String,
    pub started_at: String,
    pub command: String,
}

impl LockInfo {
    pub fn here() -> Self {
        Self { pid: std::process::id(), host: hostname(), started_at: chrono::Utc::now().to_rfc3339(), command: std::env::args().collect::<Vec<_>>().join(" ") }
    }

    /// True when the holder is a process of this host that no longer exists.
    pub fn is_dead_here(&self) -> bool {
        self.host == hostname() && !process_alive(self.pid)
    }
}

/// A held lock; call [`RunLock::release`] when done.
#[derive(Debug)]
pub struct RunLock {
    store: RunStore,
    released: bool,
}

impl RunLock {
    /// Takes the lock or explains who holds it and how to break it.
    pub async fn acquire(store: &RunStore) -> Result<(RunLock, Option<LockInfo>)> {
        let me = LockInfo::here();
        let body = serde_json::to_vec_pretty(&me).map_err(|e| StoreError::Other(e.to_string()))?;
        let path = store.loc.path(LOCK_FILE);
        let mut broke = None;
        for _ in 0..2 {
            let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
            match store.loc.store.put_opts(&path, PutPayload::from(body.clone()), opts).await {
                Ok(_) => return Ok((RunLock { store: store.clone(), released: false }, broke)),
                Err(object_store::Error::AlreadyExists { .. }) => {
                    let holder: Option<LockInfo> = store.read_json(LOCK_FILE).await.ok().flatten();
                    match holder {
                        Some(h) if h.is_dead_here() && broke.is_none() => {
                            store.delete(&path).await?;
                            broke = Some(h);
                        }
                        Some(h) => {
                            return Err(StoreError::Locked(format!(
                                "run store {} is locked by another run: pid {} on host {} since {} (`{}`).\n\
                                 If that run is no longer alive, break the stale lock with: mstar unlock {}",
                                store.display(),
                                h.pid,
                                h.host,
                                h.started_at,
                                h.command,
                                store.display()
                            )))
                        }
                        None => {
                            return Err(StoreError::Locked(format!(
                                "run store {} is locked by another run (unreadable lock object {LOCK_FILE}).\n\
                                 If no run is active, break the stale lock with: mstar unlock {}",
                                store.display(),
                                store.display()
                            )))
                        }
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Locked(format!("could not take the lock of {}", store.display())))
    }

    pub async fn release(mut self) -> Result<()> {
        self.released = true;
        self.store.delete(&self.store.loc.path(LOCK_FILE)).await
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        if !self.released {
            // Best effort from synchronous code: local stores can be cleaned directly.
            let store = self.store.clone();
            let path = store.loc.path(LOCK_FILE);
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    let _ = store.loc.store.delete(&path).await;
                });
            }
        }
    }
}

/// Removes a lock (`mstar unlock`) and returns the holder it removed. A holder that is a live
/// process of this host is refused unless `force`: breaking it would let a second run write
/// beside the first. (A holder on another host cannot be checked from here.)
pub async fn break_lock(store: &RunStore, force: bool) -> Result<Option<LockInfo>> {
    let holder = store.read_json::<LockInfo>(LOCK_FILE).await.ok().flatten();
    if let Some(h) = holder.as_ref().filter(|h| !force && h.host == hostname() && process_alive(h.pid)) {
        return Err(StoreError::Locked(format!(
            "run store {} is locked by pid {} on this host, which is alive (`{}`, since {}): unlocking would let a second run \
             write beside it. Stop that run first, or pass --force",
            store.display(),
            h.pid,
            h.command,
            h.started_at
        )));
    }
    store.delete(&store.loc.path(LOCK_FILE)).await?;
    Ok(holder)
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for buf.len() bytes; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn process_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}
