//! Per-instance resources: CPU and resident memory of a backend's whole process tree, and its
//! memory on NVIDIA GPUs. Sampled lazily, when someone reads an instance, and at most once per
//! [`SAMPLE_TTL`], so nobody looking costs nothing.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};
use utoipa::ToSchema;

use super::nvidia;

/// How long one sample answers for.
const SAMPLE_TTL: Duration = Duration::from_secs(1);

/// What a running instance uses, summed over its backend and every process it started (the
/// process group the supervisor created).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, ToSchema)]
pub struct Resources {
    /// CPU use since the previous sample; 100 = one core busy.
    pub cpu_percent: f32,
    /// Resident memory.
    pub rss_bytes: u64,
    /// Memory on NVIDIA GPUs (NVML's running compute processes); null without NVML.
    pub vram_bytes: Option<u64>,
}

/// Samples processes on demand; one per registry.
pub struct ResourceMonitor {
    /// A std Mutex: sampling is synchronous and short (one pass over the process table), and the
    /// lock is never held across an await.
    inner: Mutex<Sampler>,
}

struct Sampler {
    /// Keeps the previous CPU times, which CPU percentages are computed against.
    system: System,
    sampled_at: Option<Instant>,
    /// Root pid -> its tree's use at `sampled_at`.
    groups: HashMap<u32, Resources>,
}

impl Default for ResourceMonitor {
    fn default() -> Self {
        Self::new()
    }
}

impl ResourceMonitor {
    pub fn new() -> Self {
        Self {
            inner: Mutex::new(Sampler {
                system: System::new(),
                sampled_at: None,
                groups: HashMap::new(),
            }),
        }
    }

    /// The use of each backend whose root pid is in `pids`; a pid that is gone is left out.
    pub fn usage(&self, pids: &[u32]) -> HashMap<u32, Resources> {
        if pids.is_empty() {
            return HashMap::new();
        }
        let mut sampler = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let fresh = sampler
            .sampled_at
            .is_some_and(|at| at.elapsed() < SAMPLE_TTL);
        if !fresh || pids.iter().any(|pid| !sampler.groups.contains_key(pid)) {
            sampler.sample(pids);
        }
        pids.iter()
            .filter_map(|pid| sampler.groups.get(pid).map(|usage| (*pid, *usage)))
            .collect()
    }
}

impl ResourceMonitor {
    /// `usage` from a sample taken now: what a process holds once it has loaded, where a
    /// cached sample may predate the load.
    pub fn usage_now(&self, pids: &[u32]) -> HashMap<u32, Resources> {
        if pids.is_empty() {
            return HashMap::new();
        }
        let mut sampler = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        sampler.sample(pids);
        pids.iter()
            .filter_map(|pid| sampler.groups.get(pid).map(|usage| (*pid, *usage)))
            .collect()
    }
}

impl Sampler {
    fn sample(&mut self, roots: &[u32]) {
        // Every process, not only the roots: the tree's members are found through their parents.
        self.system.refresh_processes_specifics(
            ProcessesToUpdate::All,
            true,
            ProcessRefreshKind::nothing()
                .with_cpu()
                .with_memory()
                .without_tasks(),
        );
        let mut children: HashMap<Pid, Vec<Pid>> = HashMap::new();
        for (pid, process) in self.system.processes() {
            if let Some(parent) = process.parent() {
                children.entry(parent).or_default().push(*pid);
            }
        }
        let vram = nvidia::process_memory();
        let mut groups = HashMap::new();
        for &root in roots {
            let root_pid = Pid::from_u32(root);
            if !self.system.processes().contains_key(&root_pid) {
                continue;
            }
            let mut usage = Resources {
                cpu_percent: 0.0,
                rss_bytes: 0,
                vram_bytes: vram.as_ref().map(|_| 0),
            };
            let mut stack = vec![root_pid];
            while let Some(pid) = stack.pop() {
                if let Some(process) = self.system.process(pid) {
                    usage.cpu_percent += process.cpu_usage();
                    usage.rss_bytes += process.memory();
                }
                if let (Some(total), Some(per_pid)) = (usage.vram_bytes.as_mut(), vram.as_ref()) {
                    *total += per_pid.get(&pid.as_u32()).copied().unwrap_or(0);
                }
                if let Some(kids) = children.get(&pid) {
                    stack.extend(kids);
                }
            }
            groups.insert(root, usage);
        }
        self.groups = groups;
        self.sampled_at = Some(Instant::now());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    #[test]
    fn a_process_tree_is_summed_and_a_gone_pid_is_left_out() {
        // A Python whose child holds 64 MiB: the tree's RSS must include the child's. The child
        // waits for stdin to close, so dropping the pipe ends both.
        let mut child = std::process::Command::new("python3")
            .args([
                "-c",
                "import subprocess, sys; subprocess.Popen([sys.executable, '-c', \
                 'import sys; b = b\"x\" * (64 << 20); sys.stdin.read()']).wait()",
            ])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let monitor = ResourceMonitor::new();
        let pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(30);
        let rss = loop {
            // A new monitor each round: the cache would otherwise answer for a second.
            let usage = ResourceMonitor::new().usage(&[pid]);
            let rss = usage.get(&pid).map_or(0, |u| u.rss_bytes);
            if rss > 64 << 20 || Instant::now() > deadline {
                break rss;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(rss > 64 << 20, "tree RSS {rss}");
        assert!(monitor.usage(&[pid]).contains_key(&pid));
        drop(child.stdin.take());
        child.wait().unwrap();
        let gone = ResourceMonitor::new().usage(&[pid]);
        assert!(gone.is_empty(), "{gone:?}");
    }

    #[test]
    fn a_busy_process_shows_its_cpu_use_once_a_second_has_passed() {
        let mut busy = std::process::Command::new("python3")
            .args([
                "-c",
                "import time\nend = time.time() + 60\nwhile time.time() < end: pass",
            ])
            .spawn()
            .unwrap();
        let pid = busy.id();
        let monitor = ResourceMonitor::new();
        let first = monitor.usage(&[pid]);
        // Within the second the first sample is reused as it is.
        assert_eq!(monitor.usage(&[pid]), first);
        // A percentage needs two samples with CPU time between them; a process seen before its
        // first clock tick needs a third. Poll, a second apart.
        let deadline = Instant::now() + Duration::from_secs(30);
        let cpu = loop {
            std::thread::sleep(SAMPLE_TTL + Duration::from_millis(100));
            let cpu = monitor.usage(&[pid])[&pid].cpu_percent;
            if cpu > 10.0 || Instant::now() > deadline {
                break cpu;
            }
        };
        busy.kill().unwrap();
        busy.wait().unwrap();
        // A spinning loop on a shared two-core machine still gets far more than this.
        assert!(cpu > 10.0, "cpu {cpu}");
    }
}
