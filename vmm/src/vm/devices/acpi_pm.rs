//! The hardware-reduced ACPI sleep control/status and reset register (one I/O port, named
//! by the FADT). Writing SLP_EN with SLP_TYP = `_S5_` powers off; writing the FADT's reset
//! value reboots. Status reads return 0; the WAK_STS clear the guest writes first is ignored.

use crate::vm::layout::{ACPI_RESET_VALUE, S5_SLEEP_TYPE};

/// Sleep control register: SLP_EN (bit 5) and SLP_TYP (bits 2..4), ACPI 6.5 §4.8.3.7.
const SLP_EN: u8 = 1 << 5;
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0x7;

/// What a write asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PmAction {
    /// Nothing to do.
    None,
    /// Power off (S5).
    PowerOff,
    /// Reboot (reset register).
    Reset,
}

/// Decodes one byte written to the port.
pub fn decode_write(value: u8) -> PmAction {
    if value == ACPI_RESET_VALUE {
        return PmAction::Reset;
    }
    if value & SLP_EN != 0 {
        let typ = (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
        if typ == S5_SLEEP_TYPE {
            return PmAction::PowerOff;
        }
        crate::guest_warn!(
            "unsupported sleep type",
            "acpi: guest asked for unsupported sleep type {typ}; ignored"
        );
    }
    PmAction::None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode() {
        assert_eq!(decode_write((5 << 2) | (1 << 5)), PmAction::PowerOff);
        assert_eq!(decode_write(1), PmAction::Reset);
        assert_eq!(decode_write(0x80), PmAction::None); // WAK_STS clear
        assert_eq!(decode_write((3 << 2) | (1 << 5)), PmAction::None); // S3
    }
}
