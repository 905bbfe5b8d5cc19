//! Property-based state-machine tests of pause/resume/hotplug on the REAL KVM backend.
//!
//! Each case boots the synthetic guest of `vmm_testguest` in process through
//! `vmm::vm::Vm` (max 1..=4 vCPUs, boot 1..=max) with `VmConfig::aps_at_entry`, so every vCPU
//! runs the guest's CSCN-like loop: select i, read status, clear "inserting", eject CPUs
//! marked "removing", count a round. Then a random sequence of operations runs:
//!
//! * VMM side: `Pause`, `Resume`, `Resize(n)` (n in 0..=max+1, through `Vm::resize`),
//!   `HotRemove(i)` (i in 0..=max, the core's `hot_remove` with a deadline), `Reap`;
//! * guest side, performed by the test thread on the VM's hotplug controller
//!   (`vcpus().hotplug_read/hotplug_write`): select ANY u32, read the selection, read the
//!   status, write ANY status byte, select-and-eject.
//!
//! A reference model tracks every slot (absent / active / exiting, plus the inserting,
//! removing and remove-requested bits), the pause, the selection, and the pause and eject
//! counters, and is compared with `Vm::info()` (state string, life, bits, paused, location,
//! pending lists, counters) and with the controller's registers.
//!
//! The guest acts asynchronously, so the model predicts the state of a *quiescent* guest:
//! after every operation that leaves the VM running the test waits (bounded) until every
//! inserting bit is cleared and every vCPU marked removing is ejected and has left its run
//! loop, then until every remaining vCPU completed one more round of its loop (so no write
//! the guest decided on earlier is still in flight), then compares exactly. While paused
//! the guest cannot act: the state must match at once (up to threads that are still on
//! their way to park or to exit), must still match a moment later, and no progress counter
//! may move; after the resume every vCPU must make progress again.
//!
//! Honest about races:
//! * while the guest runs, the selection register is the guest's: reads of it and of the
//!   status are checked against everything a quiescent guest can have selected, and status
//!   writes with the eject bit are only performed when no CPU has a removal request (they
//!   are harmless then, and checked to be); `GuestEject` is only performed while paused;
//! * the guest's vCPUs share one selection register, so one vCPU's eject write can land on
//!   the CPU another vCPU selected a moment earlier. A CPU whose removal was requested but
//!   whose "removing" bit the test cleared while paused (the guest "saw" it, yet the
//!   synthetic guest only ejects CPUs it sees removing) may therefore be ejected as a side
//!   effect while another CPU is being removed by two or more running vCPUs. The model
//!   allows both outcomes in that case only and takes the one observed.
//!
//! Every blocking call runs on a separate "VMM" thread and must return within a deadline
//! (a deadlock is a failing, shrinking case, never a hung suite); pauses and hot-removes
//! get the core's own deadline and fail with its diagnosis.
//!
//! Cases: `PROPTEST_CASES` (default 64, about 4 s in release mode on a 2-core host). Shrunk failures are written to
//! `tests/proptest-regressions/proptest_kvm.txt` and replayed first on every later run.
//!
//! ```text
//! cargo test -p vmm --release --test proptest_kvm -- --nocapture
//! ```
//!
//! Without /dev/kvm the test fails with a clear message unless VMM_ALLOW_NO_KVM=1.

mod common;

use common::{guest_slot, kvm_available};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use vcpu_sync::{
    CoreError, Life, WriteEffect, REG_SELECT, REG_STATUS, STATUS_EJECT, STATUS_ENABLED,
    STATUS_INSERTING, STATUS_REMOVING,
};
use vmm::config::VmConfig;
use vmm::vm::{ResizeError, ResizeOutcome, Vm, VmInfo};

/// `config` with every vCPU starting at the guest's entry (the guest's loop runs on all).
fn all_at_entry(config: VmConfig) -> VmConfig {
    VmConfig {
        aps_at_entry: true,
        ..config
    }
}
use vmm_testguest::{progress, GuestFile, GuestSpec};

/// Deadline handed to the core's own bounded waits (pause, hot_remove, shutdown).
const CORE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest any single call may take on the VMM thread before the case fails as a deadlock.
const OP_LIMIT: Duration = Duration::from_secs(20);
/// Longest the test waits for the guest or a vCPU thread to do something asynchronous.
const WAIT: Duration = Duration::from_secs(5);
/// How long a paused VM is watched for changes after each operation.
const STAY_PUT: Duration = Duration::from_millis(3);
const MAX_OPS: usize = 15;
const DEFAULT_CASES: u32 = 64;
/// Slots in the largest VM generated.
const MAX_SLOTS: usize = 4;
/// CPUs the guest scans each round (covers every slot of every generated VM).
const SCAN_CPUS: u32 = MAX_SLOTS as u32;
const REGRESSIONS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/proptest-regressions/proptest_kvm.txt"
);

// ---------------------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
enum Op {
    Pause,
    Resume,
    /// `Vm::resize(n)`.
    Resize(usize),
    /// The core's VMM-side `hot_remove(i, deadline)`.
    HotRemove(usize),
    /// Guest access from the test thread: write the select register.
    Select(u32),
    /// Guest access: read the select register.
    ReadSelect,
    /// Guest access: read the status byte of the selected CPU.
    ReadStatus,
    /// Guest access: write a raw status byte (clear bits and/or eject).
    WriteStatus(u8),
    /// Guest `_EJ0`: select i, write the eject bit (only while the guest cannot race).
    GuestEject(u32),
    /// `vcpus().reap()`, as the main loop would on a VcpuExited/Ejected event.
    Reap,
}

impl Op {
    /// Maps generated indices (over `MAX_SLOTS`) onto a VM with `max` slots, so `max` and
    /// the operations shrink independently.
    fn resolve(self, max: usize) -> Op {
        match self {
            Op::Resize(n) => Op::Resize(n % (max + 2)),
            Op::HotRemove(i) => Op::HotRemove(i % (max + 1)),
            Op::Select(v) if v <= MAX_SLOTS as u32 + 1 => Op::Select(v % (max as u32 + 2)),
            Op::GuestEject(i) => Op::GuestEject(i % (max as u32 + 1)),
            op => op,
        }
    }
}

#[derive(Clone, Debug)]
struct Case {
    max: usize,
    boot: usize,
    ops: Vec<Op>,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let select = prop_oneof![4 => 0..=MAX_SLOTS as u32 + 1, 1 => any::<u32>()];
    let status = prop_oneof![
        3 => prop::sample::select(vec![0u8, 2, 4, 6, 8, 10, 12, 14]),
        1 => any::<u8>(),
    ];
    prop_oneof![
        4 => Just(Op::Pause),
        4 => Just(Op::Resume),
        5 => (0..=MAX_SLOTS + 1).prop_map(Op::Resize),
        2 => (0..=MAX_SLOTS).prop_map(Op::HotRemove),
        3 => select.prop_map(Op::Select),
        1 => Just(Op::ReadSelect),
        3 => Just(Op::ReadStatus),
        4 => status.prop_map(Op::WriteStatus),
        2 => (0..=MAX_SLOTS as u32).prop_map(Op::GuestEject),
        2 => Just(Op::Reap),
    ]
}

fn case_strategy() -> impl Strategy<Value = Case> {
    (
        1..=MAX_SLOTS,
        1..=MAX_SLOTS,
        prop::collection::vec(op_strategy(), 0..=MAX_OPS),
    )
        .prop_map(|(max, boot, ops)| Case {
            max,
            boot: boot.min(max),
            ops: ops.into_iter().map(|op| op.resolve(max)).collect(),
        })
}

// ---------------------------------------------------------------------------------------
// Reference model
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MLife {
    Absent,
    Active,
    /// Stopped (ejected); the test waits for its thread to leave the run loop, so once an
    /// operation has settled the core reports `Exited`. Only a reap empties the slot.
    Exiting,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct MSlot {
    life: MLife,
    inserting: bool,
    removing: bool,
    remove_requested: bool,
    /// The guest (the synthetic one scans on its own) may have read `removing`: the core
    /// then refuses to withdraw the removal.
    removal_seen: bool,
}

impl MSlot {
    const ABSENT: MSlot = MSlot {
        life: MLife::Absent,
        inserting: false,
        removing: false,
        remove_requested: false,
        removal_seen: false,
    };
    fn with_life(life: MLife) -> MSlot {
        MSlot {
            life,
            ..MSlot::ABSENT
        }
    }
}

/// The observable fields of one `VcpuInfo` the model predicts.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    state: &'static str,
    life: String,
    inserting: bool,
    removing: bool,
    remove_requested: bool,
    paused: bool,
}

/// What `Vm::resize` must answer.
#[derive(Debug, PartialEq, Eq)]
enum ResizeExpect {
    Ok(ResizeOutcome),
    Zero,
    AboveMax {
        requested: usize,
        max: usize,
    },
    SlotsBusy {
        requested: usize,
        free: usize,
        busy: Vec<usize>,
    },
}

#[derive(Clone, Debug)]
struct Model {
    slots: Vec<MSlot>,
    paused: bool,
    /// The select register, when it is known (nobody but the test can have written it
    /// since: paused, or no vCPU present).
    selected: Option<u32>,
    /// The last value the test selected (the register may still hold it).
    last_test_select: Option<u32>,
    pauses: u64,
    ejects: u64,
}

impl Model {
    fn new(max: usize, boot: usize) -> Model {
        let mut slots = vec![MSlot::ABSENT; max];
        for s in &mut slots[..boot] {
            s.life = MLife::Active;
        }
        Model {
            slots,
            paused: false,
            selected: None,
            last_test_select: None,
            pauses: 0,
            ejects: 0,
        }
    }

    fn max(&self) -> usize {
        self.slots.len()
    }

    fn active(&self) -> Vec<usize> {
        (0..self.max())
            .filter(|&i| self.slots[i].life == MLife::Active)
            .collect()
    }

    /// Whether guest code may be running (and so may own the select register).
    fn guest_running(&self) -> bool {
        !self.paused && !self.active().is_empty()
    }

    fn slot_status(&self, i: usize) -> u8 {
        let s = &self.slots[i];
        let mut v = 0;
        if s.life == MLife::Active {
            v |= STATUS_ENABLED;
        }
        if s.inserting {
            v |= STATUS_INSERTING;
        }
        if s.removing {
            v |= STATUS_REMOVING;
        }
        v
    }

    fn status_of(&self, selected: u32) -> u8 {
        let i = selected as usize;
        if i < self.max() {
            self.slot_status(i)
        } else {
            0
        }
    }

    fn seen(&self, i: usize) -> Seen {
        let s = &self.slots[i];
        let (state, life, paused) = match s.life {
            MLife::Absent => ("absent", "absent", false),
            MLife::Exiting => ("removing", "exited", false),
            MLife::Active => {
                let state = if s.removing || s.remove_requested {
                    "removing"
                } else if s.inserting {
                    "inserting"
                } else if self.paused {
                    "paused"
                } else {
                    "running"
                };
                (state, "active", self.paused)
            }
        };
        Seen {
            state,
            life: life.to_string(),
            inserting: s.inserting,
            removing: s.removing,
            remove_requested: s.remove_requested,
            paused,
        }
    }

    /// A status-register write with the selection known.
    fn write_status(&mut self, v: u8) -> WriteEffect {
        let Some(i) = self
            .selected
            .map(|s| s as usize)
            .filter(|&i| i < self.max())
        else {
            return WriteEffect::None;
        };
        let s = &mut self.slots[i];
        let clear = v & (STATUS_INSERTING | STATUS_REMOVING);
        if clear & STATUS_INSERTING != 0 {
            s.inserting = false;
        }
        if clear & STATUS_REMOVING != 0 {
            s.removing = false;
        }
        if v & STATUS_EJECT != 0 {
            if !s.remove_requested {
                return WriteEffect::EjectRefused(i);
            }
            if s.life != MLife::Active {
                return WriteEffect::None;
            }
            *s = MSlot::with_life(MLife::Exiting);
            self.ejects += 1;
            return WriteEffect::Ejected(i);
        }
        if clear != 0 {
            WriteEffect::Cleared(i)
        } else {
            WriteEffect::None
        }
    }

    /// `Vm::resize(n)`, applied to the model; returns what it must answer.
    fn resize(&mut self, n: usize) -> ResizeExpect {
        let max = self.max();
        if n == 0 {
            return ResizeExpect::Zero;
        }
        if n > max {
            return ResizeExpect::AboveMax { requested: n, max };
        }
        self.reap(); // resize reaps first
        let sl = &self.slots;
        let staying: Vec<usize> = (0..max)
            .filter(|&i| sl[i].life == MLife::Active && !sl[i].remove_requested)
            .collect();
        let withdrawable: Vec<usize> = (0..max)
            .filter(|&i| {
                sl[i].life == MLife::Active
                    && sl[i].remove_requested
                    && sl[i].removing
                    && !sl[i].removal_seen
            })
            .collect();
        let free: Vec<usize> = (0..max).filter(|&i| sl[i].life == MLife::Absent).collect();
        let mut out = ResizeOutcome {
            cpus: n,
            ..ResizeOutcome::default()
        };
        if n > staying.len() {
            let need = n - staying.len();
            let cancel = need.min(withdrawable.len());
            let add = need - cancel;
            if free.len() < add {
                let busy = (0..max)
                    .filter(|&i| sl[i].life != MLife::Absent)
                    .filter(|i| !staying.contains(i) && !withdrawable.contains(i))
                    .collect();
                return ResizeExpect::SlotsBusy {
                    requested: n,
                    free: free.len(),
                    busy,
                };
            }
            for &i in &withdrawable[..cancel] {
                let s = &mut self.slots[i];
                s.removing = false;
                s.remove_requested = false;
                out.cancelled.push(i);
            }
            for &i in &free[..add] {
                self.slots[i] = MSlot {
                    inserting: true,
                    ..MSlot::with_life(MLife::Active)
                };
                out.added.push(i);
            }
        } else {
            for &i in staying.iter().rev().take(staying.len() - n) {
                let s = &mut self.slots[i];
                s.inserting = false;
                s.removing = true;
                s.remove_requested = true;
                out.removing.push(i);
            }
        }
        ResizeExpect::Ok(out)
    }

    /// Empties every exiting slot; returns them.
    fn reap(&mut self) -> Vec<usize> {
        let mut got = Vec::new();
        for (i, s) in self.slots.iter_mut().enumerate() {
            if s.life == MLife::Exiting {
                *s = MSlot::ABSENT;
                got.push(i);
            }
        }
        got
    }

    /// What a quiescent running guest does: clears every inserting bit and ejects every
    /// CPU it sees removing. Returns the CPUs that may or may not be ejected as a side
    /// effect of racing eject writes (see the module documentation).
    fn guest_settles(&mut self) -> Vec<usize> {
        let writers = self.active().len();
        let any_removing = self
            .slots
            .iter()
            .any(|s| s.life == MLife::Active && s.removing);
        let racy = any_removing && writers >= 2;
        let mut maybe = Vec::new();
        for (i, s) in self.slots.iter_mut().enumerate() {
            if s.life != MLife::Active {
                continue;
            }
            s.inserting = false;
            if s.removing {
                // removing implies remove_requested: the guest's eject is honoured.
                *s = MSlot::with_life(MLife::Exiting);
                self.ejects += 1;
            } else if s.remove_requested && racy {
                maybe.push(i);
            }
        }
        maybe
    }
}

// ---------------------------------------------------------------------------------------
// The VMM thread: every blocking call runs there, with a deadline
// ---------------------------------------------------------------------------------------

use vcpu_sync::sim::exec;
type Exec = exec::Exec<Arc<Vm>>;

// ---------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

/// Totals over all cases, printed at the end (coverage evidence).
struct Counts {
    ops: AtomicU64,
    pauses: AtomicU64,
    resizes_ok: AtomicU64,
    resizes_refused: AtomicU64,
    added: AtomicU64,
    added_while_paused: AtomicU64,
    removals_requested: AtomicU64,
    guest_ejects: AtomicU64,
    test_ejects: AtomicU64,
    racy_side_ejects: AtomicU64,
    vmm_removes: AtomicU64,
    raw_writes_paused: AtomicU64,
    raw_writes_running: AtomicU64,
    skipped_racy: AtomicU64,
    reaped: AtomicU64,
    guest_rounds_checked: AtomicU64,
}

static COUNTS: Counts = Counts {
    ops: AtomicU64::new(0),
    pauses: AtomicU64::new(0),
    resizes_ok: AtomicU64::new(0),
    resizes_refused: AtomicU64::new(0),
    added: AtomicU64::new(0),
    added_while_paused: AtomicU64::new(0),
    removals_requested: AtomicU64::new(0),
    guest_ejects: AtomicU64::new(0),
    test_ejects: AtomicU64::new(0),
    racy_side_ejects: AtomicU64::new(0),
    vmm_removes: AtomicU64::new(0),
    raw_writes_paused: AtomicU64::new(0),
    raw_writes_running: AtomicU64::new(0),
    skipped_racy: AtomicU64::new(0),
    reaped: AtomicU64::new(0),
    guest_rounds_checked: AtomicU64::new(0),
};

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

struct Harness {
    vm: Arc<Vm>,
    exec: Exec,
    model: Model,
    /// Progress counters of every slot when the current pause took hold.
    frozen: Option<Vec<u64>>,
    torn_down: bool,
    _guest: GuestFile,
}

impl Harness {
    fn boot(case: &Case) -> Result<Harness, String> {
        let spec = GuestSpec {
            scan_cpus: SCAN_CPUS,
            ..GuestSpec::default()
        };
        let guest = GuestFile::create(&spec).map_err(|e| format!("write the guest: {e}"))?;
        // Every vCPU (boot and hot-added) starts like the BSP and runs the guest's loop.
        let vm = Vm::with_serial(
            &all_at_entry(guest.config(case.boot, case.max)),
            Box::new(std::io::sink()),
        )
        .map_err(|e| format!("build the VM: {e}"))?;
        let vm = Arc::new(vm);
        let exec = Exec::new(vm.clone(), OP_LIMIT).expect("spawn the VMM thread");
        let mut h = Harness {
            vm,
            exec,
            model: Model::new(case.max, case.boot),
            frozen: None,
            torn_down: false,
            _guest: guest,
        };
        h.exec
            .call("start", |vm| vm.start())?
            .map_err(|e| format!("start: {e}"))?;
        Ok(h)
    }

    fn progress(&self) -> Vec<u64> {
        (0..self.model.max())
            .map(|i| progress(self.vm.memory(), i))
            .collect()
    }

    fn read(&self, offset: u64, size: usize) -> Vec<u8> {
        let mut d = vec![0xAAu8; size];
        self.vm.vcpus().hotplug_read(offset, &mut d);
        d
    }

    fn read_select(&self) -> u32 {
        let d = self.read(REG_SELECT, 4);
        u32::from_le_bytes([d[0], d[1], d[2], d[3]])
    }

    fn diagnosis(&self) -> String {
        let info = self.vm.info();
        let slots: Vec<String> = info
            .vcpus
            .iter()
            .map(|v| {
                format!(
                    "  vCPU {}: {} life={} at {} ins={} rem={} req={} paused={} kicks={} progress={}",
                    v.index,
                    v.state,
                    v.life,
                    v.location,
                    v.inserting,
                    v.removing,
                    v.remove_requested,
                    v.paused,
                    v.kicks,
                    progress(self.vm.memory(), v.index)
                )
            })
            .collect();
        format!(
            "\nVM: paused={} active={} stats={:?}\n{}\nmodel: {:?}",
            info.paused,
            info.active_vcpus,
            info.stats,
            slots.join("\n"),
            self.model
        )
    }

    /// Compares `Vm::info()` and the controller's registers with the model. `maybe`: slots
    /// that may match either the model or an ejected slot. `loose`: threads may still be on
    /// their way (an exiting vCPU may be `stopping`, a present vCPU may not have parked yet).
    fn check(&self, maybe: &[usize], loose: bool) -> Result<(), String> {
        let m = &self.model;
        let info: VmInfo = self.vm.info();
        ensure!(
            info.vcpus.len() == m.max() && info.max_vcpus == m.max(),
            "{} slots reported, model {}",
            info.vcpus.len(),
            m.max()
        );
        let mut extra_ejects = 0;
        for (i, v) in info.vcpus.iter().enumerate() {
            let got = Seen {
                state: v.state,
                life: v.life.clone(),
                inserting: v.inserting,
                removing: v.removing,
                remove_requested: v.remove_requested,
                paused: v.paused,
            };
            let mut want = m.seen(i);
            if loose {
                if m.slots[i].life == MLife::Exiting && got.life == "stopping" {
                    want.life = "stopping".into();
                    want.paused = got.paused;
                }
                if m.slots[i].life == MLife::Active && m.paused && !got.paused {
                    // Not parked yet (hot-added or woken by a stop meanwhile).
                    want.paused = false;
                    if want.state == "paused" {
                        want.state = "running";
                    }
                }
            }
            if got == want {
                if m.paused && m.slots[i].life == MLife::Active && !loose {
                    ensure!(
                        v.location == "parked",
                        "vCPU {i} acknowledged the pause but is {}",
                        v.location
                    );
                }
                continue;
            }
            if maybe.contains(&i) {
                let mut ejected = m.clone();
                ejected.slots[i] = MSlot::with_life(MLife::Exiting);
                let mut alt = ejected.seen(i);
                if loose && got.life == "stopping" {
                    alt.life = "stopping".into();
                }
                if got == alt {
                    extra_ejects += 1;
                    continue;
                }
            }
            return Err(format!(
                "vCPU {i}: VM reports {got:?}, model predicts {want:?}{}",
                if maybe.contains(&i) {
                    " (or ejected)"
                } else {
                    ""
                }
            ));
        }
        ensure!(
            info.paused == m.paused,
            "info.paused = {}, model {}",
            info.paused,
            m.paused
        );
        let active = m.active().len();
        ensure!(
            info.active_vcpus + extra_ejects == active,
            "active_vcpus = {}, model {active} ({extra_ejects} ejected as a side effect)",
            info.active_vcpus
        );
        let pending_ins: Vec<usize> = (0..m.max()).filter(|&i| m.slots[i].inserting).collect();
        ensure!(
            info.pending_insertions == pending_ins,
            "pending_insertions = {:?}, model {pending_ins:?}",
            info.pending_insertions
        );
        let pending_rem: Vec<usize> = (0..m.max())
            .filter(|&i| m.slots[i].remove_requested || m.slots[i].life == MLife::Exiting)
            .collect();
        if maybe.is_empty() {
            ensure!(
                info.pending_removals == pending_rem,
                "pending_removals = {:?}, model {pending_rem:?}",
                info.pending_removals
            );
        }
        ensure!(
            info.stats.pauses == m.pauses && info.stats.ejects == m.ejects + extra_ejects as u64,
            "stats (pauses, ejects) = ({}, {}), model ({}, {} + {extra_ejects})",
            info.stats.pauses,
            info.stats.ejects,
            m.pauses,
            m.ejects
        );
        if let Some(sel) = m.selected {
            let got = self.read_select();
            ensure!(got == sel, "select register reads {got}, model {sel}");
            let st = self.read(REG_STATUS, 1)[0];
            let want = m.status_of(sel);
            ensure!(
                st == want,
                "status of selected CPU {sel} reads {st:#x}, model {want:#x}"
            );
        }
        if let Some(frozen) = &self.frozen {
            let now = self.progress();
            ensure!(
                &now == frozen,
                "guest progress while paused: {frozen:?} -> {now:?}"
            );
        }
        Ok(())
    }

    /// Waits (bounded) until [`Harness::check`] passes.
    fn wait_match(&self, what: &str, maybe: &[usize]) -> Result<(), String> {
        let end = Instant::now() + WAIT;
        loop {
            match self.check(maybe, false) {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= end => {
                    return Err(format!(
                        "{what}: no match within {WAIT:?}: {e}{}",
                        self.diagnosis()
                    ))
                }
                Err(_) => thread::sleep(Duration::from_micros(200)),
            }
        }
    }

    /// After an operation while paused: the state matches at once (up to threads on their
    /// way to park or exit), fully within the deadline, and stays put.
    fn check_paused(&self) -> Result<(), String> {
        self.check(&[], true)
            .map_err(|e| format!("paused, right after the operation: {e}{}", self.diagnosis()))?;
        self.wait_match("paused", &[])?;
        thread::sleep(STAY_PUT);
        self.check(&[], false)
            .map_err(|e| format!("paused, {STAY_PUT:?} later: {e}{}", self.diagnosis()))
    }

    /// After an operation while running: waits for the guest to do what the model says a
    /// quiescent guest does, then for one more full round of every present vCPU, then
    /// compares exactly.
    fn settle(&mut self) -> Result<(), String> {
        assert!(!self.model.paused);
        // Any present vCPU runs the scan, even one about to eject itself: the selection is
        // the guest's from now on.
        if self.model.guest_running() {
            self.model.selected = None;
        }
        let before = self.model.ejects;
        let maybe = self.model.guest_settles();
        bump(&COUNTS.guest_ejects, self.model.ejects - before);
        // (a) inserting cleared, removals ejected and their threads gone.
        self.wait_match("guest scan", &maybe)?;
        // (b) one more round of every present vCPU: no earlier decision still in flight.
        let snap = self.progress();
        let watch: Vec<usize> = (0..self.model.max())
            .filter(|&i| self.model.slots[i].life == MLife::Active)
            .collect();
        let end = Instant::now() + WAIT;
        loop {
            let now = self.progress();
            let rs = self.vm.vcpus().reports();
            let lagging: Vec<usize> = watch
                .iter()
                .copied()
                .filter(|&i| now[i] <= snap[i] && rs[i].life == Life::Active)
                .collect();
            if lagging.is_empty() {
                bump(&COUNTS.guest_rounds_checked, watch.len() as u64);
                break;
            }
            ensure!(
                Instant::now() < end,
                "guest made no progress on vCPU(s) {lagging:?} within {WAIT:?}{}",
                self.diagnosis()
            );
            thread::sleep(Duration::from_micros(200));
        }
        // Resolve the racy side-effect ejects from what happened.
        for &i in &maybe {
            let r = self.vm.vcpus().report(i);
            if r.life != Life::Active {
                self.model.slots[i] = MSlot::with_life(MLife::Exiting);
                self.model.ejects += 1;
                bump(&COUNTS.racy_side_ejects, 1);
            }
        }
        self.wait_match("settled guest", &[])
    }

    /// Checks after any operation.
    fn after(&mut self) -> Result<(), String> {
        if self.model.paused {
            self.check_paused()
        } else {
            self.settle()
        }
    }

    fn pause(&mut self) -> Result<(), String> {
        self.exec
            .call("pause", |vm| vm.pause(CORE_TIMEOUT))?
            .map_err(|e| format!("pause failed: {e}{}", self.diagnosis()))?;
        bump(&COUNTS.pauses, 1);
        self.model.pauses += 1;
        if !self.model.paused {
            self.model.paused = true;
            self.frozen = Some(self.progress());
            // The register now holds what the guest or the test last wrote; the guest only
            // selects 0..SCAN_CPUS.
            let sel = self.read_select();
            ensure!(
                sel < SCAN_CPUS || Some(sel) == self.model.last_test_select,
                "select register reads {sel}: neither the guest's nor the test's"
            );
            self.model.selected = Some(sel);
        }
        Ok(())
    }

    fn resume(&mut self) -> Result<(), String> {
        let resumed = self.exec.call("resume", |vm| vm.resume())?;
        ensure!(
            resumed == self.model.paused,
            "resume() = {resumed}, model paused = {}",
            self.model.paused
        );
        self.model.paused = false;
        self.frozen = None;
        Ok(())
    }

    fn resize(&mut self, n: usize) -> Result<(), String> {
        let before = self.model.clone();
        let mut want = self.model.resize(n);
        let got = self.exec.call("resize", move |vm| vm.resize(n))?;
        let got = match got {
            Ok(o) => ResizeExpect::Ok(o),
            Err(ResizeError::Zero) => ResizeExpect::Zero,
            Err(ResizeError::AboveMax { requested, max }) => {
                ResizeExpect::AboveMax { requested, max }
            }
            Err(ResizeError::SlotsBusy {
                requested,
                free,
                busy,
            }) => ResizeExpect::SlotsBusy {
                requested,
                free,
                busy,
            },
            Err(e) => return Err(format!("resize({n}) failed: {e}{}", self.diagnosis())),
        };
        if got != want {
            // The synthetic guest scans the controller on its own: if it read a pending
            // removal's `removing`, the core no longer withdraws it. The model cannot know
            // when it did, so it allows the outcome for any subset of the pending ones seen.
            let pending: Vec<usize> = (0..before.slots.len())
                .filter(|&i| before.slots[i].remove_requested && before.slots[i].removing)
                .collect();
            for mask in 1u32..(1 << pending.len()) {
                let mut seen = before.clone();
                for (k, &i) in pending.iter().enumerate() {
                    seen.slots[i].removal_seen |= mask & (1 << k) != 0;
                }
                let alt = seen.resize(n);
                if alt == got {
                    self.model = seen;
                    want = alt;
                    break;
                }
            }
        }
        ensure!(
            got == want,
            "resize({n}) answered {got:?}, model {want:?}{}",
            self.diagnosis()
        );
        match &got {
            ResizeExpect::Ok(o) => {
                bump(&COUNTS.resizes_ok, 1);
                bump(&COUNTS.added, o.added.len() as u64);
                bump(&COUNTS.removals_requested, o.removing.len() as u64);
                if self.model.paused {
                    bump(&COUNTS.added_while_paused, o.added.len() as u64);
                }
            }
            _ => bump(&COUNTS.resizes_refused, 1),
        }
        Ok(())
    }

    fn hot_remove(&mut self, i: usize) -> Result<(), String> {
        let max = self.model.max();
        let got = self.exec.call("hot_remove", move |vm| {
            vm.vcpus().hot_remove(i, CORE_TIMEOUT)
        })?;
        if i >= max {
            ensure!(
                matches!(got, Err(CoreError::OutOfRange { index, max: m }) if index == i && m == max),
                "hot_remove({i}) = {got:?}, model expects OutOfRange"
            );
            return Ok(());
        }
        got.map_err(|e| format!("hot_remove({i}) failed: {e}{}", self.diagnosis()))?;
        self.model.slots[i] = MSlot::ABSENT;
        bump(&COUNTS.vmm_removes, 1);
        Ok(())
    }

    fn hotplug_write(&mut self, offset: u64, data: Vec<u8>) -> Result<WriteEffect, String> {
        self.exec.call("hotplug_write", move |vm| {
            vm.vcpus().hotplug_write(offset, &data)
        })
    }

    fn select(&mut self, v: u32) -> Result<(), String> {
        let got = self.hotplug_write(REG_SELECT, v.to_le_bytes().to_vec())?;
        ensure!(got == WriteEffect::Selected(v), "select({v}) gave {got:?}");
        self.model.last_test_select = Some(v);
        self.model.selected = (!self.model.guest_running()).then_some(v);
        Ok(())
    }

    fn read_status(&mut self) -> Result<(), String> {
        let st = self.read(REG_STATUS, 1)[0];
        let m = &self.model;
        match m.selected {
            Some(sel) => ensure!(
                st == m.status_of(sel),
                "status of selected CPU {sel} reads {st:#x}, model {:#x}",
                m.status_of(sel)
            ),
            None => {
                let possible: Vec<u8> = (0..m.max()).map(|i| m.slot_status(i)).chain([0]).collect();
                ensure!(
                    possible.contains(&st),
                    "status reads {st:#x}; no CPU of the model has it: {possible:?}"
                );
            }
        }
        Ok(())
    }

    fn read_selected(&mut self) -> Result<(), String> {
        let sel = self.read_select();
        match self.model.selected {
            Some(want) => ensure!(sel == want, "select register reads {sel}, model {want}"),
            None => ensure!(
                sel < SCAN_CPUS || Some(sel) == self.model.last_test_select,
                "select register reads {sel}: neither the guest's nor the test's"
            ),
        }
        Ok(())
    }

    fn write_status(&mut self, v: u8) -> Result<(), String> {
        if self.model.selected.is_some() {
            // Nobody races: exact.
            let want = self.model.write_status(v);
            let got = self.hotplug_write(REG_STATUS, vec![v])?;
            ensure!(
                got == want,
                "status write {v:#x} gave {got:?}, model {want:?}"
            );
            if let WriteEffect::Ejected(_) = got {
                bump(&COUNTS.test_ejects, 1);
            }
            bump(&COUNTS.raw_writes_paused, 1);
            return Ok(());
        }
        // The guest owns the selection. In a quiescent running guest no CPU has inserting
        // or removing set, so clearing bits changes nothing; an eject is harmless only if
        // no CPU has a removal request.
        let m = &self.model;
        let any_requested = m.slots.iter().any(|s| s.remove_requested);
        if v & STATUS_EJECT != 0 && any_requested {
            bump(&COUNTS.skipped_racy, 1);
            return Ok(());
        }
        let max = m.max();
        let requested: Vec<bool> = m.slots.iter().map(|s| s.remove_requested).collect();
        let got = self.hotplug_write(REG_STATUS, vec![v])?;
        let ok = match got {
            WriteEffect::None => true,
            WriteEffect::Cleared(i) => v & (STATUS_INSERTING | STATUS_REMOVING) != 0 && i < max,
            WriteEffect::EjectRefused(i) => v & STATUS_EJECT != 0 && i < max && !requested[i],
            _ => false,
        };
        ensure!(
            ok,
            "status write {v:#x} (selection owned by the guest) gave {got:?}"
        );
        bump(&COUNTS.raw_writes_running, 1);
        Ok(())
    }

    fn guest_eject(&mut self, i: u32) -> Result<(), String> {
        if self.model.selected.is_none() {
            bump(&COUNTS.skipped_racy, 1);
            return Ok(());
        }
        self.select(i)?;
        self.write_status(STATUS_EJECT)
    }

    fn reap(&mut self) -> Result<(), String> {
        let got = self
            .exec
            .call("reap", |vm| vm.vcpus().reap())?
            .map_err(|e| e.to_string())?;
        let want = self.model.reap();
        ensure!(got == want, "reap() = {got:?}, model {want:?}");
        bump(&COUNTS.reaped, got.len() as u64);
        Ok(())
    }

    fn step(&mut self, op: &Op) -> Result<(), String> {
        bump(&COUNTS.ops, 1);
        match op {
            Op::Pause => self.pause()?,
            Op::Resume => self.resume()?,
            Op::Resize(n) => self.resize(*n)?,
            Op::HotRemove(i) => self.hot_remove(*i)?,
            Op::Select(v) => self.select(*v)?,
            Op::ReadSelect => self.read_selected()?,
            Op::ReadStatus => self.read_status()?,
            Op::WriteStatus(v) => self.write_status(*v)?,
            Op::GuestEject(i) => self.guest_eject(*i)?,
            Op::Reap => self.reap()?,
        }
        self.after()
    }

    fn teardown(&mut self) -> Result<(), String> {
        self.torn_down = true;
        self.exec
            .call("shutdown", |vm| {
                vm.vcpus().resume();
                let r = vm.vcpus().shutdown(CORE_TIMEOUT);
                vm.shutdown();
                r
            })?
            .map_err(|e| format!("shutdown: {e}"))?;
        let rs = self.vm.vcpus().reports();
        ensure!(
            rs.iter().all(|r| r.life == Life::Absent),
            "after shutdown: {rs:?}"
        );
        Ok(())
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if !self.torn_down && !self.exec.is_stuck() {
            // Best effort after a failure: never leave vCPU threads spinning behind.
            let _ = self.exec.call("cleanup", |vm| vm.shutdown());
        }
    }
}

fn run_case(case: &Case) -> Result<(), String> {
    let mut h = Harness::boot(case)?;
    h.settle().map_err(|e| format!("after boot: {e}"))?;
    for (k, op) in case.ops.iter().enumerate() {
        h.step(op).map_err(|e| format!("op #{k} {op:?}: {e}"))?;
        if k + 1 < case.ops.len() || !h.model.paused {
            continue;
        }
        // A case ending paused: the resume must restart the guest.
        h.resume()
            .and_then(|()| h.settle())
            .map_err(|e| format!("final resume: {e}"))?;
    }
    h.teardown()
}

fn runner_config(cases: u32) -> Config {
    let default = Config::default(); // already reflects PROPTEST_* variables
    Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(REGRESSIONS))),
        source_file: Some(file!()),
        // Cases on KVM take a second or so; bound shrinking in iterations and in time.
        max_shrink_iters: if default.max_shrink_iters == u32::MAX {
            512
        } else {
            default.max_shrink_iters
        },
        max_shrink_time: if default.max_shrink_time == 0 {
            180_000
        } else {
            default.max_shrink_time
        },
        ..default
    }
}

#[test]
fn kvm_hotplug_and_pause_sequences_match_the_model() {
    if !kvm_available() {
        return;
    }
    let _slot = guest_slot();
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    let start = Instant::now();
    let mut runner = TestRunner::new(runner_config(cases));
    let result = runner.run(&case_strategy(), |case| {
        run_case(&case).map_err(TestCaseError::fail)
    });
    let c = &COUNTS;
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    eprintln!(
        "proptest_kvm: {cases} cases in {:.1?}: {} ops, {} pauses, resizes {} ok / {} refused, \
         {} hot-added ({} while paused), {} removals requested, ejects: {} by the guest, \
         {} by the test, {} racy side effects; {} VMM-side removes, {} reaped, raw status \
         writes {} exact / {} while the guest ran, {} racy ops skipped, {} vCPU rounds checked",
        start.elapsed(),
        g(&c.ops),
        g(&c.pauses),
        g(&c.resizes_ok),
        g(&c.resizes_refused),
        g(&c.added),
        g(&c.added_while_paused),
        g(&c.removals_requested),
        g(&c.guest_ejects),
        g(&c.test_ejects),
        g(&c.racy_side_ejects),
        g(&c.vmm_removes),
        g(&c.reaped),
        g(&c.raw_writes_paused),
        g(&c.raw_writes_running),
        g(&c.skipped_racy),
        g(&c.guest_rounds_checked),
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}

// ---------------------------------------------------------------------------------------
// Regressions found by the property test
// ---------------------------------------------------------------------------------------

/// Found by `kvm_hotplug_and_pause_sequences_match_the_model` (shrunk to
/// `max 2, boot 2: Resize(1), ..., Reap, Resize(2)`): a vCPU re-added into a slot whose
/// previous vCPU was stopped right after an MMIO exit (the guest ejecting it, or a VMM-side
/// hot-remove) never made progress again. The backend reuses the slot's KVM vCPU; the
/// previous thread left the run loop without re-entering KVM_RUN, so KVM still held the
/// MMIO completion of the old instruction, and the new thread's first KVM_RUN completed it
/// with the old emulation state, overwriting the freshly set RIP (and AL) and sending the
/// vCPU into the middle of its old loop with the new registers.
#[test]
fn regression_readded_vcpu_runs_after_being_stopped_mid_mmio() {
    if !kvm_available() {
        return;
    }
    let _slot = guest_slot();
    let guest = GuestFile::create(&GuestSpec {
        scan_cpus: SCAN_CPUS,
        ..GuestSpec::default()
    })
    .unwrap();
    let vm = Vm::with_serial(&all_at_entry(guest.config(2, 2)), Box::new(std::io::sink())).unwrap();
    vm.start().unwrap();
    let wait_progress = |i: usize, from: u64, what: &str| {
        let end = Instant::now() + WAIT;
        while progress(vm.memory(), i) <= from {
            assert!(
                Instant::now() < end,
                "{what}: vCPU {i} made no progress past {from} within {WAIT:?}: {}",
                vm.vcpus().report(i)
            );
            thread::sleep(Duration::from_micros(200));
        }
    };
    wait_progress(1, 0, "boot");
    for round in 0..50 {
        // Half the rounds: the guest ejects vCPU 1 (an MMIO write on some vCPU's thread);
        // the other half: the VMM removes it while it scans the controller.
        if round % 2 == 0 {
            vm.resize(1).unwrap();
            let end = Instant::now() + WAIT;
            while vm.vcpus().report(1).life != Life::Exited {
                assert!(Instant::now() < end, "round {round}: vCPU 1 not ejected");
                thread::sleep(Duration::from_micros(100));
            }
        } else {
            vm.vcpus().hot_remove(1, CORE_TIMEOUT).unwrap();
        }
        let before = progress(vm.memory(), 1);
        vm.resize(2).unwrap();
        wait_progress(1, before, &format!("round {round}, after re-adding"));
    }
    vm.vcpus().shutdown(CORE_TIMEOUT).unwrap();
}

/// Found by `kvm_hotplug_and_pause_sequences_match_the_model` (shrunk to
/// `max 3, boot 3: HotRemove(0), ReadSelect, Resize(3)`): re-adding vCPU 0 re-ran the BSP's
/// setup, which rewrites the boot page tables in guest memory (zeroing the PML4 and PDPT
/// before refilling them) while the other vCPUs run on them: they triple-faulted
/// (KVM_EXIT_SHUTDOWN) and their threads left the run loop.
#[test]
fn regression_readding_vcpu0_leaves_guest_memory_alone() {
    if !kvm_available() {
        return;
    }
    let _slot = guest_slot();
    let guest = GuestFile::create(&GuestSpec {
        scan_cpus: SCAN_CPUS,
        ..GuestSpec::default()
    })
    .unwrap();
    let vm = Vm::with_serial(&all_at_entry(guest.config(3, 3)), Box::new(std::io::sink())).unwrap();
    vm.start().unwrap();
    for round in 0..50 {
        vm.vcpus().hot_remove(0, CORE_TIMEOUT).unwrap();
        let before: Vec<u64> = (0..3).map(|i| progress(vm.memory(), i)).collect();
        vm.resize(3).unwrap();
        let end = Instant::now() + WAIT;
        while (0..3).any(|i| progress(vm.memory(), i) <= before[i]) {
            for r in vm.vcpus().reports() {
                assert_eq!(r.life, Life::Active, "round {round}: {r}");
            }
            assert!(
                Instant::now() < end,
                "round {round}: no progress past {before:?}: {:?}",
                vm.vcpus().reports()
            );
            thread::sleep(Duration::from_micros(200));
        }
    }
    vm.vcpus().shutdown(CORE_TIMEOUT).unwrap();
}
