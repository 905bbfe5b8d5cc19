//! A deliberately small, self-contained re-implementation of the *old* pause designs, for
//! the negative controls. It shares no code with `vcpu_sync`: it only has to be faithful to
//! the shape of the bug docs/design.md describes.
//!
//! * A vCPU thread loops: checkpoint (acknowledge a pause and park), run a queued MMIO access
//!   to the "hotplug controller" (whose handler reads the vCPU-state table), or halt in guest
//!   until kicked. A kick is sticky (like KVM's `immediate_exit`), so no kick is ever lost:
//!   the only way these designs can hang is the lock cycle.
//! * The pauser sets `paused`, kicks, and waits for every acknowledgement, in one of three
//!   lock disciplines ([`Discipline`]).
//!
//! Waits on the pauser side use either a condition variable (so loom sees a *deadlock*: no
//! thread can run) or a yielding spin with re-kicks (so loom sees a *livelock*: the path
//! exceeds the branch budget); [`Wait`] selects which, so both reports are exercised.

use loom::sync::atomic::{AtomicBool, Ordering::SeqCst};
use loom::sync::{Condvar, Mutex};
use loom::thread;
// A std `Arc`, not loom's: when loom reports a deadlock it unwinds the threads' stacks with
// no thread active, and dropping a loom `Arc` then panics again (an abort). Sharing needs no
// modelling here; every shared field is a loom primitive.
use std::sync::Arc;

/// How the pauser holds the vCPU-state locks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Discipline {
    /// The original bug: lock the whole vCPU-state table, kick all, wait for each
    /// acknowledgement, unlock.
    WideLock,
    /// The first "fix": one slot's lock at a time, but held across that slot's
    /// kick/retry loop until it acknowledges.
    SlotLockAcrossRetry,
    /// What the core does: take a slot's lock only to touch that slot's state, release it,
    /// then kick all and wait for all with no lock held.
    NoLockWhileWaiting,
}

/// How the pauser waits for an acknowledgement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Sleep on a condition variable the vCPU notifies after acknowledging.
    Condvar,
    /// Re-kick and yield until acknowledged.
    Spin,
}

/// One control's configuration.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Lock discipline of the pauser.
    pub discipline: Discipline,
    /// How the pauser waits.
    pub wait: Wait,
    /// Whether the MMIO handler locks the vCPU state it reports (the table in `WideLock`,
    /// its slot otherwise). Without it there is no cycle and every design must pass.
    pub mmio_takes_lock: bool,
    /// vCPU threads (vCPU 0 performs one MMIO access; the others idle in guest).
    pub vcpus: usize,
}

/// What a slot's lock guards: the per-vCPU state the hotplug handler reads.
#[derive(Debug, Default)]
struct SlotState {
    status: u8,
}

struct Vcpu {
    kicked: AtomicBool,
    acked: AtomicBool,
    mmio_pending: AtomicBool,
    /// Halt in guest / park while paused.
    sleep: Mutex<()>,
    wake: Condvar,
}

struct Vm {
    cfg: Config,
    /// `WideLock`: the whole table under one lock.
    table: Mutex<Vec<SlotState>>,
    /// The other disciplines: one lock per slot.
    slots: Vec<Mutex<SlotState>>,
    vcpus: Vec<Vcpu>,
    paused: AtomicBool,
    stop: AtomicBool,
    ack_lock: Mutex<()>,
    ack_cv: Condvar,
}

impl Vm {
    fn new(cfg: Config) -> Vm {
        let n = cfg.vcpus;
        Vm {
            cfg,
            table: Mutex::new((0..n).map(|_| SlotState::default()).collect()),
            slots: (0..n).map(|_| Mutex::new(SlotState::default())).collect(),
            vcpus: (0..n)
                .map(|i| Vcpu {
                    kicked: AtomicBool::new(false),
                    acked: AtomicBool::new(false),
                    mmio_pending: AtomicBool::new(i == 0),
                    sleep: Mutex::new(()),
                    wake: Condvar::new(),
                })
                .collect(),
            paused: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            ack_lock: Mutex::new(()),
            ack_cv: Condvar::new(),
        }
    }

    fn kick(&self, i: usize) {
        let v = &self.vcpus[i];
        let g = v.sleep.lock().unwrap();
        v.kicked.store(true, SeqCst);
        v.wake.notify_all();
        drop(g);
    }

    /// The hotplug controller's status read, as the old VMM implemented it.
    fn mmio_handler(&self, i: usize) -> u8 {
        if !self.cfg.mmio_takes_lock {
            return 1;
        }
        match self.cfg.discipline {
            Discipline::WideLock => self.table.lock().unwrap()[i].status | 1,
            _ => self.slots[i].lock().unwrap().status | 1,
        }
    }

    fn vcpu_loop(&self, i: usize) {
        let v = &self.vcpus[i];
        loop {
            // Checkpoint before entering guest mode. The kick flag is cleared and the
            // pause/stop flags read under the vCPU's lock, the same lock `kick` sets the flag
            // under: a kick either precedes this (and its flags are seen) or survives it.
            // (Plain SeqCst atomics would do on hardware, but loom models SeqCst accesses as
            // AcqRel and would report a lost kick that cannot happen.)
            let g = v.sleep.lock().unwrap();
            v.kicked.store(false, SeqCst);
            let stop = self.stop.load(SeqCst);
            let paused = self.paused.load(SeqCst);
            drop(g);
            if stop {
                return;
            }
            if paused {
                v.acked.store(true, SeqCst);
                let g = self.ack_lock.lock().unwrap();
                self.ack_cv.notify_all();
                drop(g);
                let mut g = v.sleep.lock().unwrap();
                while self.paused.load(SeqCst) && !self.stop.load(SeqCst) {
                    g = v.wake.wait(g).unwrap();
                }
                drop(g);
                continue;
            }
            // "Guest mode": exit for the queued MMIO access, or halt until kicked.
            if v.mmio_pending.swap(false, SeqCst) {
                let _status = self.mmio_handler(i);
                continue;
            }
            let mut g = v.sleep.lock().unwrap();
            while !v.kicked.load(SeqCst) {
                g = v.wake.wait(g).unwrap();
            }
            drop(g);
        }
    }

    fn wait_ack(&self, i: usize) {
        let v = &self.vcpus[i];
        match self.cfg.wait {
            Wait::Condvar => {
                let mut g = self.ack_lock.lock().unwrap();
                while !v.acked.load(SeqCst) {
                    g = self.ack_cv.wait(g).unwrap();
                }
            }
            Wait::Spin => {
                while !v.acked.load(SeqCst) {
                    self.kick(i);
                    thread::yield_now();
                }
            }
        }
    }

    fn pause(&self) {
        self.paused.store(true, SeqCst);
        let n = self.cfg.vcpus;
        match self.cfg.discipline {
            Discipline::WideLock => {
                let mut table = self.table.lock().unwrap();
                for i in 0..n {
                    table[i].status = 0;
                    self.kick(i);
                }
                for i in 0..n {
                    self.wait_ack(i);
                }
                drop(table);
            }
            Discipline::SlotLockAcrossRetry => {
                for i in 0..n {
                    let mut slot = self.slots[i].lock().unwrap();
                    slot.status = 0;
                    self.kick(i);
                    self.wait_ack(i);
                    drop(slot);
                }
            }
            Discipline::NoLockWhileWaiting => {
                for i in 0..n {
                    self.slots[i].lock().unwrap().status = 0;
                    self.kick(i);
                }
                for i in 0..n {
                    self.wait_ack(i);
                }
            }
        }
    }

    fn resume_and_stop(&self) {
        self.paused.store(false, SeqCst);
        self.stop.store(true, SeqCst);
        for i in 0..self.cfg.vcpus {
            self.kick(i);
        }
    }
}

/// One execution: start the vCPUs (vCPU 0 has an MMIO access queued), pause, check every
/// vCPU acknowledged, resume, stop and join.
pub fn run(cfg: Config) {
    let vm = Arc::new(Vm::new(cfg));
    let handles: Vec<_> = (0..cfg.vcpus)
        .map(|i| {
            let vm = vm.clone();
            thread::spawn(move || vm.vcpu_loop(i))
        })
        .collect();
    vm.pause();
    for (i, v) in vm.vcpus.iter().enumerate() {
        assert!(
            v.acked.load(SeqCst),
            "pause returned but vCPU {i} never acknowledged"
        );
    }
    vm.resume_and_stop();
    for h in handles {
        h.join().unwrap();
    }
}
