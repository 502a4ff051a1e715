//! Platform device models for running the unmodified Debian OVMF (edk2
//! 2022.11, OvmfPkgX64, i440FX personality, non-SMM) in the sandbox VM: the
//! devices OVMF cannot boot or serve runtime calls without, each in its own
//! file, each a plain state machine with no KVM, threads or I/O of its own.
//! The sandbox's run loop decodes the exits and calls them with offsets
//! relative to each device's base and the access size as the slice length.
//!
//! - [`fw_cfg`]: QEMU's firmware configuration interface at 0x510/0x511
//!   (I/O only, no DMA): the signature, the file directory, `etc/e820`, and
//!   the "kernel" items through which OVMF's BDS receives the loader.
//! - [`pflash`]: an Intel CFI (cfi01) NOR flash over the VM's vars file,
//!   with the command subset of OVMF's `QemuFlashFvbServicesRuntimeDxe`.
//! - [`pci`]: PCI configuration mechanism #1 at 0xCF8..0xCFF with the i440FX
//!   host bridge (0:0.0) and the PIIX4 power-management function (0:1.3),
//!   plus the reset control register at 0xCF9.
//! - [`acpi_pm`]: the PIIX4 PM I/O block at the programmed PMBA: PM1 event
//!   and control registers (S5 soft-off) and the ACPI PM timer.
//! - [`lapic`]: a local APIC that keeps OVMF's register writes and counts
//!   its timer down but never interrupts (the sandbox has no interrupts).
//! - [`cmos`]: an MC146818 RTC/CMOS at 0x70/0x71 on an injected wall clock,
//!   honouring register B's modes and the SET bit (how PcRtc's `SetTime`
//!   lands).
//!
//! What a guest access asks of the VMM beyond the device's own state comes
//! back as an effect value ([`PciEffect`], [`PmEffect`]).

pub mod acpi_pm;
pub mod cmos;
pub mod fw_cfg;
pub mod lapic;
pub mod pci;
pub mod pflash;

pub use acpi_pm::{AcpiPm, PmEffect};
pub use cmos::Cmos;
pub use fw_cfg::{E820Entry, FwCfg, FwCfgError};
pub use lapic::Lapic;
pub use pci::{Pci, PciEffect};
pub use pflash::{Pflash, PflashError};

/// A monotonic clock in nanoseconds (arbitrary origin), injected into the
/// devices that count time so tests can drive them.
pub type MonotonicClock = Box<dyn Fn() -> u64 + Send>;

/// A wall clock in nanoseconds since the Unix epoch (UTC), injected into the
/// CMOS clock so tests can drive it.
pub type WallClock = Box<dyn Fn() -> i64 + Send>;

/// The host's monotonic clock (`std::time::Instant`), counted from the call
/// that created it.
pub fn host_monotonic_clock() -> MonotonicClock {
    let start = std::time::Instant::now();
    Box::new(move || u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX))
}

/// The host's wall clock (the same source as efivmm's own `GetTime`).
pub fn host_wall_clock() -> WallClock {
    Box::new(crate::firmware::host_time_ns)
}
