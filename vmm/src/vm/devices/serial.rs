//! A 16550A UART, good enough for Linux's 8250 driver: it passes the autoconfig probe
//! (scratch, IER, loopback MSR and FIFO checks), reports a 16550A, raises THR-empty
//! interrupts so interrupt-driven transmit (the tty layer, not only the polled console)
//! makes progress, and receives bytes the VMM pushes (the user's terminal) through a
//! bounded buffer with received-data interrupts.

use std::collections::VecDeque;
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
const IER_RDA: u8 = 0x01;
const IER_THRE: u8 = 0x02;
const IER_MASK: u8 = 0x0f;
const IIR_NO_INT: u8 = 0x01;
const IIR_THRE: u8 = 0x02;
const IIR_RDA: u8 = 0x04;
const IIR_FIFO_ENABLED: u8 = 0xc0;
const FCR_FIFO_ENABLE: u8 = 0x01;
const MCR_LOOP: u8 = 0x10;
const MCR_MASK: u8 = 0x1f;
/// THR empty and transmitter empty: output is consumed instantly.
const LSR_IDLE: u8 = 0x60;
/// LSR data ready: the receive buffer holds a byte.
const LSR_DR: u8 = 0x01;
/// Received bytes held for the guest; more is dropped (a guest that never reads its
/// console must not make the VMM buffer without bound).
pub const RX_CAPACITY: usize = 4096;
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
    rx: VecDeque<u8>,
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
            rx: VecDeque::new(),
            out,
        }
    }

    /// Queues bytes for the guest to receive; returns how many were taken (the rest did
    /// not fit in [`RX_CAPACITY`]) and whether the interrupt line must be pulsed.
    pub fn receive(&mut self, bytes: &[u8]) -> (usize, bool) {
        let room = RX_CAPACITY - self.rx.len();
        let taken = bytes.len().min(room);
        let was_empty = self.rx.is_empty();
        self.rx.extend(&bytes[..taken]);
        (taken, taken > 0 && was_empty && self.ier & IER_RDA != 0)
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
            DATA => self.rx.pop_front().unwrap_or(0),
            IER if self.dlab() => self.dlm,
            IER => self.ier,
            IIR => {
                let fifo = if self.fifo_enabled {
                    IIR_FIFO_ENABLED
                } else {
                    0
                };
                if !self.rx.is_empty() && self.ier & IER_RDA != 0 {
                    // Highest priority here; cleared by draining RBR.
                    fifo | IIR_RDA
                } else if self.thre_pending && self.ier & IER_THRE != 0 {
                    // Reading IIR acknowledges a THR-empty interrupt.
                    self.thre_pending = false;
                    fifo | IIR_THRE
                } else {
                    fifo | IIR_NO_INT
                }
            }
            LCR => self.lcr,
            MCR => self.mcr,
            LSR if self.rx.is_empty() => LSR_IDLE,
            LSR => LSR_IDLE | LSR_DR,
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
                // So does enabling the received-data interrupt with data waiting.
                if was & IER_RDA == 0 && self.ier & IER_RDA != 0 && !self.rx.is_empty() {
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
    fn receives_in_order_with_interrupts() {
        let mut s = Serial::new(Vec::new());
        // No interrupt while the guest has not enabled it, but the data is there.
        assert_eq!(s.receive(b"ab"), (2, false));
        assert_eq!(s.read(LSR) & LSR_DR, LSR_DR);
        assert_eq!(s.read(IIR) & 0x0f, IIR_NO_INT);
        // Enabling the interrupt with data waiting raises it; IIR says why.
        assert!(s.write(IER, IER_RDA));
        assert_eq!(s.read(IIR) & 0x0f, IIR_RDA);
        assert_eq!(s.read(DATA), b'a');
        assert_eq!(s.read(DATA), b'b');
        assert_eq!(s.read(LSR) & LSR_DR, 0);
        assert_eq!(s.read(IIR) & 0x0f, IIR_NO_INT);
        // New data into an empty buffer raises it; more data while not drained does not.
        assert_eq!(s.receive(b"c"), (1, true));
        assert_eq!(s.receive(b"d"), (1, false));
        assert_eq!(s.read(DATA), b'c');
        assert_eq!(s.read(DATA), b'd');
        // An empty buffer reads 0.
        assert_eq!(s.read(DATA), 0);
    }

    #[test]
    fn receive_buffer_is_bounded() {
        let mut s = Serial::new(Vec::new());
        let big = vec![b'x'; RX_CAPACITY + 100];
        assert_eq!(s.receive(&big).0, RX_CAPACITY);
        assert_eq!(s.receive(b"y").0, 0);
        s.read(DATA);
        assert_eq!(s.receive(b"yz").0, 1);
    }

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
