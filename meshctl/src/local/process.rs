//! The runtime's processes, recorded by pid and start time so that a recorded pid is only ever
//! signalled while it still names the process the runtime started (pids are reused).

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// A process the runtime started.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Recorded {
    /// Its pid.
    pub pid: u32,
    /// Its start time in clock ticks since boot (`/proc/PID/stat` field 22).
    pub start: u64,
}

/// Field 22 (start time) and field 3 (state) of `/proc/PID/stat`.
fn stat(pid: u32) -> Option<(u64, char)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: split after it.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((start, state))
}

/// How many threads `/proc/PID/task` lists (0 when the process is gone).
fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, Iterator::count)
}

impl Recorded {
    /// Records a process just started.
    pub fn of(pid: u32) -> Recorded {
        Recorded {
            pid,
            start: stat(pid).map(|(s, _)| s).unwrap_or(0),
        }
    }

    /// True while the process runs (not exited, not a zombie, not another process since).
    /// A killed multi-threaded process shows its main thread as a zombie while its other
    /// threads are still exiting, and its sockets stay open until the last one has: it counts
    /// as alive until only the zombie main thread is left (else a restart can find its ports
    /// still taken).
    pub fn alive(&self) -> bool {
        stat(self.pid).is_some_and(|(start, state)| {
            start == self.start && (state != 'Z' || threads(self.pid) > 1)
        })
    }

    /// Asks it to stop (SIGTERM), then kills it (SIGKILL) when it has not stopped by `grace`.
    pub fn stop(&self, grace: Duration) {
        terminate(&[*self], grace);
    }
}

/// Stops every process in `procs`: SIGTERM to all, then SIGKILL to those still running after
/// `grace`. Returns when all are gone.
pub fn terminate(procs: &[Recorded], grace: Duration) {
    let signal_all = |signal: Signal| {
        for p in procs.iter().filter(|p| p.alive()) {
            let _ = kill(Pid::from_raw(p.pid as i32), signal);
        }
    };
    signal_all(Signal::SIGTERM);
    if wait_gone(procs, grace) {
        return;
    }
    signal_all(Signal::SIGKILL);
    wait_gone(procs, Duration::from_secs(5));
}

fn wait_gone(procs: &[Recorded], within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if procs.iter().all(|p| !p.alive()) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops every process found in a namespace (whoever started it, e.g. with `meshctl exec`).
pub fn terminate_netns(netns: &str, grace: Duration) {
    let procs: Vec<Recorded> = super::net::netns_pids(netns)
        .into_iter()
        .filter_map(|p| u32::try_from(p).ok())
        .map(Recorded::of)
        .collect();
    terminate(&procs, grace);
}
