//! The guest's legacy devices, on port I/O: a 16550 UART (COM1, through
//! `vm-superio`), the i8042 reset line, and a CMOS real-time clock that Linux
//! can read. Everything else on the port bus reads as all-ones.
//!
//! Console input (efivmm's stdin) waits in a bounded queue and moves into the
//! UART's 64-byte receive FIFO as the guest drains it. Output goes to a
//! writer that never blocks ([`super::serial_out`]): these devices sit
//! behind a lock every vCPU and the event loop take.

use std::collections::VecDeque;
use std::io::Write;

use sandbox_abi::time::civil_from_days;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

/// COM1's first port.
pub const COM1: u16 = 0x3f8;
/// The i8042 command/status port.
pub const I8042_COMMAND: u16 = 0x64;
/// The CMOS index and data ports.
pub const CMOS_INDEX: u16 = 0x70;
/// The CMOS data port.
pub const CMOS_DATA: u16 = 0x71;

/// An interrupt line: an eventfd registered as an irqfd.
pub struct IrqLine(pub EventFd);

impl Trigger for IrqLine {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// What a port write asked of the VMM.
#[derive(Debug, PartialEq, Eq)]
pub enum PortEffect {
    /// Nothing beyond the device's own state.
    None,
    /// The guest pulsed the i8042 reset line.
    Reset,
}

/// Most console input bytes held back while the UART's FIFO is full.
pub const INPUT_QUEUE_MAX: usize = 64 * 1024;

/// The port-I/O devices of a guest.
pub struct LegacyDevices {
    serial: Serial<IrqLine, vm_superio::serial::NoEvents, Box<dyn Write + Send>>,
    cmos_index: u8,
    input: VecDeque<u8>,
}

impl LegacyDevices {
    /// Devices with the serial port writing to `out` and raising `irq`.
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> Self {
        LegacyDevices { serial: Serial::new(IrqLine(irq), out), cmos_index: 0, input: VecDeque::new() }
    }

    /// Console input for the guest; returns how many bytes were dropped
    /// because the queue was full.
    pub fn queue_input(&mut self, bytes: &[u8]) -> usize {
        let room = INPUT_QUEUE_MAX - self.input.len();
        let taken = bytes.len().min(room);
        self.input.extend(&bytes[..taken]);
        self.feed_fifo();
        bytes.len() - taken
    }

    /// Moves queued input into the UART's receive FIFO (raising its interrupt).
    fn feed_fifo(&mut self) {
        while !self.input.is_empty() && self.serial.fifo_capacity() > 0 {
            let (front, _) = self.input.as_slices();
            let chunk = front.len().min(self.serial.fifo_capacity());
            match self.serial.enqueue_raw_bytes(&front[..chunk]) {
                Ok(n) => drop(self.input.drain(..n)),
                Err(e) => {
                    tracing::warn!("serial input: {e:?}");
                    break;
                }
            }
        }
    }

    /// A guest write of `data` to `port`.
    pub fn write(&mut self, port: u16, data: &[u8]) -> PortEffect {
        let value = data.first().copied().unwrap_or(0);
        match port {
            COM1..=0x3ff => {
                if let Err(e) = self.serial.write((port - COM1) as u8, value) {
                    tracing::warn!("serial: {e:?}");
                }
                let _ = self.serial.writer_mut().flush();
            }
            I8042_COMMAND if value == 0xfe => return PortEffect::Reset,
            CMOS_INDEX => self.cmos_index = value & 0x7f,
            _ => {}
        }
        PortEffect::None
    }

    /// A guest read from `port` into `data`.
    pub fn read(&mut self, port: u16, data: &mut [u8]) {
        let value = match port {
            COM1..=0x3ff => {
                let value = self.serial.read((port - COM1) as u8);
                self.feed_fifo();
                value
            }
            I8042_COMMAND => 0, // output buffer empty, input buffer empty
            CMOS_DATA => cmos_register(self.cmos_index, crate::firmware::host_time_ns()),
            _ => 0xff,
        };
        data.iter_mut().for_each(|b| *b = 0xff);
        if let Some(b) = data.first_mut() {
            *b = value;
        }
    }
}

fn bcd(v: u64) -> u8 {
    (((v / 10) << 4) | (v % 10)) as u8
}

/// A CMOS RTC register at `unix_ns` (UTC): BCD time and date, 24-hour mode,
/// no update in progress.
pub fn cmos_register(index: u8, unix_ns: i64) -> u8 {
    let secs = unix_ns.max(0) as u64 / 1_000_000_000;
    let days = secs / 86_400;
    // `days` < 2^64 / 86400 cannot overflow the conversion.
    let (year, month, day) =
        civil_from_days(days as i64).map_or((1970, 1, 1), |(y, m, d)| (y as u64, m as u64, d as u64));
    match index {
        0x00 => bcd(secs % 60),
        0x02 => bcd(secs / 60 % 60),
        0x04 => bcd(secs / 3600 % 24),
        0x06 => bcd((days + 4) % 7 + 1), // 1970-01-01 was a Thursday (day 5)
        0x07 => bcd(day),
        0x08 => bcd(month),
        0x09 => bcd(year % 100),
        0x32 => bcd(year / 100),
        0x0a => 0x26, // divider on, no update in progress
        0x0b => 0x02, // 24-hour, BCD
        0x0d => 0x80, // RTC power good
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn serial_output_reset_and_rtc() {
        let sink = Sink::default();
        let mut d = LegacyDevices::new(EventFd::new(0).unwrap(), Box::new(sink.clone()));
        for b in b"hi\n" {
            assert_eq!(d.write(COM1, &[*b]), PortEffect::None);
        }
        assert_eq!(&sink.0.lock().unwrap()[..], b"hi\n");
        let mut lsr = [0u8];
        d.read(COM1 + 5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0, "transmitter ready");
        assert_eq!(d.write(I8042_COMMAND, &[0xfe]), PortEffect::Reset);
        // 2024-02-29T13:14:15Z.
        let t = 1_709_212_455_000_000_000;
        let regs: Vec<u8> = [0x00, 0x02, 0x04, 0x07, 0x08, 0x09, 0x32].iter().map(|&i| cmos_register(i, t)).collect();
        assert_eq!(regs, [0x15, 0x14, 0x13, 0x29, 0x02, 0x24, 0x20]);
        assert_eq!(cmos_register(0x06, t), 5, "a Thursday");
    }

    #[test]
    fn console_input_waits_for_the_fifo_and_is_bounded() {
        let mut d = LegacyDevices::new(EventFd::new(0).unwrap(), Box::new(Sink::default()));
        let text: Vec<u8> = (0..200u8).collect();
        assert_eq!(d.queue_input(&text), 0);
        // The guest reads the receive buffer register until LSR says empty.
        let mut got = Vec::new();
        loop {
            let mut lsr = [0u8];
            d.read(COM1 + 5, &mut lsr);
            if lsr[0] & 1 == 0 {
                break;
            }
            let mut b = [0u8];
            d.read(COM1, &mut b);
            got.push(b[0]);
        }
        assert_eq!(got, text, "every byte, in order, across FIFO refills");
        assert_eq!(d.queue_input(&vec![b'x'; INPUT_QUEUE_MAX + 10]), 10);
    }
}
