//! CMOS RAM and a read-only MC146818 RTC showing the host's UTC time, so a guest that asks
//! the RTC for the wall clock gets a sane answer and never sees update-in-progress forever.

use std::time::{SystemTime, UNIX_EPOCH};

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;

/// Register A: 32.768 kHz time base, 1024 Hz rate, update never in progress.
const REG_A_VALUE: u8 = 0x26;
/// Register B: 24-hour mode, BCD.
const REG_B_VALUE: u8 = 0x02;
/// Register D: RAM and time valid.
const REG_D_VALUE: u8 = 0x80;

/// CMOS state: the selected index and 128 bytes of RAM.
#[derive(Debug)]
pub struct Cmos {
    index: u8,
    ram: [u8; 128],
}

impl Default for Cmos {
    fn default() -> Self {
        Cmos {
            index: 0,
            ram: [0; 128],
        }
    }
}

impl Cmos {
    /// Writes the index (`false`, bit 7 is the NMI mask) or data (`true`) port.
    pub fn write(&mut self, data_port: bool, value: u8) {
        if data_port {
            // Time and status registers are read-only views of the host clock.
            if self.index > REG_D && self.index != REG_CENTURY {
                self.ram[usize::from(self.index)] = value;
            }
        } else {
            self.index = value & 0x7f;
        }
    }

    /// Reads the index (`false`) or data (`true`) port.
    pub fn read(&mut self, data_port: bool) -> u8 {
        if !data_port {
            return self.index;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let t = civil(now);
        match self.index {
            REG_SECONDS => bcd(t.second),
            REG_MINUTES => bcd(t.minute),
            REG_HOURS => bcd(t.hour),
            REG_WEEKDAY => bcd(t.weekday),
            REG_DAY => bcd(t.day),
            REG_MONTH => bcd(t.month),
            REG_YEAR => bcd((t.year % 100) as u8),
            REG_CENTURY => bcd((t.year / 100) as u8),
            REG_A => REG_A_VALUE,
            REG_B => REG_B_VALUE,
            REG_C => 0,
            REG_D => REG_D_VALUE,
            i => self.ram[usize::from(i)],
        }
    }
}

fn bcd(v: u8) -> u8 {
    ((v / 10) << 4) | (v % 10)
}

/// A broken-down UTC time.
#[derive(Debug, PartialEq, Eq)]
struct Civil {
    year: u32,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    second: u8,
    /// 1 = Sunday, as the RTC counts.
    weekday: u8,
}

/// Converts seconds since the epoch to a UTC date (days-to-civil over 400-year eras).
fn civil(secs: u64) -> Civil {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // 1970-01-01 was a Thursday (weekday 5 when Sunday is 1).
    let weekday = ((days + 4) % 7) as u8 + 1;
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = (yoe + era * 400 + u64::from(month <= 2)) as u32;
    Civil {
        year,
        month,
        day,
        hour: (rem / 3600) as u8,
        minute: (rem % 3600 / 60) as u8,
        second: (rem % 60) as u8,
        weekday,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(
            civil(0),
            Civil {
                year: 1970,
                month: 1,
                day: 1,
                hour: 0,
                minute: 0,
                second: 0,
                weekday: 5
            }
        );
        // 2024-02-29 12:34:56 UTC, a Thursday.
        let c = civil(1_709_210_096);
        assert_eq!((c.year, c.month, c.day), (2024, 2, 29));
        assert_eq!((c.hour, c.minute, c.second, c.weekday), (12, 34, 56, 5));
    }

    #[test]
    fn registers() {
        let mut c = Cmos::default();
        c.write(false, REG_A | 0x80);
        assert_eq!(c.read(true) & 0x80, 0, "never update-in-progress");
        c.write(false, 0x40);
        c.write(true, 0x99);
        assert_eq!(c.read(true), 0x99);
        c.write(false, REG_MONTH);
        let m = c.read(true);
        assert!((0x01..=0x12).contains(&m));
    }
}
