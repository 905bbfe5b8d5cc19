//! Bounded, non-blocking serial output.
//!
//! The UART runs on vCPU threads under its device lock, so it must never wait for the
//! host: a stdout that is a pipe nobody reads would block `write(1)` with the lock held,
//! and with it the vCPU (a pause times out) and the main thread (shutdown hangs). Instead
//! the UART writes into a [`ConsoleOut`], which only appends to a bounded buffer, and a
//! writer thread ([`Console`]) moves the buffer to the real sink without holding any lock
//! while it writes. When the buffer is full, new bytes are dropped and counted: the guest
//! loses output, never the VMM its control paths. At exit [`Console::drain`] waits a
//! bounded time for what is buffered, then gives up.

use super::bus::SerialOut;
use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Bytes buffered between the UART and the writer thread.
pub const CONSOLE_BUFFER: usize = 64 << 10;

#[derive(Default)]
struct State {
    buf: VecDeque<u8>,
    /// The writer thread holds a chunk it has taken out of `buf` and not yet written.
    writing: bool,
    /// No more bytes will come: the writer thread exits once `buf` is empty.
    closed: bool,
    /// The writer thread has returned (or is about to).
    exited: bool,
    dropped: u64,
    accepted: u64,
}

struct Shared {
    state: Mutex<State>,
    /// Rung when bytes arrive, when the writer finishes a chunk, and on close.
    cv: Condvar,
    capacity: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What the UART writes to: appends to the bounded buffer and never blocks beyond that
/// buffer's short lock.
pub struct ConsoleOut {
    shared: Arc<Shared>,
}

impl Write for ConsoleOut {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut s = self.shared.lock();
        let room = self.shared.capacity.saturating_sub(s.buf.len());
        let (kept, lost) = data.split_at(room.min(data.len()));
        s.buf.extend(kept);
        s.accepted += kept.len() as u64;
        s.dropped += lost.len() as u64;
        drop(s);
        if !kept.is_empty() {
            self.shared.cv.notify_all();
        }
        // Dropped bytes are reported as written: the guest's UART has no back-pressure.
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        // The writer thread flushes after every chunk; nothing to wait for here.
        Ok(())
    }
}

/// The writer thread and its buffer.
pub struct Console {
    shared: Arc<Shared>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("capacity", &self.shared.capacity)
            .finish_non_exhaustive()
    }
}

impl Console {
    /// Starts a writer thread that moves buffered bytes to `sink`, with a buffer of
    /// [`CONSOLE_BUFFER`] bytes.
    pub fn spawn(sink: SerialOut) -> io::Result<Console> {
        Self::with_capacity(sink, CONSOLE_BUFFER)
    }

    /// [`Console::spawn`] with a buffer of `capacity` bytes.
    pub fn with_capacity(mut sink: SerialOut, capacity: usize) -> io::Result<Console> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            cv: Condvar::new(),
            capacity,
        });
        let s = shared.clone();
        let writer = std::thread::Builder::new()
            .name("serial-out".into())
            .spawn(move || {
                writer(&s, &mut sink);
                s.lock().exited = true;
                s.cv.notify_all();
            })?;
        Ok(Console {
            shared,
            writer: Some(writer),
        })
    }

    /// A writer for the UART.
    pub fn out(&self) -> ConsoleOut {
        ConsoleOut {
            shared: self.shared.clone(),
        }
    }

    /// Bytes dropped because the buffer was full.
    pub fn dropped(&self) -> u64 {
        self.shared.lock().dropped
    }

    /// Bytes the guest wrote that were buffered (not dropped).
    pub fn accepted(&self) -> u64 {
        self.shared.lock().accepted
    }

    /// Waits at most `timeout` until everything buffered has been written to the sink.
    /// Returns false if the sink did not take it in time (it is then left to the writer
    /// thread, which the process exit ends).
    pub fn drain(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut s = self.shared.lock();
        while !s.buf.is_empty() || s.writing {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            s = match self.shared.cv.wait_timeout(s, deadline - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        true
    }
}

/// How long dropping a [`Console`] waits for its writer to finish what is buffered.
const EXIT_WAIT: Duration = Duration::from_secs(1);

impl Drop for Console {
    fn drop(&mut self) {
        // The writer finishes what is buffered, then exits. It is joined when it does so
        // within EXIT_WAIT (a dropped VM leaves no thread behind); a writer blocked on a
        // sink nobody reads is left to the process exit.
        let deadline = Instant::now() + EXIT_WAIT;
        let mut s = self.shared.lock();
        s.closed = true;
        self.shared.cv.notify_all();
        while !s.exited {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            s = match self.shared.cv.wait_timeout(s, deadline - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        drop(s);
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

fn writer(shared: &Shared, sink: &mut SerialOut) {
    crate::seccomp::enter_or_log(crate::seccomp::ThreadKind::Serial);
    loop {
        let chunk: Vec<u8> = {
            let mut s = shared.lock();
            while s.buf.is_empty() && !s.closed {
                s = match shared.cv.wait(s) {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
            }
            if s.buf.is_empty() {
                return; // closed and drained
            }
            s.writing = true;
            s.buf.drain(..).collect()
        };
        // No lock held: this may block for as long as the reader of the sink wants.
        // A broken sink (closed pipe) loses the output; the guest goes on.
        let _ = sink.write_all(&chunk).and_then(|()| sink.flush());
        shared.lock().writing = false;
        shared.cv.notify_all();
    }
}

/// The VMM's stdout as a serial sink that bypasses `std::io::Stdout`'s lock (a writer
/// blocked on a full pipe must not hold a lock the rest of the process uses): a duplicate
/// of fd 1. Without a usable fd 1 (closed), guest output is discarded, with a warning.
pub fn stdout_sink() -> SerialOut {
    use std::os::fd::AsFd;
    match io::stdout().as_fd().try_clone_to_owned() {
        Ok(fd) => Box::new(std::fs::File::from(fd)),
        Err(e) => {
            log::warn!("serial output: cannot use stdout ({e}); guest output is discarded");
            Box::new(io::sink())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A sink that blocks until released, then records.
    struct Gate {
        open: Arc<AtomicBool>,
        got: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Gate {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            while !self.open.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            self.got.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_blocked_sink_never_blocks_the_writer_and_drops_are_counted() {
        let open = Arc::new(AtomicBool::new(false));
        let got = Arc::new(Mutex::new(Vec::new()));
        let console = Console::with_capacity(
            Box::new(Gate {
                open: open.clone(),
                got: got.clone(),
            }),
            16,
        )
        .unwrap();
        let mut out = console.out();
        let start = Instant::now();
        for _ in 0..1000 {
            assert_eq!(out.write(b"0123456789").unwrap(), 10);
        }
        assert!(start.elapsed() < Duration::from_secs(5), "writes blocked");
        // At most one chunk (taken by the writer, blocked) plus a full buffer survive.
        assert!(console.dropped() >= 10_000 - 32, "{}", console.dropped());
        assert_eq!(console.dropped() + console.accepted(), 10_000);
        assert!(!console.drain(Duration::from_millis(50)), "sink is blocked");
        open.store(true, Ordering::SeqCst);
        assert!(console.drain(Duration::from_secs(10)));
        assert_eq!(got.lock().unwrap().len() as u64, console.accepted());
    }
}
