//! vCPU register state at creation: what every vCPU needs (MSRs, FPU, LAPIC LINTs) and the
//! 64-bit boot state of the BSP (GDT, IDT, identity page tables, sregs, regs).

use crate::error::Error;
use crate::layout::{BOOT_GDT, BOOT_IDT, BOOT_STACK, PDE, PDE_COUNT, PDPTE, PML4};
use crate::BootEntry;
use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

// MSR indices (Intel SDM vol. 4).
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

const MISC_ENABLE_FAST_STRING: u64 = 1;
const MTRR_ENABLE: u64 = 1 << 11;
const MTRR_TYPE_WB: u64 = 6;

// LAPIC register offsets and LVT delivery modes.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

// Control-register bits.
const CR0_PE: u64 = 1;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

// Page-table entry bits.
const PTE_PRESENT: u64 = 1;
const PTE_WRITABLE: u64 = 1 << 1;
const PDE_PAGE_SIZE: u64 = 1 << 7;

/// Boot GDT: flags word = G, D/B, L, AVL nibble (bits 15:12) and the access byte (7:0).
const GDT_NULL: u64 = 0;
const GDT_CODE64: u64 = gdt_entry(0xa09b, 0, 0xfffff);
const GDT_DATA: u64 = gdt_entry(0xc093, 0, 0xfffff);
const GDT_TSS: u64 = gdt_entry(0x008b, 0, 0x67);
const BOOT_GDT_TABLE: [u64; 4] = [GDT_NULL, GDT_CODE64, GDT_DATA, GDT_TSS];
const SEL_CODE: u16 = 1;
const SEL_DATA: u16 = 2;
const SEL_TSS: u16 = 3;

/// Encodes a segment descriptor.
const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let flags = flags as u64;
    let base = base as u64;
    let limit = limit as u64;
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0xf_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// Decodes a descriptor into KVM's segment form, as the CPU would load it from slot `index`.
fn segment(entry: u64, index: u16) -> kvm_segment {
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    let base = ((entry >> 16) & 0x00ff_ffff) | (((entry >> 56) & 0xff) << 24);
    let raw_limit = ((entry & 0xffff) | (((entry >> 48) & 0xf) << 16)) as u32;
    let g = bit(55);
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let present = bit(47);
    kvm_segment {
        base,
        limit,
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g,
        avl: bit(52),
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// MSRs Linux expects to find sane at boot (syscall MSRs cleared, TSC 0 so KVM
/// synchronizes it across vCPUs, fast strings on, MTRRs enabled with write-back default).
pub(crate) fn set_msrs(vcpu: &VcpuFd, index: usize) -> Result<(), Error> {
    let wanted = [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_TYPE_WB),
    ];
    let entries: Vec<kvm_msr_entry> = wanted
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|source| Error::FamList {
        index,
        what: "MSR",
        source,
    })?;
    let applied = vcpu
        .set_msrs(&msrs)
        .map_err(Error::vcpu(index, "KVM_SET_MSRS"))?;
    if applied != wanted.len() {
        return Err(Error::MsrRejected {
            index,
            applied,
            wanted: wanted.len(),
            rejected: wanted.get(applied).map_or(0, |w| w.0),
        });
    }
    Ok(())
}

/// x87 control word and MXCSR at their architectural reset values (all exceptions masked).
pub(crate) fn set_fpu(vcpu: &VcpuFd, index: usize) -> Result<(), Error> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu)
        .map_err(Error::vcpu(index, "KVM_SET_FPU"))
}

/// LINT0 = ExtINT (the legacy PIC reaches the CPU) and LINT1 = NMI, as firmware leaves
/// them and as Linux's virtual-wire mode expects.
pub(crate) fn set_lint(vcpu: &VcpuFd, index: usize) -> Result<(), Error> {
    let mut lapic = vcpu
        .get_lapic()
        .map_err(Error::vcpu(index, "KVM_GET_LAPIC"))?;
    for (reg, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let bytes = &mut lapic.regs[reg..reg + 4];
        let mut raw = [0u8; 4];
        for (dst, src) in raw.iter_mut().zip(bytes.iter()) {
            *dst = *src as u8;
        }
        let value = (u32::from_le_bytes(raw) & !0x700) | (mode << 8);
        for (dst, src) in bytes.iter_mut().zip(value.to_le_bytes()) {
            *dst = src as _;
        }
    }
    vcpu.set_lapic(&lapic)
        .map_err(Error::vcpu(index, "KVM_SET_LAPIC"))
}

fn write<T: vm_memory::ByteValued>(
    mem: &GuestMemoryMmap,
    what: &'static str,
    addr: u64,
    val: T,
) -> Result<(), Error> {
    mem.write_obj(val, GuestAddress(addr))
        .map_err(|source| Error::GuestMemory { what, addr, source })
}

/// GDT, empty IDT and an identity map of the first 1 GiB (2 MiB pages) in guest memory.
fn write_boot_tables(mem: &GuestMemoryMmap) -> Result<(), Error> {
    for (i, entry) in BOOT_GDT_TABLE.iter().enumerate() {
        write(mem, "GDT", BOOT_GDT + 8 * i as u64, *entry)?;
    }
    write(mem, "IDT", BOOT_IDT, 0u64)?;
    // Whole pages, so stale memory cannot add mappings.
    let zero_page = [0u8; 4096];
    for (what, addr) in [("PML4", PML4), ("PDPT", PDPTE)] {
        mem.write_slice(&zero_page, GuestAddress(addr))
            .map_err(|source| Error::GuestMemory { what, addr, source })?;
    }
    write(mem, "PML4", PML4, PDPTE | PTE_PRESENT | PTE_WRITABLE)?;
    // Four page directories identity-map the whole 32-bit space with 2 MiB pages, so a
    // minimal guest can reach the MMIO devices in the hole below 4 GiB without building
    // its own tables (Linux replaces all of this early anyway).
    let mut pd = [0u8; 4096];
    for dir in 0..PDE_COUNT {
        let pd_addr = PDE + dir * 0x1000;
        write(
            mem,
            "PDPT",
            PDPTE + dir * 8,
            pd_addr | PTE_PRESENT | PTE_WRITABLE,
        )?;
        for (i, chunk) in pd.chunks_exact_mut(8).enumerate() {
            let entry =
                (((dir << 9) + i as u64) << 21) | PDE_PAGE_SIZE | PTE_PRESENT | PTE_WRITABLE;
            chunk.copy_from_slice(&entry.to_le_bytes());
        }
        mem.write_slice(&pd, GuestAddress(pd_addr))
            .map_err(|source| Error::GuestMemory {
                what: "page directory",
                addr: pd_addr,
                source,
            })?;
    }
    Ok(())
}

/// Puts the BSP in 64-bit mode at `boot.entry` with RSI = `boot.zero_page` (the Linux
/// 64-bit boot protocol).
pub(crate) fn setup_bsp(
    vcpu: &VcpuFd,
    index: usize,
    mem: &GuestMemoryMmap,
    boot: &BootEntry,
) -> Result<(), Error> {
    write_boot_tables(mem)?;
    setup_long_mode(vcpu, index, boot)
}

/// The register half of [`setup_bsp`]: 64-bit mode on the boot GDT and page tables (which
/// must already be in guest memory), RIP = `boot.entry`, RSP = the boot stack.
pub(crate) fn setup_long_mode(vcpu: &VcpuFd, index: usize, boot: &BootEntry) -> Result<(), Error> {
    let mut sregs = vcpu
        .get_sregs()
        .map_err(Error::vcpu(index, "KVM_GET_SREGS"))?;
    let code = segment(GDT_CODE64, SEL_CODE);
    let data = segment(GDT_DATA, SEL_DATA);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(GDT_TSS, SEL_TSS);
    sregs.gdt.base = BOOT_GDT;
    sregs.gdt.limit = (std::mem::size_of_val(&BOOT_GDT_TABLE) - 1) as u16;
    sregs.idt.base = BOOT_IDT;
    sregs.idt.limit = 7;
    sregs.cr3 = PML4;
    sregs.cr4 |= CR4_PAE;
    sregs.cr0 |= CR0_PE | CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
    vcpu.set_sregs(&sregs)
        .map_err(Error::vcpu(index, "KVM_SET_SREGS"))?;

    let regs = kvm_regs {
        rflags: 0x2,
        rip: boot.entry.0,
        rsp: BOOT_STACK,
        rbp: BOOT_STACK,
        rsi: boot.zero_page.0,
        ..Default::default()
    };
    vcpu.set_regs(&regs)
        .map_err(Error::vcpu(index, "KVM_SET_REGS"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_match_known_encodings() {
        assert_eq!(GDT_CODE64, 0x00af_9b00_0000_ffff);
        assert_eq!(GDT_DATA, 0x00cf_9300_0000_ffff);
        assert_eq!(GDT_TSS, 0x0000_8b00_0000_0067);
    }

    #[test]
    fn segments_decode() {
        let cs = segment(GDT_CODE64, SEL_CODE);
        assert_eq!(
            (cs.selector, cs.type_, cs.l, cs.db, cs.g, cs.s, cs.present),
            (8, 0xb, 1, 0, 1, 1, 1)
        );
        assert_eq!(cs.limit, 0xffff_ffff);
        let ds = segment(GDT_DATA, SEL_DATA);
        assert_eq!((ds.selector, ds.type_, ds.db, ds.l), (16, 3, 1, 0));
        let tr = segment(GDT_TSS, SEL_TSS);
        assert_eq!((tr.selector, tr.type_, tr.s, tr.limit), (24, 0xb, 0, 0x67));
        assert_eq!(segment(GDT_NULL, 0).unusable, 1);
    }
}
