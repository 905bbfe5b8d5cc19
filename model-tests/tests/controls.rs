//! Model 6: negative controls. Each `*_is_reported` test passes only if loom FAILS the model
//! it wraps (deadlock, or a livelock exceeding the branch budget); each `*_passes` test is
//! the same harness with the one ingredient of the bug removed, so the failing controls
//! cannot be failing for an unrelated reason (and the harness is not vacuous).
#![cfg(loom)]

use model_tests::harness::{Model, CONTROL_MAX_BRANCHES};
use model_tests::legacy::{self, Config, Discipline, Wait};

const DEADLOCK: &[&str] = &["deadlock"];
const LIVELOCK: &[&str] = &["maximum number of branches"];

fn vcpus() -> usize {
    std::env::var("CTRL_VCPUS")
        .map(|v| v.parse().unwrap())
        .unwrap_or(1)
}

fn cfg(discipline: Discipline, wait: Wait, mmio_takes_lock: bool) -> Config {
    Config {
        discipline,
        wait,
        mmio_takes_lock,
        vcpus: vcpus(),
    }
}

fn control(name: &'static str) -> Model {
    let b = std::env::var("CTRL_BOUND").ok().map(|v| v.parse().unwrap());
    Model::new(name, 1 + vcpus())
        .fixed_bound(b)
        .max_branches(CONTROL_MAX_BRANCHES)
}

// ---- (a) the wide lock held across signal + wait -------------------------------------

#[test]
fn c6a_wide_lock_condvar_wait_is_reported() {
    let c = cfg(Discipline::WideLock, Wait::Condvar, true);
    control("c6a_wide_lock/condvar").check_fails(
        "c6a_wide_lock_condvar_wait_is_reported",
        DEADLOCK,
        move || legacy::run(c),
    );
}

#[test]
fn c6a_wide_lock_spin_wait_is_reported() {
    let c = cfg(Discipline::WideLock, Wait::Spin, true);
    control("c6a_wide_lock/spin+rekick").check_fails(
        "c6a_wide_lock_spin_wait_is_reported",
        LIVELOCK,
        move || legacy::run(c),
    );
}

// ---- (b) one slot's lock at a time, held across its kick/retry loop -------------------

#[test]
fn c6b_slot_lock_across_retry_is_reported() {
    let c = cfg(Discipline::SlotLockAcrossRetry, Wait::Spin, true);
    control("c6b_slot_lock_across_retry").check_fails(
        "c6b_slot_lock_across_retry_is_reported",
        LIVELOCK,
        move || legacy::run(c),
    );
}

#[test]
fn c6b_slot_lock_across_condvar_wait_is_reported() {
    let c = cfg(Discipline::SlotLockAcrossRetry, Wait::Condvar, true);
    control("c6b_slot_lock/condvar").check_fails(
        "c6b_slot_lock_across_condvar_wait_is_reported",
        DEADLOCK,
        move || legacy::run(c),
    );
}

// ---- (d) the same harness without the lock cycle passes -------------------------------

#[test]
fn c6d_wide_lock_without_mmio_lock_passes() {
    let c = cfg(Discipline::WideLock, Wait::Condvar, false);
    control("c6d_wide_lock/no_mmio_lock").check(move || legacy::run(c));
}

#[test]
fn c6d_slot_lock_without_mmio_lock_passes() {
    let c = cfg(Discipline::SlotLockAcrossRetry, Wait::Spin, false);
    control("c6d_slot_lock/no_mmio_lock").check(move || legacy::run(c));
}

#[test]
fn c6d_no_lock_while_waiting_with_mmio_lock_passes() {
    for wait in [Wait::Condvar, Wait::Spin] {
        let c = cfg(Discipline::NoLockWhileWaiting, wait, true);
        let name = match wait {
            Wait::Condvar => "c6d_no_lock_while_waiting/condvar",
            Wait::Spin => "c6d_no_lock_while_waiting/spin",
        };
        control(name).check(move || legacy::run(c));
    }
}
