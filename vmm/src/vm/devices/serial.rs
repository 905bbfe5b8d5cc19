//! A 16550A UART, transmit side only, good enough for Linux's 8250 driver: it passes the
//! autoconfig probe (scratch, IER, loopback MSR and FIFO checks), reports a 16550A, and
//! raises THR-empty interrupts so interrupt-driven transmit (the tty layer, not only the
//! polled console) makes progress. Received data never arrives: LSR has no DR bit.

use std::io::Write;

// Register offsets from the base port.
const DATA: u8 = 0; // RBR (read) / THR (write) / DLL (DLAB=1)
const IER: u8 = 1; // DLM when DLAB=1
const IIR: u8 = 2; // IIR (read) / FCR (write)
const LCR: u8 = 3;
const MCR: u8 = 4;
const LSR: u8 = 5;
const MSR: u8 = 6;
const SCR: u8 = 7;

const LCR_DLAB: u8 = 0x80;
const IER_THRE: u8 = 0x02;
const IER_MASK: u8 = 0x0f;
const IIR_NO_INT: u8 = 0x01;
const IIR_THRE: u8 = 0x02;
const IIR_FIFO_ENABLED: u8 = 0xc0;
const FCR_FIFO_ENABLE: u8 = 0x01;
const MCR_LOOP: u8 = 0x10;
const MCR_MASK: u8 = 0x1f;
/// THR empty and transmitter empty: output is consumed instantly.
const LSR_IDLE: u8 = 0x60;
/// DCD | DSR | CTS: a modem that is always there.
const MSR_CONNECTED: u8 = 0xb0;

/// UART register state writing transmitted bytes to `W`.
#[derive(Debug)]
pub struct Serial<W: Write> {
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
    fifo_enabled: bool,
    /// A THR-empty interrupt is pending (cleared by reading IIR or writing THR anew).
    thre_pending: bool,
    out: W,
}

impl<W: Write> Serial<W> {
    /// A UART in its reset state (divisor for 115200 baud) writing to `out`.
    pub fn new(out: W) -> Self {
        Serial {
            ier: 0,
            lcr: 0x03,
            mcr: 0x08,
            scr: 0,
            dll: 0x01,
            dlm: 0,
            fifo_enabled: false,
            thre_pending: false,
            out,
        }
    }

    /// The output sink.
    pub fn output(&mut self) -> &mut W {
        &mut self.out
    }

    fn dlab(&self) -> bool {
        self.lcr & LCR_DLAB != 0
    }

    /// Reads register `offset` (0..8).
    pub fn read(&mut self, offset: u8) -> u8 {
        match offset {
            DATA if self.dlab() => self.dll,
            DATA => 0,
            IER if self.dlab() => self.dlm,
            IER => self.ier,
            IIR => {
                let fifo = if self.fifo_enabled {
                    IIR_FIFO_ENABLED
                } else {
                    0
                };
                if self.thre_pending && self.ier & IER_THRE != 0 {
                    // Reading IIR acknowledges a THR-empty interrupt.
                    self.thre_pending = false;
                    fifo | IIR_THRE
                } else {
                    fifo | IIR_NO_INT
                }
            }
            LCR => self.lcr,
            MCR => self.mcr,
            LSR => LSR_IDLE,
            MSR => {
                if self.mcr & MCR_LOOP != 0 {
                    // Loopback: DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD.
                    let m = self.mcr;
                    ((m & 0x01) << 5) | ((m & 0x02) << 3) | ((m & 0x04) << 4) | ((m & 0x08) << 4)
                } else {
                    MSR_CONNECTED
                }
            }
            SCR => self.scr,
            _ => 0xff,
        }
    }

    /// Writes register `offset`; returns whether the interrupt line must be pulsed.
    pub fn write(&mut self, offset: u8, value: u8) -> bool {
        match offset {
            DATA if self.dlab() => self.dll = value,
            DATA => {
                if self.mcr & MCR_LOOP == 0 {
                    // A closed or full pipe must not take the VM down; drop the byte.
                    let _ = self.out.write_all(&[value]);
                    if value == b'\n' {
                        let _ = self.out.flush();
                    }
                }
                // The byte left at once: THR is empty again.
                self.thre_pending = true;
                return self.ier & IER_THRE != 0;
            }
            IER if self.dlab() => self.dlm = value,
            IER => {
                let was = self.ier;
                self.ier = value & IER_MASK;
                // Enabling the THRE interrupt while THR is empty raises it immediately.
                if was & IER_THRE == 0 && self.ier & IER_THRE != 0 {
                    self.thre_pending = true;
                    return true;
                }
            }
            IIR => self.fifo_enabled = value & FCR_FIFO_ENABLE != 0,
            LCR => self.lcr = value,
            MCR => self.mcr = value & MCR_MASK,
            SCR => self.scr = value,
            _ => {} // LSR and MSR are read-only.
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transmits_and_interrupts() {
        let mut s = Serial::new(Vec::new());
        assert!(!s.write(DATA, b'a'));
        assert!(s.write(IER, IER_THRE));
        assert_eq!(s.read(IIR) & 0x0f, IIR_THRE);
        assert_eq!(s.read(IIR) & 0x0f, IIR_NO_INT);
        assert!(s.write(DATA, b'b'));
        assert_eq!(s.output().as_slice(), b"ab");
        assert_eq!(s.read(LSR), 0x60);
    }

    #[test]
    fn passes_8250_probe() {
        let mut s = Serial::new(Vec::new());
        // IER scratch test.
        s.write(IER, 0);
        assert_eq!(s.read(IER) & 0x0f, 0);
        s.write(IER, 0x0f);
        assert_eq!(s.read(IER) & 0x0f, 0x0f);
        s.write(IER, 0);
        // Loopback MSR test.
        s.write(MCR, MCR_LOOP | 0x0a);
        assert_eq!(s.read(MSR) & 0xf0, 0x90);
        s.write(MCR, 0);
        // FIFO detection reports a 16550A.
        s.write(IIR, 0xe7);
        assert_eq!(s.read(IIR) >> 6, 3);
        // Divisor latch.
        s.write(LCR, LCR_DLAB);
        s.write(DATA, 0x0c);
        s.write(IER, 0x00);
        assert_eq!(s.read(DATA), 0x0c);
        s.write(LCR, 0x03);
        assert!(s.output().is_empty());
    }
}
