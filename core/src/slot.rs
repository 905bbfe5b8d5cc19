//! One vCPU slot: its lifecycle, the guest-visible hotplug bits, and the atomics of the
//! kick/acknowledge handshake. Slots are allocated once and never move (docs/design.md, rule 1).

use crate::sync::{lock, wait_slice, AtomicU64, AtomicU8, Condvar, Mutex, Ordering};
use std::fmt;
use std::time::Duration;

/// Lifecycle of a slot. Only the transitions documented on [`crate::Vcpus`] happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Life {
    /// No vCPU and no thread.
    Absent = 0,
    /// A thread is being started for the slot.
    Starting = 1,
    /// The vCPU thread runs (or is parked by a pause).
    Active = 2,
    /// The vCPU was told to stop (ejected or shut down); its thread is on its way out.
    Stopping = 3,
    /// The thread has left its run loop; its handle waits to be reaped.
    Exited = 4,
}

impl Life {
    pub(crate) fn from_u8(v: u8) -> Life {
        match v {
            1 => Life::Starting,
            2 => Life::Active,
            3 => Life::Stopping,
            4 => Life::Exited,
            _ => Life::Absent,
        }
    }

    /// Whether a thread exists that a pause must wait for.
    pub fn has_thread(self) -> bool {
        matches!(self, Life::Starting | Life::Active | Life::Stopping)
    }
}

/// Where a vCPU thread last said it was; used to explain a stuck pause.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Location {
    /// No thread has reported yet.
    NotStarted = 0,
    /// In the VMM's own code on the vCPU thread (between guest exits).
    Userspace = 1,
    /// Inside guest mode (KVM_RUN or the simulated equivalent).
    InGuest = 2,
    /// Servicing a guest MMIO or port access.
    InMmio = 3,
    /// Parked by a pause, waiting for resume.
    Parked = 4,
    /// Left the run loop.
    Exited = 5,
}

impl Location {
    pub(crate) fn from_u8(v: u8) -> Location {
        match v {
            1 => Location::Userspace,
            2 => Location::InGuest,
            3 => Location::InMmio,
            4 => Location::Parked,
            5 => Location::Exited,
            _ => Location::NotStarted,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Location::NotStarted => "not started",
            Location::Userspace => "in VMM code",
            Location::InGuest => "in guest mode",
            Location::InMmio => "in MMIO/PIO handler",
            Location::Parked => "parked",
            Location::Exited => "exited",
        };
        f.write_str(s)
    }
}

/// Guest-visible status bits (register offset 4), as docs/design.md lays them out.
pub const STATUS_ENABLED: u8 = 1 << 0;
/// Hot-add pending guest scan.
pub const STATUS_INSERTING: u8 = 1 << 1;
/// Hot-remove requested, pending guest scan.
pub const STATUS_REMOVING: u8 = 1 << 2;
/// Write-only: eject the selected CPU.
pub const STATUS_EJECT: u8 = 1 << 3;

/// Internal flag kept beside the guest bits: the VMM asked for this CPU to go, so an eject
/// from the guest is honoured. It survives the guest clearing `removing` during its scan.
pub(crate) const FLAG_REMOVE_REQUESTED: u8 = 1 << 7;

/// Internal flag: the guest has read `removing` for this CPU since the removal was
/// requested, so it may be offlining the CPU on its way to an eject and the request can no
/// longer be withdrawn. Set by the same atomic step that reads the status for the guest,
/// so a withdrawal either comes before the guest's read (the guest never sees `removing`)
/// or fails.
pub(crate) const FLAG_REMOVAL_SEEN: u8 = 1 << 6;

/// Who sleeps on a slot's condvars, kept under its `bell` so a waker that finds nobody
/// asleep skips the notify (a futex system call): with hundreds of vCPUs a pause's
/// acknowledgements and a resume would otherwise make one such call per slot for nobody.
#[derive(Debug, Default)]
pub(crate) struct Sleepers {
    /// Pausers and stoppers inside a wait on `waiters_cv`.
    pub(crate) waiters: u32,
    /// The vCPU thread is inside its wait on `parked_cv`.
    pub(crate) parked: bool,
}

/// Per-slot state. The state itself is atomics: no lock is needed to read or change a
/// slot. The slot's `bell` lock exists only so that sleepers on its two condvars cannot
/// miss a wake-up (a sleeper checks the atomics and registers itself in [`Sleepers`] under
/// it; a waker changes the atomics, then notifies under it if anybody is registered). It
/// is held for a check or a notify, never across anything that blocks, and nobody holds
/// two slots' bells: a wake-up concerns one slot, so the vCPUs never contend with each
/// other and no lock order exists to get wrong.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) life: AtomicU8,
    pub(crate) flags: AtomicU8,
    /// The last pause epoch this vCPU acknowledged.
    pub(crate) ack: AtomicU64,
    pub(crate) location: AtomicU8,
    pub(crate) kicks: AtomicU64,
    pub(crate) bell: Mutex<Sleepers>,
    /// The vCPU thread sleeps here while paused; resume and stop ring it.
    pub(crate) parked_cv: Condvar,
    /// Pausers and stoppers waiting for this vCPU sleep here (in bounded slices); its
    /// acknowledgement and its thread's exit ring it, and so does a resume (which may
    /// cancel the pause they wait for).
    pub(crate) waiters_cv: Condvar,
}

impl Slot {
    pub(crate) fn new() -> Slot {
        Slot {
            life: AtomicU8::new(Life::Absent as u8),
            flags: AtomicU8::new(0),
            ack: AtomicU64::new(0),
            location: AtomicU8::new(Location::NotStarted as u8),
            kicks: AtomicU64::new(0),
            bell: Mutex::new(Sleepers::default()),
            parked_cv: Condvar::new(),
            waiters_cv: Condvar::new(),
        }
    }

    /// Wakes the vCPU thread if it is parked (after the epoch or `life` changed).
    pub(crate) fn ring_parked(&self) {
        let guard = lock(&self.bell);
        if guard.parked {
            self.parked_cv.notify_all();
        }
        drop(guard);
    }

    /// Wakes whoever waits for this vCPU (after its ack, its `life` or the epoch changed).
    pub(crate) fn ring_waiters(&self) {
        let guard = lock(&self.bell);
        if guard.waiters > 0 {
            self.waiters_cv.notify_all();
        }
        drop(guard);
    }

    /// Sleeps on `waiters_cv` until notified, `slice` has passed, or `done()` holds (checked
    /// under the bell). Returns whether the slice timed out (see [`wait_slice`]).
    pub(crate) fn wait_for_vcpu(&self, slice: Duration, done: impl Fn() -> bool) -> bool {
        wait_slice(
            &self.bell,
            &self.waiters_cv,
            slice,
            |s| &mut s.waiters,
            done,
        )
    }

    pub(crate) fn life(&self) -> Life {
        Life::from_u8(self.life.load(Ordering::SeqCst))
    }

    pub(crate) fn location(&self) -> Location {
        Location::from_u8(self.location.load(Ordering::SeqCst))
    }

    pub(crate) fn set_location(&self, l: Location) {
        self.location.store(l as u8, Ordering::SeqCst);
    }

    pub(crate) fn cas_life(&self, from: Life, to: Life) -> bool {
        self.life
            .compare_exchange(from as u8, to as u8, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }
}

/// A snapshot of one slot, for `info` and for diagnosing a stuck pause.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotReport {
    /// Slot index (the guest's CPU number / ACPI `_UID`).
    pub index: usize,
    /// Lifecycle state.
    pub life: Life,
    /// Where the vCPU thread last was.
    pub location: Location,
    /// The guest has not yet scanned a hot-add of this CPU.
    pub inserting: bool,
    /// The guest has not yet scanned a requested removal of this CPU.
    pub removing: bool,
    /// The VMM requested removal and the guest has not ejected the CPU yet.
    pub remove_requested: bool,
    /// The vCPU has acknowledged the pause in force.
    pub paused: bool,
    /// Kicks sent to this vCPU so far.
    pub kicks: u64,
}

impl fmt::Display for SlotReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "vCPU {} ({:?}, {}", self.index, self.life, self.location)?;
        if self.inserting {
            f.write_str(", inserting")?;
        }
        if self.removing || self.remove_requested {
            f.write_str(", removing")?;
        }
        write!(f, ", {} kicks)", self.kicks)
    }
}
