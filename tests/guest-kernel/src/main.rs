//! efivmm's test guest kernel.
//!
//! Booted by efivmm through the Linux 64-bit boot protocol (RSI = zero
//! page, 1:1 map of the first 4 GiB, CPL0, interrupts off), it behaves like
//! x86 Linux towards the shim's runtime services: physical-mode calls, its
//! own virtual layout handed to SetVirtualAddressMap, calls through the VAs,
//! then kexec into the next generation (shapes A, B, C) or ResetSystem.
//! See README.md in this folder for the serial lines it prints.
//!
//! Built for the host this is an empty program.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {}

#[cfg(target_os = "none")]
mod kernel;

#[cfg(target_os = "none")]
mod smp;
