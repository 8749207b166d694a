//! The async runtime the proxy runs on.
//!
//! One thread by default: a jail's or a pod's proxy serves one agent, and one core of TLS
//! interception moves more than a pod's network does (see the proxy benchmark). Tokio's
//! work-stealing scheduler cost about a third more CPU per intercepted request than one thread
//! (wakeups handed between workers; proxy benchmark, keep-alive rows), and a sidecar without a
//! CPU limit would otherwise start a worker for every CPU of the node. More workers are for a
//! sidecar that proxies heavy parallel traffic and is given the CPUs for it.

use tokio::runtime::{Builder, Runtime};

/// How many threads serve connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    /// One thread, the one that runs the process (tokio's current-thread scheduler).
    One,
    /// Tokio's work-stealing scheduler with this many workers.
    Many(usize),
    /// Work-stealing, one worker per CPU the process may use (its cgroup's quota included).
    PerCpu,
}

impl Workers {
    /// From the `--worker-threads` value: 0 means one per CPU.
    #[must_use]
    pub const fn from_count(count: usize) -> Workers {
        match count {
            0 => Workers::PerCpu,
            1 => Workers::One,
            n => Workers::Many(n),
        }
    }
}

/// A runtime with `workers`, its threads named `boundary`, timers and I/O enabled.
///
/// # Errors
/// The operating system's, when it cannot make the threads or the event queue.
pub fn build(workers: Workers) -> std::io::Result<Runtime> {
    let mut builder = match workers {
        Workers::One => Builder::new_current_thread(),
        Workers::Many(_) | Workers::PerCpu => Builder::new_multi_thread(),
    };
    if let Workers::Many(n) = workers {
        builder.worker_threads(n);
    }
    builder.thread_name("boundary").enable_all().build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_count_names_its_scheduler() {
        assert_eq!(Workers::from_count(0), Workers::PerCpu);
        assert_eq!(Workers::from_count(1), Workers::One);
        assert_eq!(Workers::from_count(3), Workers::Many(3));
    }

    #[test]
    fn each_choice_builds_the_scheduler_it_names() {
        use tokio::runtime::RuntimeFlavor;
        let flavor = |w| build(w).unwrap().handle().runtime_flavor();
        assert_eq!(flavor(Workers::One), RuntimeFlavor::CurrentThread);
        assert_eq!(flavor(Workers::Many(2)), RuntimeFlavor::MultiThread);
        assert_eq!(flavor(Workers::PerCpu), RuntimeFlavor::MultiThread);
        let workers = build(Workers::Many(3)).unwrap().metrics().num_workers();
        assert_eq!(workers, 3);
    }
}
