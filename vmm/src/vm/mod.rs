//! The VM object: KVM VM, guest memory, devices and the `vcpu_sync` core, plus the main
//! loop that turns [`VmEvent`]s into reaping and an exit outcome. Methods take `&self` so a
//! control API thread can hold an `Arc<Vm>` and call `pause`/`resume`/`resize`/`info`
//! while the main thread sits in [`Vm::run`].

pub mod acpi;
pub mod bus;
pub mod console;
pub mod devices;
mod error;
pub mod image_check;
pub mod layout;
pub mod loader;
pub mod memory;
pub mod ratelimit;

pub use error::Error;

use crate::config::{SerialConfig, VmConfig};
use bus::{DeviceBus, SerialOut, VmEvent};
use console::Console;
use devices::ged::Ged;
use devices::Interrupt;
use kvm_backend::{BackendConfig, BootEntry, KvmBackend, KvmVm};
use layout::{COM1_IRQ, GED_GSI, HOTPLUG_MMIO_BASE};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vcpu_sync::{Life, SlotReport, Stats, Vcpus};
use vm_memory::GuestMemoryMmap;

/// vCPUs the MADT can describe with xAPIC entries (IDs 0..=253; 255 is broadcast).
pub const XAPIC_MAX_VCPUS: usize = 254;
/// How long stopping all vCPUs at exit may take.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long shutdown waits for buffered serial output to reach its sink (the 2 s in the
/// warning when it does not).
const SERIAL_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// How the guest ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// ACPI S5 / KVM shutdown event.
    PowerOff,
    /// Reset via i8042 or the ACPI reset register (a triple fault is an error).
    Reboot,
    /// The VMM was asked to stop the VM.
    Shutdown,
}

/// Pulses a GSI on the in-kernel irqchip (edge-triggered sources).
struct KvmIrq {
    vm: Arc<KvmVm>,
    gsi: u32,
}

impl Interrupt for KvmIrq {
    fn trigger(&self) {
        let r = self
            .vm
            .set_irq_line(self.gsi, true)
            .and_then(|()| self.vm.set_irq_line(self.gsi, false));
        if let Err(e) = r {
            log::warn!("cannot raise GSI {}: {e}", self.gsi);
        }
    }

    fn accepted(&self) -> bool {
        self.vm.gsi_unmasked(self.gsi).unwrap_or_else(|e| {
            log::warn!("cannot read the IOAPIC's entry for GSI {}: {e}", self.gsi);
            true
        })
    }
}

/// Per-vCPU state for `info()`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct VcpuInfo {
    /// Slot index (APIC ID, ACPI UID).
    pub index: usize,
    /// One of `absent`, `removing` (removal requested and not yet completed by the guest,
    /// or ejected and on its way out), `inserting` (hot-added, not yet seen by the guest),
    /// `paused` (acknowledged the pause in force) or `running`, first match wins.
    pub state: &'static str,
    /// The core's lifecycle: absent, starting, active, stopping, exited.
    pub life: String,
    /// Where the thread last was.
    pub location: String,
    /// Hot-add not yet seen by the guest.
    pub inserting: bool,
    /// Hot-remove not yet seen by the guest.
    pub removing: bool,
    /// The VMM asked for removal; the guest has not ejected yet.
    pub remove_requested: bool,
    /// Acknowledged the pause in force.
    pub paused: bool,
    /// Kicks sent so far.
    pub kicks: u64,
}

impl From<&SlotReport> for VcpuInfo {
    fn from(r: &SlotReport) -> Self {
        let state = match r.life {
            Life::Absent => "absent",
            Life::Stopping | Life::Exited => "removing",
            Life::Starting | Life::Active if r.removing || r.remove_requested => "removing",
            Life::Starting | Life::Active if r.inserting => "inserting",
            Life::Starting | Life::Active if r.paused => "paused",
            Life::Starting | Life::Active => "running",
        };
        VcpuInfo {
            index: r.index,
            state,
            life: format!("{:?}", r.life).to_lowercase(),
            location: r.location.to_string(),
            inserting: r.inserting,
            removing: r.removing,
            remove_requested: r.remove_requested,
            paused: r.paused,
            kicks: r.kicks,
        }
    }
}

/// A snapshot of the VM for the control API.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct VmInfo {
    /// vCPUs started at boot.
    pub boot_vcpus: usize,
    /// Possible vCPUs.
    pub max_vcpus: usize,
    /// Present vCPUs (starting or active).
    pub active_vcpus: usize,
    /// Guest RAM in bytes.
    pub memory_size: u64,
    /// A pause is in force.
    pub paused: bool,
    /// GED notifications sent.
    pub ged_notifications: u64,
    /// A CPU-change notification waits for the guest to enable the GED's interrupt (its
    /// ACPI is still starting); it is raised as soon as the guest has.
    pub ged_notification_held: bool,
    /// Slots hot-added that the guest has not acknowledged yet.
    pub pending_insertions: Vec<usize>,
    /// Slots whose removal was requested and that the guest has not ejected yet (still
    /// present), or that were ejected and are not reaped yet.
    pub pending_removals: Vec<usize>,
    /// Core counters since boot.
    pub stats: StatsInfo,
    /// One entry per slot.
    pub vcpus: Vec<VcpuInfo>,
}

/// The core's counters, for `info()`.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct StatsInfo {
    /// Pauses completed with every vCPU acknowledged.
    pub pauses: u64,
    /// Pauses during which some vCPU was inside a device handler (MMIO or port I/O) when
    /// kicked.
    pub pauses_overlapping_mmio: u64,
    /// Pauses that were in force or began while a vCPU was servicing an access to the
    /// CPU-hotplug controller (the motivating bug's window).
    pub pauses_during_hotplug_access: u64,
    /// Guest eject writes during which a pause was in force or began (the window of Cloud
    /// Hypervisor's second deadlock).
    pub pauses_during_eject: u64,
    /// Reaps of ejected vCPUs during which a pause was in force or began.
    pub pauses_during_reap: u64,
    /// Kicks re-sent to vCPUs that had not acknowledged in time.
    pub rekicks: u64,
    /// Guest ejects honoured.
    pub ejects: u64,
}

impl StatsInfo {
    fn new(s: Stats, during: [u64; 3]) -> Self {
        let [pauses_during_hotplug_access, pauses_during_eject, pauses_during_reap] = during;
        StatsInfo {
            pauses: s.pauses,
            pauses_overlapping_mmio: s.pauses_overlapping_mmio,
            pauses_during_hotplug_access,
            pauses_during_eject,
            pauses_during_reap,
            rekicks: s.rekicks,
            ejects: s.ejects,
        }
    }
}

/// Why a resize was refused. The VM is unchanged when one is returned, except for
/// [`ResizeError::Vcpu`] (the core failed part way; `info` shows what was done).
#[derive(Debug, thiserror::Error)]
pub enum ResizeError {
    /// Zero vCPUs.
    #[error("cannot resize to 0 vCPUs: at least 1 is needed")]
    Zero,
    /// More than `max_vcpus`.
    #[error("cannot resize to {requested} vCPUs: the maximum (--cpus max) is {max}")]
    AboveMax {
        /// The count asked for.
        requested: usize,
        /// `max_vcpus`.
        max: usize,
    },
    /// Growing needs slots that the guest is still ejecting.
    #[error("cannot grow to {requested} vCPUs now: only {free} slot(s) are free; vCPU(s) {busy:?} are still being removed by the guest")]
    SlotsBusy {
        /// The count asked for.
        requested: usize,
        /// Absent slots.
        free: usize,
        /// Slots the guest has begun removing (or ejected and not yet reaped).
        busy: Vec<usize>,
    },
    /// The VM is stopping.
    #[error("the VM is shutting down")]
    ShuttingDown,
    /// The core refused to start or mark a vCPU.
    #[error(transparent)]
    Vcpu(#[from] vcpu_sync::CoreError),
}

/// What a resize did.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct ResizeOutcome {
    /// The vCPU count asked for.
    pub cpus: usize,
    /// Slots hot-added.
    pub added: Vec<usize>,
    /// Slots whose pending removal was withdrawn (the guest had not seen it yet).
    pub cancelled: Vec<usize>,
    /// Slots whose removal was requested from the guest.
    pub removing: Vec<usize>,
}

/// A booted (or bootable) VM.
pub struct Vm {
    memory: GuestMemoryMmap,
    vcpus: Vcpus<KvmBackend>,
    bus: Arc<DeviceBus<KvmBackend>>,
    console: Console,
    ged: Ged,
    events_tx: Sender<VmEvent>,
    events_rx: Mutex<Option<Receiver<VmEvent>>>,
    /// Serializes resizes with each other and with [`Vm::shutdown`], so each plans from a
    /// snapshot no other resize changes. Only `resize` and `shutdown` take it, and both
    /// refuse to run on a vCPU thread before taking it, so no vCPU ever waits for it. What
    /// runs under it never waits for a vCPU: reading reports, withdrawing and requesting
    /// removals (atomics), and hot-adds, whose vCPU-creation ioctls and thread spawn do not
    /// wait for any running vCPU (the new thread is not waited for). Reaping (a join) and
    /// the GED interrupt happen outside it. See the lock inventory in `docs/design.md`.
    resize_lock: Mutex<()>,
    /// Set once the main loop has decided to stop: no more resizes.
    stopping: AtomicBool,
    /// Reaps (joins of ejected vCPU threads) during which a pause was in force or began.
    pauses_during_reap: AtomicU64,
    boot_vcpus: usize,
    max_vcpus: usize,
    memory_size: u64,
    api_socket: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("boot_vcpus", &self.boot_vcpus)
            .field("max_vcpus", &self.max_vcpus)
            .field("memory_size", &self.memory_size)
            .finish_non_exhaustive()
    }
}

/// Checks what can be checked without the host: vCPU counts, memory size, the files.
pub fn check_config(config: &VmConfig) -> Result<(), Error> {
    if config.boot_vcpus == 0 || config.boot_vcpus > config.max_vcpus {
        return Err(Error::BadBootVcpus {
            boot: config.boot_vcpus,
            max: config.max_vcpus,
        });
    }
    memory::check_size(config.memory_size)?;
    let format = loader::probe_kernel(&config.kernel)?;
    crate::vm::image_check::check_kernel(&config.kernel, format, config.memory_size)
        .map_err(loader::LoaderError::from)?;
    if let Some(path) = &config.initramfs {
        if !path.exists() {
            return Err(loader::LoaderError::InitramfsNotFound(path.clone()).into());
        }
        if !path.is_file() {
            return Err(loader::LoaderError::InitramfsNotAFile(path.clone()).into());
        }
    }
    Ok(())
}

impl Vm {
    /// Builds the VM (memory, kernel, ACPI, devices, vCPU slots) without starting vCPUs.
    /// Serial output goes where `config.serial` says.
    pub fn new(config: &VmConfig) -> Result<Vm, Error> {
        let out: SerialOut = match &config.serial {
            SerialConfig::Tty => console::stdout_sink(),
            SerialConfig::Off => Box::new(std::io::sink()),
            SerialConfig::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| Error::SerialFile {
                        path: path.clone(),
                        source,
                    })?,
            ),
        };
        Self::with_serial(config, out)
    }

    /// [`Vm::new`] with serial output going to `serial_out` (through a bounded buffer and
    /// a writer thread, [`console`]: a sink that blocks loses output, never stalls the VM).
    pub fn with_serial(config: &VmConfig, serial_out: SerialOut) -> Result<Vm, Error> {
        check_config(config)?;
        let kvm = Arc::new(KvmVm::new()?);
        let kvm_limit = kvm.max_vcpus();
        let limit = kvm_limit.min(XAPIC_MAX_VCPUS);
        if config.max_vcpus > limit {
            return Err(Error::TooManyVcpus {
                requested: config.max_vcpus,
                limit,
                kvm_limit,
            });
        }

        let memory = memory::create_guest_memory(config.memory_size)?;
        kvm.register_memory(&memory)?;

        let kernel = loader::load_kernel(&memory, &config.kernel)?;
        let initramfs = match &config.initramfs {
            Some(p) => Some(loader::load_initramfs(&memory, p, &kernel)?),
            None => None,
        };
        let cmdline = loader::build_cmdline(config.cmdline.as_deref())?;
        let cmdline_len = loader::write_cmdline(&memory, &cmdline)?;
        let rsdp = acpi::write_tables(&memory, config.max_vcpus, config.boot_vcpus)?;
        let zero_page = loader::write_boot_params(&memory, &kernel, initramfs, cmdline_len, rsdp)?;
        log::info!(
            "kernel loaded: {:?}, entry {:#x}, initramfs {:?}, RSDP {:#x}, cmdline {:?}",
            kernel.format,
            kernel.entry.0,
            initramfs,
            rsdp.0,
            cmdline.as_cstring().ok()
        );

        let console = Console::spawn(serial_out).map_err(Error::Console)?;
        let (events_tx, events_rx) = channel();
        let serial_irq: Arc<dyn Interrupt> = Arc::new(KvmIrq {
            vm: kvm.clone(),
            gsi: COM1_IRQ,
        });
        let bus = Arc::new(DeviceBus::new(
            Box::new(console.out()),
            serial_irq,
            HOTPLUG_MMIO_BASE,
            events_tx.clone(),
        ));
        let backend = kvm.create_backend(BackendConfig {
            max_vcpus: config.max_vcpus,
            memory: memory.clone(),
            boot: BootEntry {
                entry: kernel.entry,
                zero_page,
            },
            handler: bus.clone(),
        })?;
        backend.set_all_vcpus_boot(config.aps_at_entry);
        let vcpus = Vcpus::new(config.max_vcpus, backend)?;
        // The bus (inside the backend) refers back to the vCPUs weakly: dropping the Vm
        // drops the vCPUs, the backend, the bus, the KVM fds and the guest memory.
        bus.hotplug().attach(vcpus.clone());
        let ged = Ged::new(Arc::new(KvmIrq {
            vm: kvm.clone(),
            gsi: GED_GSI,
        }));

        Ok(Vm {
            memory,
            vcpus,
            bus,
            console,
            ged,
            events_tx,
            events_rx: Mutex::new(Some(events_rx)),
            resize_lock: Mutex::new(()),
            stopping: AtomicBool::new(false),
            pauses_during_reap: AtomicU64::new(0),
            boot_vcpus: config.boot_vcpus,
            max_vcpus: config.max_vcpus,
            memory_size: config.memory_size,
            api_socket: config.api_socket.clone(),
        })
    }

    /// Starts the boot vCPUs. The APs come first when they wait for INIT/SIPI, so that
    /// every boot vCPU exists in KVM before the BSP runs, as on a real machine: a guest
    /// whose BSP broadcasts INIT/SIPI at once would otherwise miss the APs not created yet
    /// (KVM delivers an IPI only to vCPUs that exist). APs that start like the BSP
    /// (`aps_at_entry`, or the backend told so directly) come after it, since its setup
    /// writes the page tables they run on.
    pub fn start(&self) -> Result<(), Error> {
        let n = self.boot_vcpus;
        let order: Vec<usize> = if self.vcpus.backend().all_vcpus_boot() {
            (0..n).collect()
        } else {
            (1..n).chain(0..1).collect()
        };
        for i in order {
            self.vcpus.start(i)?;
        }
        log::info!(
            "vCPUs started: {} of at most {}",
            self.boot_vcpus,
            self.max_vcpus
        );
        Ok(())
    }

    /// Waits for the guest to power off, reboot or fail, reaping vCPUs that exit on the
    /// way; then stops every vCPU. Call once, on the main thread.
    pub fn run(&self) -> Result<Outcome, Error> {
        let rx = self
            .events_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or(Error::AlreadyRunning)?;
        let result = loop {
            // `self` holds a sender, so the channel never disconnects while we wait.
            let Ok(ev) = rx.recv() else {
                break Err(Error::Guest("event channel closed".into()));
            };
            log::debug!("event: {ev:?}");
            match ev {
                VmEvent::PowerOff => break Ok(Outcome::PowerOff),
                VmEvent::Reboot => break Ok(Outcome::Reboot),
                VmEvent::Shutdown => break Ok(Outcome::Shutdown),
                VmEvent::Fatal(msg) => break Err(Error::Guest(msg)),
                VmEvent::VcpuExited(_) | VmEvent::Ejected(_) => {
                    let before = self.vcpus.pause_epoch();
                    let reaped = match self.vcpus.reap() {
                        Ok(r) => r,
                        Err(e) => break Err(e.into()),
                    };
                    if !reaped.is_empty() && (before & 1 == 1 || self.vcpus.pause_epoch() != before)
                    {
                        self.pauses_during_reap.fetch_add(1, Ordering::Relaxed);
                    }
                    if !reaped.is_empty() {
                        log::info!("reaped vCPU(s) {reaped:?}");
                    }
                    let alive = self.vcpus.reports().iter().any(|r| r.life != Life::Absent);
                    if !alive {
                        break Err(Error::Guest("every vCPU has exited".into()));
                    }
                }
            }
        };
        self.shutdown();
        result
    }

    /// Stops and reaps every vCPU (bounded), then drains serial output (bounded).
    /// VMM threads only: on a vCPU thread it logs an error and does nothing.
    pub fn shutdown(&self) {
        if let Some(index) = vcpu_sync::current_vcpu() {
            log::error!("Vm::shutdown called on the thread of vCPU {index}; ignored");
            return;
        }
        // A resize in progress finishes first; later ones are refused.
        {
            let _resizing = self.resize_lock.lock().unwrap_or_else(|p| p.into_inner());
            self.stopping.store(true, Ordering::SeqCst);
        }
        self.ged.close();
        // A paused vCPU must be able to see its stop: resume first.
        self.vcpus.resume();
        if let Err(e) = self.vcpus.shutdown(SHUTDOWN_TIMEOUT) {
            log::warn!("stopping vCPUs: {e}");
        }
        let drained = self.console.drain(SERIAL_DRAIN_TIMEOUT);
        let dropped = self.console.dropped();
        if dropped > 0 || !drained {
            let rest = if drained {
                ""
            } else {
                "; what was still buffered is dropped too (the sink took nothing for 2 s)"
            };
            log::warn!(
                "serial output: {dropped} byte(s) dropped because the sink did not keep up{rest}"
            );
        }
    }

    /// A sender for asking the main loop to stop the VM ([`VmEvent::Shutdown`]).
    pub fn event_sender(&self) -> Sender<VmEvent> {
        self.events_tx.clone()
    }

    /// Pauses every vCPU, failing with the missing vCPUs named after `timeout` (plus the
    /// core's one grace period, [`vcpu_sync::PAUSE_GRACE`]).
    ///
    /// Contract: a pause that fails does not stay in force; after an error the VM is
    /// running (or going down). On a timeout the pause is withdrawn, so the vCPUs that
    /// had acknowledged run again, also when the VM had been paused before this call; an
    /// interrupted pause was ended by a concurrent resume; a VM with a failed vCPU
    /// ([`Error::Guest`], the vCPU named) is not reported as paused, since a dead vCPU
    /// counts as acknowledged in the core.
    pub fn pause(&self, timeout: Duration) -> Result<(), Error> {
        #[cfg(feature = "legacy-wide-lock")]
        let r = self
            .bus
            .hotplug()
            .legacy_locked(|| self.vcpus.pause(timeout));
        #[cfg(not(feature = "legacy-wide-lock"))]
        let r = self.vcpus.pause(timeout);
        if let Err(vcpu_sync::PauseError::Timeout(t)) = &r {
            self.vcpus.resume();
            log::warn!("pause withdrawn after its timeout, the VM runs again: {t}");
        }
        r?;
        if let Some(msg) = self.bus.failure() {
            self.vcpus.resume();
            return Err(Error::Guest(msg.to_string()));
        }
        Ok(())
    }

    /// [`Vm::pause`] that waits at most `patience`: `Ok(true)` paused, `Ok(false)` a pause is
    /// under way but not every vCPU has acknowledged yet ([`Vm::pause`] joins and finishes
    /// it; [`Vm::resume`] withdraws it). The control API answers quick pauses in place with
    /// it. With `legacy-wide-lock` it never tries: the negative control must block where
    /// the old design did.
    pub fn try_pause(&self, patience: Duration) -> Result<bool, Error> {
        #[cfg(feature = "legacy-wide-lock")]
        {
            let _ = patience;
            Ok(false)
        }
        #[cfg(not(feature = "legacy-wide-lock"))]
        {
            if !self.vcpus.try_pause(patience)? {
                return Ok(false);
            }
            if let Some(msg) = self.bus.failure() {
                self.vcpus.resume();
                return Err(Error::Guest(msg.to_string()));
            }
            Ok(true)
        }
    }

    /// Whether the VM is on its way down (a poweroff, reboot or shutdown was decided).
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Ends a pause; false if the VM was not paused.
    pub fn resume(&self) -> bool {
        self.vcpus.resume()
    }

    /// Changes the number of present vCPUs to `n`, then raises the GED so the guest scans:
    ///
    /// * growing first withdraws pending removals the guest has not seen yet (lowest
    ///   first; one whose `removing` the guest has read cannot be withdrawn), then
    ///   hot-adds the lowest absent slots;
    /// * shrinking asks the guest to give up the highest present slots; the guest ejects
    ///   them (`_EJ0`) and the main loop reaps them.
    ///
    /// Slots the guest is already ejecting are not reused until reaped. Resizing to the
    /// current count changes nothing. Errors leave the VM untouched (see [`ResizeError`]).
    /// VMM threads only: on a vCPU thread it fails at once with
    /// [`ResizeError::Vcpu`]`(`[`vcpu_sync::CoreError::OnVcpuThread`]`)`.
    pub fn resize(&self, n: usize) -> Result<ResizeOutcome, ResizeError> {
        if n == 0 {
            return Err(ResizeError::Zero);
        }
        if n > self.max_vcpus {
            return Err(ResizeError::AboveMax {
                requested: n,
                max: self.max_vcpus,
            });
        }
        // Outside the lock: a join, and on a vCPU thread this fails at once (VMM-side only),
        // before the lock is taken.
        self.vcpus.reap()?;
        let outcome = self.resize_locked(n)?;
        if !outcome.added.is_empty() || !outcome.removing.is_empty() {
            log::info!(
                "resize to {n}: adding {:?}, removing {:?}, withdrawn removals {:?}",
                outcome.added,
                outcome.removing,
                outcome.cancelled
            );
            self.ged.notify_cpu_change();
        }
        Ok(outcome)
    }

    /// The part of [`Vm::resize`] that plans from a snapshot and applies it, under
    /// `resize_lock`.
    fn resize_locked(&self, n: usize) -> Result<ResizeOutcome, ResizeError> {
        let _resizing = self.resize_lock.lock().unwrap_or_else(|p| p.into_inner());
        if self.stopping.load(Ordering::SeqCst) {
            return Err(ResizeError::ShuttingDown);
        }
        let reports = self.vcpus.reports();
        let present = |r: &&SlotReport| matches!(r.life, Life::Starting | Life::Active);
        let staying: Vec<usize> = reports
            .iter()
            .filter(present)
            .filter(|r| !r.remove_requested)
            .map(|r| r.index)
            .collect();
        // Removals the guest has not scanned yet can be withdrawn; once it has seen one
        // (`removing` cleared, request still set) it is offlining the CPU and will eject.
        let withdrawable: Vec<usize> = reports
            .iter()
            .filter(present)
            .filter(|r| r.remove_requested && r.removing)
            .map(|r| r.index)
            .collect();
        let free: Vec<usize> = reports
            .iter()
            .filter(|r| r.life == Life::Absent)
            .map(|r| r.index)
            .collect();
        let mut outcome = ResizeOutcome {
            cpus: n,
            ..ResizeOutcome::default()
        };
        if n > staying.len() {
            let need = n - staying.len();
            // Refused: the slots neither staying nor free, less those in `except`.
            let busy = |except: &[usize]| ResizeError::SlotsBusy {
                requested: n,
                free: free.len(),
                busy: reports
                    .iter()
                    .filter(|r| r.life != Life::Absent && !staying.contains(&r.index))
                    .filter(|r| !except.contains(&r.index))
                    .map(|r| r.index)
                    .collect(),
            };
            let cancel = need.min(withdrawable.len());
            if free.len() < need - cancel {
                return Err(busy(&withdrawable));
            }
            // A withdrawal fails once the guest has read `removing` (it may be offlining
            // the CPU to eject it): take the next withdrawable slot, then free ones.
            for &i in &withdrawable {
                if outcome.cancelled.len() == cancel {
                    break;
                }
                if self.vcpus.cancel_removal(i)? {
                    outcome.cancelled.push(i);
                }
            }
            let add = need - outcome.cancelled.len();
            if free.len() < add {
                // Put back what was withdrawn (the guest has not seen those removals), so
                // the refusal leaves the VM as it was.
                for &i in &outcome.cancelled {
                    self.vcpus.request_removal(i)?;
                }
                return Err(busy(&[]));
            }
            for &i in &free[..add] {
                self.vcpus.hot_add(i)?;
                outcome.added.push(i);
            }
        } else {
            for &i in staying.iter().rev().take(staying.len() - n) {
                self.vcpus.request_removal(i)?;
                outcome.removing.push(i);
            }
        }
        Ok(outcome)
    }

    /// Per-slot state and VM facts.
    pub fn info(&self) -> VmInfo {
        let reports = self.vcpus.reports();
        VmInfo {
            boot_vcpus: self.boot_vcpus,
            max_vcpus: self.max_vcpus,
            active_vcpus: self.vcpus.active_count(),
            memory_size: self.memory_size,
            paused: self.vcpus.is_paused(),
            ged_notifications: self.ged.notifications(),
            ged_notification_held: self.ged.is_held(),
            pending_insertions: reports
                .iter()
                .filter(|r| r.inserting)
                .map(|r| r.index)
                .collect(),
            pending_removals: reports
                .iter()
                .filter(|r| r.remove_requested || matches!(r.life, Life::Stopping | Life::Exited))
                .map(|r| r.index)
                .collect(),
            stats: StatsInfo::new(
                self.vcpus.stats(),
                [
                    self.bus.hotplug().pauses_during_access(),
                    self.bus.hotplug().pauses_during_eject(),
                    self.pauses_during_reap.load(Ordering::Relaxed),
                ],
            ),
            vcpus: reports.iter().map(VcpuInfo::from).collect(),
        }
    }

    /// Core counters (pauses, re-kicks, ejects).
    pub fn stats(&self) -> Stats {
        self.vcpus.stats()
    }

    /// The core's vCPU handle.
    pub fn vcpus(&self) -> &Vcpus<KvmBackend> {
        &self.vcpus
    }

    /// Bytes typed on the user's terminal, for the guest's serial console; returns how
    /// many the UART took (see [`devices::serial::RX_CAPACITY`]).
    pub fn serial_input(&self, bytes: &[u8]) -> usize {
        self.bus.serial_input(bytes)
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// The `--api-socket` path, for the control API.
    pub fn api_socket(&self) -> Option<&std::path::Path> {
        self.api_socket.as_deref()
    }
}
