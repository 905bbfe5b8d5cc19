//! KVM_EXIT_INTERNAL_ERROR: a readable diagnosis, and recovery from the one case that is
//! both common and simple to finish in userspace.
//!
//! KVM reports `KVM_INTERNAL_ERROR_EMULATION` when its instruction emulator cannot handle
//! an instruction it had to emulate. On hardware-assisted KVM that is rare, but on hosts
//! whose `/dev/kvm` emulates guest ring-0 code (`kvm-pvm`, see [`crate::host`]) it hits
//! any instruction that emulator lacks. The kernel params the VMM adds there (and the
//! CPUID masking in [`crate::cpuid`]) keep Linux off most of those; what remains is
//! `int3` (0xCC), which Linux executes on purpose at boot (`int3_selftest()`) and whenever
//! a breakpoint-based text patch races with execution, and `fwait` (0x9B) when a task's
//! FPU state is dropped. `int3` is a #BP trap whose saved RIP is the address after the
//! instruction, so it is finished here by moving RIP past it and injecting vector 3;
//! `fwait` is stepped over. Anything else stays fatal, with the RIP and instruction bytes
//! in the message.

use kvm_bindings::kvm_regs;
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// `KVM_INTERNAL_ERROR_EMULATION`.
const SUBERROR_EMULATION: u32 = 1;
/// `KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES` in `emulation_failure.flags`.
const FLAG_INSN_BYTES: u64 = 1;
/// The one-byte breakpoint instruction.
const INT3: u8 = 0xcc;
/// `fwait`: waits for the x87 unit and raises pending unmasked x87 exceptions.
const FWAIT: u8 = 0x9b;
/// #BP.
const BP_VECTOR: u8 = 3;
/// #UD, which KVM queues when its emulator gives up on a CPL-0 instruction.
const UD_VECTOR: u8 = 6;
/// Longest x86 instruction.
const MAX_INSN: usize = 15;

/// What the run loop should do after an internal-error exit.
pub(crate) enum Outcome {
    /// The instruction was completed here; run the vCPU again.
    Resume,
    /// Not recoverable; the text says what the vCPU was doing.
    Fatal(String),
}

/// The instruction bytes at the vCPU's RIP: those KVM reported, else read from guest
/// memory through the vCPU's own page tables (only up to the end of the page).
fn insn_bytes(vcpu: &VcpuFd, mem: &GuestMemoryMmap, rip: u64, data: &[u64]) -> Vec<u8> {
    if data.len() >= 3 && data[0] & FLAG_INSN_BYTES != 0 {
        let size = (data[1] & 0xff) as usize;
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&data[1].to_le_bytes());
        raw[8..].copy_from_slice(&data[2].to_le_bytes());
        if (1..=MAX_INSN).contains(&size) {
            return raw[1..=size].to_vec();
        }
    }
    let Ok(t) = vcpu.translate_gva(rip) else {
        return Vec::new();
    };
    if t.valid == 0 {
        return Vec::new();
    }
    let in_page = (4096 - (t.physical_address & 0xfff)) as usize;
    let mut buf = vec![0u8; MAX_INSN.min(in_page)];
    match mem.read_slice(&mut buf, GuestAddress(t.physical_address)) {
        Ok(()) => buf,
        Err(_) => Vec::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Handles a `KVM_EXIT_INTERNAL_ERROR` of vCPU `index`.
pub(crate) fn on_internal_error(vcpu: &mut VcpuFd, index: usize, mem: &GuestMemoryMmap) -> Outcome {
    // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the active
    // member of the union (plain integers, any bit pattern is valid).
    let internal = unsafe { vcpu.get_kvm_run().__bindgen_anon_1.internal };
    let ndata = (internal.ndata as usize).min(internal.data.len());
    let data = &internal.data[..ndata];
    let regs = match vcpu.get_regs() {
        Ok(r) => r,
        Err(e) => {
            return Outcome::Fatal(format!(
                "vCPU {index}: KVM_EXIT_INTERNAL_ERROR, suberror {} data {data:x?} \
                 (KVM_GET_REGS failed: {e})",
                internal.suberror
            ))
        }
    };
    let bytes = insn_bytes(vcpu, mem, regs.rip, data);
    if internal.suberror == SUBERROR_EMULATION {
        let fix = match bytes.first() {
            Some(&INT3) => Some(("int3", inject_breakpoint(vcpu, regs))),
            Some(&FWAIT) => Some(("fwait", skip_one_byte(vcpu, regs))),
            _ => None,
        };
        match fix {
            Some((insn, Ok(()))) => {
                log::debug!(
                    "vCPU {index}: {insn} at {:#x} finished outside KVM's emulator",
                    regs.rip
                );
                return Outcome::Resume;
            }
            Some((insn, Err(e))) => {
                return Outcome::Fatal(format!(
                    "vCPU {index}: cannot finish {insn} at {:#x} outside KVM's emulator: {e}",
                    regs.rip
                ))
            }
            None => {}
        }
    }
    let what = if internal.suberror == SUBERROR_EMULATION {
        " (instruction emulation failed)"
    } else {
        ""
    };
    Outcome::Fatal(format!(
        "vCPU {index}: KVM_EXIT_INTERNAL_ERROR, suberror {}{what}, rip {:#x}, \
         instruction bytes [{}], data {data:x?}",
        internal.suberror,
        regs.rip,
        hex(&bytes)
    ))
}

/// Finishes a one-byte instruction with no architectural effect here (`fwait`: the x87
/// unit has no work in flight from the emulator's point of view; Linux only issues it to
/// discard delayed x87 exceptions, in `fpu__drop()`) by stepping over it and dropping the
/// #UD that KVM queued for the failed emulation.
fn skip_one_byte(vcpu: &VcpuFd, mut regs: kvm_regs) -> Result<(), kvm_ioctls::Error> {
    let mut events = vcpu.get_vcpu_events()?;
    regs.rip = regs.rip.wrapping_add(1);
    vcpu.set_regs(&regs)?;
    if events.exception.nr == UD_VECTOR {
        events.exception.injected = 0;
        events.exception.pending = 0;
        events.exception.has_error_code = 0;
        events.exception.error_code = 0;
        events.exception_has_payload = 0;
        events.exception_payload = 0;
        vcpu.set_vcpu_events(&events)?;
    }
    Ok(())
}

/// Completes an `int3` at `regs.rip` the way the CPU would: #BP with the saved RIP after
/// the instruction. Replaces whatever exception KVM queued for the failed emulation (it
/// queues #UD).
///
/// RIP is advanced here and the exception injected as already-delivered-by-hardware
/// (`injected`), so the guest's handler sees `regs->ip == int3 address + 1`. Verified on
/// kvm-pvm by Linux's `int3_selftest()`, which checks exactly that and BUGs otherwise.
/// (Hardware KVM executes `int3` natively and never reaches this path.)
fn inject_breakpoint(vcpu: &VcpuFd, mut regs: kvm_regs) -> Result<(), kvm_ioctls::Error> {
    let mut events = vcpu.get_vcpu_events()?;
    regs.rip = regs.rip.wrapping_add(1);
    vcpu.set_regs(&regs)?;
    events.exception.injected = 1;
    events.exception.pending = 0;
    events.exception.nr = BP_VECTOR;
    events.exception.has_error_code = 0;
    events.exception.error_code = 0;
    events.exception_has_payload = 0;
    events.exception_payload = 0;
    vcpu.set_vcpu_events(&events)
}
