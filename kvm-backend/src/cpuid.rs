//! Per-vCPU CPUID: KVM's supported set, plus a topology that matches the VMM's model
//! (one package, `max_vcpus` cores, one thread per core, APIC ID == vCPU index), so
//! Linux numbers hot-added CPUs the way the ACPI tables do.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

/// Leaf 1 EDX: hyper-threading / multi-core package (makes EBX[23:16] meaningful).
const LEAF1_EDX_HTT: u32 = 1 << 28;
/// Leaf 1 ECX: TSC-deadline timer mode of the LAPIC (KVM emulates it when the cap exists).
const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
/// Leaf 1 ECX: running under a hypervisor.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 6 EAX: APIC timer always running (no C-state stop), the only bit worth keeping.
const LEAF6_EAX_ARAT: u32 = 1 << 2;

/// Leaf 1 ECX features an instruction-emulating host (`kvm-pvm`) cannot run in guest ring 0
/// or that need the XSAVE state Linux could then not manage: FMA (12), CMPXCHG16B (13),
/// XSAVE (26), OSXSAVE (27), AVX (28), F16C (29).
const LEAF1_ECX_EMULATOR_HIDDEN: u32 =
    (1 << 12) | (1 << 13) | (1 << 26) | (1 << 27) | (1 << 28) | (1 << 29);
/// Leaf 7 subleaf 0 EBX: AVX2 (5) and the AVX-512 family (16, 17, 21, 26, 27, 28, 30, 31),
/// all of which need XSAVE-managed state.
const LEAF7_EBX_XSAVE_DEPENDENT: u32 = (1 << 5)
    | (1 << 16)
    | (1 << 17)
    | (1 << 21)
    | (1 << 26)
    | (1 << 27)
    | (1 << 28)
    | (1 << 30)
    | (1 << 31);
/// Leaf 7 subleaf 0 ECX: AVX512_VBMI (1), PKU (3), OSPKE (4), AVX512_VBMI2 (6), CET_SS (7),
/// VAES (9), VPCLMULQDQ (10), AVX512_VNNI (11), AVX512_BITALG (12), AVX512_VPOPCNTDQ (14).
const LEAF7_ECX_XSAVE_DEPENDENT: u32 = (1 << 1)
    | (1 << 3)
    | (1 << 4)
    | (1 << 6)
    | (1 << 7)
    | (1 << 9)
    | (1 << 10)
    | (1 << 11)
    | (1 << 12)
    | (1 << 14);
/// Leaf 7 subleaf 0 EDX: AVX512_4VNNIW (2), AVX512_4FMAPS (3), AVX512_VP2INTERSECT (8),
/// CET_IBT (20), AMX_BF16 (22), AVX512_FP16 (23), AMX_TILE (24), AMX_INT8 (25).
const LEAF7_EDX_XSAVE_DEPENDENT: u32 =
    (1 << 2) | (1 << 3) | (1 << 8) | (1 << 20) | (1 << 22) | (1 << 23) | (1 << 24) | (1 << 25);
/// Leaf 7 subleaf 1 EAX: AVX_VNNI (4), AVX512_BF16 (5), AVX_IFMA (23).
const LEAF7_1_EAX_XSAVE_DEPENDENT: u32 = (1 << 4) | (1 << 5) | (1 << 23);

/// x2APIC topology level types (leaf 0xB/0x1F ECX[15:8]).
const LEVEL_INVALID: u32 = 0;
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// The topology one vCPU reports.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Topology {
    /// This vCPU's index == APIC ID.
    pub(crate) apic_id: u32,
    /// Cores in the (single) package.
    pub(crate) max_vcpus: u32,
}

impl Topology {
    /// Bits of the APIC ID that number cores: the package ID starts above them.
    fn core_bits(self) -> u32 {
        self.max_vcpus.max(1).next_power_of_two().trailing_zeros()
    }

    /// Core IDs the package reserves: `max_vcpus` rounded up to a power of two, which is
    /// what Linux derives from the shift width as well.
    fn reserved_cores(self) -> u32 {
        1 << self.core_bits()
    }
}

/// Returns `base` (KVM_GET_SUPPORTED_CPUID) adjusted for one vCPU.
///
/// With `emulated_kernel` (the host is `kvm-pvm`, see [`crate::host`]) the features whose
/// instructions that host's emulator cannot execute in guest ring 0 are hidden as well
/// (see [`hide_for_emulator`]). This is done only there: on hardware KVM these features
/// work and guests (and their applications) are better off seeing them.
pub(crate) fn for_vcpu(
    base: &CpuId,
    topo: Topology,
    tsc_deadline: bool,
    emulated_kernel: bool,
) -> Result<CpuId, vmm_sys_util::fam::Error> {
    let mut cpuid = base.clone();
    let max_basic = cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == 0)
        .map_or(0, |e| e.eax);
    let has_1f = cpuid.as_slice().iter().any(|e| e.function == 0x1f);

    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => leaf_1(e, topo, tsc_deadline),
            4 => leaf_4(e, topo),
            6 => {
                e.eax &= LEAF6_EAX_ARAT;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            // No architectural PMU: a guest probing counters KVM (or a nested host) may
            // not back faithfully gains nothing here.
            0xa => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            0xb | 0x1f => x2apic_level(e, topo),
            _ => {}
        }
    }

    if emulated_kernel {
        hide_for_emulator(&mut cpuid);
    }

    // Make sure the levels Linux needs exist (KVM may list fewer subleaves).
    if max_basic >= 0xb {
        ensure_levels(&mut cpuid, 0xb, topo)?;
    }
    if has_1f {
        ensure_levels(&mut cpuid, 0x1f, topo)?;
    }
    Ok(cpuid)
}

fn leaf_1(e: &mut kvm_cpuid_entry2, topo: Topology, tsc_deadline: bool) {
    // EBX: [31:24] initial APIC ID, [23:16] addressable logical processors in the package,
    // [15:0] (CLFLUSH size, brand index) kept from the host.
    let logical = topo.max_vcpus.min(255);
    e.ebx = (e.ebx & 0xffff) | (logical << 16) | ((topo.apic_id & 0xff) << 24);
    e.edx |= LEAF1_EDX_HTT;
    e.ecx |= LEAF1_ECX_HYPERVISOR;
    if tsc_deadline {
        e.ecx |= LEAF1_ECX_TSC_DEADLINE;
    }
}

/// Hides what Linux would use through instructions KVM's emulator lacks:
/// * CMPXCHG16B (SLUB's lockless freelists and `this_cpu_cmpxchg_double`);
/// * XSAVE and OSXSAVE, so the FPU code uses FXSAVE/FXRSTOR instead of
///   `xsave*`/`xrstor*`; and with them every feature whose state lives in XSAVE
///   components (AVX, AVX2, AVX-512, AMX, PKU, CET, ...), which a guest without XSAVE
///   could not context-switch; leaf 0xD (the XSAVE component list) is emptied.
///
/// Linux applies its own feature dependencies only when *it* clears a feature, so the
/// dependents are cleared here rather than left for the guest to notice.
fn hide_for_emulator(cpuid: &mut CpuId) {
    for e in cpuid.as_mut_slice() {
        match (e.function, e.index) {
            (1, _) => e.ecx &= !LEAF1_ECX_EMULATOR_HIDDEN,
            (7, 0) => {
                e.ebx &= !LEAF7_EBX_XSAVE_DEPENDENT;
                e.ecx &= !LEAF7_ECX_XSAVE_DEPENDENT;
                e.edx &= !LEAF7_EDX_XSAVE_DEPENDENT;
            }
            (7, 1) => e.eax &= !LEAF7_1_EAX_XSAVE_DEPENDENT,
            (0xd, _) => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            _ => {}
        }
    }
}

fn leaf_4(e: &mut kvm_cpuid_entry2, topo: Topology) {
    let cache_type = e.eax & 0x1f;
    if cache_type == 0 {
        return; // terminating subleaf
    }
    let level = (e.eax >> 5) & 0x7;
    // [31:26] cores per package - 1 (6 bits); [25:14] logical processors sharing this
    // cache - 1 (12 bits): L1/L2 are per core (one thread each), L3 is package-wide.
    let cores_m1 = (topo.reserved_cores().min(64) - 1) & 0x3f;
    let sharing_m1 = if level >= 3 {
        (topo.reserved_cores() - 1).min(0xfff)
    } else {
        0
    };
    e.eax = (e.eax & 0x3fff) | (sharing_m1 << 14) | (cores_m1 << 26);
}

/// Fills one subleaf of leaf 0xB/0x1F: SMT level (1 thread per core), core level
/// (`max_vcpus` cores), then the invalid level that ends the list.
fn x2apic_level(e: &mut kvm_cpuid_entry2, topo: Topology) {
    let (eax, ebx, ecx) = match e.index {
        0 => (0, 1, LEVEL_SMT << 8),
        1 => (
            topo.core_bits(),
            topo.max_vcpus & 0xffff,
            (LEVEL_CORE << 8) | 1,
        ),
        n => (0, 0, (LEVEL_INVALID << 8) | (n & 0xff)),
    };
    e.eax = eax;
    e.ebx = ebx;
    e.ecx = ecx;
    e.edx = topo.apic_id;
    e.flags |= KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
}

fn ensure_levels(
    cpuid: &mut CpuId,
    function: u32,
    topo: Topology,
) -> Result<(), vmm_sys_util::fam::Error> {
    for index in 0..3 {
        let present = cpuid
            .as_slice()
            .iter()
            .any(|e| e.function == function && e.index == index);
        if !present {
            let mut e = kvm_cpuid_entry2 {
                function,
                index,
                ..Default::default()
            };
            x2apic_level(&mut e, topo);
            cpuid.push(e)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> CpuId {
        let entries = [
            kvm_cpuid_entry2 {
                function: 0,
                eax: 0xd,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 1,
                ebx: 0x0008_0800,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 4,
                index: 0,
                eax: 0x121, // L1 data
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 4,
                index: 3,
                eax: 0x163, // L3 unified
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                index: 0,
                ..Default::default()
            },
        ];
        CpuId::from_entries(&entries).expect("test CPUID fits")
    }

    fn entry(c: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *c.as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .expect("entry present")
    }

    #[test]
    fn leaf1_ids_and_bits() {
        let c = for_vcpu(
            &base(),
            Topology {
                apic_id: 5,
                max_vcpus: 6,
            },
            true,
            false,
        )
        .expect("fits");
        let e = entry(&c, 1, 0);
        assert_eq!(e.ebx >> 24, 5);
        assert_eq!((e.ebx >> 16) & 0xff, 6);
        assert_eq!(e.ebx & 0xffff, 0x0800);
        assert_ne!(e.edx & LEAF1_EDX_HTT, 0);
        assert_ne!(e.ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_ne!(e.ecx & LEAF1_ECX_TSC_DEADLINE, 0);
    }

    #[test]
    fn x2apic_topology_levels() {
        let c = for_vcpu(
            &base(),
            Topology {
                apic_id: 3,
                max_vcpus: 6,
            },
            false,
            false,
        )
        .expect("fits");
        let smt = entry(&c, 0xb, 0);
        assert_eq!((smt.eax, smt.ebx, (smt.ecx >> 8) & 0xff), (0, 1, LEVEL_SMT));
        let core = entry(&c, 0xb, 1);
        assert_eq!(core.eax & 0x1f, 3); // 6 cores -> 8 IDs -> 3 bits
        assert_eq!(core.ebx & 0xffff, 6);
        assert_eq!((core.ecx >> 8) & 0xff, LEVEL_CORE);
        let end = entry(&c, 0xb, 2);
        assert_eq!((end.ecx >> 8) & 0xff, LEVEL_INVALID);
        for sub in 0..3 {
            assert_eq!(entry(&c, 0xb, sub).edx, 3);
        }
    }

    #[test]
    fn leaf4_core_and_sharing_counts() {
        let c = for_vcpu(
            &base(),
            Topology {
                apic_id: 0,
                max_vcpus: 6,
            },
            false,
            false,
        )
        .expect("fits");
        let l1 = entry(&c, 4, 0);
        assert_eq!(l1.eax >> 26, 7);
        assert_eq!((l1.eax >> 14) & 0xfff, 0);
        assert_eq!(l1.eax & 0x3fff, 0x121);
        let l3 = entry(&c, 4, 3);
        assert_eq!(l3.eax >> 26, 7);
        assert_eq!((l3.eax >> 14) & 0xfff, 7);
    }

    #[test]
    fn emulated_kernel_hides_cx16_and_xsave_family() {
        let mut b = base();
        for e in b.as_mut_slice() {
            if e.function == 1 {
                e.ecx = !LEAF1_ECX_HYPERVISOR;
            }
        }
        b.push(kvm_cpuid_entry2 {
            function: 7,
            index: 0,
            ebx: u32::MAX,
            ecx: u32::MAX,
            edx: u32::MAX,
            ..Default::default()
        })
        .unwrap();
        b.push(kvm_cpuid_entry2 {
            function: 0xd,
            index: 0,
            eax: 0x2e7,
            ebx: 0xa88,
            ecx: 0xa88,
            ..Default::default()
        })
        .unwrap();
        let topo = Topology {
            apic_id: 0,
            max_vcpus: 2,
        };
        let hw = for_vcpu(&b, topo, false, false).expect("fits");
        assert_ne!(
            entry(&hw, 1, 0).ecx & (1 << 13),
            0,
            "hardware KVM keeps CX16"
        );
        assert_eq!(entry(&hw, 0xd, 0).eax, 0x2e7);

        let pvm = for_vcpu(&b, topo, false, true).expect("fits");
        let l1 = entry(&pvm, 1, 0);
        for bit in [12, 13, 26, 27, 28, 29] {
            assert_eq!(l1.ecx & (1 << bit), 0, "leaf 1 ECX bit {bit}");
        }
        assert_ne!(l1.ecx & 1, 0, "SSE3 stays");
        assert_ne!(l1.ecx & LEAF1_ECX_HYPERVISOR, 0);
        let l7 = entry(&pvm, 7, 0);
        assert_eq!(l7.ebx & (1 << 5), 0, "AVX2");
        assert_eq!(l7.ebx & (1 << 16), 0, "AVX512F");
        assert_ne!(l7.ebx & (1 << 0), 0, "FSGSBASE stays");
        assert_eq!(l7.ecx & (1 << 3), 0, "PKU");
        assert_eq!(
            entry(&pvm, 0xd, 0),
            kvm_cpuid_entry2 {
                function: 0xd,
                ..Default::default()
            }
        );
    }

    #[test]
    fn single_vcpu_topology() {
        let c = for_vcpu(
            &base(),
            Topology {
                apic_id: 0,
                max_vcpus: 1,
            },
            false,
            false,
        )
        .expect("fits");
        assert_eq!(entry(&c, 0xb, 1).eax & 0x1f, 0);
        assert_eq!(entry(&c, 4, 0).eax >> 26, 0);
    }
}
