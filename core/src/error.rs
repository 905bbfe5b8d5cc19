//! Typed errors of the core.

use crate::slot::{Life, SlotReport};
use std::fmt;

/// Errors from slot management (start, hot-add, removal, stop).
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// `max_vcpus` of zero.
    #[error("max_vcpus must be at least 1")]
    NoSlots,
    /// Index past `max_vcpus`.
    #[error("vCPU index {index} is out of range (max_vcpus = {max})")]
    OutOfRange {
        /// The index asked for.
        index: usize,
        /// `max_vcpus`.
        max: usize,
    },
    /// The slot is not in a state that allows the operation.
    #[error("vCPU {index} is {life:?}, cannot {op}")]
    WrongState {
        /// Slot index.
        index: usize,
        /// Its state when the operation was refused.
        life: Life,
        /// What was attempted.
        op: &'static str,
    },
    /// The backend failed to create or start the vCPU.
    #[error("backend failed to start vCPU {index}: {source}")]
    Spawn {
        /// Slot index.
        index: usize,
        /// The backend's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A vCPU did not leave its run loop before the deadline.
    #[error("vCPU did not stop before the deadline: {0}")]
    StopTimeout(SlotReport),
    /// A call that waits for vCPU threads was made on a vCPU thread, where it could only
    /// wait for itself (or for a vCPU waiting for it). VMM threads only.
    #[error("{op} was called on the thread of vCPU {index}; it waits for vCPU threads and may only be called from a VMM thread")]
    OnVcpuThread {
        /// The vCPU whose thread made the call.
        index: usize,
        /// What was called.
        op: &'static str,
    },
}

/// Why `pause()` returned without every vCPU acknowledging.
#[derive(Debug, thiserror::Error)]
pub enum PauseError {
    /// The deadline passed; the report names every vCPU still missing.
    #[error("{0}")]
    Timeout(PauseTimeout),
    /// A `resume()` ended this pause before every vCPU acknowledged it.
    #[error("pause was cancelled by a concurrent resume")]
    Interrupted,
    /// `pause()` was called on a vCPU thread, which cannot acknowledge a pause while it
    /// waits for one. VMM threads only.
    #[error(
        "pause was called on the thread of vCPU {index}; it may only be called from a VMM thread"
    )]
    OnVcpuThread {
        /// The vCPU whose thread made the call.
        index: usize,
    },
}

/// The vCPUs that had not acknowledged a pause by its deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PauseTimeout {
    /// One report per vCPU that had not acknowledged.
    pub missing: Vec<SlotReport>,
}

impl fmt::Display for PauseTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pause timed out; {} vCPU(s) did not acknowledge:",
            self.missing.len()
        )?;
        for r in &self.missing {
            write!(f, " [{r}]")?;
        }
        Ok(())
    }
}
