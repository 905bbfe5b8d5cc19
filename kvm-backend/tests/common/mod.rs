//! Shared helpers: the KVM availability gate, a recording exit handler, tiny guests.

#![allow(dead_code)]

use kvm_backend::{BackendConfig, BootEntry, ExitHandler, GuestStop, KvmBackend, KvmVm};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vcpu_sync::Vcpus;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest RAM size.
pub const MEM_SIZE: usize = 4 << 20;
/// Where these tests put the (empty) Linux zero page and their code: the VMM's choices,
/// not the backend's, so the tests make their own.
pub const ZERO_PAGE: u64 = 0x7000;
/// 1 MiB, where a VMM loads a kernel.
pub const HIMEM_START: u64 = 0x10_0000;
/// Where guest code is loaded (the BSP's entry point).
pub const CODE: u64 = HIMEM_START;
/// A u64 the counting guest increments.
pub const COUNTER: u64 = 0x20_0000;
/// An unmapped guest-physical address below 1 GiB (inside the boot identity map).
pub const MMIO_ADDR: u64 = 0x1000_0000;
/// The port test guests write to.
pub const TEST_PORT: u16 = 0x3f8;
/// A port whose writes make the recorder panic (a buggy device model).
pub const PANIC_PORT: u16 = 0x3f9;
/// What the recorder answers to MMIO and port reads.
pub const READ_VALUE: u8 = 0x5a;

/// Whether KVM can be used. Without it the tests fail loudly, unless VMM_ALLOW_NO_KVM=1
/// says skipping is acceptable (then this prints why and returns false).
pub fn kvm_available() -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            if std::env::var("VMM_ALLOW_NO_KVM").as_deref() == Ok("1") {
                eprintln!("SKIPPING KVM test: /dev/kvm is not usable ({e}) and VMM_ALLOW_NO_KVM=1");
                false
            } else {
                panic!(
                    "/dev/kvm is not usable ({e}); the kvm-backend tests need real KVM. \
                     Set VMM_ALLOW_NO_KVM=1 to skip them on a host without KVM."
                );
            }
        }
    }
}

/// Records every callback.
#[derive(Default, Debug)]
pub struct Recorder {
    pub pio_writes: Mutex<Vec<(usize, u16, Vec<u8>)>>,
    pub pio_reads: Mutex<Vec<(usize, u16, usize)>>,
    pub mmio_writes: Mutex<Vec<(usize, u64, Vec<u8>)>>,
    pub mmio_reads: Mutex<Vec<(usize, u64, usize)>>,
    pub stopped: Mutex<Vec<(usize, GuestStop)>>,
    pub exited: Mutex<Vec<usize>>,
    pub threads: Mutex<Vec<String>>,
    /// (vCPU, kernel thread ID) of every vCPU thread started.
    pub tids: Mutex<Vec<(usize, i32)>>,
    /// Every port write, including those not kept in `pio_writes`.
    pub pio_total: AtomicU64,
}

/// `pio_writes` keeps only the first writes, so a looping guest cannot exhaust memory.
const KEEP: usize = 1000;

impl Recorder {
    pub fn pio_count(&self) -> u64 {
        self.pio_total.load(Ordering::SeqCst)
    }

    fn note_thread(&self) {
        let name = std::thread::current().name().unwrap_or("?").to_string();
        let mut t = self.threads.lock().unwrap();
        if !t.contains(&name) {
            t.push(name);
        }
    }
}

impl ExitHandler for Recorder {
    fn vcpu_thread_started(&self, vcpu: usize) {
        // SAFETY: always safe to call.
        let tid = unsafe { libc::gettid() };
        self.tids.lock().unwrap().push((vcpu, tid));
    }

    fn pio_read(&self, vcpu: usize, port: u16, data: &mut [u8]) {
        self.note_thread();
        data.fill(READ_VALUE);
        self.pio_reads
            .lock()
            .unwrap()
            .push((vcpu, port, data.len()));
    }
    fn pio_write(&self, vcpu: usize, port: u16, data: &[u8]) {
        self.note_thread();
        assert_ne!(port, PANIC_PORT, "device model bug (on purpose)");
        self.pio_total.fetch_add(1, Ordering::SeqCst);
        let mut w = self.pio_writes.lock().unwrap();
        if w.len() < KEEP {
            w.push((vcpu, port, data.to_vec()));
        }
    }
    fn mmio_read(&self, vcpu: usize, addr: u64, data: &mut [u8]) {
        self.note_thread();
        data.fill(READ_VALUE);
        self.mmio_reads
            .lock()
            .unwrap()
            .push((vcpu, addr, data.len()));
    }
    fn mmio_write(&self, vcpu: usize, addr: u64, data: &[u8]) {
        self.note_thread();
        self.mmio_writes
            .lock()
            .unwrap()
            .push((vcpu, addr, data.to_vec()));
    }
    fn guest_stopped(&self, vcpu: usize, reason: GuestStop) {
        self.stopped.lock().unwrap().push((vcpu, reason));
    }
    fn vcpu_exited(&self, vcpu: usize) {
        self.exited.lock().unwrap().push(vcpu);
    }
}

/// A VM running `code` at [`CODE`] on the BSP, with `max_vcpus` slots (none started).
pub struct TestVm {
    pub vm: KvmVm,
    pub mem: GuestMemoryMmap,
    pub rec: Arc<Recorder>,
    pub vcpus: Vcpus<KvmBackend>,
}

impl TestVm {
    pub fn new(code: &[u8], max_vcpus: usize) -> TestVm {
        let vm = KvmVm::new().expect("create VM");
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("memory");
        mem.write_slice(code, GuestAddress(CODE))
            .expect("load code");
        vm.register_memory(&mem).expect("register memory");
        let rec = Arc::new(Recorder::default());
        let backend = vm
            .create_backend(BackendConfig {
                max_vcpus,
                memory: mem.clone(),
                boot: BootEntry {
                    entry: GuestAddress(CODE),
                    zero_page: GuestAddress(ZERO_PAGE),
                },
                handler: rec.clone(),
            })
            .expect("create backend");
        let vcpus = Vcpus::new(max_vcpus, backend).expect("vcpus");
        TestVm {
            vm,
            mem,
            rec,
            vcpus,
        }
    }

    pub fn counter(&self) -> u64 {
        self.mem
            .read_obj::<u64>(GuestAddress(COUNTER))
            .expect("read counter")
    }

    /// A 1-vCPU VM running the counting guest, its counter already moving.
    pub fn counting() -> TestVm {
        let t = TestVm::new(&guest_counter(), 1);
        t.vcpus.start(0).expect("start BSP");
        t.wait_counter_above(0);
        t
    }

    /// Waits until the guest counter moves past `from`.
    pub fn wait_counter_above(&self, from: u64) -> u64 {
        let mut now = 0;
        assert!(
            wait_until(Duration::from_secs(3), || {
                now = self.counter();
                now > from
            }),
            "guest counter stuck at {now}"
        );
        now
    }
}

impl Drop for TestVm {
    fn drop(&mut self) {
        // Never leave spinning vCPU threads behind a failed assertion.
        if let Err(e) = self.vcpus.shutdown(Duration::from_secs(2)) {
            eprintln!("TestVm drop: shutdown failed: {e}");
        }
    }
}

pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

// ---- hand-assembled 64-bit guests ----

/// `jmp $`
pub const SPIN: [u8; 2] = [0xeb, 0xfe];

/// Writes 'A', 'B', 'C' to [`TEST_PORT`], then spins.
pub fn guest_port_writes() -> Vec<u8> {
    let mut c = vec![0x66, 0xba]; // mov dx, imm16
    c.extend_from_slice(&TEST_PORT.to_le_bytes());
    for b in [b'A', b'B', b'C'] {
        c.extend_from_slice(&[0xb0, b]); // mov al, imm8
        c.push(0xee); // out dx, al
    }
    c.extend_from_slice(&SPIN);
    c
}

/// Increments the u64 at [`COUNTER`] forever.
pub fn guest_counter() -> Vec<u8> {
    let mut c = vec![0x48, 0xb8]; // mov rax, imm64
    c.extend_from_slice(&COUNTER.to_le_bytes());
    c.extend_from_slice(&[0x48, 0xff, 0x00]); // loop: inc qword [rax]
    c.extend_from_slice(&[0xeb, 0xfb]); // jmp loop
    c
}

/// Writes 0x12345678 at [`MMIO_ADDR`], reads the byte at MMIO_ADDR+8, outputs it to
/// [`TEST_PORT`], then spins.
pub fn guest_mmio() -> Vec<u8> {
    let mut c = vec![0x48, 0xb8]; // mov rax, imm64
    c.extend_from_slice(&MMIO_ADDR.to_le_bytes());
    c.extend_from_slice(&[0xc7, 0x00, 0x78, 0x56, 0x34, 0x12]); // mov dword [rax], imm32
    c.extend_from_slice(&[0x8a, 0x48, 0x08]); // mov cl, [rax+8]
    c.extend_from_slice(&[0x88, 0xc8]); // mov al, cl
    c.extend_from_slice(&[0x66, 0xba]); // mov dx, imm16
    c.extend_from_slice(&TEST_PORT.to_le_bytes());
    c.push(0xee); // out dx, al
    c.extend_from_slice(&SPIN);
    c
}

/// `ud2` with no IDT: #UD -> #GP -> #DF -> triple fault (KVM_EXIT_SHUTDOWN).
pub fn guest_triple_fault() -> Vec<u8> {
    vec![0x0f, 0x0b]
}

/// Writes to [`TEST_PORT`] forever: one exit per iteration.
pub fn guest_port_loop() -> Vec<u8> {
    let mut c = vec![0x66, 0xba]; // mov dx, imm16
    c.extend_from_slice(&TEST_PORT.to_le_bytes());
    c.extend_from_slice(&[0xee, 0xfe, 0xc0, 0xeb, 0xfb]); // loop: out dx, al; inc al; jmp loop
    c
}

/// Writes to [`PANIC_PORT`], then spins.
pub fn guest_panic_port() -> Vec<u8> {
    let mut c = vec![0x66, 0xba]; // mov dx, imm16
    c.extend_from_slice(&PANIC_PORT.to_le_bytes());
    c.push(0xee); // out dx, al
    c.extend_from_slice(&SPIN);
    c
}
