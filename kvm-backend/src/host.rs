//! What kind of KVM this host offers.
//!
//! `/dev/kvm` is not always hardware virtualization: on a host that is itself a guest
//! without nested VMX/SVM, the `kvm-pvm` module (Pagetable-based Virtual Machine) provides
//! the KVM API, runs guest user mode natively and guest kernel (ring-0) code through KVM's
//! instruction emulator. That emulator lacks some instructions (`cmpxchg16b`,
//! `xsave`/`xrstor[s]`, `popcnt`, `ldmxcsr`, `int3`, `fwait`, ...) and is slow, so the
//! backend hides the CPU features that lead Linux to those instructions (`cpuid.rs`)
//! and finishes `int3`/`fwait` itself (`emulation.rs`), and the VMM adds kernel
//! parameters that avoid slow or unsupported paths. The CPUID masking is best effort: on
//! kvm-pvm the guest kernel also gets the *host's* CPUID values (observed: XSAVE, POPCNT,
//! AVX-512 reported although KVM_SET_CPUID2 hid them), which is why the VMM's
//! `clearcpuid=` parameter is what actually keeps Linux off those instructions.

use std::path::Path;
use std::sync::OnceLock;

/// Where the PVM module shows up when it is loaded.
const KVM_PVM_SYSFS: &str = "/sys/module/kvm_pvm";

/// True if `/dev/kvm` is provided by `kvm-pvm`, i.e. guest ring-0 code is emulated.
/// Probed once per process (and logged once).
pub fn is_kvm_pvm() -> bool {
    static PVM: OnceLock<bool> = OnceLock::new();
    *PVM.get_or_init(|| {
        let pvm = Path::new(KVM_PVM_SYSFS).exists();
        if pvm {
            log::info!(
                "host KVM is kvm-pvm ({KVM_PVM_SYSFS} exists): guest kernel code is emulated; \
                 hiding CX16, XSAVE and XSAVE-dependent CPU features"
            );
        }
        pvm
    })
}
