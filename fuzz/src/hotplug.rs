//! The CPU-hotplug controller under arbitrary guest access sequences.

use std::time::Duration;
use vcpu_sync::sim::{KickMode, SimBackend};
use vcpu_sync::{
    Life, WriteEffect, REG_SELECT, REG_STATUS, STATUS_ENABLED, STATUS_INSERTING, STATUS_REMOVING,
};

const MAX_VCPUS: usize = 4;

/// Interprets `data` as a sequence of guest register accesses interleaved with the VMM's
/// hotplug requests, on a 4-slot VM with 2 running simulated vCPUs. Checks the invariants a
/// guest must never be able to break: no panic, status carries only defined bits, the
/// selection reads back what was written, an eject only takes effect after a removal
/// request, and the VM still pauses and shuts down cleanly afterwards.
pub fn hotplug_mmio(data: &[u8]) {
    let (vcpus, sim) = SimBackend::create(MAX_VCPUS, KickMode::ImmediateExit, false);
    for i in 0..2 {
        if vcpus.start(i).is_err() {
            unreachable!("fresh slots start");
        }
    }
    let mut selected: u32 = 0;
    let mut bytes = data.iter().copied();
    while let Some(op) = bytes.next() {
        let arg = bytes.next().unwrap_or(0);
        match op % 6 {
            // A read of any offset/size.
            0 => {
                let offset = u64::from(arg & 0x0f);
                let size = usize::from(op >> 3) % 9;
                let mut buf = vec![0xa5u8; size];
                vcpus.hotplug_read(offset, &mut buf);
                match (offset, size) {
                    (REG_SELECT, 4) => assert_eq!(buf, selected.to_le_bytes()),
                    (REG_STATUS, 1) => {
                        assert_eq!(
                            buf[0] & !(STATUS_ENABLED | STATUS_INSERTING | STATUS_REMOVING),
                            0
                        );
                        if selected as usize >= MAX_VCPUS {
                            assert_eq!(buf[0], 0);
                        }
                    }
                    _ => assert!(buf.iter().all(|&b| b == 0), "stray read returned data"),
                }
            }
            // Select: four more bytes of value.
            1 => {
                let mut v = [arg, 0, 0, 0];
                for b in v.iter_mut().skip(1) {
                    *b = bytes.next().unwrap_or(0);
                }
                assert_eq!(
                    vcpus.hotplug_write(REG_SELECT, &v),
                    WriteEffect::Selected(u32::from_le_bytes(v))
                );
                selected = u32::from_le_bytes(v);
            }
            // A status write of any value.
            2 => {
                let before = (selected as usize) < MAX_VCPUS
                    && vcpus.report(selected as usize).remove_requested;
                let effect = vcpus.hotplug_write(REG_STATUS, &[arg]);
                if let WriteEffect::Ejected(i) = effect {
                    assert!(before, "ejected vCPU {i} without a removal request");
                }
            }
            // A write of any other offset/size.
            3 => {
                let offset = u64::from(arg);
                let size = usize::from(op >> 3) % 9;
                let effect = vcpus.hotplug_write(offset, &vec![arg; size]);
                if !matches!((offset, size), (REG_SELECT, 4) | (REG_STATUS, 1)) {
                    assert_eq!(effect, WriteEffect::None);
                } else if offset == REG_SELECT {
                    selected = u32::from_le_bytes([arg; 4]);
                }
            }
            // The VMM asks for a hot-add or a removal of some slot.
            4 => {
                let i = usize::from(arg) % (MAX_VCPUS + 1);
                let _ = if op & 0x80 == 0 {
                    vcpus.hot_add(i).map(|_| ())
                } else {
                    vcpus.request_removal(i)
                };
            }
            // The VMM reaps ejected vCPUs.
            _ => {
                let _ = vcpus.reap();
            }
        }
    }
    if let Err(e) = vcpus.pause(Duration::from_secs(10)) {
        panic!("pause after guest input failed: {e}");
    }
    vcpus.resume();
    if let Err(e) = vcpus.shutdown(Duration::from_secs(10)) {
        panic!("shutdown after guest input failed: {e}");
    }
    assert!(vcpus.reports().iter().all(|r| r.life == Life::Absent));
    sim.detach();
}
