//! Helpers shared by the models of the real core over the simulated backend.

use crate::harness::{spin_until, TIMEOUT};
use vcpu_sync::sim::{KickMode, SimBackend};
use vcpu_sync::{Life, Location, Vcpus};

/// A VM over the simulated backend.
pub struct Vm {
    /// The core.
    pub vcpus: Vcpus<SimBackend>,
    /// The backend.
    pub sim: SimBackend,
}

impl Vm {
    /// `max_vcpus` empty slots, KVM-like kicks, no observation recording.
    pub fn new(max_vcpus: usize) -> Vm {
        Vm::with(max_vcpus, KickMode::ImmediateExit, false)
    }

    /// Full control over the backend.
    pub fn with(max_vcpus: usize, mode: KickMode, record: bool) -> Vm {
        let (vcpus, sim) = SimBackend::create(max_vcpus, mode, record);
        Vm { vcpus, sim }
    }

    /// Starts boot vCPU `i` and waits until it has entered guest mode (where, with nothing
    /// to do, it halts). Used in set-up, before the explored window.
    pub fn start_settled(&self, i: usize) {
        self.vcpus.start(i).expect("start");
        spin_until(|| self.sim.entries(i) > 0);
    }

    /// Asserts every slot with a thread has acknowledged the pause in force.
    pub fn assert_all_paused(&self) {
        for rep in self.vcpus.reports() {
            if rep.life.has_thread() {
                assert!(
                    rep.paused,
                    "pause returned Ok but {rep} has not acknowledged it"
                );
            }
        }
    }

    /// Waits until every present vCPU is back in guest mode (after a resume).
    pub fn wait_all_running(&self) {
        for i in 0..self.vcpus.max_vcpus() {
            spin_until(|| {
                let r = self.vcpus.report(i);
                r.life != Life::Active || r.location == Location::InGuest
            });
        }
    }

    /// Stops and reaps every vCPU, checks every slot ended empty, breaks the reference cycle.
    pub fn shutdown(&self) {
        self.vcpus.shutdown(TIMEOUT).expect("shutdown");
        for rep in self.vcpus.reports() {
            assert_eq!(rep.life, Life::Absent, "after shutdown: {rep}");
        }
        self.sim.detach();
    }
}
