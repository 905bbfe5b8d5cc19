//! The DSDT's AML: `_S5_`, the CPU-hotplug controller, one processor device per possible
//! CPU and the Generic Event Device, in the shape docs/design.md describes (the
//! same register layout as Cloud Hypervisor's controller, so the same AML shape applies).
//!
//! Equivalent ASL (N = max vCPUs, B = the controller's MMIO base):
//!
//! ```text
//! Name (_S5_, Package () { 5 })
//! Scope (\_SB_) {
//!   Device (PRES) {                         // the hotplug controller's registers
//!     Name (_HID, EisaId ("PNP0A06")) Name (_UID, "CPU Hotplug Controller")
//!     Name (_CRS, ResourceTemplate () { Memory32Fixed (ReadWrite, B, 12) })
//!     OperationRegion (PRST, SystemMemory, B, 12)
//!     Field (PRST, DWordAcc, NoLock, WriteAsZeros) { CSEL, 32 }
//!     Field (PRST, ByteAcc, NoLock, WriteAsZeros) { , 32, CPEN, 1, CINS, 1, CRMV, 1, CEJ0, 1, , 4 }
//!     Mutex (CPLK, 0)
//!   }
//!   Device (CPUS) {                         // processor container with the methods
//!     Name (_HID, "ACPI0010") Name (_CID, EisaId ("PNP0A05"))
//!     Method (CSTA, 1, Serialized) { Acquire (\_SB.PRES.CPLK, 0xFFFF)
//!       \_SB.PRES.CSEL = Arg0; Local0 = 0; If (\_SB.PRES.CPEN == 1) { Local0 = 0xF }
//!       Release (\_SB.PRES.CPLK); Return (Local0) }
//!     Method (CEJ0, 1, Serialized) { Acquire (..); CSEL = Arg0; CEJ0 = 1; Release (..) }
//!     Method (CTFY, 2) { If (Arg0 == 0) { Notify (C000, Arg1) } ... one per CPU }
//!     Method (CSCN, 0, Serialized) { Acquire (..); Local0 = 0
//!       While (Local0 < N) { CSEL = Local0
//!         If (CINS == 1) { CTFY (Local0, 1); CINS = 1 }     // device check: hot-add
//!         ElseIf (CRMV == 1) { CTFY (Local0, 3); CRMV = 1 } // eject request: hot-remove
//!         Local0 += 1 }
//!       Release (..) }
//!     Device (C000) { Name (_HID, "ACPI0007") Name (_UID, 0)
//!       Method (_STA) { Return (CSTA (0)) } Method (_MAT) { Return (Buffer () {MADT LAPIC entry}) }
//!       Method (_EJ0, 1) { CEJ0 (0) } }
//!     ...
//!   }
//!   Device (COM1) { Name (_HID, EisaId ("PNP0501")) Name (_UID, 0)
//!     Name (_CRS, ResourceTemplate () { IO (Decode16, 0x3F8, 0x3F8, 1, 8) Interrupt (..) { 4 } }) }
//!   Device (GED0) { Name (_HID, "ACPI0013") Name (_UID, 0)
//!     Name (_CRS, ResourceTemplate () { Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive) { GSI } })
//!     Method (_EVT, 1) { \_SB.CPUS.CSCN () } }
//! }
//! ```
//!
//! The controller (fields) and the methods live in two devices because the field `CEJ0` and
//! the method `CEJ0` would otherwise collide in one scope.

use super::madt::madt_local_apic;
use acpi_tables::aml::{
    self, Acquire, Add, BufferData, Device, EISAName, Else, Equal, Field, FieldAccessType,
    FieldEntry, FieldLockRule, FieldUpdateRule, If, Interrupt, LessThan, Local, Memory32Fixed,
    Method, MethodCall, Mutex, Name, Notify, OpRegion, OpRegionSpace, Package, Path, Release,
    ResourceTemplate, Return, Scope, Store, While, IO,
};
use acpi_tables::Aml;

/// Inputs of the DSDT.
#[derive(Clone, Copy, Debug)]
pub struct DsdtConfig {
    /// Possible CPUs (processor devices C000..).
    pub max_vcpus: usize,
    /// Base of the 12-byte hotplug controller window.
    pub hotplug_base: u32,
    /// Length of the window.
    pub hotplug_len: u32,
    /// The GED's interrupt (GSI).
    pub ged_gsi: u32,
    /// COM1's I/O base and ISA IRQ (declared so a hardware-reduced guest finds the UART).
    pub com1: (u16, u32),
    /// `_S5_` sleep type.
    pub s5_type: u8,
}

/// ACPI notification values (ACPI 6.5 table 5.166).
const NOTIFY_DEVICE_CHECK: u8 = 1;
const NOTIFY_EJECT_REQUEST: u8 = 3;

const MUTEX: &str = "\\_SB_.PRES.CPLK";
const CSEL: &str = "\\_SB_.PRES.CSEL";
const CPEN: &str = "\\_SB_.PRES.CPEN";
const CINS: &str = "\\_SB_.PRES.CINS";
const CRMV: &str = "\\_SB_.PRES.CRMV";
const CEJ0_FIELD: &str = "\\_SB_.PRES.CEJ0";

/// Four-character AML name of processor device `index` (C000..CFFF, hex like Cloud
/// Hypervisor's, so 4096 names fit).
pub fn cpu_device_name(index: usize) -> String {
    format!("C{index:03X}")
}

/// Serializes the DSDT body (AML without the table header).
pub fn dsdt_body(cfg: &DsdtConfig) -> Vec<u8> {
    let mut out = Vec::new();
    // \_S5_: the guest writes SLP_TYP = 5 with SLP_EN to the sleep control register.
    let s5_type = cfg.s5_type;
    Name::new(Path::new("_S5_"), &Package::new(vec![&s5_type])).to_aml_bytes(&mut out);

    let controller = controller_device(cfg);
    let cpus = cpus_device(cfg);
    let ged = ged_device(cfg);
    let com1 = com1_device(cfg);
    let children: Vec<&dyn Aml> = vec![&com1, &controller, &cpus, &ged];
    let mut sb_body = Vec::new();
    for c in children {
        c.to_aml_bytes(&mut sb_body);
    }
    out.extend(Scope::raw(Path::new("\\_SB_"), sb_body));
    out
}

/// An AML blob that is emitted verbatim (lets us build devices piecewise).
struct Raw(Vec<u8>);

impl Aml for Raw {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        sink.vec(&self.0);
    }
}

fn bytes_of(aml: &dyn Aml) -> Raw {
    let mut v = Vec::new();
    aml.to_aml_bytes(&mut v);
    Raw(v)
}

fn controller_device(cfg: &DsdtConfig) -> Raw {
    let hid = EISAName::new("PNP0A06");
    let uid = "CPU Hotplug Controller";
    let mem = Memory32Fixed::new(true, cfg.hotplug_base, cfg.hotplug_len);
    let crs = ResourceTemplate::new(vec![&mem]);
    let base = cfg.hotplug_base;
    let len = cfg.hotplug_len;
    bytes_of(&Device::new(
        Path::new("PRES"),
        vec![
            &Name::new(Path::new("_HID"), &hid),
            &Name::new(Path::new("_UID"), &uid),
            &Name::new(Path::new("_CRS"), &crs),
            &OpRegion::new(Path::new("PRST"), OpRegionSpace::SystemMemory, &base, &len),
            &Field::new(
                Path::new("PRST"),
                FieldAccessType::DWord,
                FieldLockRule::NoLock,
                FieldUpdateRule::WriteAsZeroes,
                vec![FieldEntry::Named(*b"CSEL", 32)],
            ),
            // WriteAsZeros matters: writing one command bit must not echo back the other
            // status bits (a read-modify-write would clear `inserting` while ejecting).
            &Field::new(
                Path::new("PRST"),
                FieldAccessType::Byte,
                FieldLockRule::NoLock,
                FieldUpdateRule::WriteAsZeroes,
                vec![
                    FieldEntry::Reserved(32),
                    FieldEntry::Named(*b"CPEN", 1),
                    FieldEntry::Named(*b"CINS", 1),
                    FieldEntry::Named(*b"CRMV", 1),
                    FieldEntry::Named(*b"CEJ0", 1),
                    FieldEntry::Reserved(4),
                ],
            ),
            &Mutex::new(Path::new("CPLK"), 0),
        ],
    ))
}

fn cpus_device(cfg: &DsdtConfig) -> Raw {
    let hid = "ACPI0010";
    let cid = EISAName::new("PNP0A05");
    let one = aml::ONE;
    let zero = aml::ZERO;
    let local0 = Local(0);

    // CSTA(n): select n, return 0xF if enabled.
    let fifteen: u8 = 0xf;
    let csta = bytes_of(&Method::new(
        Path::new("CSTA"),
        1,
        true,
        vec![
            &Acquire::new(Path::new(MUTEX), 0xffff),
            &Store::new(&Path::new(CSEL), &aml::Arg(0)),
            &Store::new(&local0, &zero),
            &If::new(
                &Equal::new(&Path::new(CPEN), &one),
                vec![&Store::new(&local0, &fifteen)],
            ),
            &Release::new(Path::new(MUTEX)),
            &Return::new(&local0),
        ],
    ));

    // CEJ0(n): select n, set eject.
    let cej0 = bytes_of(&Method::new(
        Path::new("CEJ0"),
        1,
        true,
        vec![
            &Acquire::new(Path::new(MUTEX), 0xffff),
            &Store::new(&Path::new(CSEL), &aml::Arg(0)),
            &Store::new(&Path::new(CEJ0_FIELD), &one),
            &Release::new(Path::new(MUTEX)),
        ],
    ));

    // CTFY(n, v): Notify can only name a fixed object, so dispatch on n.
    let names: Vec<Path> = (0..cfg.max_vcpus)
        .map(|i| Path::new(&cpu_device_name(i)))
        .collect();
    let indices: Vec<usize> = (0..cfg.max_vcpus).collect();
    let notifies: Vec<Notify> = names.iter().map(|p| Notify::new(p, &aml::Arg(1))).collect();
    let equals: Vec<Equal> = indices
        .iter()
        .map(|i| Equal::new(&aml::Arg(0), i))
        .collect();
    let ifs: Vec<If> = equals
        .iter()
        .zip(&notifies)
        .map(|(eq, n)| If::new(eq, vec![n]))
        .collect();
    let ctfy = Method::new(
        Path::new("CTFY"),
        2,
        false,
        ifs.iter().map(|i| i as &dyn Aml).collect(),
    );

    // CSCN: report every pending insert (device check) and removal (eject request).
    let max = cfg.max_vcpus;
    let check = NOTIFY_DEVICE_CHECK;
    let eject = NOTIFY_EJECT_REQUEST;
    let notify_insert = MethodCall::new(Path::new("CTFY"), vec![&local0, &check]);
    let notify_remove = MethodCall::new(Path::new("CTFY"), vec![&local0, &eject]);
    let cins = Path::new(CINS);
    let crmv = Path::new(CRMV);
    let clear_ins = Store::new(&cins, &one);
    let clear_rmv = Store::new(&crmv, &one);
    let is_inserting = Equal::new(&cins, &one);
    let is_removing = Equal::new(&crmv, &one);
    let if_ins = If::new(&is_inserting, vec![&notify_insert, &clear_ins]);
    let if_rmv = If::new(&is_removing, vec![&notify_remove, &clear_rmv]);
    let else_rmv = Else::new(vec![&if_rmv]);
    let cscn = bytes_of(&Method::new(
        Path::new("CSCN"),
        0,
        true,
        vec![
            &Acquire::new(Path::new(MUTEX), 0xffff),
            &Store::new(&local0, &zero),
            &While::new(
                &LessThan::new(&local0, &max),
                vec![
                    &Store::new(&Path::new(CSEL), &local0),
                    &if_ins,
                    &else_rmv,
                    &Add::new(&local0, &local0, &one),
                ],
            ),
            &Release::new(Path::new(MUTEX)),
        ],
    ));

    let cpu_devices: Vec<Raw> = (0..cfg.max_vcpus).map(processor_device).collect();

    let hid_name = Name::new(Path::new("_HID"), &hid);
    let cid_name = Name::new(Path::new("_CID"), &cid);
    let mut children: Vec<&dyn Aml> = vec![&hid_name, &cid_name, &csta, &cej0, &ctfy, &cscn];
    children.extend(cpu_devices.iter().map(|d| d as &dyn Aml));
    bytes_of(&Device::new(Path::new("CPUS"), children))
}

fn processor_device(index: usize) -> Raw {
    let hid = "ACPI0007";
    let uid = index;
    // _MAT describes the CPU once present, so it carries the enabled flag.
    let mat = BufferData::new(madt_local_apic(index as u8, true, false).to_vec());
    let csta = MethodCall::new(Path::new("CSTA"), vec![&uid]);
    let cej0 = MethodCall::new(Path::new("CEJ0"), vec![&uid]);
    bytes_of(&Device::new(
        Path::new(&cpu_device_name(index)),
        vec![
            &Name::new(Path::new("_HID"), &hid),
            &Name::new(Path::new("_UID"), &uid),
            &Method::new(Path::new("_STA"), 0, false, vec![&Return::new(&csta)]),
            &Method::new(Path::new("_MAT"), 0, false, vec![&Return::new(&mat)]),
            &Method::new(Path::new("_EJ0"), 1, false, vec![&cej0]),
        ],
    ))
}

fn ged_device(cfg: &DsdtConfig) -> Raw {
    let hid = "ACPI0013";
    let uid = aml::ZERO;
    let irq = Interrupt::new(true, true, false, false, cfg.ged_gsi);
    let crs = ResourceTemplate::new(vec![&irq]);
    let scan = MethodCall::new(Path::new("\\_SB_.CPUS.CSCN"), vec![]);
    bytes_of(&Device::new(
        Path::new("GED0"),
        vec![
            &Name::new(Path::new("_HID"), &hid),
            &Name::new(Path::new("_UID"), &uid),
            &Name::new(Path::new("_CRS"), &crs),
            &Method::new(Path::new("_EVT"), 1, false, vec![&scan]),
        ],
    ))
}

/// COM1 as a PNP0501 device. A hardware-reduced ACPI platform has no legacy devices the
/// guest may assume: without this, Linux's 8250 driver finds no port with an interrupt
/// (`preallocated irqs: 0`), and userspace writes to the console fail with EIO.
fn com1_device(cfg: &DsdtConfig) -> Raw {
    let (port, irq) = cfg.com1;
    let hid = EISAName::new("PNP0501");
    let uid = aml::ZERO;
    let io = IO::new(port, port, 1, 8);
    let int = Interrupt::new(true, true, false, false, irq);
    let crs = ResourceTemplate::new(vec![&io, &int]);
    bytes_of(&Device::new(
        Path::new("COM1"),
        vec![
            &Name::new(Path::new("_HID"), &hid),
            &Name::new(Path::new("_UID"), &uid),
            &Name::new(Path::new("_CRS"), &crs),
        ],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(n: usize) -> DsdtConfig {
        DsdtConfig {
            max_vcpus: n,
            hotplug_base: 0xfe00_0000,
            hotplug_len: 12,
            ged_gsi: 5,
            com1: (0x3f8, 4),
            s5_type: 5,
        }
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn names_present() {
        let body = dsdt_body(&cfg(4));
        for n in [
            &b"_S5_"[..],
            b"PRES",
            b"CPUS",
            b"CSTA",
            b"CEJ0",
            b"CSCN",
            b"CTFY",
            b"C000",
            b"C003",
            b"GED0",
            b"_EVT",
            b"COM1",
            b"ACPI0007",
            b"ACPI0013",
        ] {
            assert!(contains(&body, n), "{}", String::from_utf8_lossy(n));
        }
        assert!(!contains(&body, b"C004"));
    }

    #[test]
    fn large_counts_build() {
        let body = dsdt_body(&cfg(254));
        assert!(contains(&body, b"C0FD"));
    }

    #[test]
    fn names_are_four_chars() {
        assert_eq!(cpu_device_name(0), "C000");
        assert_eq!(cpu_device_name(255), "C0FF");
    }
}
