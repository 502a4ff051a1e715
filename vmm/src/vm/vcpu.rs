//! One guest vCPU: its architectural set-up (CPUID with its APIC ID, boot
//! MSRs, FPU, local APIC LINT pins, and for the bootstrap processor the 64-bit
//! entry state) and the thread that runs it.
//!
//! Application processors stay in KVM's wait-for-SIPI state: the guest
//! starts them with INIT/SIPI through its local APIC, as on real hardware,
//! after finding them in the MP table.

use std::sync::Arc;

use kvm_bindings::{kvm_fpu, kvm_msr_entry, CpuId, Msrs};
use kvm_ioctls::{VcpuExit, VcpuFd};

use super::devices::PortEffect;
use super::{Exit, Shared, VmError};
use crate::boot;
use crate::confine::Filter;

// MSRs set at boot (the values Linux expects from firmware).
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
/// MISC_ENABLE: fast string operations.
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRdefType: MTRRs enabled, default type write-back.
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

// Local APIC registers (offsets in the 1 KiB `kvm_lapic_state`).
const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0b100;
const APIC_MODE_EXTINT: u32 = 0b111;

/// The vCPU's CPUID: KVM's supported set with this vCPU's APIC ID and the
/// vCPU count filled in.
pub(super) fn cpuid_for(base: &CpuId, index: u8, count: u8) -> CpuId {
    let mut cpuid = base.clone();
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                // EBX[31:24] initial APIC ID, EBX[23:16] logical processors.
                e.ebx = (e.ebx & 0x0000_ffff) | (u32::from(index) << 24) | (u32::from(count) << 16);
                // EDX.HTT: EBX[23:16] is valid; ECX.HYPERVISOR.
                e.edx |= 1 << 28;
                e.ecx |= 1 << 31;
            }
            // Extended topology: EDX is the x2APIC ID.
            0xb | 0x1f => e.edx = u32::from(index),
            // AMD: ECX[7:0] = cores per package - 1.
            0x8000_0008 => e.ecx = (e.ecx & !0xff) | u32::from(count - 1),
            _ => {}
        }
    }
    cpuid
}

/// Sets up vCPU `index` of `count`; the bootstrap processor (index 0) also
/// gets the 64-bit entry state at `entry`.
pub(super) fn configure(vcpu: &VcpuFd, base_cpuid: &CpuId, index: u8, count: u8, entry: u64) -> Result<(), VmError> {
    let kvm = |what: &'static str| move |e| VmError::Kvm(what, e);
    vcpu.set_cpuid2(&cpuid_for(base_cpuid, index, count)).map_err(kvm("set CPUID"))?;

    let entries: Vec<kvm_msr_entry> = [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ]
    .iter()
    .map(|&(index, data)| kvm_msr_entry { index, data, ..Default::default() })
    .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|e| VmError::Config(format!("boot MSRs: {e:?}")))?;
    let set = vcpu.set_msrs(&msrs).map_err(kvm("set the boot MSRs"))?;
    if set != entries.len() {
        // KVM stops at the first MSR it refuses; the guest can live without
        // the rest (they are hints such as MTRRdefType), so say which.
        tracing::warn!(vcpu = index, msr = format_args!("{:#x}", entries[set].index), "KVM refused a boot MSR");
    }

    let fpu = kvm_fpu { fcw: 0x37f, mxcsr: 0x1f80, ..Default::default() };
    vcpu.set_fpu(&fpu).map_err(kvm("set the FPU state"))?;

    // LINT0 = ExtINT (the PIC, for virtual-wire mode), LINT1 = NMI.
    let mut lapic = vcpu.get_lapic().map_err(kvm("read the local APIC"))?;
    for (offset, mode) in [(APIC_LVT_LINT0, APIC_MODE_EXTINT), (APIC_LVT_LINT1, APIC_MODE_NMI)] {
        let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[offset + i] as u8);
        let value = (u32::from_le_bytes(bytes) & !(0b111 << 8)) | (mode << 8);
        for (i, b) in value.to_le_bytes().iter().enumerate() {
            lapic.regs[offset + i] = *b as libc::c_char;
        }
    }
    vcpu.set_lapic(&lapic).map_err(kvm("set the local APIC"))?;

    if index == 0 {
        let sregs = boot::entry::boot_sregs(vcpu.get_sregs().map_err(kvm("get sregs"))?);
        vcpu.set_sregs(&sregs).map_err(kvm("set sregs"))?;
        vcpu.set_regs(&boot::entry::boot_regs(entry)).map_err(kvm("set regs"))?;
    }
    Ok(())
}

/// The serial port's ports (too chatty to trace).
fn is_com1(port: u16) -> bool {
    (super::devices::COM1..super::devices::COM1 + 8).contains(&port)
}

/// Requests a stop if the vCPU thread ends without one (e.g. it panicked),
/// so the rest of efivmm does not wait for it forever.
struct StopGuard<'a>(&'a Shared, u8);

impl Drop for StopGuard<'_> {
    fn drop(&mut self) {
        self.0.stop.request(Exit::Crashed(format!("vCPU {} stopped unexpectedly", self.1)));
    }
}

/// Runs vCPU `index` until a stop is requested (by this or another vCPU,
/// the event loop, or the timeout). Returns the vCPU so it is closed by the
/// caller after every thread is done. With `filter`, the thread confines
/// itself first, before the guest or the firmware runs.
pub(super) fn run(index: u8, mut vcpu: VcpuFd, shared: Arc<Shared>, filter: Option<Filter>) -> VcpuFd {
    let _guard = StopGuard(&shared, index);
    if let Some(cpu) = shared.firmware_cpu {
        // The fast path's firmware thread has this CPU to itself.
        crate::sandbox::poller::keep_off(cpu);
    }
    if let Some(filter) = filter {
        if let Err(e) = filter.install() {
            shared.stop.request(Exit::Crashed(format!("vCPU {index}: {e}")));
            return vcpu;
        }
    }
    if shared.sync_regs {
        // A runtime call reads the registers from the run page (runtime_exit).
        vcpu.set_sync_valid_reg(kvm_ioctls::SyncReg::Register);
        vcpu.set_sync_valid_reg(kvm_ioctls::SyncReg::SystemRegister);
    }
    while !shared.stop.requested() {
        let exit = match vcpu.run() {
            Ok(VcpuExit::IoOut(port, data)) if port == guest_shim::CALL_PORT => {
                let service = data.iter().take(4).enumerate().fold(0u64, |a, (i, b)| a | u64::from(*b) << (8 * i));
                match shared.runtime_call(&mut vcpu, service) {
                    Ok(None) => None,
                    Ok(Some(exit)) => Some(exit),
                    Err(why) => Some(Exit::Crashed(why)),
                }
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                if !is_com1(port) {
                    tracing::trace!(vcpu = index, "port write {port:#x} = {data:02x?}");
                }
                match shared.devices().write(port, data) {
                    PortEffect::Reset => Some(Exit::Reset("i8042 reset")),
                    PortEffect::None => None,
                }
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                shared.devices().read(port, data);
                if !is_com1(port) {
                    tracing::trace!(vcpu = index, "port read {port:#x} -> {data:02x?}");
                }
                None
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                data.iter_mut().for_each(|b| *b = 0xff);
                tracing::trace!(vcpu = index, "unbacked MMIO read {addr:#x} ({} bytes)", data.len());
                None
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                tracing::trace!(vcpu = index, "unbacked MMIO write {addr:#x} = {data:02x?}");
                None
            }
            Ok(VcpuExit::Hlt) => Some(Exit::Crashed(format!("vCPU {index} halted with interrupts off"))),
            Ok(VcpuExit::Shutdown) => Some(Exit::Reset("triple fault")),
            Ok(other) => Some(Exit::Crashed(format!("vCPU {index}: unexpected exit {other:?}"))),
            // A kick (stop request) or a stray signal: the loop condition decides.
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => None,
            Err(e) => Some(Exit::Crashed(format!("vCPU {index}: KVM_RUN: {e}"))),
        };
        if let Some(exit) = exit {
            if let Exit::Crashed(why) = &exit {
                let regs = vcpu.get_regs().map(|r| format!("RIP {:#x} RSP {:#x}", r.rip, r.rsp));
                tracing::error!("guest stopped: {why} ({})", regs.unwrap_or_default());
            }
            shared.stop.request(exit);
        }
    }
    vcpu
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn each_vcpu_gets_its_apic_id_and_the_count() {
        let entries = [
            kvm_cpuid_entry2 { function: 1, ebx: 0xaabb_ccdd, ..Default::default() },
            kvm_cpuid_entry2 { function: 0xb, index: 0, edx: 7, ..Default::default() },
            kvm_cpuid_entry2 { function: 0xb, index: 1, edx: 7, ..Default::default() },
            kvm_cpuid_entry2 { function: 0x8000_0008, ecx: 0x3007, ..Default::default() },
        ];
        let base = CpuId::from_entries(&entries).unwrap();
        let c = cpuid_for(&base, 3, 4);
        let e = c.as_slice();
        assert_eq!(e[0].ebx, 0x0304_ccdd);
        assert_ne!(e[0].edx & (1 << 28), 0);
        assert_ne!(e[0].ecx & (1 << 31), 0);
        assert_eq!((e[1].edx, e[2].edx), (3, 3));
        assert_eq!(e[3].ecx, 0x3003);
    }
}
