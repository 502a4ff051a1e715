//! An Intel CFI ("cfi01") NOR flash holding the VM's vars file: the device
//! behind OVMF's `QemuFlashFvbServicesRuntimeDxe`, mapped at 0xFFE00000
//! (0x20000 bytes) or 0xFFC00000 (0x84000 bytes, 4 MiB builds), 4 KiB blocks,
//! one byte wide. The whole region is trapped: every guest read and write
//! reaches [`Pflash::read`]/[`Pflash::write`] (offsets relative to the base).
//!
//! The device is a small state machine over a byte image:
//! - *read-array* (after reset and 0xFF): reads return image bytes;
//! - *status*: reads return the status byte in every byte lane; entered by
//!   0x70 (read status) and after every program or erase, left only by a
//!   command that returns to read-array (0xFF, 0x50);
//! - *program setup* (after 0x10 or 0x40): the next write programs one byte
//!   at its own address;
//! - *erase setup* (after 0x20): a 0xD0 write erases the 4 KiB block that
//!   holds its address to 0xFF; any other byte cancels back to read-array.
//!
//! What OVMF relies on (`OvmfPkg/QemuFlashFvbServicesRuntimeDxe/QemuFlash.c`):
//! - `QemuFlashDetected()`: scans block 0 for a byte not in {0x50, 0x70,
//!   0x00} (offset 0x10 in Debian's vars, 0x8D), writes 0x50 there and reads:
//!   it must read the *original* byte (0x50 clears the status *and* returns
//!   to read-array; reading 0x50 back means "RAM"). It then writes 0x70 and
//!   must read exactly 0x00, the cleared status ("FLASH"), and writes 0xFF.
//!   Any other answer (0x80 "ready" included) makes OVMF silently fall back
//!   to variables in RAM, so clear status really sets the status to 0 and
//!   nothing sets bit 7 but a program or erase.
//! - `QemuFlashWrite()`: per byte, 0x10 then the data at the same address;
//!   0xFF at the last byte when done. Status is never polled.
//! - `QemuFlashEraseBlock()`: 0x20 then 0xD0 at the block start. It does not
//!   write 0xFF afterwards, so reads right after an erase see the status
//!   (0x80) until the next command — exactly as on QEMU.
//! - `QemuFlashRead()` and the variable driver's init: plain loads (up to 8
//!   bytes wide) in read-array mode.
//!
//! Program semantics: real NOR flash can only clear bits, so a program
//! stores `old & new`; QEMU's model overwrites (`old = new`). The two agree
//! whenever OVMF's RAM cache of the store agrees with the flash, because
//! OVMF only ever programs erased bytes or clears state bits. When they
//! disagree (e.g. a RAM snapshot restored against a newer vars file), AND
//! never resurrects a cleared variable state bit (a DELETED variable cannot
//! become ADDED again), while overwrite can. AND is what the hardware does
//! and the safer of the two.
//!
//! Deliberately not modelled: device identification (0x90), CFI query
//! (0x98), buffered writes (0xE8), block locking (0x60/0x01/0xD0/0x2F),
//! suspend/resume (0xB0/0xD0), error status bits, timing, and "romd" mode
//! (this device is always fully trapped). Unknown commands are logged and
//! return to read-array. Multi-byte writes are not commands OVMF issues
//! (`QemuFlashPtrWrite()` stores single bytes); one is treated as its bytes
//! written in address order. Writes outside the image are ignored; reads
//! outside it return 0xFF.

/// Flash block (erase sector) size.
pub const BLOCK_SIZE: usize = 0x1000;

/// Command: read array.
pub const CMD_READ_ARRAY: u8 = 0xff;
/// Command: clear status (and read array).
pub const CMD_CLEAR_STATUS: u8 = 0x50;
/// Command: read status.
pub const CMD_READ_STATUS: u8 = 0x70;
/// Command: program one byte.
pub const CMD_PROGRAM: u8 = 0x10;
/// Command: program one byte (alternate code).
pub const CMD_PROGRAM_ALT: u8 = 0x40;
/// Command: block erase setup.
pub const CMD_ERASE: u8 = 0x20;
/// Command: block erase confirm.
pub const CMD_ERASE_CONFIRM: u8 = 0xd0;
/// Status bit 7: the write state machine is ready.
pub const STATUS_READY: u8 = 0x80;

/// Why an image cannot back the flash.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PflashError {
    /// The image is empty or not a whole number of 4 KiB blocks.
    #[error("flash image of {0:#x} bytes is not a non-zero multiple of 4 KiB")]
    BadSize(usize),
    /// A replacement image differs in size from the current one.
    #[error("replacement flash image of {got:#x} bytes, expected {expected:#x}")]
    SizeMismatch {
        /// The current image size.
        expected: usize,
        /// The replacement's size.
        got: usize,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    ReadArray,
    Status,
    ProgramSetup,
    EraseSetup,
}

/// The flash device.
#[derive(Debug)]
pub struct Pflash {
    image: Vec<u8>,
    mode: Mode,
    status: u8,
    dirty: bool,
    writes: u64,
}

impl Pflash {
    /// A flash over `image` in read-array mode with status 0.
    pub fn new(image: Vec<u8>) -> Result<Self, PflashError> {
        if image.is_empty() || !image.len().is_multiple_of(BLOCK_SIZE) {
            return Err(PflashError::BadSize(image.len()));
        }
        Ok(Pflash { image, mode: Mode::ReadArray, status: 0, dirty: false, writes: 0 })
    }

    /// The current contents.
    pub fn image(&self) -> &[u8] {
        &self.image
    }

    /// The image size in bytes.
    pub fn size(&self) -> usize {
        self.image.len()
    }

    /// Whether any program or erase happened since the last
    /// [`Pflash::take_dirty`] (or [`Pflash::replace_image`]).
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// [`Pflash::is_dirty`], clearing it.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// Program and erase operations since creation (for "flash writes per
    /// SetVariable" figures).
    pub fn writes(&self) -> u64 {
        self.writes
    }

    /// Whether reads return the image (not the status).
    pub fn in_read_array_mode(&self) -> bool {
        self.mode == Mode::ReadArray
    }

    /// Back to read-array with status 0, as after power-on (the lead uses
    /// it when restoring after a failed call).
    pub fn reset_mode(&mut self) {
        self.mode = Mode::ReadArray;
        self.status = 0;
    }

    /// Replaces the contents with `image` of the same size (a roll-back to
    /// the last committed image). Clears the dirty flag; the mode is
    /// unchanged (see [`Pflash::reset_mode`]).
    pub fn replace_image(&mut self, image: Vec<u8>) -> Result<(), PflashError> {
        if image.len() != self.image.len() {
            return Err(PflashError::SizeMismatch { expected: self.image.len(), got: image.len() });
        }
        self.image = image;
        self.dirty = false;
        Ok(())
    }

    /// A guest read of `data.len()` bytes at `offset`.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if self.mode == Mode::ReadArray {
            for (i, b) in data.iter_mut().enumerate() {
                let at = usize::try_from(offset).ok().and_then(|o| o.checked_add(i));
                *b = at.and_then(|a| self.image.get(a)).copied().unwrap_or(0xff);
            }
        } else {
            data.fill(self.status);
        }
    }

    /// A guest write of `data` at `offset`: each byte in address order.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        for (i, &value) in data.iter().enumerate() {
            match usize::try_from(offset).ok().and_then(|o| o.checked_add(i)).filter(|&a| a < self.image.len()) {
                Some(at) => self.write_byte(at, value),
                None => tracing::debug!(offset, i, value, "pflash: write outside the image ignored"),
            }
        }
    }

    fn write_byte(&mut self, at: usize, value: u8) {
        match self.mode {
            Mode::ProgramSetup => {
                let old = self.image[at];
                self.image[at] = old & value;
                tracing::debug!(at, old, value, "pflash: program");
                self.finish_operation();
            }
            Mode::EraseSetup if value == CMD_ERASE_CONFIRM => {
                let start = at - at % BLOCK_SIZE;
                self.image[start..start + BLOCK_SIZE].fill(0xff);
                tracing::debug!(block = start, "pflash: erase");
                self.finish_operation();
            }
            Mode::EraseSetup => {
                tracing::debug!(at, value, "pflash: erase not confirmed, back to read-array");
                self.mode = Mode::ReadArray;
            }
            Mode::ReadArray | Mode::Status => self.command(at, value),
        }
    }

    fn finish_operation(&mut self) {
        self.status |= STATUS_READY;
        self.mode = Mode::Status;
        self.dirty = true;
        self.writes += 1;
    }

    fn command(&mut self, at: usize, value: u8) {
        self.mode = match value {
            CMD_READ_ARRAY => Mode::ReadArray,
            CMD_CLEAR_STATUS => {
                self.status = 0;
                Mode::ReadArray
            }
            CMD_READ_STATUS => Mode::Status,
            CMD_PROGRAM | CMD_PROGRAM_ALT => Mode::ProgramSetup,
            CMD_ERASE => Mode::EraseSetup,
            _ => {
                tracing::debug!(at, value, "pflash: unsupported command, back to read-array");
                Mode::ReadArray
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Debian's vars (the first 128 KiB of OVMF.fd) if installed, else an
    /// image shaped like it at the probe: 16 zero bytes, then 0x8d.
    fn vars_image() -> Vec<u8> {
        match std::fs::read("/usr/share/ovmf/OVMF.fd") {
            Ok(fd) if fd.len() >= 0x20000 => fd[..0x20000].to_vec(),
            _ => {
                let mut img = vec![0xff; 0x20000];
                img[..16].fill(0);
                img[16] = 0x8d;
                img
            }
        }
    }

    fn read1(f: &mut Pflash, at: u64) -> u8 {
        let mut b = [0u8];
        f.read(at, &mut b);
        b[0]
    }

    /// Single-byte writes of `bytes`, all at `at` (how OVMF writes).
    fn write_seq(f: &mut Pflash, at: u64, bytes: &[u8]) {
        for b in bytes {
            f.write(at, &[*b]);
        }
    }

    /// `QemuFlashDetected()`, step by step; true = "FLASH".
    fn ovmf_probe(f: &mut Pflash) -> bool {
        let at = (0..BLOCK_SIZE as u64).find(|&o| !matches!(read1(f, o), 0x50 | 0x70 | 0x00)).expect("probe location");
        let original = read1(f, at);
        f.write(at, &[CMD_CLEAR_STATUS]);
        let probe = read1(f, at);
        if original != CMD_CLEAR_STATUS && probe == CMD_CLEAR_STATUS {
            return false; // RAM
        }
        assert_eq!(probe, original, "read-array after clear status");
        f.write(at, &[CMD_READ_STATUS]);
        if read1(f, at) != 0x00 {
            return false; // ROM, RAM or unknown
        }
        f.write(at, &[CMD_READ_ARRAY]);
        true
    }

    #[test]
    fn ovmf_probe_detects_flash() {
        let img = vars_image();
        let mut f = Pflash::new(img.clone()).unwrap();
        assert!(ovmf_probe(&mut f), "status 0x00 after clear status");
        assert!(f.in_read_array_mode());
        assert_eq!(f.image(), &img[..], "the probe changes nothing");
        assert!(!f.is_dirty());
        assert_eq!(f.writes(), 0);
        // Again after a program (status bit 7 set): clear status clears it.
        write_seq(&mut f, 0x20, &[CMD_PROGRAM, 0xff, CMD_READ_ARRAY]);
        assert!(ovmf_probe(&mut f));
    }

    #[test]
    fn program_ands_and_stays_in_status_mode() {
        let mut f = Pflash::new(vec![0xff; 0x20000]).unwrap();
        // QemuFlashWrite of 2 bytes.
        for (i, v) in [0x3cu8, 0xf0].iter().enumerate() {
            f.write(0x100 + i as u64, &[CMD_PROGRAM]);
            let before = if i == 0 { 0x00 } else { STATUS_READY };
            assert_eq!(read1(&mut f, 0x100), before, "status while program is set up");
            f.write(0x100 + i as u64, &[*v]);
            assert_eq!(read1(&mut f, 0x100), STATUS_READY, "status after program");
        }
        let mut wide = [0u8; 8];
        f.read(0x100, &mut wide);
        assert_eq!(wide, [STATUS_READY; 8], "status in every lane");
        f.write(0x101, &[CMD_READ_ARRAY]);
        assert_eq!(read1(&mut f, 0x100), 0x3c);
        assert_eq!(read1(&mut f, 0x101), 0xf0);
        // Programming can only clear bits: a variable state byte 0x3f
        // (ADDED) cleared to 0x3c (DELETED) stays deleted whatever the
        // cache believes.
        write_seq(&mut f, 0x100, &[CMD_PROGRAM_ALT, 0xff, CMD_READ_ARRAY]);
        assert_eq!(read1(&mut f, 0x100), 0x3c);
        write_seq(&mut f, 0x100, &[CMD_PROGRAM, 0x0f, CMD_READ_ARRAY]);
        assert_eq!(read1(&mut f, 0x100), 0x0c);
        assert_eq!(f.writes(), 4);
        assert!(f.take_dirty());
        assert!(!f.take_dirty());
    }

    #[test]
    fn erase_fills_the_block_and_leaves_status_mode() {
        let mut f = Pflash::new(vec![0u8; 0x20000]).unwrap();
        // QemuFlashEraseBlock(Lba 2), at the block start.
        f.write(0x2000, &[CMD_ERASE]);
        f.write(0x2000, &[CMD_ERASE_CONFIRM]);
        assert_eq!(read1(&mut f, 0x2000), STATUS_READY, "OVMF does not write 0xFF after an erase");
        assert!(!f.in_read_array_mode());
        f.write(0, &[CMD_READ_ARRAY]);
        assert!(f.image()[0x2000..0x3000].iter().all(|&b| b == 0xff));
        assert_eq!(f.image()[0x1fff], 0);
        assert_eq!(f.image()[0x3000], 0);
        // An erase confirmed in the middle of a block erases that block.
        write_seq(&mut f, 0x5123, &[CMD_ERASE, CMD_ERASE_CONFIRM, CMD_READ_ARRAY]);
        assert!(f.image()[0x5000..0x6000].iter().all(|&b| b == 0xff));
        // Erase not confirmed: nothing erased, back to read-array.
        write_seq(&mut f, 0x7000, &[CMD_ERASE, 0x00]);
        assert!(f.in_read_array_mode());
        assert_eq!(f.image()[0x7000], 0);
        assert_eq!(f.writes(), 2);
    }

    #[test]
    fn odd_commands_sizes_and_offsets() {
        let mut img = vec![0u8; 0x20000];
        img[0x1fff8..].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        img[0x41] = 0xf0;
        let mut f = Pflash::new(img.clone()).unwrap();
        for cmd in [0x90u8, 0x98, 0xe8, 0x60, 0x01, 0xd0, 0x00] {
            f.write(0x10, &[CMD_READ_STATUS]);
            f.write(0x10, &[cmd]);
            assert!(f.in_read_array_mode(), "unknown command {cmd:#x} returns to read-array");
        }
        assert_eq!(f.image(), &img[..], "commands don't change the array");
        // Reads across the end of the image; reads far outside it.
        let mut wide = [0u8; 8];
        f.read(0x1fffc, &mut wide);
        assert_eq!(wide, [5, 6, 7, 8, 0xff, 0xff, 0xff, 0xff]);
        f.read(u64::MAX, &mut wide);
        assert_eq!(wide, [0xff; 8]);
        // Writes outside the image are ignored, commands included.
        f.write(0x20000, &[CMD_PROGRAM]);
        write_seq(&mut f, u64::MAX - 1, &[CMD_ERASE, CMD_ERASE_CONFIRM]);
        assert!(f.in_read_array_mode());
        // A multi-byte write is its bytes in order: program setup, then data.
        f.write(0x40, &[CMD_PROGRAM, 0x3c]);
        f.write(0x40, &[CMD_READ_ARRAY]);
        assert_eq!(f.image()[0x40], 0x00);
        assert_eq!(f.image()[0x41], 0x30);
        f.write(0x40, &0xab10u16.to_le_bytes());
        assert_eq!(f.image()[0x41], 0x20);
        assert_eq!(f.writes(), 2);
        f.write(0, &[]);
        f.read(0, &mut []);
        // Reset and roll back.
        f.write(0x40, &[CMD_READ_STATUS]);
        f.reset_mode();
        assert!(f.in_read_array_mode());
        f.write(0x40, &[CMD_READ_STATUS]);
        assert_eq!(read1(&mut f, 0x40), 0, "reset_mode clears the status");
        assert!(f.is_dirty());
        f.replace_image(img.clone()).unwrap();
        assert!(!f.is_dirty());
        assert_eq!(f.image(), &img[..]);
        assert_eq!(f.replace_image(vec![0; 0x1000]), Err(PflashError::SizeMismatch { expected: 0x20000, got: 0x1000 }));
        assert_eq!(Pflash::new(vec![0; 0x1001]).unwrap_err(), PflashError::BadSize(0x1001));
        assert!(Pflash::new(Vec::new()).is_err());
        assert!(Pflash::new(vec![0xff; 0x84000]).is_ok());
    }
}
