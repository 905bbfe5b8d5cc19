//! Fuzz targets for input a guest or a client controls. Each target is a plain function so
//! that the libFuzzer binaries (fuzz_targets/, feature `libfuzzer`) and the corpus replay
//! tests (tests/corpus.rs, plain `cargo test`) run the same code.

pub mod api;
mod hotplug;
mod loader;

pub use api::api_request;
pub use hotplug::hotplug_mmio;
pub use loader::kernel_image;
