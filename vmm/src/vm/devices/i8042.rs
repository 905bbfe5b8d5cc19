//! A minimal i8042 keyboard controller. Its real job here is `reboot=k`: Linux resets the
//! machine by writing 0xFE to the command port. It also answers the few controller
//! commands Linux's probe issues (read/write the command byte, self-test) so a probe gets
//! answers instead of waiting out its timeouts. There is no keyboard behind it.

const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_READ_OUTP: u8 = 0xd0;
const CMD_WRITE_OUTP: u8 = 0xd1;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_PULSE_RESET: u8 = 0xfe;

const SELF_TEST_OK: u8 = 0x55;
const STATUS_OUTPUT_FULL: u8 = 0x01;
const STATUS_SYSTEM_FLAG: u8 = 0x04;
const STATUS_LAST_WAS_CMD: u8 = 0x08;

/// What the VMM must do after a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum I8042Action {
    /// Nothing.
    None,
    /// The guest pulsed the CPU reset line.
    Reset,
}

/// Controller state.
#[derive(Debug)]
pub struct I8042 {
    ctr: u8,
    outp: u8,
    status: u8,
    output: Option<u8>,
    /// The next data-port write is the argument of this command.
    pending: Option<u8>,
}

impl Default for I8042 {
    fn default() -> Self {
        I8042 {
            // Keyboard interrupt and translation on, mouse disabled.
            ctr: 0x61,
            outp: 0x01,
            status: STATUS_SYSTEM_FLAG,
            output: None,
            pending: None,
        }
    }
}

impl I8042 {
    /// Reads the data port (`false`) or the status port (`true`).
    pub fn read(&mut self, status_port: bool) -> u8 {
        if status_port {
            let full = if self.output.is_some() {
                STATUS_OUTPUT_FULL
            } else {
                0
            };
            self.status | full
        } else {
            self.output.take().unwrap_or(0)
        }
    }

    /// Writes the data port (`false`) or the command port (`true`).
    pub fn write(&mut self, command_port: bool, value: u8) -> I8042Action {
        if command_port {
            self.status |= STATUS_LAST_WAS_CMD;
            self.pending = None;
            match value {
                CMD_READ_CTR => self.output = Some(self.ctr),
                CMD_READ_OUTP => self.output = Some(self.outp),
                CMD_SELF_TEST => self.output = Some(SELF_TEST_OK),
                CMD_WRITE_CTR | CMD_WRITE_OUTP => self.pending = Some(value),
                CMD_PULSE_RESET => return I8042Action::Reset,
                other => log::debug!("i8042: ignored command {other:#04x}"),
            }
        } else {
            self.status &= !STATUS_LAST_WAS_CMD;
            match self.pending.take() {
                Some(CMD_WRITE_CTR) => self.ctr = value,
                Some(CMD_WRITE_OUTP) => {
                    self.outp = value;
                    // Output port bit 0 low holds the CPU in reset.
                    if value & 1 == 0 {
                        return I8042Action::Reset;
                    }
                }
                _ => log::debug!("i8042: ignored data byte {value:#04x}"),
            }
        }
        I8042Action::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_and_commands() {
        let mut k = I8042::default();
        assert_eq!(k.read(true) & STATUS_OUTPUT_FULL, 0);
        k.write(true, CMD_SELF_TEST);
        assert_eq!(k.read(true) & STATUS_OUTPUT_FULL, 1);
        assert_eq!(k.read(false), SELF_TEST_OK);
        k.write(true, CMD_WRITE_CTR);
        k.write(false, 0x47);
        k.write(true, CMD_READ_CTR);
        assert_eq!(k.read(false), 0x47);
        assert_eq!(k.write(true, 0xfe), I8042Action::Reset);
        // Input buffer never full: kb_wait() in Linux returns at once.
        assert_eq!(k.read(true) & 0x02, 0);
    }
}
