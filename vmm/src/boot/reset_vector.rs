//! The x86 reset vector (`F000:FFF0`, physical 0xFFFF0): a tiny stand-in for
//! the BIOS that pulses the i8042 reset line, so a guest that "reboots
//! through the BIOS" reaches efivmm's reset instead of running off into
//! zeroes forever.
//!
//! Why a Linux guest jumps there: on a hardware-reduced ACPI platform
//! (ours, see [`super::acpi`]) Linux's `reboot_init()` picks `BOOT_EFI`
//! unless EFI runtime services were disabled on the command line. A kernel
//! that is not EFI-booted at all (e.g. kexec'd without `efi_info`) then
//! finds no ResetSystem, falls through to `BOOT_BIOS`, and
//! `machine_real_restart()` drops to real mode and far-jumps to
//! `F000:FFF0`. Seen in the lab (scenario S3H): "reboot: machine restart",
//! a CMOS shutdown-byte write, then nothing.
//!
//! The stub: `mov al, 0xFE; out 0x64, al; hlt; jmp $-1` (the `hlt` loop is
//! never reached: the `out` ends the guest).

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::BootError;

/// Physical address of the reset vector.
pub const RESET_VECTOR: u64 = 0xf_fff0;

/// The stub's bytes (16-bit code).
pub const STUB: [u8; 7] = [
    0xb0, 0xfe, // mov al, 0xfe
    0xe6, 0x64, // out 0x64, al: i8042 "pulse reset line"
    0xf4, // hlt
    0xeb, 0xfd, // jmp back to the hlt
];

/// Writes the stub at [`RESET_VECTOR`].
pub fn write(mem: &GuestMemoryMmap) -> Result<(), BootError> {
    mem.write_slice(&STUB, GuestAddress(RESET_VECTOR)).map_err(|e| BootError::Memory(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_userspace_memory_region;
    use kvm_ioctls::{Kvm, VcpuExit};
    use vm_memory::GuestMemoryBackend;

    /// A real vCPU in real mode at `F000:FFF0`, as Linux's
    /// `machine_real_restart()` leaves it, runs the stub and asks for the
    /// i8042 reset.
    #[test]
    fn a_real_mode_jump_to_the_reset_vector_pulses_the_i8042_reset() {
        const MEM: u64 = 1 << 20;
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
        write(&mem).unwrap();
        let kvm = Kvm::new().expect("/dev/kvm");
        let vm = kvm.create_vm().unwrap();
        let host = mem.get_host_address(GuestAddress(0)).unwrap();
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: MEM,
            userspace_addr: host as u64,
        };
        // SAFETY: `host` is the start of `mem`'s single mapping of MEM bytes,
        // and `mem` outlives `vm` (declared before it, so dropped after).
        unsafe { vm.set_user_memory_region(region) }.unwrap();
        let mut vcpu = vm.create_vcpu(0).unwrap();
        let mut sregs = vcpu.get_sregs().unwrap();
        sregs.cs.selector = 0xf000;
        sregs.cs.base = 0xf_0000;
        vcpu.set_sregs(&sregs).unwrap();
        let mut regs = vcpu.get_regs().unwrap();
        regs.rip = 0xfff0;
        regs.rax = 0;
        regs.rflags = 2;
        vcpu.set_regs(&regs).unwrap();
        let exit = match vcpu.run().unwrap() {
            VcpuExit::IoOut(port, data) => Some((port, data.to_vec())),
            _ => None,
        };
        assert_eq!(exit, Some((0x64, vec![0xfe])));
    }
}
