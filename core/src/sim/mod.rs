//! Test support (feature `sim`): a simulated backend, the no-re-kick negative control
//! ([`pause_with`]), the loom time budget (`model_time`, under `--cfg loom`) and a deadline
//! executor ([`exec`]). Not part of the API a VMM needs.
//!
//! The simulated backend: fake vCPUs that "run the guest" by spinning, leave guest mode when
//! kicked, and perform hotplug-controller accesses as a guest would. The same code runs on
//! real threads (unit and property tests) and under loom (model tests), so the models
//! exercise the exact protocol the VMM uses.
//!
//! Under loom an idle guest *halts* (blocks until a kick or new work) instead of spinning:
//! two threads that spin and yield let loom build arbitrarily long schedules in which a third
//! never runs, and the spinning multiplies the interleavings to explore. A halted guest is
//! what KVM does with an idle vCPU anyway (HLT, woken by a kick or an interrupt).
//!
//! Kicks follow KVM's semantics: with [`KickMode::ImmediateExit`] a kick sets the vCPU's
//! `immediate_exit` (the next entry returns at once) and interrupts it if it is in guest
//! mode. [`KickMode::Lossy`] models a bare signal: a kick that lands outside guest mode is
//! lost, which only re-kicking recovers from.

use crate::backend::Backend;
use crate::hotplug::WriteEffect;
use crate::link::{Next, VcpuLink};
use crate::slot::Location;
use crate::sync::{fence, lock, thread, Arc, AtomicBool, AtomicU64, Mutex, Ordering};
use crate::vcpus::Vcpus;
use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

pub mod exec;

#[cfg(loom)]
pub use crate::sync::model_time;
pub use crate::vcpus::Rekick;

/// [`Vcpus::pause`] with an explicit re-kick policy: [`Rekick::Disabled`] is the unsound
/// design the negative controls show hanging (or timing out) on a lost kick.
pub fn pause_with<B: Backend>(
    vcpus: &Vcpus<B>,
    timeout: Duration,
    rekick: Rekick,
) -> Result<(), crate::PauseError> {
    vcpus.pause_with(timeout, rekick)
}

/// How a kick reaches a simulated vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KickMode {
    /// Like KVM with `immediate_exit`: a kick is never lost.
    ImmediateExit,
    /// Like a bare signal: a kick outside guest mode is lost.
    Lossy,
}

/// One thing the simulated guest does on a vCPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuestOp {
    /// Read `size` bytes of the hotplug controller at `offset` (an MMIO exit).
    MmioRead {
        /// Register offset.
        offset: u64,
        /// Access size.
        size: usize,
    },
    /// Write `data` to the hotplug controller at `offset` (an MMIO exit).
    MmioWrite {
        /// Register offset.
        offset: u64,
        /// Bytes written.
        data: Vec<u8>,
    },
    /// Run in guest mode for `n` ticks, then exit on its own (a timer or I/O exit).
    Run(u32),
    /// Exit to a device handler that does not return until [`SimBackend::release`] (a
    /// wedged device model), to show how a stuck pause is diagnosed.
    Wedge,
}

impl GuestOp {
    /// Select CPU `cpu` in the hotplug controller (write of the select register).
    pub fn select(cpu: u32) -> GuestOp {
        GuestOp::MmioWrite {
            offset: crate::hotplug::REG_SELECT,
            data: cpu.to_le_bytes().to_vec(),
        }
    }

    /// What the guest's `_EJ0` for CPU `cpu` does: select it, then write the eject bit.
    pub fn eject(cpu: u32) -> [GuestOp; 2] {
        [
            GuestOp::select(cpu),
            GuestOp::MmioWrite {
                offset: crate::hotplug::REG_STATUS,
                data: vec![crate::slot::STATUS_EJECT],
            },
        ]
    }
}

/// What a simulated vCPU observed, for tests to check against a model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observed {
    /// An MMIO read returned these bytes.
    Read {
        /// Register offset.
        offset: u64,
        /// Bytes returned.
        data: Vec<u8>,
    },
    /// An MMIO write had this effect.
    Wrote(WriteEffect),
}

struct SimVcpu {
    immediate_exit: AtomicBool,
    in_guest: AtomicBool,
    exit_request: AtomicBool,
    has_pending: AtomicBool,
    /// Loom only: an idle guest waits here (see the module docs).
    #[cfg(loom)]
    halt: (Mutex<()>, crate::sync::Condvar),
    pending: Mutex<VecDeque<GuestOp>>,
    wedged: AtomicBool,
    /// Guest-mode ticks executed: guest progress, which must stop while paused.
    ticks: AtomicU64,
    /// Guest entries.
    entries: AtomicU64,
}

struct SimInner {
    mode: KickMode,
    vcpus: Box<[SimVcpu]>,
    /// The core handle, for device accesses; set by `attach`, cleared by `detach` (it
    /// would otherwise be a reference cycle through the backend).
    core: Mutex<Option<Vcpus<SimBackend>>>,
    observed: Mutex<Vec<(usize, Observed)>>,
    record: bool,
}

/// The simulated backend. Cheap to clone.
#[derive(Clone)]
pub struct SimBackend {
    inner: Arc<SimInner>,
}

impl fmt::Debug for SimBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimBackend")
            .field("mode", &self.inner.mode)
            .finish()
    }
}

/// The simulated backend never fails to start a vCPU.
#[derive(Debug, thiserror::Error)]
#[error("simulated vCPU {0} could not start")]
pub struct SimError(pub usize);

impl SimBackend {
    /// A backend for `max_vcpus` simulated vCPUs. `record` keeps every observation (tests
    /// that compare with a model); models leave it off to keep the state space small.
    pub fn new(max_vcpus: usize, mode: KickMode, record: bool) -> SimBackend {
        let vcpus = (0..max_vcpus)
            .map(|_| SimVcpu {
                immediate_exit: AtomicBool::new(false),
                in_guest: AtomicBool::new(false),
                exit_request: AtomicBool::new(false),
                has_pending: AtomicBool::new(false),
                #[cfg(loom)]
                halt: (Mutex::new(()), crate::sync::Condvar::new()),
                pending: Mutex::new(VecDeque::new()),
                wedged: AtomicBool::new(false),
                ticks: AtomicU64::new(0),
                entries: AtomicU64::new(0),
            })
            .collect();
        SimBackend {
            inner: Arc::new(SimInner {
                mode,
                vcpus,
                core: Mutex::new(None),
                observed: Mutex::new(Vec::new()),
                record,
            }),
        }
    }

    /// Creates the core over a new simulated backend and wires them together.
    pub fn create(
        max_vcpus: usize,
        mode: KickMode,
        record: bool,
    ) -> (Vcpus<SimBackend>, SimBackend) {
        let sim = SimBackend::new(max_vcpus.max(1), mode, record);
        let vcpus = match Vcpus::new(max_vcpus.max(1), sim.clone()) {
            Ok(v) => v,
            Err(_) => unreachable!("max_vcpus is at least 1"),
        };
        *lock(&sim.inner.core) = Some(vcpus.clone());
        (vcpus, sim)
    }

    /// Breaks the backend -> core reference (call when done with the VM).
    pub fn detach(&self) {
        lock(&self.inner.core).take();
    }

    /// Queues guest operations for vCPU `index` (ignored for an out-of-range index).
    pub fn push_ops(&self, index: usize, ops: impl IntoIterator<Item = GuestOp>) {
        let Some(v) = self.inner.vcpus.get(index) else {
            return;
        };
        lock(&v.pending).extend(ops);
        v.has_pending.store(true, Ordering::SeqCst);
        #[cfg(loom)]
        wake(v);
    }

    /// Releases a vCPU stuck in [`GuestOp::Wedge`].
    pub fn release(&self, index: usize) {
        if let Some(v) = self.inner.vcpus.get(index) {
            v.wedged.store(false, Ordering::SeqCst);
        }
    }

    /// Guest-mode ticks vCPU `index` has executed.
    pub fn ticks(&self, index: usize) -> u64 {
        self.inner
            .vcpus
            .get(index)
            .map_or(0, |v| v.ticks.load(Ordering::SeqCst))
    }

    /// Times vCPU `index` entered guest mode.
    pub fn entries(&self, index: usize) -> u64 {
        self.inner
            .vcpus
            .get(index)
            .map_or(0, |v| v.entries.load(Ordering::SeqCst))
    }

    /// Whether vCPU `index` has guest operations it has not started yet.
    pub fn has_pending(&self, index: usize) -> bool {
        self.inner
            .vcpus
            .get(index)
            .is_some_and(|v| v.has_pending.load(Ordering::SeqCst))
    }

    /// Everything the vCPUs observed so far (with `record`), in order per vCPU.
    pub fn take_observed(&self) -> Vec<(usize, Observed)> {
        std::mem::take(&mut *lock(&self.inner.observed))
    }

    fn next_op(&self, v: &SimVcpu) -> Option<GuestOp> {
        if !v.has_pending.load(Ordering::SeqCst) {
            return None;
        }
        let mut q = lock(&v.pending);
        let op = q.pop_front();
        if q.is_empty() {
            v.has_pending.store(false, Ordering::SeqCst);
        }
        op
    }

    /// One pass through guest mode: returns the exit the "hardware" reports.
    fn run_guest(&self, v: &SimVcpu) -> Option<GuestOp> {
        v.entries.fetch_add(1, Ordering::SeqCst);
        if v.immediate_exit.load(Ordering::SeqCst) {
            return None; // KVM_RUN returns EINTR at once
        }
        let mut budget: Option<u32> = None;
        loop {
            // A swap, as every write of the kick flags is (see `kick`).
            if v.exit_request.swap(false, Ordering::SeqCst) {
                return None; // interrupted by a kick
            }
            match budget {
                Some(0) => return Some(GuestOp::Run(0)),
                Some(ref mut n) => *n -= 1,
                None => match self.next_op(v) {
                    Some(GuestOp::Run(n)) => budget = Some(n),
                    Some(op) => return Some(op),
                    None => {
                        #[cfg(loom)]
                        {
                            halt(v);
                            continue;
                        }
                    }
                },
            }
            v.ticks.fetch_add(1, Ordering::SeqCst);
            guest_tick();
        }
    }

    fn device(&self, index: usize, v: &SimVcpu, op: GuestOp) {
        let core = lock(&self.inner.core).clone();
        let Some(core) = core else { return };
        let seen = match op {
            GuestOp::MmioRead { offset, size } => {
                let mut data = vec![0u8; size];
                core.hotplug_read(offset, &mut data);
                Observed::Read { offset, data }
            }
            GuestOp::MmioWrite { offset, data } => {
                Observed::Wrote(core.hotplug_write(offset, &data))
            }
            GuestOp::Wedge => {
                v.wedged.store(true, Ordering::SeqCst);
                while v.wedged.load(Ordering::SeqCst) {
                    guest_tick();
                }
                return;
            }
            GuestOp::Run(_) => return,
        };
        if self.inner.record {
            lock(&self.inner.observed).push((index, seen));
        }
    }

    fn run_loop(&self, link: VcpuLink) {
        let index = link.index();
        let v = &self.inner.vcpus[index];
        loop {
            // Clear before the checkpoint, as the KVM run loop does. A swap, not a store
            // (see `kick`); when it overwrites a kick's set it also reads it, so the
            // checkpoint sees the epoch the kicker published before kicking. On x86 a
            // SeqCst store is an `xchg` anyway.
            v.immediate_exit.swap(false, Ordering::SeqCst);
            // Entering and leaving KVM_RUN are full barriers; the store->load orders the
            // kick handshake relies on (here, and around `in_guest`) are made explicit
            // with SeqCst fences, which loom models exactly.
            fence(Ordering::SeqCst);
            if link.checkpoint() == Next::Exit {
                break;
            }
            link.set_location(Location::InGuest);
            v.in_guest.store(true, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            let exit = self.run_guest(v);
            v.in_guest.store(false, Ordering::SeqCst);
            link.set_location(Location::Userspace);
            if let Some(op) = exit {
                link.in_mmio(|| self.device(index, v, op));
            }
        }
    }
}

/// Loom only: an idle guest blocks until kicked or given work (checked under the lock the
/// waker takes, so no wake-up is lost).
#[cfg(loom)]
fn halt(v: &SimVcpu) {
    let g = lock(&v.halt.0);
    if !v.exit_request.load(Ordering::SeqCst) && !v.has_pending.load(Ordering::SeqCst) {
        drop(crate::sync::wait(&v.halt.1, g));
    }
}

/// Loom only: wakes a halted guest.
#[cfg(loom)]
fn wake(v: &SimVcpu) {
    let g = lock(&v.halt.0);
    v.halt.1.notify_all();
    drop(g);
}

/// Lets other simulated threads run: a yield under loom, a short sleep on real threads (a
/// busy spin would starve a 2-core machine).
fn guest_tick() {
    #[cfg(loom)]
    thread::yield_now();
    #[cfg(not(loom))]
    std::thread::sleep(std::time::Duration::from_micros(50));
}

impl Backend for SimBackend {
    type Thread = thread::JoinHandle<()>;
    type Error = SimError;

    fn spawn(&self, link: VcpuLink) -> Result<Self::Thread, SimError> {
        let index = link.index();
        let v = self.inner.vcpus.get(index).ok_or(SimError(index))?;
        v.exit_request.store(false, Ordering::SeqCst);
        v.immediate_exit.store(false, Ordering::SeqCst);
        let me = self.clone();
        Ok(thread::spawn(move || me.run_loop(link)))
    }

    fn kick(&self, index: usize) {
        let Some(v) = self.inner.vcpus.get(index) else {
            return;
        };
        // As the KVM backend does: always store the flag (skipping the store when a load
        // says it is already set could act on a stale value: the vCPU's clear may be in
        // flight, and the kick would be lost), then interrupt the guest if it is in it.
        //
        // Every write of a flag that two threads write is a read-modify-write. Hardware
        // orders all writes to one location; loom orders two plain stores from different
        // threads only if one thread saw the other's, and would let the vCPU keep reading
        // its own old "clear" after the kicker's "set" (a lost kick no machine exhibits).
        // A chain of RMWs, each reading the latest value, is totally ordered in loom too.
        if self.inner.mode == KickMode::ImmediateExit {
            v.immediate_exit.swap(true, Ordering::SeqCst);
        }
        fence(Ordering::SeqCst);
        if v.in_guest.load(Ordering::SeqCst) {
            v.exit_request.swap(true, Ordering::SeqCst);
            #[cfg(loom)]
            wake(v);
        }
    }

    fn join(&self, _index: usize, thread: Self::Thread) {
        if thread.join().is_err() {
            log::error!("simulated vCPU thread panicked");
        }
    }
}
