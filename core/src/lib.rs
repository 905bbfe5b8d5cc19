//! `vcpu_sync`: a backend-agnostic core that pauses, resumes, hot-adds and hot-removes
//! vCPUs without ever holding a lock across a wait, so that a vCPU busy in a device
//! handler (the ACPI CPU-hotplug controller in particular) can always acknowledge a pause.
//!
//! * [`Vcpus`] is the VMM-side handle; [`VcpuLink`] is what each vCPU thread holds.
//! * [`Backend`] is the hypervisor: it starts a thread per vCPU, kicks a vCPU out of guest
//!   mode, and joins a thread that has left its run loop (KVM in the `kvm-backend` crate).
//! * The CPU-hotplug controller's registers are [`Vcpus::hotplug_read`] and
//!   [`Vcpus::hotplug_write`]; a device model that the backend owns reaches them through a
//!   [`WeakVcpus`], so the VM can be dropped.
//!
//! # Example: a backend and its vCPU loop
//!
//! A backend whose "guest" does nothing but wait to be kicked. A real one runs `KVM_RUN`
//! where this one sleeps, and makes a kick stick with `immediate_exit` the way this one does
//! with its flag: cleared *before* the checkpoint, so a kick that lands between the
//! checkpoint and guest entry still makes the entry return at once.
//!
//! ```
//! use std::sync::atomic::{AtomicBool, Ordering};
//! use std::sync::Arc;
//! use std::thread::{self, JoinHandle};
//! use std::time::Duration;
//! use vcpu_sync::{Backend, Location, Next, VcpuLink, Vcpus};
//!
//! struct ToyBackend {
//!     /// Per vCPU: "leave guest mode now" (what `immediate_exit` plus a signal do on KVM).
//!     kicked: Vec<Arc<AtomicBool>>,
//! }
//!
//! impl Backend for ToyBackend {
//!     type Thread = JoinHandle<()>;
//!     type Error = std::io::Error;
//!
//!     fn spawn(&self, link: VcpuLink) -> Result<JoinHandle<()>, std::io::Error> {
//!         let kicked = self.kicked[link.index()].clone();
//!         thread::Builder::new()
//!             .name(format!("vcpu{}", link.index()))
//!             .spawn(move || loop {
//!                 kicked.store(false, Ordering::SeqCst);
//!                 // Parks here while a pause is in force; `Exit` once stopped.
//!                 if link.checkpoint() == Next::Exit {
//!                     break; // dropping the link tells the core the thread is out
//!                 }
//!                 link.set_location(Location::InGuest);
//!                 while !kicked.load(Ordering::SeqCst) {
//!                     thread::sleep(Duration::from_micros(100)); // "run the guest"
//!                 }
//!                 link.set_location(Location::Userspace);
//!                 // A guest exit to a device would be handled here, inside
//!                 // `link.in_mmio(|| ...)`, and may call `hotplug_read`/`hotplug_write`.
//!             })
//!     }
//!
//!     fn kick(&self, index: usize) {
//!         self.kicked[index].store(true, Ordering::SeqCst);
//!     }
//!
//!     fn join(&self, _index: usize, thread: JoinHandle<()>) {
//!         let _ = thread.join();
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let backend = ToyBackend {
//!     kicked: (0..4).map(|_| Arc::new(AtomicBool::new(false))).collect(),
//! };
//! let vcpus = Vcpus::new(4, backend)?; // 4 possible vCPUs
//! vcpus.start(0)?; // boot vCPUs
//! vcpus.start(1)?;
//!
//! // Pause: every vCPU with a thread has acknowledged when this returns.
//! vcpus.pause(Duration::from_secs(5))?;
//! assert!(vcpus.reports().iter().filter(|r| r.life.has_thread()).all(|r| r.paused));
//! // A vCPU hot-added while paused parks before its first guest entry.
//! vcpus.hot_add(2)?;
//! vcpus.pause(Duration::from_secs(5))?; // waits for the pause in force, now with vCPU 2
//! assert!(vcpus.report(2).paused && vcpus.report(2).inserting);
//! assert!(vcpus.resume());
//!
//! // Hot-remove from the VMM side (a guest's eject goes through `hotplug_write`).
//! vcpus.hot_remove(2, Duration::from_secs(5))?;
//! assert_eq!(vcpus.active_count(), 2);
//!
//! vcpus.shutdown(Duration::from_secs(5))?;
//! assert_eq!(vcpus.active_count(), 0);
//! # Ok(())
//! # }
//! ```
//!
//! # Which thread may call what
//!
//! Calls that wait for vCPU threads ([`Vcpus::pause`] and [`Vcpus::try_pause`],
//! [`Vcpus::hot_remove`], [`Vcpus::reap`], [`Vcpus::shutdown`]) are for VMM threads only: a vCPU thread cannot wait
//! for its own acknowledgement or exit, and two vCPUs waiting for each other would
//! deadlock. Called on a vCPU thread (one that has entered [`VcpuLink::checkpoint`]) they
//! return [`CoreError::OnVcpuThread`] / [`PauseError::OnVcpuThread`] at once. Everything
//! else never waits and may be called from any thread, vCPU threads included.
//!
//! # Features
//!
//! `sim` (tests only): a simulated backend, the unsound no-re-kick pause used as a
//! negative control, loom's time budget and a deadline executor for property tests.
//!
//! The design rules this crate follows, the register layout and the lock inventory are in
//! the repository's `docs/design.md`.

#![deny(missing_docs)]

mod backend;
mod error;
mod hotplug;
mod link;
mod shared;
#[cfg(feature = "sim")]
pub mod sim;
mod slot;
mod sync;
mod vcpus;

pub use backend::Backend;
pub use error::{CoreError, PauseError, PauseTimeout};
pub use hotplug::{WriteEffect, HOTPLUG_REGION_SIZE, REG_SELECT, REG_STATUS};
pub use link::{current_vcpu, Next, VcpuLink};
pub use slot::{
    Life, Location, SlotReport, STATUS_EJECT, STATUS_ENABLED, STATUS_INSERTING, STATUS_REMOVING,
};
pub use vcpus::{Stats, Vcpus, WeakVcpus, PAUSE_GRACE, REKICK_INTERVAL};
