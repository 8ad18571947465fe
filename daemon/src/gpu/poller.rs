//! The polling thread: NVML calls can take milliseconds per device (and
//! longer on a GPU that is falling off the bus), so they never run on the
//! owner's loop. Each poll goes to the owner as one typed [`Sample`].

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self as std_mpsc, RecvTimeoutError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tracing::{info, warn};

use super::library::Gpus;
use super::sample::{HostProcess, Sample, Sampler};
use crate::attribution::cgroup_path::proc_cgroup_best_path;

/// The polling thread; stopped and joined when dropped.
#[derive(Debug)]
pub struct Poller {
    stop: Option<std_mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Poller {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What /proc says of `pid`: its cgroup (and that directory's inode under
/// `mount`) and its owner.
pub fn host_process(proc_root: &Path, mount: &Path, pid: u32) -> HostProcess {
    let dir = proc_root.join(pid.to_string());
    let uid = std::fs::metadata(&dir).ok().map(|m| m.uid());
    let cgroup = std::fs::read_to_string(dir.join("cgroup"))
        .ok()
        .and_then(|text| proc_cgroup_best_path(&text).map(str::to_string));
    let cgroup_id = cgroup
        .as_deref()
        .and_then(|c| std::fs::metadata(crate::sys::cgroup_tree::dir_of(mount, c)).ok())
        .map_or(0, |m| m.ino());
    HostProcess {
        cgroup,
        cgroup_id,
        uid,
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Polls now and every `interval` until the Poller is dropped or the
/// owner stops listening. A sample the owner has no room for is skipped:
/// the next one replaces it anyway.
pub fn spawn(
    gpus: Box<dyn Gpus + Send>,
    interval: Duration,
    mount: PathBuf,
    tx: mpsc::Sender<Sample>,
) -> std::io::Result<Poller> {
    let (stop, stopped) = std_mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("gpu-poll".into())
        .spawn(move || {
            let mut sampler = Sampler::default();
            let mut reported: Vec<String> = Vec::new();
            loop {
                let mut sample = sampler.sample(gpus.as_ref(), now_us(), interval.as_micros() as u64);
                sample.at = Some(SystemTime::now());
                for p in &sample.processes {
                    sample
                        .host
                        .entry(p.pid)
                        .or_insert_with(|| host_process(Path::new("/proc"), &mount, p.pid));
                }
                report_errors(&sample, &mut reported);
                if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(sample) {
                    return;
                }
                match stopped.recv_timeout(interval) {
                    Err(RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
            }
        })?;
    Ok(Poller {
        stop: Some(stop),
        thread: Some(thread),
    })
}

/// Logs failing NVML calls when they start and when they stop, not at
/// every poll.
fn report_errors(sample: &Sample, reported: &mut Vec<String>) {
    let mut now: Vec<String> = sample.errors.clone();
    for d in &sample.devices {
        now.extend(d.errors.iter().map(|e| format!("GPU {}: {e}", d.index)));
    }
    if now == *reported {
        return;
    }
    if now.is_empty() {
        info!("GPU telemetry: NVML answers every call again");
    } else {
        warn!("GPU telemetry: NVML calls failing: {}", now.join("; "));
    }
    *reported = now;
}
