//! Loom models of `vcpu_sync`'s pause/resume/hotplug protocol, with negative controls.
//!
//! The models live in `tests/*.rs` and only exist under `--cfg loom`; without it this crate
//! is empty, so `cargo test --workspace` builds it and runs nothing. The shared harness is
//! `harness` and the old, broken pause designs the negative controls run are in `legacy`
//! (both loom builds only). See `README.md` for how to run and what was measured.

#[cfg(loom)]
pub mod harness;
#[cfg(loom)]
pub mod legacy;
#[cfg(loom)]
pub mod vm;
