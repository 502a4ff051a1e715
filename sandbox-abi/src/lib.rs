//! The call protocol between efivmm and the runtime firmware in the sandbox VM.
//!
//! The sandbox is a KVM VM of its own, [`SANDBOX_MEM_SIZE`] bytes of memory,
//! identity-mapped (virtual == physical) by page tables efivmm builds. The
//! firmware runs at CPL3. One call goes like this:
//!
//! 1. efivmm fills the [`Mailbox`] header at [`MAILBOX_ADDR`] (service,
//!    arguments, host clock, its vouch for the store it validated) and the
//!    input buffers ([`NAME_ADDR`], [`DATA_IN_ADDR`]); the vars file image
//!    sits at [`STORE_ADDR`].
//! 2. efivmm runs the vCPU: the first time (and after a failed call) through
//!    a CPL0 stub that loads TR and drops to the firmware's ELF entry at CPL3
//!    with `RSP = STACK_TOP - 8`; after a completed call the firmware waits
//!    at its entry and efivmm just resumes it.
//! 3. The firmware serves the call, writes `status`, `outs` and the output
//!    buffers ([`NAME_ADDR`] for GetNextVariableName, [`DATA_OUT_ADDR`]), sets
//!    `store_dirty` if it changed the store, and does `out DOORBELL_PORT, al`.
//! 4. Any other exit (an exception reported by the CPL0 handler on
//!    [`EXCEPTION_PORT`], a stray port, a hang past the deadline) fails the
//!    call with `EFI_DEVICE_ERROR`; efivmm restores the sandbox.
//!
//! The firmware keeps no state between calls outside the store: everything
//! persistent (time offset, wake-up time, monotonic counter) is a variable.
//!
//! The same mailbox serves an external firmware (OVMF): its loader
//! (`ovmf-loader/`) allocates a block of its own and reports it with
//! [`LOADER_READY`]; the buffers then sit at [`NAME_OFFSET`],
//! [`DATA_IN_OFFSET`] and [`DATA_OUT_OFFSET`] from the block's start, and
//! the firmware's store is its flash, not [`STORE_ADDR`].
//!
//! ## Argument encoding per service
//!
//! `flags` (in `args[7]`) says which pointer arguments the caller passed as
//! non-NULL: bit *n* = [`FLAG_P0`] `<< n` for the *n*-th pointer argument of
//! the UEFI prototype, counting only pointer arguments, in prototype order.
//! GUIDs travel as two little-endian `u64` halves of the 16 GUID bytes;
//! `EFI_TIME` as two `u64` halves of its 16 bytes.
//!
//! | service | inputs | outputs |
//! |---|---|---|
//! | GetVariable(Name, Guid, *Attr, *DataSize, Data) | name at NAME (`args[0]` bytes), guid `args[1..3]`, `*DataSize` in `args[3]` | `outs[0]` attributes, `outs[1]` DataSize; data at DATA_OUT |
//! | GetNextVariableName(*NameSize, Name, *Guid) | `*NameSize` in `args[0]`; the caller's name buffer copied to NAME, `args[3]` = bytes copied (`min(*NameSize, NAME_SIZE)`); guid `args[1..3]` | new name at NAME, `outs[1]` new NameSize (needed size on `EFI_BUFFER_TOO_SMALL`), guid `outs[2..4]` |
//! | SetVariable(Name, Guid, Attr, DataSize, Data) | name at NAME (`args[0]` bytes), guid `args[1..3]`, `args[3]` attributes, `args[4]` DataSize, data at DATA_IN | |
//! | QueryVariableInfo(Attr, *MaxStorage, *Remaining, *MaxVarSize) | `args[0]` attributes | `outs[0..3]` |
//! | GetTime(*Time, *Caps) | | time `outs[0..2]`, caps: `outs[2]` resolution, `outs[3]` accuracy, `outs[4]` sets-to-zero |
//! | SetTime(*Time) | time `args[0..2]` | |
//! | GetWakeupTime(*Enabled, *Pending, *Time) | | `outs[0]` enabled, `outs[1]` pending, time `outs[2..4]` |
//! | SetWakeupTime(Enable, *Time) | `args[0]` enable, time `args[1..3]` | |
//! | GetNextHighMonotonicCount(*High) | `args[0]` values to reserve (0 or 1: one; efivmm's extension, see the firmware's `counter.rs`) | `outs[0]` the value, `outs[1]` the last value reserved |
//! | ResetSystem(Type, Status, DataSize, Data) | `args[0]` type, `args[1]` status, `args[2]` DataSize, data at DATA_IN | `outs[0]` = 1 if a reset is requested, `outs[1]` type, `outs[2]` status, `outs[3]` DataSize |
//! | UpdateCapsule(**Headers, Count, SgList) | `args[0]` count, `args[1]` SgList value; the capsule headers (28 bytes each) at DATA_IN | |
//! | QueryCapsuleCapabilities(**Headers, Count, *MaxSize, *ResetType) | `args[0]` count; headers at DATA_IN | `outs[0]` max size, `outs[1]` reset type |
//!
//! ## Buffers between calls
//!
//! efivmm writes exactly the name and input data of a call and zeroes what
//! is left of the previous call's longer input in NAME and DATA_IN; the
//! firmware must still take lengths from `args`, never from the buffers'
//! contents. The firmware's `.data`/`.bss` are reset from the image before
//! every call (its text and rodata are read-only), so no firmware state
//! survives a call except the store and DATA_OUT; DATA_OUT and NAME are
//! zeroed after a failed call (see `efivmm::sandbox`).
//!
//! Names are UTF-16LE including the terminating NUL, exactly as the caller
//! gave them (efivmm copies up to and including the first NUL it finds within
//! `NAME_SIZE` bytes; without one, it passes the bytes it has and the firmware
//! rejects the name).
#![no_std]
#![forbid(unsafe_code)]

pub mod time;

/// Bytes of memory of the sandbox VM (guest-physical `0..SANDBOX_MEM_SIZE`).
pub const SANDBOX_MEM_SIZE: u64 = 16 << 20;

/// Global descriptor table (CPL0 only).
pub const GDT_ADDR: u64 = 0x1000;
/// Task-state segment (holds RSP0 for exceptions).
pub const TSS_ADDR: u64 = 0x2000;
/// Interrupt descriptor table (CPL0 only).
pub const IDT_ADDR: u64 = 0x3000;
/// The CPL0 exception stubs, 16 bytes per vector.
pub const EXCEPTION_STUBS_ADDR: u64 = 0x4000;
/// Top of the CPL0 stack the CPU switches to on an exception.
pub const KERNEL_STACK_TOP: u64 = 0x7000;
/// First page-table page (PML4); the rest follow.
pub const PAGE_TABLES_ADDR: u64 = 0x8000;

/// Where the firmware image is linked and loaded.
pub const FIRMWARE_ADDR: u64 = 0x10_0000;
/// End of the firmware image region (code, data, bss).
pub const FIRMWARE_END: u64 = 0x30_0000;
/// Lowest address of the firmware's stack.
pub const STACK_BOTTOM: u64 = 0x30_0000;
/// Top of the firmware's stack; the vCPU starts with `RSP = STACK_TOP - 8`.
pub const STACK_TOP: u64 = 0x34_0000;

/// The [`Mailbox`] header.
pub const MAILBOX_ADDR: u64 = 0x34_0000;
/// Variable-name buffer (UTF-16LE, input and output).
pub const NAME_ADDR: u64 = 0x34_1000;
/// Size of the variable-name buffer.
pub const NAME_SIZE: u64 = 0x1_0000;
/// Input data buffer.
pub const DATA_IN_ADDR: u64 = 0x36_0000;
/// Output data buffer.
pub const DATA_OUT_ADDR: u64 = 0x46_0000;
/// Size of each data buffer.
pub const DATA_SIZE: u64 = 0x10_0000;
/// The firmware's heap (PKCS#7 and X.509 parsing, RSA arithmetic for
/// authenticated variables). The firmware's allocator lives in `.bss`, which
/// is reset before every call, so the heap starts empty every call; its
/// bytes are not cleared (nothing reads memory it did not write).
pub const HEAP_ADDR: u64 = DATA_OUT_ADDR + DATA_SIZE;
/// Size of the heap: the gap between DATA_OUT and the store.
pub const HEAP_SIZE: u64 = STORE_ADDR - HEAP_ADDR;
/// The vars file image (its full bytes, as on disk).
pub const STORE_ADDR: u64 = 0x60_0000;
/// Largest vars file image the sandbox holds.
pub const STORE_MAX: u64 = 0xA0_0000;

/// The firmware writes any byte here when it has finished a call.
pub const DOORBELL_PORT: u16 = 0x00E1;
/// The CPL0 exception stub for vector `v` writes `v` here.
pub const EXCEPTION_PORT: u16 = 0x0EF2;

/// The fast path (built-in firmware only): four `u64` words in the
/// mailbox's page, after the header. With [`POLL_WINDOW`] non-zero, the
/// firmware does not ring the doorbell after a call: it writes the request
/// number it served to [`POLL_DONE`] and spins (reading [`POLL_REQUEST`])
/// for up to `POLL_WINDOW` TSC ticks, serving the next request without any
/// exit. When the window passes it writes [`POLL_PARKING`] to
/// [`POLL_STATE`], fences, looks at `POLL_REQUEST` once more, and only then
/// rings the doorbell to park; efivmm runs it again for the next request.
/// efivmm writes `POLL_REQUEST` (after the mailbox and buffers) and reads
/// `POLL_STATE` after a fence: one of the two sides always sees the other's
/// write, so no request waits for a parked firmware. See
/// `efivmm::sandbox::poller`.
pub const POLL_REQUEST: u64 = MAILBOX_ADDR + 0x800;
/// The last request number the firmware completed (written by the firmware).
pub const POLL_DONE: u64 = MAILBOX_ADDR + 0x808;
/// [`POLL_POLLING`] or [`POLL_PARKING`] (written by the firmware).
pub const POLL_STATE: u64 = MAILBOX_ADDR + 0x810;
/// How long the firmware polls after a call, in TSC ticks; 0: no fast path
/// (the doorbell after every call).
pub const POLL_WINDOW: u64 = MAILBOX_ADDR + 0x818;
/// The firmware is running or polling: a new request needs no wake-up.
pub const POLL_POLLING: u64 = 0;
/// The firmware parked, or is about to: a new request must run the vCPU.
pub const POLL_PARKING: u64 = 1;

/// Offset of the name buffer from the mailbox header. An external firmware's
/// loader (`ovmf-loader`) serves the same mailbox from a block it allocates
/// itself: the header at the block's start and the buffers at these offsets.
pub const NAME_OFFSET: u64 = NAME_ADDR - MAILBOX_ADDR;
/// Offset of the input data buffer from the mailbox header.
pub const DATA_IN_OFFSET: u64 = DATA_IN_ADDR - MAILBOX_ADDR;
/// Offset of the output data buffer from the mailbox header.
pub const DATA_OUT_OFFSET: u64 = DATA_OUT_ADDR - MAILBOX_ADDR;
/// Bytes of a mailbox block (header and the three buffers).
pub const MAILBOX_BLOCK_SIZE: u64 = DATA_OUT_OFFSET + DATA_SIZE;

/// The loader of an external firmware rings the doorbell with this value in
/// RDI once the firmware is at runtime (after ExitBootServices and the one
/// identity SetVirtualAddressMap): RSI = the mailbox block's address, RDX =
/// the EFI system table, RCX = SetVirtualAddressMap's status, R8 = a copy of
/// the whole memory map ExitBootServices saw (in loader memory), R9 = its
/// size in bytes, R10 = the size of one descriptor. From this doorbell on the
/// loader runs on a stack of [`LOADER_STACK_SIZE`] bytes of its own loader
/// memory (`EfiLoaderData`), so everything it and the firmware's runtime
/// touch lies in runtime or loader memory. Every later doorbell from it ends
/// a call, with [`LOADER_REPLY`] in RDI.
pub const LOADER_READY: u64 = 0x5944_4145_5244_4c45; // "ELDRAEDY"
/// The loader's own stack from [`LOADER_READY`] on.
pub const LOADER_STACK_SIZE: u64 = 256 << 10;
/// RDI of the loader's doorbell that ends a call.
pub const LOADER_REPLY: u64 = 0x594c_5045_5244_4c45;
/// RDI of the loader's doorbell when it cannot bring the firmware to runtime:
/// RSI = the step that failed ([`LoaderStep`]), RDX = the EFI status.
pub const LOADER_FAILED: u64 = 0x4c49_4146_5244_4c45;
/// The port an external firmware's loader may write text to (one byte per
/// `out`; QEMU's debugcon convention). efivmm logs it.
pub const DEBUGCON_PORT: u16 = 0x0402;

/// Steps of the loader, reported with [`LOADER_FAILED`].
#[repr(u64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoaderStep {
    /// Allocating the mailbox block.
    AllocateMailbox = 1,
    /// Reading the memory map.
    GetMemoryMap = 2,
    /// ExitBootServices.
    ExitBootServices = 3,
    /// SetVirtualAddressMap with the identity map.
    SetVirtualAddressMap = 4,
}

impl LoaderStep {
    /// The step for a number, if any.
    pub fn from_u64(n: u64) -> Option<Self> {
        Some(match n {
            1 => LoaderStep::AllocateMailbox,
            2 => LoaderStep::GetMemoryMap,
            3 => LoaderStep::ExitBootServices,
            4 => LoaderStep::SetVirtualAddressMap,
            _ => return None,
        })
    }
}

/// `Mailbox::magic` value written by efivmm for every call.
pub const MAILBOX_MAGIC: u64 = 0x7865_6f62_6c69_616d; // "mailboex" little-endian-ish

/// Pointer-argument presence bits (in `args[FLAGS_ARG]`).
pub const FLAG_P0: u64 = 1;
/// Index of `args` that holds the pointer-presence flags.
pub const FLAGS_ARG: usize = 7;

/// The mailbox header at [`MAILBOX_ADDR`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mailbox {
    /// [`MAILBOX_MAGIC`].
    pub magic: u64,
    /// A [`Service`] number.
    pub service: u64,
    /// Inputs, see the table in the crate docs.
    pub args: [u64; 8],
    /// The host's clock (UTC) at the time of the call, ns since the Unix epoch.
    pub host_time_unix_ns: i64,
    /// Length in bytes of the vars file image at [`STORE_ADDR`].
    pub store_len: u64,
    /// Result: an `EFI_STATUS`.
    pub status: u64,
    /// Outputs, see the table in the crate docs.
    pub outs: [u64; 8],
    /// Non-zero if the firmware changed the store (efivmm then persists it).
    pub store_dirty: u64,
    /// Input: efivmm's word for the store at [`STORE_ADDR`], which it
    /// validated (`varstore::Vouch::to_word`: where the free area starts,
    /// bit 63 if it holds anything but 0xFF), or 0 for none. With a vouch
    /// the built-in firmware opens the store with a walk over the record
    /// headers instead of a full validation on every call.
    pub store_vouch: u64,
}

/// Size in bytes of [`Mailbox`].
pub const MAILBOX_LEN: usize = core::mem::size_of::<Mailbox>();

impl Mailbox {
    /// The header as bytes (for copying into sandbox memory).
    pub fn to_bytes(&self) -> [u8; MAILBOX_LEN] {
        let mut out = [0u8; MAILBOX_LEN];
        let words = self.words();
        for (i, w) in words.iter().enumerate() {
            out[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
        out
    }

    /// Parses a header from bytes.
    pub fn from_bytes(b: &[u8; MAILBOX_LEN]) -> Self {
        let w = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap());
        let mut m = Mailbox {
            magic: w(0),
            service: w(1),
            host_time_unix_ns: w(10) as i64,
            store_len: w(11),
            status: w(12),
            store_dirty: w(21),
            store_vouch: w(22),
            ..Default::default()
        };
        for i in 0..8 {
            m.args[i] = w(2 + i);
            m.outs[i] = w(13 + i);
        }
        m
    }

    fn words(&self) -> [u64; MAILBOX_LEN / 8] {
        let mut w = [0u64; MAILBOX_LEN / 8];
        w[0] = self.magic;
        w[1] = self.service;
        w[2..10].copy_from_slice(&self.args);
        w[10] = self.host_time_unix_ns as u64;
        w[11] = self.store_len;
        w[12] = self.status;
        w[13..21].copy_from_slice(&self.outs);
        w[21] = self.store_dirty;
        w[22] = self.store_vouch;
        w
    }

    /// Whether pointer argument `n` (see [`FLAG_P0`]) was passed non-NULL.
    pub fn has_ptr(&self, n: u32) -> bool {
        self.args[FLAGS_ARG] & (FLAG_P0 << n) != 0
    }
}

/// Service numbers: the index of the service in `EFI_RUNTIME_SERVICES`
/// (after the table header), plus efivmm's diagnostics from 0x100.
#[repr(u64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Service {
    GetTime = 0,
    SetTime = 1,
    GetWakeupTime = 2,
    SetWakeupTime = 3,
    /// Never sent to the firmware (handled by efivmm).
    SetVirtualAddressMap = 4,
    /// Never sent to the firmware (handled by efivmm).
    ConvertPointer = 5,
    GetVariable = 6,
    GetNextVariableName = 7,
    SetVariable = 8,
    GetNextHighMonotonicCount = 9,
    ResetSystem = 10,
    UpdateCapsule = 11,
    QueryCapsuleCapabilities = 12,
    QueryVariableInfo = 13,
    /// Diagnostic: `outs[0]` = the privilege level the firmware runs at (CS & 3).
    DiagCpl = 0x100,
    /// Diagnostic: the firmware reads an unmapped address (a #PF).
    DiagFault = 0x101,
    /// Diagnostic: the firmware spins forever.
    DiagHang = 0x102,
    /// Diagnostic: the built-in firmware executes `hlt` (a #GP at CPL3). The
    /// OVMF loader executes the privileged instructions efivmm emulates at
    /// CPL3 (`outs[0..3]` = CR0, CR3 and a byte read from port 0x80 as it
    /// saw them), then, if `args[0]` is non-zero, `hlt`.
    DiagPrivileged = 0x103,
    /// Diagnostic: the firmware rings the doorbell at once (the floor of a
    /// sandbox call, for benchmarks).
    DiagNop = 0x104,
    /// Diagnostic: the firmware overwrites the first `args[0]` bytes of the
    /// store with zeros, then faults if `args[1]` is non-zero, or else
    /// returns EFI_SUCCESS with `store_dirty` set (a firmware that corrupts
    /// its store).
    DiagScribble = 0x105,
    /// Diagnostic: `outs[0]` = a byte in the firmware's own `.text`
    /// (`outs[1]` = its address); if `args[0]` is non-zero, the firmware
    /// then writes `args[0] as u8` there (its text is read-only: a #PF) and
    /// returns EFI_SUCCESS.
    DiagPatchText = 0x106,
    /// Diagnostic: `outs[0]` = a counter in the firmware's `.bss`, which the
    /// call then increments (efivmm resets `.data`/`.bss` before every call,
    /// so it always reads 0).
    DiagCounter = 0x107,
    /// Diagnostic: `outs[0]` = MXCSR as the call found it; if `args[0]` is
    /// non-zero, loads MXCSR with `args[0]` and faults (#UD), leaving the
    /// FPU state changed behind a failed call.
    DiagFpu = 0x108,
    /// Diagnostic: how far each buffer holds non-zero bytes: `outs[0]` for
    /// NAME, `outs[1]` for DATA_IN, `outs[2]` for DATA_OUT (offset of the
    /// last non-zero byte + 1); then the firmware fills the first `args[0]`
    /// bytes of DATA_OUT with 0xAA.
    DiagBuffers = 0x109,
}

impl Service {
    /// The service for a number, if any.
    pub fn from_u64(n: u64) -> Option<Self> {
        use Service::*;
        Some(match n {
            0 => GetTime,
            1 => SetTime,
            2 => GetWakeupTime,
            3 => SetWakeupTime,
            4 => SetVirtualAddressMap,
            5 => ConvertPointer,
            6 => GetVariable,
            7 => GetNextVariableName,
            8 => SetVariable,
            9 => GetNextHighMonotonicCount,
            10 => ResetSystem,
            11 => UpdateCapsule,
            12 => QueryCapsuleCapabilities,
            13 => QueryVariableInfo,
            0x100 => DiagCpl,
            0x101 => DiagFault,
            0x102 => DiagHang,
            0x103 => DiagPrivileged,
            0x104 => DiagNop,
            0x105 => DiagScribble,
            0x106 => DiagPatchText,
            0x107 => DiagCounter,
            0x108 => DiagFpu,
            0x109 => DiagBuffers,
            _ => return None,
        })
    }
}

/// An address that is never mapped in the sandbox (used by [`Service::DiagFault`]).
pub const UNMAPPED_ADDR: u64 = 0x7FFF_F000_0000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailbox_round_trips_through_bytes() {
        let m = Mailbox {
            magic: MAILBOX_MAGIC,
            service: 6,
            host_time_unix_ns: -5,
            store_len: 0x20000,
            status: 0x8000_0000_0000_0005,
            store_dirty: 1,
            store_vouch: 0x8000_0000_0000_0064,
            args: [1, 2, 3, 4, 5, 6, 7, 8],
            outs: [9, 10, 11, 12, 13, 14, 15, 16],
        };
        assert_eq!(Mailbox::from_bytes(&m.to_bytes()), m);
        assert_eq!(MAILBOX_LEN, 23 * 8);
        // The fast path's words follow the header in its page.
        assert!(MAILBOX_ADDR + MAILBOX_LEN as u64 <= POLL_REQUEST && POLL_WINDOW + 8 <= NAME_ADDR);
    }

    #[test]
    fn regions_do_not_overlap() {
        let regions = [
            (FIRMWARE_ADDR, FIRMWARE_END),
            (STACK_BOTTOM, STACK_TOP),
            (MAILBOX_ADDR, MAILBOX_ADDR + 0x1000),
            (NAME_ADDR, NAME_ADDR + NAME_SIZE),
            (DATA_IN_ADDR, DATA_IN_ADDR + DATA_SIZE),
            (DATA_OUT_ADDR, DATA_OUT_ADDR + DATA_SIZE),
            (HEAP_ADDR, HEAP_ADDR + HEAP_SIZE),
            (STORE_ADDR, STORE_ADDR + STORE_MAX),
        ];
        assert_eq!(HEAP_SIZE, 0xA_0000);
        for (i, a) in regions.iter().enumerate() {
            assert!(a.1 <= SANDBOX_MEM_SIZE);
            for b in &regions[i + 1..] {
                assert!(a.1 <= b.0 || b.1 <= a.0, "{a:x?} overlaps {b:x?}");
            }
        }
    }

    #[test]
    fn service_numbers_round_trip() {
        for n in (0..14).chain(0x100..0x10a) {
            assert_eq!(Service::from_u64(n).unwrap() as u64, n);
        }
        assert!(Service::from_u64(14).is_none());
    }
}
