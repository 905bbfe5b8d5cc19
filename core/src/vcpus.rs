//! The VMM-side handle: pause/resume, start/hot-add/stop/reap, and snapshots.
//!
//! Slot lifecycle (every arrow is a compare-and-swap on the slot's atomic, so racing
//! callers agree on one winner):
//!
//! ```text
//! Absent --start/hot_add--> Starting --spawned--> Active --stop/eject--> Stopping
//!    ^                          |                                            |
//!    |                          +--spawn failed--> Absent        thread exits v
//!    +------------------------------ reap (join) <-------------------- Exited
//! ```

use crate::backend::Backend;
use crate::error::{CoreError, PauseError, PauseTimeout};
use crate::link::{current_vcpu, VcpuLink};
use crate::shared::Shared;
use crate::slot::{
    Life, Location, SlotReport, FLAG_REMOVAL_SEEN, FLAG_REMOVE_REQUESTED, STATUS_INSERTING,
    STATUS_REMOVING,
};
use crate::sync::{lock, spin_until, Arc, Deadline, Mutex, Ordering};
use std::time::Duration;

/// How long a pauser sleeps between re-kicks of vCPUs that have not acknowledged.
pub const REKICK_INTERVAL: Duration = Duration::from_millis(2);

/// How long a pauser polls for acknowledgements before it sleeps, when the host has a CPU
/// to spare for it (see [`Vcpus::pause`]): a little more than a vCPU of a small VM takes
/// to leave the guest and acknowledge on this project's hosts (about 30 µs).
pub(crate) const PAUSE_SPIN: Duration = Duration::from_micros(50);

/// How long a pause waits past its deadline, once, before reporting a timeout (see
/// [`Vcpus::pause`]).
pub const PAUSE_GRACE: Duration = Duration::from_millis(100);

/// Whether `pause` re-kicks vCPUs that have not acknowledged. Only the tests turn it off
/// (through the `sim` feature), to prove that a lost kick hangs a pause without it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rekick {
    /// Re-kick every straggler after each wait slice (the only sound choice).
    Enabled,
    /// Kick once and wait. Unsound when a kick can be lost; kept as a negative control.
    #[cfg_attr(not(feature = "sim"), allow(dead_code))]
    Disabled,
}

/// How long a pause waits for its acknowledgements.
#[derive(Clone, Copy, Debug)]
enum Wait {
    /// Up to the timeout plus [`PAUSE_GRACE`], then an error.
    Full(Duration),
    /// Up to this patience, then `Ok(false)` with the pause left in force.
    Brief(Duration),
}

/// Counters since creation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Pauses that completed with every vCPU acknowledged.
    pub pauses: u64,
    /// Pauses during which some vCPU was inside a device (MMIO/PIO) handler when kicked.
    pub pauses_overlapping_mmio: u64,
    /// Kicks re-sent to vCPUs that had not acknowledged in time.
    pub rekicks: u64,
    /// Guest ejects honoured.
    pub ejects: u64,
}

struct Inner<B: Backend> {
    shared: Arc<Shared>,
    backend: B,
    /// Thread handles, one lock per slot, held only to put or take the handle.
    threads: Box<[Mutex<Option<B::Thread>>]>,
    /// The CPUs this process may run on, read once: whether a pauser may spin.
    host_cpus: usize,
}

/// The core's handle on a VM's vCPUs. Cheap to clone.
///
/// Methods that wait for vCPU threads — [`Vcpus::pause`], [`Vcpus::hot_remove`],
/// [`Vcpus::reap`], [`Vcpus::shutdown`] — are for VMM threads only: on a vCPU thread they
/// return [`CoreError::OnVcpuThread`] / [`PauseError::OnVcpuThread`] at once (a vCPU cannot
/// acknowledge its own pause or join its own thread). Every other method never waits for a
/// vCPU and may be called from any thread, vCPU threads included (the hotplug controller's
/// MMIO handling does).
///
/// The handle owns the backend. Whatever the backend owns (a device model reached from
/// its exit handler, say) must refer back to the core through a [`WeakVcpus`], or the two
/// keep each other alive and dropping the VM frees nothing.
pub struct Vcpus<B: Backend> {
    // A std Arc even under loom: only its Weak is needed here, which loom's Arc lacks, and
    // the reference count is not part of the protocol loom explores.
    inner: std::sync::Arc<Inner<B>>,
}

/// A handle on the vCPUs that does not keep them (nor the backend) alive: for device models
/// that the backend owns, which would otherwise form a reference cycle through it.
pub struct WeakVcpus<B: Backend> {
    inner: std::sync::Weak<Inner<B>>,
}

impl<B: Backend> WeakVcpus<B> {
    /// A handle that never upgrades (nothing attached yet).
    pub fn new() -> Self {
        WeakVcpus {
            inner: std::sync::Weak::new(),
        }
    }

    /// The vCPUs, if some [`Vcpus`] handle still exists.
    pub fn upgrade(&self) -> Option<Vcpus<B>> {
        self.inner.upgrade().map(|inner| Vcpus { inner })
    }
}

impl<B: Backend> Default for WeakVcpus<B> {
    fn default() -> Self {
        Self::new()
    }
}

impl<B: Backend> Clone for WeakVcpus<B> {
    fn clone(&self) -> Self {
        WeakVcpus {
            inner: self.inner.clone(),
        }
    }
}

impl<B: Backend> std::fmt::Debug for WeakVcpus<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeakVcpus")
            .field("alive", &(self.inner.strong_count() > 0))
            .finish()
    }
}

impl<B: Backend> Clone for Vcpus<B> {
    fn clone(&self) -> Self {
        Vcpus {
            inner: self.inner.clone(),
        }
    }
}

impl<B: Backend> std::fmt::Debug for Vcpus<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vcpus")
            .field("max_vcpus", &self.max_vcpus())
            .finish()
    }
}

impl<B: Backend> Vcpus<B> {
    /// Creates `max_vcpus` empty slots over `backend`. No thread is started.
    pub fn new(max_vcpus: usize, backend: B) -> Result<Self, CoreError> {
        if max_vcpus == 0 {
            return Err(CoreError::NoSlots);
        }
        let threads = (0..max_vcpus).map(|_| Mutex::new(None)).collect();
        Ok(Vcpus {
            inner: std::sync::Arc::new(Inner {
                shared: Arc::new(Shared::new(max_vcpus)),
                backend,
                threads,
                host_cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            }),
        })
    }

    /// A handle that does not keep the vCPUs alive (see [`WeakVcpus`]).
    pub fn downgrade(&self) -> WeakVcpus<B> {
        WeakVcpus {
            inner: std::sync::Arc::downgrade(&self.inner),
        }
    }

    /// The number of slots, fixed at creation.
    pub fn max_vcpus(&self) -> usize {
        self.inner.shared.slots.len()
    }

    /// The backend this core drives.
    pub fn backend(&self) -> &B {
        &self.inner.backend
    }

    /// Refuses `op` on a vCPU thread (see the type's docs).
    fn vmm_thread_only(op: &'static str) -> Result<(), CoreError> {
        match current_vcpu() {
            Some(index) => Err(CoreError::OnVcpuThread { index, op }),
            None => Ok(()),
        }
    }

    fn check_index(&self, index: usize) -> Result<(), CoreError> {
        let max = self.max_vcpus();
        if index >= max {
            return Err(CoreError::OutOfRange { index, max });
        }
        Ok(())
    }

    /// Starts a boot vCPU (no hotplug notification to the guest).
    pub fn start(&self, index: usize) -> Result<(), CoreError> {
        self.add(index, false)
    }

    /// Hot-adds a vCPU: starts its thread and marks the slot inserting so the guest's scan
    /// picks it up. The thread honours a pause already in force before its first entry.
    pub fn hot_add(&self, index: usize) -> Result<(), CoreError> {
        self.add(index, true)
    }

    fn add(&self, index: usize, inserting: bool) -> Result<(), CoreError> {
        self.check_index(index)?;
        let inner = &*self.inner;
        let slot = &inner.shared.slots[index];
        if !slot.cas_life(Life::Absent, Life::Starting) {
            return Err(CoreError::WrongState {
                index,
                life: slot.life(),
                op: "add",
            });
        }
        slot.flags.store(0, Ordering::SeqCst);
        // A new vCPU has acknowledged nothing. Without this, a slot emptied and refilled
        // within one pause inherits its previous occupant's ack of that epoch, and `pause()`
        // returns before the new thread has parked. Epochs of pauses are odd, so 0 never
        // matches one.
        slot.ack.store(0, Ordering::SeqCst);
        slot.set_location(Location::NotStarted);
        let link = VcpuLink::new(inner.shared.clone(), index);
        match inner.backend.spawn(link) {
            Ok(thread) => {
                *lock(&inner.threads[index]) = Some(thread);
                if inserting {
                    slot.flags.fetch_or(STATUS_INSERTING, Ordering::SeqCst);
                }
                // Fails only if the thread already exited (it then waits to be reaped).
                slot.cas_life(Life::Starting, Life::Active);
                log::debug!("vCPU {index} started (hotplug: {inserting})");
                Ok(())
            }
            Err(e) => {
                // The backend dropped the link, which marked the slot Exited; nothing to join.
                slot.life.store(Life::Absent as u8, Ordering::SeqCst);
                Err(CoreError::Spawn {
                    index,
                    source: Box::new(e),
                })
            }
        }
    }

    /// Asks the guest to give up vCPU `index`: sets `removing` (seen by the guest's scan) and
    /// allows the guest's eject. The thread stops only when the guest ejects the CPU.
    pub fn request_removal(&self, index: usize) -> Result<(), CoreError> {
        self.check_index(index)?;
        let slot = &self.inner.shared.slots[index];
        match slot.life() {
            Life::Active | Life::Starting => {
                // One atomic step: a guest read in between must not mark the new request
                // seen and then have that undone.
                let mut f = slot.flags.load(Ordering::SeqCst);
                loop {
                    // A request already standing keeps its "seen": the guest may be on
                    // its way to eject the CPU.
                    let seen = if f & FLAG_REMOVE_REQUESTED != 0 {
                        f & FLAG_REMOVAL_SEEN
                    } else {
                        0
                    };
                    let new = (f & !(STATUS_INSERTING | FLAG_REMOVAL_SEEN))
                        | STATUS_REMOVING
                        | FLAG_REMOVE_REQUESTED
                        | seen;
                    match slot
                        .flags
                        .compare_exchange(f, new, Ordering::SeqCst, Ordering::SeqCst)
                    {
                        Ok(_) => break,
                        Err(now) => f = now,
                    }
                }
                Ok(())
            }
            life => Err(CoreError::WrongState {
                index,
                life,
                op: "request removal",
            }),
        }
    }

    /// Withdraws a removal request the guest has not seen yet. Returns whether it did:
    /// false when none was pending, and false (changing nothing) once the guest has read
    /// `removing` for this CPU, since it may already be offlining it to eject it.
    pub fn cancel_removal(&self, index: usize) -> Result<bool, CoreError> {
        self.check_index(index)?;
        let slot = &self.inner.shared.slots[index];
        let mut f = slot.flags.load(Ordering::SeqCst);
        loop {
            if f & FLAG_REMOVE_REQUESTED == 0 || f & FLAG_REMOVAL_SEEN != 0 {
                return Ok(false);
            }
            let new = f & !(STATUS_REMOVING | FLAG_REMOVE_REQUESTED);
            match slot
                .flags
                .compare_exchange(f, new, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return Ok(true),
                Err(now) => f = now,
            }
        }
    }

    /// Tells vCPU `index` to leave its run loop (wakes it if parked, kicks it out of guest
    /// mode) without waiting. Returns whether this call did it (false if it was not active).
    pub fn stop(&self, index: usize) -> Result<bool, CoreError> {
        self.check_index(index)?;
        let shared = &*self.inner.shared;
        let slot = &shared.slots[index];
        if !slot.cas_life(Life::Active, Life::Stopping) {
            return Ok(false);
        }
        slot.flags.store(0, Ordering::SeqCst);
        slot.ring_parked();
        self.kick(index);
        Ok(true)
    }

    /// Hot-removes vCPU `index` from the VMM side: stops it, waits (bounded) for its thread
    /// to leave the run loop, re-kicking it, and reaps it. No lock is held while waiting.
    /// VMM threads only.
    pub fn hot_remove(&self, index: usize, timeout: Duration) -> Result<(), CoreError> {
        Self::vmm_thread_only("hot_remove")?;
        self.check_index(index)?;
        self.stop(index)?;
        let deadline = Deadline::after(timeout);
        let shared = &*self.inner.shared;
        let slot = &shared.slots[index];
        loop {
            match slot.life() {
                Life::Exited => {
                    self.reap_one(index);
                    return Ok(());
                }
                Life::Absent => return Ok(()),
                Life::Starting | Life::Active => {
                    return Err(CoreError::WrongState {
                        index,
                        life: slot.life(),
                        op: "hot-remove",
                    })
                }
                Life::Stopping => {}
            }
            if deadline.passed() {
                return Err(CoreError::StopTimeout(self.report(index)));
            }
            self.kick(index);
            slot.wait_for_vcpu(REKICK_INTERVAL, || slot.life() != Life::Stopping);
        }
    }

    /// Joins every thread that has left its run loop and empties its slot. Returns the
    /// indices reaped. VMM threads only (a vCPU thread's MMIO handling only stops a vCPU:
    /// two vCPUs ejecting each other must not wait on each other).
    pub fn reap(&self) -> Result<Vec<usize>, CoreError> {
        Self::vmm_thread_only("reap")?;
        Ok(self.reap_all())
    }

    fn reap_all(&self) -> Vec<usize> {
        (0..self.max_vcpus())
            .filter(|&i| self.reap_one(i))
            .collect()
    }

    fn reap_one(&self, index: usize) -> bool {
        let inner = &*self.inner;
        let slot = &inner.shared.slots[index];
        if slot.life() != Life::Exited {
            return false;
        }
        // Take the handle under the slot's lock, join with no lock held.
        let thread = lock(&inner.threads[index]).take();
        match thread {
            Some(t) => {
                inner.backend.join(index, t);
                slot.flags.store(0, Ordering::SeqCst);
                slot.cas_life(Life::Exited, Life::Absent)
            }
            // The adder has not stored the handle yet, or another reaper took it.
            None => false,
        }
    }

    /// Stops every vCPU and reaps them all, waiting at most `timeout` in total. VMM
    /// threads only.
    pub fn shutdown(&self, timeout: Duration) -> Result<(), CoreError> {
        Self::vmm_thread_only("shutdown")?;
        for i in 0..self.max_vcpus() {
            self.stop(i)?;
        }
        let deadline = Deadline::after(timeout);
        let shared = &*self.inner.shared;
        loop {
            self.reap_all();
            let busy = (0..self.max_vcpus()).find(|&i| shared.slots[i].life() != Life::Absent);
            let Some(i) = busy else { return Ok(()) };
            if shared.slots[i].life() == Life::Active {
                // Started after our stop pass (a racing hot-add): stop it too.
                self.stop(i)?;
            }
            if deadline.passed() {
                return Err(CoreError::StopTimeout(self.report(i)));
            }
            self.kick(i);
            let slot = &shared.slots[i];
            slot.wait_for_vcpu(REKICK_INTERVAL, || slot.life() == Life::Exited);
        }
    }

    fn kick(&self, index: usize) {
        self.inner.shared.slots[index]
            .kicks
            .fetch_add(1, Ordering::Relaxed);
        self.inner.backend.kick(index);
    }

    /// Whether slot `index` still owes an acknowledgement of `epoch`.
    fn owes_ack(&self, index: usize, epoch: u64) -> bool {
        let slot = &self.inner.shared.slots[index];
        slot.life().has_thread() && slot.ack.load(Ordering::SeqCst) != epoch
    }

    /// The pause epoch: odd while a pause is in force, incremented when one starts and when
    /// it ends. A device model that reads it before and after servicing an access learns
    /// whether a pause landed meanwhile (without taking any lock).
    pub fn pause_epoch(&self) -> u64 {
        self.inner.shared.epoch.load(Ordering::SeqCst)
    }

    /// Pauses every vCPU: signal all, then wait all, re-kicking stragglers, with no lock
    /// held while waiting. Returns when every vCPU with a thread has acknowledged (a slot
    /// that empties meanwhile counts as acknowledged). Pausing while paused waits for the
    /// pause in force. Past `timeout` the stragglers are re-kicked and given one more
    /// [`PAUSE_GRACE`] (a deadline can pass while the whole process is stopped, with no
    /// vCPU able to run); past that, returns an error naming each missing vCPU. VMM threads only. The pause
    /// then stays in force (the vCPUs that acknowledged stay parked) until `resume()`;
    /// the VMM withdraws a failed pause (`vmm::vm::Vm::pause`).
    pub fn pause(&self, timeout: Duration) -> Result<(), PauseError> {
        self.pause_with(timeout, Rekick::Enabled).map(|_| ())
    }

    /// [`Vcpus::pause`] for a caller that must not block long (an event loop that answers
    /// quick pauses in place): starts a pause or joins the one in force, kicks, and waits
    /// at most `patience`. `Ok(true)`: every vCPU has acknowledged. `Ok(false)`: some have
    /// not yet; the pause stays in force, and a later [`Vcpus::pause`] (which joins it)
    /// waits for the rest, or [`Vcpus::resume`] withdraws it. Nothing is logged on
    /// `Ok(false)`: running out of patience is not a fault.
    pub fn try_pause(&self, patience: Duration) -> Result<bool, PauseError> {
        self.pause_inner(Wait::Brief(patience), Rekick::Enabled)
    }

    /// [`Vcpus::pause`] with an explicit re-kick policy (`sim::pause_with`, for the
    /// negative controls).
    pub(crate) fn pause_with(&self, timeout: Duration, rekick: Rekick) -> Result<(), PauseError> {
        self.pause_inner(Wait::Full(timeout), rekick).map(|_| ())
    }

    /// Both pauses: `Ok(false)` only when a [`Wait::Brief`] patience ran out.
    fn pause_inner(&self, wait: Wait, rekick: Rekick) -> Result<bool, PauseError> {
        if let Some(index) = current_vcpu() {
            return Err(PauseError::OnVcpuThread { index });
        }
        let (timeout, brief) = match wait {
            Wait::Full(t) => (t, false),
            Wait::Brief(t) => (t, true),
        };
        let mut deadline = Deadline::after(timeout);
        let mut grace_left = true;
        let shared = &*self.inner.shared;
        let epoch = self.enter_pause();
        let n = self.max_vcpus();

        // Phase 1: signal all.
        let mut overlapped = false;
        for i in 0..n {
            if self.owes_ack(i, epoch) {
                overlapped |= shared.slots[i].location() == Location::InMmio;
                self.kick(i);
            }
        }
        if overlapped {
            shared
                .counters
                .pauses_overlapping_mmio
                .fetch_add(1, Ordering::Relaxed);
        }

        // Phase 2 starts with a short spin when the host has a CPU for the pauser besides
        // one for each vCPU still owing an acknowledgement (each may be running guest
        // code): their acknowledgements then skip the wake-up and the pauser keeps its CPU.
        // With fewer CPUs the spin takes the CPU a kicked vCPU needs to acknowledge on
        // (measured on 2 CPUs with 2 spinning vCPUs: medians from 0.09 to 3.9 ms).
        let pending = (0..n).filter(|&i| self.owes_ack(i, epoch)).count();
        if pending < self.inner.host_cpus {
            spin_until(PAUSE_SPIN, || {
                shared.epoch.load(Ordering::SeqCst) != epoch
                    || (0..n).all(|i| !self.owes_ack(i, epoch))
            });
        }

        // Then wait all, one straggler at a time (each sleep is on that vCPU's own
        // bell: every vCPU was kicked in phase 1, so waiting for them in turn costs no more
        // than waiting for the slowest). Stragglers are re-kicked after a slice that timed
        // out, not before the first one: phase 1 kicked them a moment ago.
        loop {
            if shared.epoch.load(Ordering::SeqCst) != epoch {
                return Err(PauseError::Interrupted);
            }
            let pending: Vec<usize> = (0..n).filter(|&i| self.owes_ack(i, epoch)).collect();
            let Some(&first) = pending.first() else {
                shared.counters.pauses.fetch_add(1, Ordering::Relaxed);
                return Ok(true);
            };
            // One reading per round: read apart, the deadline could pass between the
            // checks and a brief pause would report a timeout (seen once in the lab's
            // storm), or a full one skip its grace.
            let passed = deadline.passed();
            if brief && passed {
                return Ok(false);
            }
            if passed && grace_left {
                // One more look before giving up: a deadline that passed while the whole
                // process was stopped (SIGSTOP, a stalled host) gave the vCPUs no chance to
                // run, and the first check after the stop would otherwise blame them.
                // Re-kick the stragglers and allow them one short grace period.
                grace_left = false;
                deadline = Deadline::after(PAUSE_GRACE);
                if rekick == Rekick::Enabled {
                    for &i in &pending {
                        shared.counters.rekicks.fetch_add(1, Ordering::Relaxed);
                        self.kick(i);
                    }
                }
                continue;
            }
            if passed {
                let missing = pending.iter().map(|&i| self.report(i)).collect();
                let err = PauseTimeout { missing };
                log::warn!("{err}");
                return Err(PauseError::Timeout(err));
            }
            let slot = &shared.slots[first];
            let slice = if brief {
                deadline.left(REKICK_INTERVAL)
            } else {
                REKICK_INTERVAL
            };
            let timed_out = slot.wait_for_vcpu(slice, || {
                shared.epoch.load(Ordering::SeqCst) != epoch || !self.owes_ack(first, epoch)
            });
            if rekick == Rekick::Enabled && timed_out && !deadline.passed() {
                for &i in &pending {
                    if self.owes_ack(i, epoch) {
                        shared.counters.rekicks.fetch_add(1, Ordering::Relaxed);
                        self.kick(i);
                    }
                }
            }
        }
    }

    /// Moves the epoch to "paused" (or joins the pause in force) and returns it.
    fn enter_pause(&self) -> u64 {
        let epoch = &self.inner.shared.epoch;
        let mut cur = epoch.load(Ordering::SeqCst);
        loop {
            if cur & 1 == 1 {
                return cur;
            }
            match epoch.compare_exchange(cur, cur + 1, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => return cur + 1,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Ends the pause in force and wakes every parked vCPU. Returns false (and changes
    /// nothing) if the VM was not paused.
    pub fn resume(&self) -> bool {
        let shared = &*self.inner.shared;
        let mut cur = shared.epoch.load(Ordering::SeqCst);
        let resumed = loop {
            if cur & 1 == 0 {
                break false;
            }
            match shared
                .epoch
                .compare_exchange(cur, cur + 1, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => break true,
                Err(actual) => cur = actual,
            }
        };
        if resumed {
            // Parked vCPUs run again; a pauser still waiting for this epoch learns it was
            // cancelled. One slot's bell at a time.
            for slot in shared.slots.iter() {
                slot.ring_parked();
                slot.ring_waiters();
            }
        }
        resumed
    }

    /// Whether a pause is in force (it may not be fully acknowledged yet).
    pub fn is_paused(&self) -> bool {
        self.inner.shared.epoch.load(Ordering::SeqCst) & 1 == 1
    }

    /// A snapshot of slot `index` (panics on an out-of-range index: callers iterate
    /// `0..max_vcpus()`; use [`Vcpus::try_report`] for indices from outside).
    pub fn report(&self, index: usize) -> SlotReport {
        let shared = &*self.inner.shared;
        let slot = &shared.slots[index];
        let flags = slot.flags.load(Ordering::SeqCst);
        let epoch = shared.epoch.load(Ordering::SeqCst);
        let life = slot.life();
        SlotReport {
            index,
            life,
            location: slot.location(),
            inserting: flags & STATUS_INSERTING != 0,
            removing: flags & STATUS_REMOVING != 0,
            remove_requested: flags & FLAG_REMOVE_REQUESTED != 0,
            paused: life.has_thread() && epoch & 1 == 1 && slot.ack.load(Ordering::SeqCst) == epoch,
            kicks: slot.kicks.load(Ordering::Relaxed),
        }
    }

    /// A snapshot of slot `index`, or an error for an out-of-range index.
    pub fn try_report(&self, index: usize) -> Result<SlotReport, CoreError> {
        self.check_index(index)?;
        Ok(self.report(index))
    }

    /// Snapshots of every slot.
    pub fn reports(&self) -> Vec<SlotReport> {
        (0..self.max_vcpus()).map(|i| self.report(i)).collect()
    }

    /// Slots whose vCPU is present and running or parked (Starting or Active).
    pub fn active_count(&self) -> usize {
        self.inner
            .shared
            .slots
            .iter()
            .filter(|s| matches!(s.life(), Life::Starting | Life::Active))
            .count()
    }

    /// Counters since creation.
    pub fn stats(&self) -> Stats {
        let c = &self.inner.shared.counters;
        Stats {
            pauses: c.pauses.load(Ordering::Relaxed),
            pauses_overlapping_mmio: c.pauses_overlapping_mmio.load(Ordering::Relaxed),
            rekicks: c.rekicks.load(Ordering::Relaxed),
            ejects: c.ejects.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.inner.shared
    }
}
