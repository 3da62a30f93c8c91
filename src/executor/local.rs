//! The local executor: the shards of a stage run as `mstar worker` processes of this executable
//! on this machine, all at once; a failed shard is rerun alone.

use super::{Failed, Launch};
use crate::Error;

/// Runs one worker process per shard, then reruns each failed shard alone up to `l.retries`
/// times; the shards that still failed, with why.
pub async fn run(l: &Launch<'_>) -> Result<Failed, Error> {
    let n = l.shards;
    let threads = (crate::model::threads() / n as usize).max(1);
    eprintln!("  {}: {n} shards (worker processes, {threads} thread(s) each)", l.stage);
    let mut failed = run_workers(l, &(0..n).collect::<Vec<_>>(), threads, true).await?;
    let mut tries = 0;
    while !failed.is_empty() && tries < l.retries {
        tries += 1;
        let mut still = Vec::new();
        for (i, why) in failed {
            eprintln!("  {}: shard {i}/{n} failed ({why}); rerunning it alone (retry {tries} of {})", l.stage, l.retries);
            still.extend(run_workers(l, &[i], threads, false).await?);
        }
        failed = still;
    }
    Ok(failed)
}

/// The GPU of worker `shard` when the run sees several (`CUDA_VISIBLE_DEVICES=0,1,2,3`): the
/// shards go round the list, one device each; None leaves the variable as it is.
pub fn gpu_for(visible: Option<&str>, shard: u32) -> Option<String> {
    let devices: Vec<&str> = visible?.split(',').map(str::trim).filter(|d| !d.is_empty()).collect();
    (devices.len() > 1).then(|| devices[shard as usize % devices.len()].to_string())
}

/// Runs one worker process per shard in `shards` at once and waits for them; the shards that
/// failed, with why (exit status and the last line of their error output).
async fn run_workers(l: &Launch<'_>, shards: &[u32], threads: usize, first_round: bool) -> Result<Failed, Error> {
    use tokio::io::AsyncBufReadExt;
    let n = l.shards;
    let exe = std::env::current_exe().map_err(|e| Error::Usage(format!("cannot find the mstar executable to start workers: {e}")))?;
    let mut children = Vec::new();
    for &i in shards {
        let mut cmd = tokio::process::Command::new(&exe);
        let mut args = l.worker_args();
        *args.last_mut().expect("--shard's value") = format!("{i}/{n}");
        cmd.args(&args)
            .env("RAYON_NUM_THREADS", threads.to_string())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        if !first_round {
            cmd.env_remove("MSTAR_FAULT_SHARD_EXIT");
        }
        if let Some(dev) = gpu_for(std::env::var("CUDA_VISIBLE_DEVICES").ok().as_deref(), i) {
            cmd.env("CUDA_VISIBLE_DEVICES", dev);
        }
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to SIGKILL the worker when
        // the thread that started it (a runtime thread, alive until the run ends) dies, so a
        // coordinator killed with SIGKILL leaves no workers behind
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| Error::Usage(format!("cannot start worker {i}/{n} ({}): {e}", exe.display())))?;
        let stderr = child.stderr.take().expect("piped");
        let relay = tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            let mut last = String::new();
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("    [shard {i}/{n}] {line}");
                if !line.trim().is_empty() {
                    last = line;
                }
            }
            last
        });
        children.push((i, child, relay));
    }
    let mut failed = Vec::new();
    for (i, mut child, relay) in children {
        // on Ctrl-C / SIGTERM the run drops this future: kill_on_drop stops the workers
        let status = child.wait().await?;
        let last = relay.await.unwrap_or_default();
        if !status.success() {
            let how = match (status.code(), std::os::unix::process::ExitStatusExt::signal(&status)) {
                (Some(c), _) => format!("exit status {c}"),
                (None, Some(s)) => format!("killed by signal {s}"),
                _ => "failed".into(),
            };
            let why = if last.is_empty() { how } else { format!("{how}: {}", last.trim()) };
            failed.push((i, why));
        }
    }
    Ok(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_go_round_the_visible_gpus() {
        assert_eq!(gpu_for(Some("0,1,2,3"), 5).as_deref(), Some("1"));
        assert_eq!(gpu_for(Some("2, 5"), 0).as_deref(), Some("2"));
        assert_eq!(gpu_for(Some("GPU-abc,GPU-def"), 3).as_deref(), Some("GPU-def"));
        // one device or none: the workers share what the run sees
        assert_eq!(gpu_for(Some("3"), 1), None);
        assert_eq!(gpu_for(Some(""), 1), None);
        assert_eq!(gpu_for(None, 1), None);
    }
}
