//! The user's terminal as the guest's serial console: standard input goes to the UART's
//! receive buffer, and while standard input is a terminal it is put in raw mode (keys,
//! Ctrl-C included, go to the guest) and restored on exit. `Ctrl-A x` (as in QEMU) asks
//! the VMM to shut the VM down.

use crate::vm::bus::VmEvent;
use crate::vm::Vm;
use std::io::Read;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;

/// Ctrl-A: the escape key; the byte after it is a command (`x` quits), a second Ctrl-A
/// sends one Ctrl-A to the guest.
const ESCAPE: u8 = 0x01;

/// Whether standard input should feed the guest: not a terminal (a pipe, a file,
/// /dev/null), or a terminal this process owns (in its foreground process group). A VMM
/// started in the background (`vmm ... &`) must not read the terminal: it would be
/// stopped by SIGTTIN, and would steal the shell's input.
pub fn stdin_is_ours() -> bool {
    // SAFETY: plain queries on file descriptor 0 and this process.
    unsafe {
        if libc::isatty(0) != 1 {
            return true;
        }
        // No foreground group: a terminal without job control (e.g. a console that is
        // nobody's controlling terminal), so nobody else reads it either.
        let fg = libc::tcgetpgrp(0);
        fg == -1 || fg == libc::getpgrp()
    }
}

/// Puts standard input in raw mode while alive, when it is a terminal.
pub struct RawTerminal {
    saved: Option<libc::termios>,
}

impl RawTerminal {
    /// Raw mode on standard input if it is a terminal; a no-op otherwise.
    pub fn enter() -> RawTerminal {
        // SAFETY: isatty/tcgetattr/tcsetattr only read and write the termios we pass.
        unsafe {
            if libc::isatty(0) != 1 {
                return RawTerminal { saved: None };
            }
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return RawTerminal { saved: None };
            }
            let saved = t;
            libc::cfmakeraw(&mut t);
            // Keep output post-processing: the VMM's own messages still end lines properly.
            t.c_oflag |= libc::OPOST;
            if libc::tcsetattr(0, libc::TCSANOW, &t) != 0 {
                return RawTerminal { saved: None };
            }
            RawTerminal { saved: Some(saved) }
        }
    }

    /// Whether raw mode is in force (standard input is a terminal).
    pub fn is_raw(&self) -> bool {
        self.saved.is_some()
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(t) = self.saved {
            // SAFETY: restores the settings read in `enter`.
            unsafe {
                libc::tcsetattr(0, libc::TCSANOW, &t);
            }
        }
    }
}

/// Splits terminal input into bytes for the guest and an escape command.
#[derive(Debug, Default)]
pub struct EscapeFilter {
    pending_escape: bool,
}

/// What the user asked for with the escape key.
#[derive(Debug, PartialEq, Eq)]
pub enum EscapeCommand {
    /// `Ctrl-A x`: shut the VM down.
    Quit,
}

impl EscapeFilter {
    /// Appends the guest's share of `input` to `out`; returns a command if one was typed.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Option<EscapeCommand> {
        for &b in input {
            if self.pending_escape {
                self.pending_escape = false;
                match b {
                    b'x' | b'X' => return Some(EscapeCommand::Quit),
                    ESCAPE => out.push(ESCAPE),
                    // Unknown command: pass both through, as typed.
                    other => out.extend([ESCAPE, other]),
                }
            } else if b == ESCAPE {
                self.pending_escape = true;
            } else {
                out.push(b);
            }
        }
        None
    }
}

/// Forwards standard input to the guest's UART on a thread of its own until end of file.
/// The escape is honoured only when `escape` is set (standard input is a terminal); with a
/// pipe or a file every byte goes to the guest. When the guest does not drain its receive
/// buffer this thread waits; nothing else does.
pub fn forward_stdin(vm: Arc<Vm>, events: Sender<VmEvent>, escape: bool) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            crate::seccomp::enter_or_log(crate::seccomp::ThreadKind::Console);
            let mut stdin = std::io::stdin().lock();
            let mut buf = [0u8; 256];
            let mut filter = EscapeFilter::default();
            let mut bytes = Vec::new();
            loop {
                let n = match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                bytes.clear();
                if escape {
                    if filter.feed(&buf[..n], &mut bytes) == Some(EscapeCommand::Quit) {
                        log::info!("Ctrl-A x on the console: shutting the VM down");
                        let _ = events.send(VmEvent::Shutdown);
                        return;
                    }
                } else {
                    bytes.extend_from_slice(&buf[..n]);
                }
                let mut rest = &bytes[..];
                while !rest.is_empty() {
                    let taken = vm.serial_input(rest);
                    rest = &rest[taken..];
                    if !rest.is_empty() {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            }
        })
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_commands() {
        let mut f = EscapeFilter::default();
        let mut out = Vec::new();
        assert_eq!(f.feed(b"ls\r", &mut out), None);
        assert_eq!(out, b"ls\r");
        out.clear();
        // Ctrl-A Ctrl-A sends one Ctrl-A; Ctrl-A then another key sends both.
        assert_eq!(f.feed(&[ESCAPE, ESCAPE, ESCAPE, b'q'], &mut out), None);
        assert_eq!(out, [ESCAPE, ESCAPE, b'q']);
        out.clear();
        // Split across reads.
        assert_eq!(f.feed(&[b'a', ESCAPE], &mut out), None);
        assert_eq!(f.feed(b"x", &mut out), Some(EscapeCommand::Quit));
        assert_eq!(out, b"a");
    }
}
