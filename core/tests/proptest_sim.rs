//! Property-based state-machine tests of the core on the simulated backend.
//!
//! Random sequences of VMM operations (pause, resume, resize as a VMM does it, raw slot
//! operations, hot-remove, reap) and guest operations (hotplug-controller accesses from
//! "some vCPU" = the test thread, the guest's scan/eject, and batches of accesses executed
//! by the simulated vCPU threads themselves, optionally racing a pause) run against the real
//! core, and after every step every observable is compared with a plain reference model.
//!
//! Determinism: the model is exact. The only things it cannot predict are (a) whether a
//! stopped vCPU's thread has already left its run loop (`Stopping` vs `Exited`, and so what a
//! plain `reap()` returns with lossy kicks), which the model treats as one "exiting" state and
//! resolves from `reap()`'s answer, and (b) how far a vCPU thread got through its batch when a
//! racing pause parked it, which the model resolves from the observations the vCPU recorded
//! (every one of which is checked against the model, in order). A batch is always drained
//! before the step ends, so no access is ever in flight while the model is compared.
//!
//! Every blocking call runs on a separate "VMM" thread and must return within a deadline, so
//! a deadlock is a failing (and shrinking) case, never a hung suite.
//!
//! Cases: `PROPTEST_CASES` (default 512). Shrunk failures are appended to
//! `tests/proptest-regressions/proptest_sim.txt` and replayed first on every later run.

use proptest::prelude::*;
use proptest::test_runner::{
    Config, FileFailurePersistence, TestCaseError, TestError, TestRng, TestRunner,
};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};
use vcpu_sync::sim::{GuestOp, KickMode, Observed, SimBackend};
use vcpu_sync::{
    CoreError, Life, Location, PauseError, SlotReport, Vcpus, WriteEffect, REG_SELECT, REG_STATUS,
    STATUS_EJECT, STATUS_ENABLED, STATUS_INSERTING, STATUS_REMOVING,
};

type Vm = Vcpus<SimBackend>;

/// Deadline handed to the core's own bounded waits (pause, hot_remove, shutdown).
const CORE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest any single call may take on the VMM thread before the case fails as a deadlock.
const OP_LIMIT: Duration = Duration::from_secs(20);
/// Longest the test waits for something asynchronous (a vCPU parking, exiting, draining).
const WAIT: Duration = Duration::from_secs(5);
/// Pause deadline used while a vCPU is deliberately wedged in a device handler.
const WEDGE_PAUSE: Duration = Duration::from_millis(20);
const MAX_OPS: usize = 40;
const DEFAULT_CASES: u32 = 512;
const REGRESSIONS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/proptest-regressions/proptest_sim.txt"
);

// ---------------------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------------------

/// One access to the hotplug controller.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Access {
    Read { offset: u64, size: usize },
    Write { offset: u64, data: Vec<u8> },
}

impl Access {
    fn select(v: u32) -> Access {
        Access::Write {
            offset: REG_SELECT,
            data: v.to_le_bytes().to_vec(),
        }
    }
    fn status_read() -> Access {
        Access::Read {
            offset: REG_STATUS,
            size: 1,
        }
    }
    fn status_write(b: u8) -> Access {
        Access::Write {
            offset: REG_STATUS,
            data: vec![b],
        }
    }
    /// A write that may stop a vCPU (status byte with the eject bit).
    fn may_eject(&self) -> bool {
        matches!(self, Access::Write { offset: REG_STATUS, data } if data.len() == 1 && data[0] & STATUS_EJECT != 0)
    }
    fn to_guest_op(&self) -> GuestOp {
        match self {
            Access::Read { offset, size } => GuestOp::MmioRead {
                offset: *offset,
                size: *size,
            },
            Access::Write { offset, data } => GuestOp::MmioWrite {
                offset: *offset,
                data: data.clone(),
            },
        }
    }
}

/// What a simulated vCPU does in a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
enum VcpuOp {
    Mmio(Access),
    /// Run in guest mode for n ticks (timing variety; no observable effect).
    Run(u32),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Op {
    Pause,
    Resume,
    /// Resize to n vCPUs the way a VMM does (see `vmm_resize`).
    Resize(usize),
    /// A controller access from "some vCPU" (the test thread).
    Guest(Access),
    /// The guest completes a removal: select i, write the eject bit.
    GuestEject(u32),
    /// The guest's CSCN: for each CPU select, read status, clear inserting/removing;
    /// with `eject`, also eject every CPU it found removing.
    GuestScan {
        eject: bool,
    },
    /// A batch of accesses executed by vCPU `vcpu`'s own thread, optionally racing a pause
    /// (see [`Overlap`]). Batches stop after the first write that may eject.
    OnVcpu {
        vcpu: usize,
        ops: Vec<VcpuOp>,
        overlap: Overlap,
    },
    HotAdd(usize),
    RequestRemoval(usize),
    CancelRemoval(usize),
    Stop(usize),
    /// VMM-forced removal: stop, wait, reap.
    HotRemove(usize),
    Reap,
    /// Wedge vCPU i in a device handler, see the pause time out naming it, release it and
    /// pause again.
    WedgedPause(usize),
}

/// Whether and when the VMM pauses while a vCPU works through its batch. With a pause the
/// step checks the model mid-batch, then resumes and lets the batch finish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Overlap {
    None,
    /// Pause right after queuing the batch.
    Immediate,
    /// Pause the moment the vCPU is seen inside the hotplug handler (the window of the
    /// original deadlock: the kick lands while it services the controller).
    InHandler,
}

#[derive(Clone, Debug)]
struct Case {
    max: usize,
    boot: usize,
    mode: KickMode,
    ops: Vec<Op>,
}

/// Slots in the largest VM generated. Indices are generated over this range and reduced to
/// the case's `max_vcpus` by [`Op::resolve`], so `max` and the operations shrink independently
/// (a `prop_flat_map` on `max` would regenerate the operations whenever it shrinks `max`).
const MAX_SLOTS: usize = 4;

fn access_strategy() -> impl Strategy<Value = Access> {
    let index = prop_oneof![4 => 0..=MAX_SLOTS as u32 + 1, 1 => any::<u32>()];
    let status = prop_oneof![
        3 => prop::sample::select(vec![0u8, 2, 4, 6, 8, 10, 12, 14]),
        1 => any::<u8>(),
    ];
    prop_oneof![
        3 => index.prop_map(Access::select),
        2 => Just(Access::Read { offset: REG_SELECT, size: 4 }),
        3 => Just(Access::status_read()),
        3 => status.prop_map(Access::status_write),
        1 => (0u64..16, 0usize..9).prop_map(|(offset, size)| Access::Read { offset, size }),
        1 => (0u64..16, prop::collection::vec(any::<u8>(), 0..9))
            .prop_map(|(offset, data)| Access::Write { offset, data }),
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let vcpu_op = prop_oneof![
        5 => access_strategy().prop_map(VcpuOp::Mmio),
        1 => (0u32..20).prop_map(VcpuOp::Run),
    ];
    let batch = (
        0..MAX_SLOTS,
        prop::collection::vec(vcpu_op, 1..6),
        prop_oneof![
            Just(Overlap::None),
            Just(Overlap::Immediate),
            Just(Overlap::InHandler)
        ],
    )
        .prop_map(|(vcpu, ops, overlap)| Op::OnVcpu { vcpu, ops, overlap });
    let slot = 0..=MAX_SLOTS;
    prop_oneof![
        4 => Just(Op::Pause),
        4 => Just(Op::Resume),
        5 => (0..=MAX_SLOTS + 1).prop_map(Op::Resize),
        6 => access_strategy().prop_map(Op::Guest),
        3 => (0..=MAX_SLOTS as u32).prop_map(Op::GuestEject),
        2 => any::<bool>().prop_map(|eject| Op::GuestScan { eject }),
        5 => batch,
        1 => slot.clone().prop_map(Op::HotAdd),
        1 => slot.clone().prop_map(Op::RequestRemoval),
        1 => slot.clone().prop_map(Op::CancelRemoval),
        1 => slot.clone().prop_map(Op::Stop),
        2 => slot.prop_map(Op::HotRemove),
        2 => Just(Op::Reap),
        1 => (0..MAX_SLOTS).prop_map(Op::WedgedPause),
    ]
}

impl Access {
    /// Maps a generated small selection (0..=MAX_SLOTS+1) onto 0..=max+1.
    fn resolve(self, max: usize) -> Access {
        match self {
            Access::Write {
                offset: REG_SELECT,
                data,
            } if data.len() == 4 => {
                let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
                if v <= MAX_SLOTS as u32 + 1 {
                    Access::select(v % (max as u32 + 2))
                } else {
                    Access::Write {
                        offset: REG_SELECT,
                        data,
                    }
                }
            }
            a => a,
        }
    }
}

impl Op {
    /// Maps generated indices onto a VM with `max` slots: slot operations get 0..=max (max
    /// being out of range), vCPU-thread operations 0..max, resize 0..=max+1.
    fn resolve(self, max: usize) -> Op {
        let slot = |i: usize| i % (max + 1);
        let vcpu = |i: usize| i % max;
        match self {
            Op::Resize(n) => Op::Resize(n % (max + 2)),
            Op::Guest(a) => Op::Guest(a.resolve(max)),
            Op::GuestEject(i) => Op::GuestEject(i % (max as u32 + 1)),
            Op::OnVcpu {
                vcpu: v,
                ops,
                overlap,
            } => Op::OnVcpu {
                vcpu: vcpu(v),
                ops: ops
                    .into_iter()
                    .map(|op| match op {
                        VcpuOp::Mmio(a) => VcpuOp::Mmio(a.resolve(max)),
                        run => run,
                    })
                    .collect(),
                overlap,
            },
            Op::HotAdd(i) => Op::HotAdd(slot(i)),
            Op::RequestRemoval(i) => Op::RequestRemoval(slot(i)),
            Op::CancelRemoval(i) => Op::CancelRemoval(slot(i)),
            Op::Stop(i) => Op::Stop(slot(i)),
            Op::HotRemove(i) => Op::HotRemove(slot(i)),
            Op::WedgedPause(i) => Op::WedgedPause(vcpu(i)),
            op => op,
        }
    }
}

fn case_strategy() -> impl Strategy<Value = Case> {
    (
        1..=MAX_SLOTS,
        1..=MAX_SLOTS,
        prop_oneof![Just(KickMode::ImmediateExit), Just(KickMode::Lossy)],
        prop::collection::vec(op_strategy(), 0..=MAX_OPS),
    )
        .prop_map(|(max, boot, mode, ops)| Case {
            max,
            boot: boot.min(max),
            mode,
            ops: ops.into_iter().map(|op| op.resolve(max)).collect(),
        })
}

// ---------------------------------------------------------------------------------------
// Reference model
// ---------------------------------------------------------------------------------------

/// Deliberate model defects, for the negative control.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bug {
    None,
    /// Forgets that an eject stops the CPU (it stays "enabled").
    EjectKeepsEnabled,
    /// Forgets that a select performed on a vCPU thread changes the selection.
    ForgetsVcpuSelect,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MLife {
    Absent,
    Active,
    /// Stopped; its thread may or may not have left the run loop yet (core: Stopping or
    /// Exited). Only `reap`/`hot_remove` turn it into Absent.
    Exiting,
}

impl MLife {
    /// The core lives this model state allows.
    fn core(self) -> &'static [Life] {
        match self {
            MLife::Absent => &[Life::Absent],
            MLife::Active => &[Life::Active],
            MLife::Exiting => &[Life::Stopping, Life::Exited],
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct MSlot {
    life: MLife,
    inserting: bool,
    removing: bool,
    remove_requested: bool,
    /// The guest read `removing` since the request: it can no longer be withdrawn.
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

/// What the model predicts for a slot operation.
#[derive(Debug, PartialEq, Eq)]
enum Expect<T> {
    Ok(T),
    OutOfRange,
    WrongState(&'static [Life]),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Read(Vec<u8>),
    Wrote(WriteEffect),
}

/// One step of the VMM's resize.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ResizeStep {
    /// Withdraw a pending removal (cheapest way to grow).
    Cancel(usize),
    /// Finish removing a stopped vCPU (hot_remove) so its slot can be reused.
    Reclaim(usize),
    Add(usize),
    RequestRemoval(usize),
}

#[derive(Debug, PartialEq, Eq)]
enum ResizeError {
    Invalid(usize),
}

#[derive(Clone, Debug)]
struct Model {
    bug: Bug,
    slots: Vec<MSlot>,
    selected: u32,
    paused: bool,
    pauses: u64,
    ejects: u64,
}

impl Model {
    fn new(max: usize, boot: usize, bug: Bug) -> Model {
        let mut slots = vec![MSlot::ABSENT; max];
        for s in &mut slots[..boot] {
            s.life = MLife::Active;
        }
        Model {
            bug,
            slots,
            selected: 0,
            paused: false,
            pauses: 0,
            ejects: 0,
        }
    }

    fn max(&self) -> usize {
        self.slots.len()
    }

    fn selected_index(&self) -> Option<usize> {
        let i = self.selected as usize;
        (i < self.max()).then_some(i)
    }

    fn status(&self) -> u8 {
        let Some(i) = self.selected_index() else {
            return 0;
        };
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

    fn active(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.max()).filter(|&i| self.slots[i].life == MLife::Active)
    }

    fn access(&mut self, a: &Access, on_vcpu: bool) -> Outcome {
        match a {
            Access::Read { offset, size } => {
                let mut d = vec![0u8; *size];
                match (*offset, *size) {
                    (REG_SELECT, 4) => d.copy_from_slice(&self.selected.to_le_bytes()),
                    (REG_STATUS, 1) => {
                        d[0] = self.status();
                        if let Some(i) = self.selected_index() {
                            let s = &mut self.slots[i];
                            s.removal_seen |= s.removing;
                        }
                    }
                    _ => {}
                }
                Outcome::Read(d)
            }
            Access::Write { offset, data } => Outcome::Wrote(self.write(*offset, data, on_vcpu)),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8], on_vcpu: bool) -> WriteEffect {
        match (offset, data) {
            (REG_SELECT, &[a, b, c, d]) => {
                let v = u32::from_le_bytes([a, b, c, d]);
                if !(on_vcpu && self.bug == Bug::ForgetsVcpuSelect) {
                    self.selected = v;
                }
                WriteEffect::Selected(v)
            }
            (REG_STATUS, &[v]) => {
                let Some(i) = self.selected_index() else {
                    return WriteEffect::None;
                };
                let bug = self.bug;
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
                    let life = if bug == Bug::EjectKeepsEnabled {
                        MLife::Active
                    } else {
                        MLife::Exiting
                    };
                    *s = MSlot::with_life(life);
                    self.ejects += 1;
                    return WriteEffect::Ejected(i);
                }
                if clear != 0 {
                    WriteEffect::Cleared(i)
                } else {
                    WriteEffect::None
                }
            }
            _ => WriteEffect::None,
        }
    }

    fn hot_add(&mut self, i: usize) -> Expect<()> {
        let Some(s) = self.slots.get_mut(i) else {
            return Expect::OutOfRange;
        };
        if s.life != MLife::Absent {
            return Expect::WrongState(s.life.core());
        }
        *s = MSlot {
            inserting: true,
            ..MSlot::with_life(MLife::Active)
        };
        Expect::Ok(())
    }

    fn request_removal(&mut self, i: usize) -> Expect<()> {
        let Some(s) = self.slots.get_mut(i) else {
            return Expect::OutOfRange;
        };
        if s.life != MLife::Active {
            return Expect::WrongState(s.life.core());
        }
        s.inserting = false;
        s.removal_seen &= s.remove_requested;
        s.removing = true;
        s.remove_requested = true;
        Expect::Ok(())
    }

    fn cancel_removal(&mut self, i: usize) -> Expect<bool> {
        let Some(s) = self.slots.get_mut(i) else {
            return Expect::OutOfRange;
        };
        if !s.remove_requested || s.removal_seen {
            return Expect::Ok(false);
        }
        s.removing = false;
        s.remove_requested = false;
        Expect::Ok(true)
    }

    fn stop(&mut self, i: usize) -> Expect<bool> {
        let Some(s) = self.slots.get_mut(i) else {
            return Expect::OutOfRange;
        };
        if s.life != MLife::Active {
            return Expect::Ok(false);
        }
        *s = MSlot::with_life(MLife::Exiting);
        Expect::Ok(true)
    }

    fn hot_remove(&mut self, i: usize) -> Expect<()> {
        let Some(s) = self.slots.get_mut(i) else {
            return Expect::OutOfRange;
        };
        *s = MSlot::ABSENT;
        Expect::Ok(())
    }

    /// The steps `vmm_resize` must take, or its error.
    fn resize_plan(&self, n: usize) -> Result<Vec<ResizeStep>, ResizeError> {
        if n == 0 || n > self.max() {
            return Err(ResizeError::Invalid(n));
        }
        let kept: Vec<usize> = self
            .active()
            .filter(|&i| !self.slots[i].remove_requested)
            .collect();
        let mut steps = Vec::new();
        if n > kept.len() {
            let mut need = n - kept.len();
            // Only removals the guest has not read yet can be withdrawn.
            for i in self
                .active()
                .filter(|&i| self.slots[i].remove_requested && !self.slots[i].removal_seen)
            {
                if need == 0 {
                    break;
                }
                steps.push(ResizeStep::Cancel(i));
                need -= 1;
            }
            for i in (0..self.max()).filter(|&i| self.slots[i].life != MLife::Active) {
                if need == 0 {
                    break;
                }
                if self.slots[i].life == MLife::Exiting {
                    steps.push(ResizeStep::Reclaim(i));
                }
                steps.push(ResizeStep::Add(i));
                need -= 1;
            }
        } else {
            for &i in kept.iter().rev().take(kept.len() - n) {
                steps.push(ResizeStep::RequestRemoval(i));
            }
        }
        Ok(steps)
    }

    fn apply_resize_step(&mut self, step: ResizeStep) {
        match step {
            ResizeStep::Cancel(i) => {
                let _ = self.cancel_removal(i);
            }
            ResizeStep::Reclaim(i) => {
                let _ = self.hot_remove(i);
            }
            ResizeStep::Add(i) => {
                let _ = self.hot_add(i);
            }
            ResizeStep::RequestRemoval(i) => {
                let _ = self.request_removal(i);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The VMM side, as a VMM implements it on top of the core
// ---------------------------------------------------------------------------------------

/// Resize as a VMM does it, deciding from the core's own reports: grow by withdrawing pending
/// removals first, then hot-adding the lowest free slots (finishing off stopped vCPUs still
/// occupying them); shrink by asking the guest to remove the highest active vCPUs.
/// `added` gets a report of each hot-added slot taken the moment `hot_add` returned.
fn vmm_resize(
    v: &Vm,
    n: usize,
    added: &mut Vec<SlotReport>,
) -> Result<Result<Vec<ResizeStep>, ResizeError>, String> {
    let max = v.max_vcpus();
    if n == 0 || n > max {
        return Ok(Err(ResizeError::Invalid(n)));
    }
    let rs = v.reports();
    let active = |i: usize| rs[i].life == Life::Active;
    let kept: Vec<usize> = (0..max)
        .filter(|&i| active(i) && !rs[i].remove_requested)
        .collect();
    let mut steps = Vec::new();
    if n > kept.len() {
        let mut need = n - kept.len();
        for i in (0..max).filter(|&i| active(i) && rs[i].remove_requested) {
            if need == 0 {
                break;
            }
            match v.cancel_removal(i) {
                Ok(true) => {}
                // The guest has read `removing`: not withdrawable, take the next.
                Ok(false) => continue,
                other => return Err(format!("resize: cancel_removal({i}) = {other:?}")),
            }
            steps.push(ResizeStep::Cancel(i));
            need -= 1;
        }
        for i in (0..max).filter(|&i| !active(i)) {
            if need == 0 {
                break;
            }
            if rs[i].life != Life::Absent {
                v.hot_remove(i, CORE_TIMEOUT)
                    .map_err(|e| format!("resize: hot_remove({i}): {e}"))?;
                steps.push(ResizeStep::Reclaim(i));
            }
            v.hot_add(i)
                .map_err(|e| format!("resize: hot_add({i}): {e}"))?;
            added.push(report_after_add(v, i));
            steps.push(ResizeStep::Add(i));
            need -= 1;
        }
    } else {
        for &i in kept.iter().rev().take(kept.len() - n) {
            v.request_removal(i)
                .map_err(|e| format!("resize: request_removal({i}): {e}"))?;
            steps.push(ResizeStep::RequestRemoval(i));
        }
    }
    Ok(Ok(steps))
}

/// A slot's report taken right after `hot_add` returned. A report is several loads, so a
/// "paused" that is not yet "parked" is read once more at once: in a sound core the thread
/// stored `Parked` before its acknowledgement, so the second read must show it.
fn report_after_add(v: &Vm, i: usize) -> SlotReport {
    let r = v.report(i);
    if r.paused && r.location != Location::Parked {
        v.report(i)
    } else {
        r
    }
}

// ---------------------------------------------------------------------------------------
// The VMM thread: every blocking call runs there, with a deadline
// ---------------------------------------------------------------------------------------

use vcpu_sync::sim::exec;
type Exec = exec::Exec<(Vm, SimBackend)>;

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

fn wait_until(what: &str, mut f: impl FnMut() -> bool) -> Result<(), String> {
    let end = Instant::now() + WAIT;
    loop {
        if f() {
            return Ok(());
        }
        ensure!(
            Instant::now() < end,
            "timed out after {WAIT:?} waiting for {what}"
        );
        thread::sleep(Duration::from_micros(50));
    }
}

fn check_expect<T: PartialEq + std::fmt::Debug>(
    what: &str,
    index: usize,
    max: usize,
    got: Result<T, CoreError>,
    want: Expect<T>,
) -> Result<bool, String> {
    let ok = match (&got, &want) {
        (Ok(a), Expect::Ok(b)) => a == b,
        (Err(CoreError::OutOfRange { index: i, max: m }), Expect::OutOfRange) => {
            *i == index && *m == max
        }
        (Err(CoreError::WrongState { index: i, life, .. }), Expect::WrongState(lives)) => {
            *i == index && lives.contains(life)
        }
        _ => false,
    };
    ensure!(
        ok,
        "{what}({index}) returned {got:?}, model expects {want:?}"
    );
    Ok(matches!(want, Expect::Ok(_)))
}

/// Totals over all cases, printed at the end (coverage evidence).
static PAUSES_OVER_MMIO: AtomicU64 = AtomicU64::new(0);
static EJECTS: AtomicU64 = AtomicU64::new(0);
static VCPU_ACCESSES: AtomicU64 = AtomicU64::new(0);

struct Harness {
    vm: Vm,
    sim: SimBackend,
    exec: Exec,
    model: Model,
    mode: KickMode,
    /// (ticks, entries) of every simulated vCPU when the current pause took hold.
    frozen: Option<Vec<(u64, u64)>>,
    torn_down: bool,
}

impl Harness {
    fn new(case: &Case, bug: Bug) -> Result<Harness, String> {
        let (vm, sim) = SimBackend::create(case.max, case.mode, true);
        let exec = Exec::new((vm.clone(), sim.clone()), OP_LIMIT).expect("spawn the VMM thread");
        let mut h = Harness {
            vm,
            sim,
            exec,
            model: Model::new(case.max, case.boot, bug),
            mode: case.mode,
            frozen: None,
            torn_down: false,
        };
        let boot = case.boot;
        h.exec
            .call("start boot vCPUs", move |(v, _)| {
                (0..boot).try_for_each(|i| v.start(i))
            })?
            .map_err(|e| format!("start: {e}"))?;
        Ok(h)
    }

    fn progress(&self) -> Vec<(u64, u64)> {
        (0..self.model.max())
            .map(|i| (self.sim.ticks(i), self.sim.entries(i)))
            .collect()
    }

    fn read(&self, offset: u64, size: usize) -> Vec<u8> {
        let mut d = vec![0xAAu8; size];
        self.vm.hotplug_read(offset, &mut d);
        d
    }

    /// Compares every observable with the model.
    fn check(&mut self) -> Result<(), String> {
        self.check_except(None)
    }

    /// [`Harness::check`], except that vCPU `queued` may still have guest operations queued
    /// (it was parked in the middle of a batch).
    fn check_except(&mut self, queued: Option<usize>) -> Result<(), String> {
        self.compare(queued)?;
        // The comparison read the selected CPU's status register, as a guest would: a
        // `removing` it showed is now seen (no longer withdrawable), in the core and here.
        if let Some(i) = self.model.selected_index() {
            let s = &mut self.model.slots[i];
            s.removal_seen |= s.removing;
        }
        Ok(())
    }

    fn compare(&self, queued: Option<usize>) -> Result<(), String> {
        let m = &self.model;
        let rs = self.vm.reports();
        ensure!(
            rs.len() == m.max(),
            "{} reports for {} slots",
            rs.len(),
            m.max()
        );
        for (j, (r, s)) in rs.iter().zip(&m.slots).enumerate() {
            ensure!(
                s.life.core().contains(&r.life),
                "vCPU {j}: life is {:?}, model says {:?} (report {r})",
                r.life,
                s.life
            );
            ensure!(
                (r.inserting, r.removing, r.remove_requested)
                    == (s.inserting, s.removing, s.remove_requested),
                "vCPU {j}: (inserting, removing, remove_requested) = {:?}, model {:?}",
                (r.inserting, r.removing, r.remove_requested),
                (s.inserting, s.removing, s.remove_requested)
            );
            match s.life {
                MLife::Active => {
                    ensure!(
                        r.paused == m.paused,
                        "vCPU {j}: paused = {}, model {} ({r})",
                        r.paused,
                        m.paused
                    );
                    ensure!(
                        !m.paused || r.location == Location::Parked,
                        "vCPU {j}: acknowledged the pause but is {} ({r})",
                        r.location
                    );
                }
                MLife::Absent => ensure!(!r.paused, "vCPU {j}: absent but paused"),
                // Whether it acknowledged before being stopped is timing.
                MLife::Exiting => ensure!(m.paused || !r.paused, "vCPU {j}: paused while running"),
            }
            ensure!(
                queued == Some(j) || !self.sim.has_pending(j),
                "vCPU {j} still has guest operations queued"
            );
        }
        ensure!(
            self.vm.is_paused() == m.paused,
            "is_paused() = {}, model {}",
            self.vm.is_paused(),
            m.paused
        );
        let active = m.active().count();
        ensure!(
            self.vm.active_count() == active,
            "active_count() = {}, model {active}",
            self.vm.active_count()
        );
        let st = self.vm.stats();
        ensure!(
            (st.pauses, st.ejects) == (m.pauses, m.ejects),
            "stats (pauses, ejects) = {:?}, model {:?}",
            (st.pauses, st.ejects),
            (m.pauses, m.ejects)
        );
        let sel = self.read(REG_SELECT, 4);
        ensure!(
            sel == m.selected.to_le_bytes(),
            "selected register reads {sel:?}, model {}",
            m.selected
        );
        let status = self.read(REG_STATUS, 1);
        ensure!(
            status == [m.status()],
            "status of selected {} reads {status:?}, model {:#x}",
            m.selected,
            m.status()
        );
        if let Some(frozen) = &self.frozen {
            ensure!(m.paused, "internal: progress snapshot while running");
            let now = self.progress();
            ensure!(
                &now == frozen,
                "guest progress while paused: (ticks, entries) {frozen:?} -> {now:?}"
            );
        }
        Ok(())
    }

    fn became_paused(&mut self) {
        self.model.paused = true;
        if self.frozen.is_none() {
            self.frozen = Some(self.progress());
        }
    }

    fn pause(&mut self) -> Result<(), String> {
        let res = self.exec.call("pause", |(v, _)| v.pause(CORE_TIMEOUT))?;
        self.paused(res)
    }

    /// Accounts for a `pause()` that had to succeed.
    fn paused(&mut self, res: Result<(), PauseError>) -> Result<(), String> {
        res.map_err(|e| format!("pause failed: {e}"))?;
        self.model.pauses += 1;
        self.became_paused();
        Ok(())
    }

    fn resume(&mut self) -> Result<(), String> {
        let frozen = self.resume_only()?;
        self.check_reentry(frozen)
    }

    /// Resumes; returns the progress snapshot of the pause it ended, if any.
    fn resume_only(&mut self) -> Result<Option<Vec<(u64, u64)>>, String> {
        let resumed = self.exec.call("resume", |(v, _)| v.resume())?;
        ensure!(
            resumed == self.model.paused,
            "resume() = {resumed}, model paused = {}",
            self.model.paused
        );
        self.model.paused = false;
        Ok(self.frozen.take())
    }

    /// Resume restarts everyone: every vCPU the model has active (once any batch still in
    /// flight at the resume has been accounted for) enters the guest again.
    fn check_reentry(&self, frozen: Option<Vec<(u64, u64)>>) -> Result<(), String> {
        if let Some(frozen) = frozen {
            let active: Vec<usize> = self.model.active().collect();
            wait_until(
                "every active vCPU to re-enter the guest after resume",
                || active.iter().all(|&i| self.sim.entries(i) > frozen[i].1),
            )
            .map_err(|e| {
                let stuck: Vec<String> = active
                    .iter()
                    .filter(|&&i| self.sim.entries(i) <= frozen[i].1)
                    .map(|&i| self.vm.report(i).to_string())
                    .collect();
                format!("{e}; stuck: {stuck:?}")
            })?;
        }
        Ok(())
    }

    /// After vCPU `i` was added (`r`: its report the moment `hot_add` returned): while paused
    /// it must park before it ever runs, and must not claim to have acknowledged the pause
    /// before its thread has.
    fn after_add(&mut self, i: usize, r: SlotReport) -> Result<(), String> {
        if !self.model.paused {
            return Ok(());
        }
        ensure!(
            !r.paused || r.location == Location::Parked,
            "hot-added vCPU {i} reports paused (acknowledged) but its thread is {} ({r})",
            r.location
        );
        wait_until(&format!("hot-added vCPU {i} to park"), || {
            let r = self.vm.report(i);
            r.paused && r.location == Location::Parked
        })
    }

    /// A controller access from the test thread ("some vCPU"), checked against the model.
    fn guest(&mut self, a: &Access) -> Result<Outcome, String> {
        let want = self.model.access(a, false);
        let got = match a {
            Access::Read { offset, size } => Outcome::Read(self.read(*offset, *size)),
            Access::Write { offset, data } => {
                let (offset, data) = (*offset, data.clone());
                Outcome::Wrote(self.exec.call("hotplug_write", move |(v, _)| {
                    v.hotplug_write(offset, &data)
                })?)
            }
        };
        if let Outcome::Wrote(WriteEffect::Ejected(_)) = got {
            EJECTS.fetch_add(1, Ordering::Relaxed);
        }
        ensure!(
            got == want,
            "guest access {a:?} gave {got:?}, model {want:?}"
        );
        Ok(got)
    }

    /// Checks vCPU `i`'s recorded accesses against the model, in order, consuming `accesses`.
    fn replay(
        &mut self,
        i: usize,
        observed: Vec<(usize, Observed)>,
        accesses: &mut VecDeque<Access>,
    ) -> Result<(), String> {
        for (idx, seen) in observed {
            ensure!(
                idx == i,
                "vCPU {idx} recorded an access, but only vCPU {i} had any queued"
            );
            let Some(a) = accesses.pop_front() else {
                return Err(format!(
                    "vCPU {i} recorded more accesses than were queued: {seen:?}"
                ));
            };
            VCPU_ACCESSES.fetch_add(1, Ordering::Relaxed);
            let want = self.model.access(&a, true);
            let got = match seen {
                Observed::Read { offset, data } => {
                    ensure!(
                        matches!(a, Access::Read { offset: o, .. } if o == offset),
                        "vCPU {i} recorded a read at {offset} for queued {a:?}"
                    );
                    Outcome::Read(data)
                }
                Observed::Wrote(e) => {
                    if let WriteEffect::Ejected(_) = e {
                        EJECTS.fetch_add(1, Ordering::Relaxed);
                    }
                    Outcome::Wrote(e)
                }
            };
            ensure!(
                got == want,
                "vCPU {i}'s access {a:?} gave {got:?}, model {want:?}"
            );
        }
        Ok(())
    }

    fn on_vcpu(&mut self, i: usize, ops: &[VcpuOp], overlap: Overlap) -> Result<(), String> {
        if self.model.slots[i].life != MLife::Active || self.model.paused {
            return Ok(()); // nobody would run the batch now
        }
        // The batch ends at the first write that may eject (a self-eject ends the thread).
        let end = ops
            .iter()
            .position(|op| matches!(op, VcpuOp::Mmio(a) if a.may_eject()))
            .map_or(ops.len(), |k| k + 1);
        let ops = &ops[..end];
        let mut accesses: VecDeque<Access> = ops
            .iter()
            .filter_map(|op| match op {
                VcpuOp::Mmio(a) => Some(a.clone()),
                VcpuOp::Run(_) => None,
            })
            .collect();
        ensure!(
            self.sim.take_observed().is_empty(),
            "internal: stale observations"
        );
        let guest_ops: Vec<GuestOp> = ops
            .iter()
            .map(|op| match op {
                VcpuOp::Mmio(a) => a.to_guest_op(),
                VcpuOp::Run(n) => GuestOp::Run(*n),
            })
            .collect();
        let mut frozen = None;
        if overlap == Overlap::None {
            self.sim.push_ops(i, guest_ops);
        } else {
            // Pause while the vCPU works through its batch, from the VMM thread with no
            // delay between queuing (or spotting the vCPU in its handler) and pausing. Once
            // the pause holds, the vCPU is parked (or gone, after ejecting itself): what it
            // recorded is final.
            let before = self.vm.stats().pauses_overlapping_mmio;
            let in_handler = overlap == Overlap::InHandler;
            let res = self.exec.call("queue batch + pause", move |(v, sim)| {
                sim.push_ops(i, guest_ops);
                if in_handler {
                    let end = Instant::now() + Duration::from_millis(5);
                    while v.report(i).location != Location::InMmio
                        && sim.has_pending(i)
                        && Instant::now() < end
                    {
                        std::hint::spin_loop();
                    }
                }
                v.pause(CORE_TIMEOUT)
            })?;
            self.paused(res)?;
            PAUSES_OVER_MMIO.fetch_add(
                self.vm.stats().pauses_overlapping_mmio - before,
                Ordering::Relaxed,
            );
            let seen = self.sim.take_observed();
            self.replay(i, seen, &mut accesses)?;
            if self.model.slots[i].life != MLife::Active {
                ensure!(
                    accesses.is_empty(),
                    "internal: vCPU {i} stopped with accesses left"
                );
            }
            // Mid-batch, everything must already match the model.
            self.check_except(Some(i))?;
            frozen = self.resume_only()?;
        }
        let mut seen = Vec::new();
        let want = accesses.len();
        wait_until(&format!("vCPU {i} to finish its batch"), || {
            seen.extend(self.sim.take_observed());
            seen.len() >= want && !self.sim.has_pending(i)
        })?;
        self.replay(i, seen, &mut accesses)?;
        ensure!(
            accesses.is_empty(),
            "vCPU {i} skipped accesses: {accesses:?}"
        );
        // The rest of the batch may have ejected a vCPU before it re-entered the guest.
        self.check_reentry(frozen)
    }

    fn wedged_pause(&mut self, i: usize) -> Result<(), String> {
        if self.model.slots[i].life != MLife::Active || self.model.paused {
            return Ok(());
        }
        self.sim.push_ops(i, [GuestOp::Wedge]);
        wait_until(&format!("vCPU {i} to wedge in its device handler"), || {
            self.vm.report(i).location == Location::InMmio
        })?;
        let res = self
            .exec
            .call("pause (wedged)", |(v, _)| v.pause(WEDGE_PAUSE))?;
        let err = match res {
            Err(PauseError::Timeout(t)) => t,
            other => {
                self.sim.release(i);
                return Err(format!(
                    "pause with vCPU {i} wedged returned {other:?}, expected a timeout"
                ));
            }
        };
        self.sim.release(i);
        ensure!(
            err.missing
                .iter()
                .any(|r| r.index == i && r.location == Location::InMmio),
            "timeout does not name wedged vCPU {i} in its handler: {err}"
        );
        for r in &err.missing {
            ensure!(
                self.model.slots[r.index].life != MLife::Absent,
                "timeout names absent vCPU {}: {err}",
                r.index
            );
        }
        ensure!(self.vm.is_paused(), "a timed-out pause must stay in force");
        // The pause in force completes once the device returns.
        self.pause()
    }

    fn reap(&mut self) -> Result<(), String> {
        let exiting: Vec<usize> = (0..self.model.max())
            .filter(|&i| self.model.slots[i].life == MLife::Exiting)
            .collect();
        if self.mode == KickMode::ImmediateExit {
            // A kick that sticks makes every stopped vCPU leave promptly, paused or not.
            wait_until("stopped vCPUs to exit", || {
                exiting
                    .iter()
                    .all(|&i| self.vm.report(i).life == Life::Exited)
            })?;
        }
        let got = self
            .exec
            .call("reap", |(v, _)| v.reap())?
            .map_err(|e| e.to_string())?;
        if self.mode == KickMode::ImmediateExit {
            ensure!(
                got == exiting,
                "reap() = {got:?}, model expects {exiting:?}"
            );
        } else {
            // With lossy kicks a stopped vCPU may still be spinning: any subset, in order.
            ensure!(
                got.windows(2).all(|w| w[0] < w[1]) && got.iter().all(|i| exiting.contains(i)),
                "reap() = {got:?}, model allows a subset of {exiting:?}"
            );
        }
        for i in got {
            self.model.slots[i] = MSlot::ABSENT;
        }
        Ok(())
    }

    fn step(&mut self, op: &Op) -> Result<(), String> {
        let max = self.model.max();
        match op {
            Op::Pause => self.pause()?,
            Op::Resume => self.resume()?,
            Op::Resize(n) => {
                let n = *n;
                let want = self.model.resize_plan(n);
                let (got, added) = self.exec.call("resize", move |(v, _)| {
                    let mut added = Vec::new();
                    vmm_resize(v, n, &mut added).map(|r| (r, added))
                })??;
                ensure!(got == want, "resize({n}) did {got:?}, model {want:?}");
                let mut added = added.into_iter();
                for step in got.unwrap_or_default() {
                    self.model.apply_resize_step(step);
                    if let ResizeStep::Add(i) = step {
                        let r = added.next().expect("one report per hot-add");
                        self.after_add(i, r)?;
                    }
                }
            }
            Op::Guest(a) => {
                self.guest(a)?;
            }
            Op::GuestEject(i) => {
                self.guest(&Access::select(*i))?;
                self.guest(&Access::status_write(STATUS_EJECT))?;
            }
            Op::GuestScan { eject } => {
                for j in 0..max as u32 {
                    self.guest(&Access::select(j))?;
                    let Outcome::Read(s) = self.guest(&Access::status_read())? else {
                        unreachable!()
                    };
                    if s[0] & STATUS_INSERTING != 0 {
                        self.guest(&Access::status_write(STATUS_INSERTING))?;
                    }
                    if s[0] & STATUS_REMOVING != 0 {
                        self.guest(&Access::status_write(STATUS_REMOVING))?;
                        if *eject {
                            self.guest(&Access::status_write(STATUS_EJECT))?;
                        }
                    }
                }
            }
            Op::OnVcpu { vcpu, ops, overlap } => self.on_vcpu(*vcpu, ops, *overlap)?,
            Op::HotAdd(i) => {
                let i = *i;
                let (got, r) = self.exec.call("hot_add", move |(v, _)| {
                    let got = v.hot_add(i);
                    (got, (i < v.max_vcpus()).then(|| report_after_add(v, i)))
                })?;
                let want = self.model.hot_add(i);
                if check_expect("hot_add", i, max, got, want)? {
                    self.after_add(i, r.expect("in range"))?;
                }
            }
            Op::RequestRemoval(i) => {
                let i = *i;
                let got = self
                    .exec
                    .call("request_removal", move |(v, _)| v.request_removal(i))?;
                check_expect(
                    "request_removal",
                    i,
                    max,
                    got,
                    self.model.request_removal(i),
                )?;
            }
            Op::CancelRemoval(i) => {
                let i = *i;
                let got = self
                    .exec
                    .call("cancel_removal", move |(v, _)| v.cancel_removal(i))?;
                check_expect("cancel_removal", i, max, got, self.model.cancel_removal(i))?;
            }
            Op::Stop(i) => {
                let i = *i;
                let got = self.exec.call("stop", move |(v, _)| v.stop(i))?;
                check_expect("stop", i, max, got, self.model.stop(i))?;
            }
            Op::HotRemove(i) => {
                let i = *i;
                let got = self
                    .exec
                    .call("hot_remove", move |(v, _)| v.hot_remove(i, CORE_TIMEOUT))?;
                check_expect("hot_remove", i, max, got, self.model.hot_remove(i))?;
            }
            Op::Reap => self.reap()?,
            Op::WedgedPause(i) => self.wedged_pause(*i)?,
        }
        Ok(())
    }

    fn teardown(&mut self) -> Result<(), String> {
        self.torn_down = true;
        self.exec.call("teardown resume", |(v, _)| v.resume())?;
        self.exec
            .call("shutdown", |(v, _)| v.shutdown(CORE_TIMEOUT))?
            .map_err(|e| format!("shutdown: {e}"))?;
        let rs = self.vm.reports();
        ensure!(
            rs.iter().all(|r| r.life == Life::Absent),
            "after shutdown: {rs:?}"
        );
        ensure!(
            self.sim.take_observed().is_empty(),
            "unchecked vCPU accesses at teardown"
        );
        self.sim.detach();
        Ok(())
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if !self.torn_down && !self.exec.is_stuck() {
            // Best effort after a failure, so failing cases do not leak spinning threads.
            for i in 0..self.model.max() {
                self.sim.release(i);
            }
            let _ = self.exec.call("cleanup", |(v, _)| {
                v.resume();
                v.shutdown(CORE_TIMEOUT)
            });
        }
        self.sim.detach();
    }
}

fn run_case(case: &Case, bug: Bug) -> Result<(), String> {
    let mut h = Harness::new(case, bug)?;
    h.check().map_err(|e| format!("after boot: {e}"))?;
    for (k, op) in case.ops.iter().enumerate() {
        h.step(op)
            .and_then(|()| h.check())
            .map_err(|e| format!("op #{k} {op:?}: {e}"))?;
    }
    h.teardown()
}

fn runner_config(cases: u32) -> Config {
    let default = Config::default(); // already reflects PROPTEST_* variables
    Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(REGRESSIONS))),
        source_file: Some(file!()),
        // Unset, proptest allows 4 shrink steps per case, i.e. almost none when replaying
        // with few cases; a hung candidate costs OP_LIMIT, hence the time bound.
        max_shrink_iters: if default.max_shrink_iters == u32::MAX {
            4096
        } else {
            default.max_shrink_iters
        },
        max_shrink_time: if default.max_shrink_time == 0 {
            300_000
        } else {
            default.max_shrink_time
        },
        ..default
    }
}

fn run_property(runner: &mut TestRunner, bug: Bug) -> Result<(), TestError<Case>> {
    runner.run(&case_strategy(), |case| {
        run_case(&case, bug).map_err(TestCaseError::fail)
    })
}

#[test]
fn hotplug_and_pause_sequences_match_the_model() {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    let start = Instant::now();
    let mut runner = TestRunner::new(runner_config(cases));
    let result = run_property(&mut runner, Bug::None);
    eprintln!(
        "proptest_sim: {cases} cases in {:.1?}: {} vCPU-thread accesses checked, {} ejects, \
         {} pauses caught a vCPU inside the hotplug handler",
        start.elapsed(),
        VCPU_ACCESSES.load(Ordering::Relaxed),
        EJECTS.load(Ordering::Relaxed),
        PAUSES_OVER_MMIO.load(Ordering::Relaxed),
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Negative control: the same machinery against deliberately broken models must fail, which
/// proves the comparisons bite (for the test thread's view and for the vCPU threads' view).
#[test]
fn negative_control_broken_models_are_caught() {
    for (bug, symptom) in [
        (Bug::EjectKeepsEnabled, ["life is", "status of selected"]),
        (
            Bug::ForgetsVcpuSelect,
            ["selected register", "status of selected"],
        ),
    ] {
        let config = Config {
            cases: 64,
            failure_persistence: None,
            max_shrink_iters: 64,
            ..Config::default()
        };
        let rng = TestRng::deterministic_rng(config.rng_algorithm);
        let mut runner = TestRunner::new_with_rng(config, rng);
        match run_property(&mut runner, bug) {
            Err(TestError::Fail(reason, case)) => {
                let reason = reason.to_string();
                eprintln!("broken model {bug:?} caught: {reason}\n  in {case:?}");
                assert!(
                    symptom.iter().any(|s| reason.contains(s)),
                    "broken model {bug:?} failed for an unexpected reason: {reason}"
                );
            }
            other => panic!("broken model {bug:?} was not caught: {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Regressions found by the property test
// ---------------------------------------------------------------------------------------

/// A backend whose vCPU threads wait at a gate before running the simulated vCPU, so a test
/// can hold a freshly added vCPU before its first instruction.
#[derive(Clone)]
struct GatedBackend {
    sim: SimBackend,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl vcpu_sync::Backend for GatedBackend {
    type Thread = thread::JoinHandle<()>;
    type Error = vcpu_sync::sim::SimError;

    fn spawn(&self, link: vcpu_sync::VcpuLink) -> Result<Self::Thread, Self::Error> {
        let me = self.clone();
        Ok(thread::spawn(move || {
            while !me.open.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_micros(100));
            }
            match vcpu_sync::Backend::spawn(&me.sim, link) {
                Ok(t) => drop(t.join()),
                Err(e) => panic!("{e}"),
            }
        }))
    }

    fn kick(&self, index: usize) {
        vcpu_sync::Backend::kick(&self.sim, index);
    }

    fn join(&self, _index: usize, thread: Self::Thread) {
        thread.join().expect("gated vCPU thread");
    }
}

/// Found by `hotplug_and_pause_sequences_match_the_model`, shrunk to
/// `max 1, boot 1: Pause, Stop(0), Resize(1)` (and, with the final strategy, to
/// `max 2, boot 1: WedgedPause(0), Stop(0), Resize(1)`, the persisted seed `c46f30d4…`): a slot
/// emptied and re-populated within one
/// pause kept the acknowledgement of the vCPU that had occupied it, so the new vCPU reported
/// `paused` and `pause()` returned "every vCPU acknowledged" before the new thread had run a
/// single instruction.
#[test]
fn regression_readded_vcpu_does_not_inherit_the_previous_ack() {
    // The shrunk case, through the property harness.
    let case = Case {
        max: 1,
        boot: 1,
        mode: KickMode::ImmediateExit,
        ops: vec![Op::Pause, Op::Stop(0), Op::Resize(1)],
    };
    if let Err(e) = run_case(&case, Bug::None) {
        panic!("{e}");
    }

    // Deterministically: hold the re-added vCPU's thread before it starts.
    let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let backend = GatedBackend {
        sim: SimBackend::new(1, KickMode::ImmediateExit, false),
        open: open.clone(),
    };
    let v = Vcpus::new(1, backend).expect("core");
    v.start(0).expect("start");
    v.pause(CORE_TIMEOUT).expect("pause");
    open.store(false, Ordering::SeqCst);
    v.hot_remove(0, CORE_TIMEOUT).expect("hot_remove");
    v.hot_add(0).expect("hot_add");
    let r = v.report(0);
    assert!(
        !r.paused,
        "a vCPU whose thread has not started reports that it acknowledged the pause: {r}"
    );
    match v.pause(Duration::from_millis(50)) {
        Err(PauseError::Timeout(t)) => {
            assert_eq!(t.missing.len(), 1, "{t}");
            assert_eq!(t.missing[0].index, 0);
            assert_eq!(t.missing[0].location, Location::NotStarted);
        }
        other => panic!(
            "pause() must wait for the re-added vCPU (held before its first instruction), \
             got {other:?}"
        ),
    }
    open.store(true, Ordering::SeqCst);
    v.pause(CORE_TIMEOUT).expect("pause once the new vCPU runs");
    let r = v.report(0);
    assert!(r.paused && r.location == Location::Parked, "{r}");
    assert!(v.resume());
    v.shutdown(CORE_TIMEOUT).expect("shutdown");
}
