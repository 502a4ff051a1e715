//! A runtime-service call from the guest: the trampoline's `out` to
//! `guest_shim::CALL_PORT` with the service number in EAX. SetVirtualAddressMap
//! and ConvertPointer are handled against the shim (they never reach the
//! firmware); every other service goes through the proxy to the sandbox.
//! The EFI_STATUS goes to RAX and the guest resumes after the `out`.
//!
//! The call runs on the calling vCPU's thread with the runtime lock held:
//! calls from several vCPUs are served one at a time, in the order they take
//! the lock. A call that got the lock after a stop was requested (e.g. a
//! ResetSystem on another vCPU) is dropped without reaching the firmware:
//! the vCPU is about to stop, and nothing may commit after a shutdown.
//!
//! Only the guest's kernel may call: an exit from CPL1-3 (a user process
//! given I/O permission with iopl/ioperm, or a TSS I/O bitmap) is refused
//! with `EFI_UNSUPPORTED` in RAX before any of its pointers is looked at,
//! counted ([`super::Stats::refused_calls`]) and logged (rate-limited).
//! efivmm walks the caller's page tables without checking U/S, so serving
//! a user-mode caller would let it read and write supervisor memory through
//! the firmware (a confused deputy). The caller's RIP is not checked: at
//! CPL0 the guest kernel can reach guest memory itself, wherever the `out`
//! comes from.

use std::sync::atomic::Ordering;

use kvm_bindings::{kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;
use sandbox_abi::Service;

use super::{Exit, Runtime, Shared, SvamPolicy, SHIM_RESERVE};
use crate::efi::{EFI_INVALID_PARAMETER, EFI_SUCCESS, EFI_UNSUPPORTED};
use crate::proxy::paging::{read_guest, write_guest, GuestPaging};
use crate::proxy::{call_service_with_policy, GuestRegs};
use vm_memory::GuestMemoryMmap;

/// Largest memory map SetVirtualAddressMap accepts.
const MAX_MAP: u64 = 0x1_0000;

impl Shared {
    /// Serves one call from `vcpu`; `Some(exit)` when the guest asked to
    /// reset or power off.
    pub(super) fn runtime_call(&self, vcpu: &mut VcpuFd, service: u64) -> Result<Option<Exit>, String> {
        let started = std::time::Instant::now();
        let result = self.serve(vcpu, service);
        let elapsed = started.elapsed();
        self.call_ns.fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
        if let Ok(Some(status)) = result {
            self.control.metrics.record(service, status, elapsed);
        }
        result.map(|_| None)
    }

    /// Serves the call; the status the guest got, if it was served by
    /// efivmm or the firmware (not refused from user mode, not dropped).
    fn serve(&self, vcpu: &mut VcpuFd, service: u64) -> Result<Option<u64>, String> {
        // With KVM_CAP_SYNC_REGS (vcpu::run asks for it), KVM left the
        // registers in the run page at this exit: no ioctl to read them, and
        // RAX goes back the same way. (Three register ioctls cost ~17 us a
        // call on this host's PVM KVM, more than the firmware's work.)
        let (mut regs, sregs) = if self.sync_regs {
            let synced = vcpu.sync_regs();
            (synced.regs, synced.sregs)
        } else {
            (
                vcpu.get_regs().map_err(|e| format!("get regs: {e}"))?,
                vcpu.get_sregs().map_err(|e| format!("get sregs: {e}"))?,
            )
        };
        let (status, counted) = match self.serve_regs(&regs, &sregs, service) {
            Served::Status(status) => (status, true),
            Served::Refused(status) => (status, false),
            Served::Dropped => return Ok(None),
        };
        if self.sync_regs {
            vcpu.sync_regs_mut().regs.rax = status;
            vcpu.set_sync_dirty_reg(kvm_ioctls::SyncReg::Register);
        } else {
            regs.rax = status;
            vcpu.set_regs(&regs).map_err(|e| format!("set regs: {e}"))?;
        }
        Ok(counted.then_some(status))
    }

    /// Serves one call made with `regs` and `sregs`.
    fn serve_regs(&self, regs: &kvm_regs, sregs: &kvm_sregs, service: u64) -> Served {
        let cpl = caller_cpl(regs, sregs);
        if cpl != 0 {
            let refused = self.refused_calls.fetch_add(1, Ordering::Relaxed) + 1;
            if refused.is_power_of_two() {
                tracing::warn!(
                    cpl,
                    service,
                    rip = format_args!("{:#x}", regs.rip),
                    refused,
                    "runtime call from guest user mode refused"
                );
            }
            return Served::Refused(EFI_UNSUPPORTED);
        }
        let paging = GuestPaging { cr0: sregs.cr0, cr3: sregs.cr3, cr4: sregs.cr4, efer: sregs.efer };
        self.calls.fetch_add(1, Ordering::Relaxed);
        // A panic while serving a call leaves nothing half-done that the
        // next call could trip on (the sandbox restores itself on failure),
        // so a poisoned lock is taken over.
        let mut runtime = self.runtime.lock().unwrap_or_else(|p| p.into_inner());
        // Queued behind a call that stopped the guest (or a signal): drop it.
        if self.stop.requested() {
            tracing::debug!(service, "runtime call dropped: the guest is stopping");
            return Served::Dropped;
        }
        let rt = &mut *runtime;
        // Only the 14 runtime services: the sandbox's diagnostic numbers are
        // not reachable from a guest.
        let status = match guest_shim::guest_service(service as u32) {
            Some(Service::SetVirtualAddressMap) => {
                self.svam_calls.fetch_add(1, Ordering::Relaxed);
                rt.set_virtual_address_map(&self.mem, regs, &paging)
            }
            Some(Service::ConvertPointer) => rt.convert_pointer(&self.mem, regs, &paging),
            None => EFI_UNSUPPORTED,
            Some(_) => {
                let guest = GuestRegs { rcx: regs.rcx, rdx: regs.rdx, r8: regs.r8, r9: regs.r9, rsp: regs.rsp };
                let forbidden = rt.shim.base()..rt.shim.base() + SHIM_RESERVE;
                let result = call_service_with_policy(
                    service,
                    &guest,
                    &paging,
                    &self.mem,
                    forbidden,
                    &mut rt.firmware,
                    &rt.var_policy,
                );
                if let Some((reset_type, _)) = result.reset {
                    tracing::info!(reset_type, "the guest called ResetSystem");
                    let exit = if reset_type == 2 { Exit::PowerOff } else { Exit::Reset("ResetSystem") };
                    // Requested before the lock goes: calls queued behind
                    // this one see it and never reach the firmware.
                    self.stop.request(exit);
                    return Served::Dropped;
                }
                self.control.metrics.firmware(rt.firmware.totals());
                result.status
            }
        };
        Served::Status(status)
    }
}

/// What serving a call asks of the calling vCPU.
#[derive(Debug, PartialEq, Eq)]
enum Served {
    /// Resume the guest with this EFI_STATUS in RAX.
    Status(u64),
    /// The same, for a call refused before it was looked at (made from
    /// guest user mode): counted apart from the served calls.
    Refused(u64),
    /// Leave the vCPU as it is: the guest is stopping (a stop was
    /// requested, maybe by this very call).
    Dropped,
}

/// The privilege level of the code that made the exit: 0 in real mode, 3
/// in virtual-8086 mode, else the RPL of CS (= CPL), or SS.DPL (also = CPL)
/// if that is higher: a disagreement is never taken for kernel mode.
fn caller_cpl(regs: &kvm_regs, sregs: &kvm_sregs) -> u8 {
    const CR0_PE: u64 = 1;
    const RFLAGS_VM: u64 = 1 << 17;
    if sregs.cr0 & CR0_PE == 0 {
        0
    } else if regs.rflags & RFLAGS_VM != 0 {
        3
    } else {
        ((sregs.cs.selector & 3) as u8).max(sregs.ss.dpl)
    }
}

impl Runtime {
    /// SetVirtualAddressMap(MemoryMapSize, DescriptorSize, DescriptorVersion,
    /// VirtualMap): validated and applied by the shim model; the rewritten
    /// tables are copied back into guest memory.
    fn set_virtual_address_map(
        &mut self,
        mem: &GuestMemoryMmap,
        regs: &kvm_bindings::kvm_regs,
        paging: &GuestPaging,
    ) -> u64 {
        if self.svam_policy == SvamPolicy::Once && self.shim.svam_count() > 0 {
            tracing::info!("second SetVirtualAddressMap refused (--svam-policy once)");
            return EFI_UNSUPPORTED;
        }
        let (map_size, desc_size, version, map_va) = (regs.rcx, regs.rdx, regs.r8 as u32, regs.r9);
        if map_size > MAX_MAP {
            return EFI_INVALID_PARAMETER;
        }
        let Ok(map) = read_guest(mem, paging, map_va, map_size, MAX_MAP) else {
            return EFI_INVALID_PARAMETER;
        };
        match self.shim.set_virtual_address_map(map_size, desc_size, version, &map) {
            Ok(()) => match super::write(mem, self.shim.bytes(), self.shim.base()) {
                Ok(()) => {
                    tracing::info!(count = self.shim.svam_count(), "SetVirtualAddressMap absorbed");
                    EFI_SUCCESS
                }
                Err(e) => {
                    tracing::error!("cannot rewrite the shim: {e}");
                    crate::efi::EFI_DEVICE_ERROR
                }
            },
            Err(status) => status,
        }
    }

    /// ConvertPointer(DebugDisposition, Address): converts `*Address` with the
    /// last map.
    fn convert_pointer(&mut self, mem: &GuestMemoryMmap, regs: &kvm_bindings::kvm_regs, paging: &GuestPaging) -> u64 {
        let forbidden = self.shim.base()..self.shim.base() + SHIM_RESERVE;
        let Ok(bytes) = read_guest(mem, paging, regs.rdx, 8, 8) else {
            return EFI_INVALID_PARAMETER;
        };
        let pointer = u64::from_le_bytes(bytes[..8].try_into().unwrap());
        match self.shim.convert_pointer(regs.rcx, pointer) {
            Ok(converted) => match write_guest(mem, paging, regs.rdx, &converted.to_le_bytes(), &forbidden) {
                Ok(()) => EFI_SUCCESS,
                Err(_) => EFI_INVALID_PARAMETER,
            },
            Err(status) => status,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::efi::{name_to_utf16, Guid, EFI_NOT_FOUND};
    use crate::firmware::{Firmware, FirmwareSource};
    use crate::proxy::testutil::{Guest, Size, MEM_SIZE, RW};
    use crate::varsfile::VarsFile;
    use crate::vm::devices::LegacyDevices;
    use crate::vm::{Stop, SvamPolicy};
    use std::sync::atomic::AtomicU64;
    use std::sync::Mutex;
    use vmm_sys_util::eventfd::EventFd;

    // Guest VAs (supervisor-only pages: the test tables never set U/S) and
    // the physical pages behind them.
    const STACK: u64 = 0x7000_0000_0000;
    const NAME: u64 = 0x7000_0001_0000;
    const GUID_VA: u64 = 0x7000_0002_0000;
    const SECRET: u64 = 0x7000_0003_0000;
    const GUID: &str = "3cc9ad5e-7a1c-4b1f-9a3e-5f0c8d2b6e71";

    fn shared(dir: &tempfile::TempDir) -> (Shared, Guest) {
        let mut g = Guest::new(4);
        for (va, gpa) in [(STACK, 0x20_0000), (NAME, 0x21_0000), (GUID_VA, 0x22_0000), (SECRET, 0x23_0000)] {
            g.map(va, gpa, Size::K4, RW);
        }
        g.poke(0x21_0000, &name_to_utf16("Stolen"));
        g.poke(0x22_0000, &Guid::parse(GUID).unwrap().0);
        g.poke(0x23_0000, b"kernel secret!!!");
        // SetVariable's 5th argument (Data) on the stack: [RSP + 0x28].
        g.poke(0x20_0128, &SECRET.to_le_bytes());
        let vars = VarsFile::open_or_create(&dir.path().join("v.fd"), varstore::Layout::Ovmf2M).unwrap();
        let firmware = Firmware::start(&FirmwareSource::Builtin, vars).unwrap();
        let shim = guest_shim::Shim::build(MEM_SIZE - super::SHIM_RESERVE);
        let shared = Shared {
            mem: g.mem.clone(),
            devices: Mutex::new(LegacyDevices::new(EventFd::new(0).unwrap(), Box::new(std::io::sink()))),
            runtime: Mutex::new(Runtime {
                shim,
                firmware,
                svam_policy: SvamPolicy::Accept,
                var_policy: crate::proxy::VarPolicy::none(),
            }),
            stop: Stop::new().unwrap(),
            calls: AtomicU64::new(0),
            svam_calls: AtomicU64::new(0),
            call_ns: AtomicU64::new(0),
            refused_calls: AtomicU64::new(0),
            sync_regs: false,
            firmware_cpu: None,
            control: crate::vm::control::Control::new(
                crate::vm::control::VmInfo {
                    cpus: 1,
                    memory: MEM_SIZE,
                    firmware: "builtin".into(),
                    vars: dir.path().join("v.fd"),
                },
                None,
            )
            .unwrap(),
        };
        (shared, g)
    }

    /// SetVariable("Stolen", GUID, NV|BS|RT, 16, Data = the secret page).
    fn set_variable_regs() -> kvm_regs {
        kvm_regs { rcx: NAME, rdx: GUID_VA, r8: 7, r9: 16, rsp: STACK + 0x100, rflags: 0x2, ..Default::default() }
    }

    /// Long mode with the test guest's page tables, at `cpl`.
    fn sregs(g: &Guest, cpl: u8) -> kvm_sregs {
        let p = g.paging();
        let mut s = kvm_sregs { cr0: p.cr0, cr3: p.cr3, cr4: p.cr4, efer: p.efer, ..Default::default() };
        let (cs, ss) = if cpl == 0 { (0x10, 0x18) } else { (0x33, 0x2b) };
        s.cs.selector = cs;
        s.cs.dpl = cpl;
        s.cs.l = 1;
        s.ss.selector = ss;
        s.ss.dpl = cpl;
        s
    }

    fn stored(shared: &Shared) -> (u64, Vec<u8>) {
        let mut rt = shared.runtime.lock().unwrap();
        let got = rt.firmware.get_variable(&name_to_utf16("Stolen"), &Guid::parse(GUID).unwrap(), 64);
        (got.status, got.data)
    }

    /// F9: a guest user process with I/O permission cannot use efivmm to
    /// copy a supervisor-only page into a variable.
    #[test]
    fn a_runtime_call_from_guest_user_mode_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (shared, g) = shared(&dir);
        let set = Service::SetVariable as u64;
        assert_eq!(shared.serve_regs(&set_variable_regs(), &sregs(&g, 3), set), Served::Refused(EFI_UNSUPPORTED));
        assert_eq!(stored(&shared).0, EFI_NOT_FOUND, "the variable must not be created");
        assert_eq!(shared.refused_calls.load(Ordering::Relaxed), 1);
        assert_eq!(shared.calls.load(Ordering::Relaxed), 0);
        // The same call from the kernel is served (the page is the kernel's to give).
        assert_eq!(shared.serve_regs(&set_variable_regs(), &sregs(&g, 0), set), Served::Status(EFI_SUCCESS));
        assert_eq!(stored(&shared), (EFI_SUCCESS, b"kernel secret!!!".to_vec()));
        // CPL 1 and 2 count as user mode; so does virtual-8086 mode.
        let mut vm86 = set_variable_regs();
        vm86.rflags |= 1 << 17;
        for (regs, cpl) in [(set_variable_regs(), 1), (set_variable_regs(), 2), (vm86, 0)] {
            let mut s = sregs(&g, cpl);
            s.cs.selector = (s.cs.selector & !3) | u16::from(cpl);
            assert_eq!(shared.serve_regs(&regs, &s, set), Served::Refused(EFI_UNSUPPORTED), "cpl {cpl}");
        }
    }

    /// F14: a call that gets the runtime lock after a stop was requested
    /// (ResetSystem on another vCPU, a signal) never reaches the firmware.
    #[test]
    fn a_call_queued_behind_a_stop_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (shared, g) = shared(&dir);
        let runtime = shared.runtime.lock().unwrap();
        std::thread::scope(|s| {
            // A vCPU's SetVariable waits for the lock ...
            let queued =
                s.spawn(|| shared.serve_regs(&set_variable_regs(), &sregs(&g, 0), Service::SetVariable as u64));
            std::thread::sleep(std::time::Duration::from_millis(50));
            // ... while the holder powers the guest off.
            shared.stop.request(Exit::PowerOff);
            drop(runtime);
            assert_eq!(queued.join().unwrap(), Served::Dropped);
        });
        assert_eq!(stored(&shared).0, EFI_NOT_FOUND, "nothing may commit after the stop");
    }

    #[test]
    fn reset_system_stops_the_guest_before_the_lock_is_released() {
        let dir = tempfile::tempdir().unwrap();
        let (shared, g) = shared(&dir);
        let regs = kvm_regs { rcx: 2, rsp: STACK + 0x100, rflags: 0x2, ..Default::default() };
        assert_eq!(shared.serve_regs(&regs, &sregs(&g, 0), Service::ResetSystem as u64), Served::Dropped);
        assert_eq!(*shared.stop.exit.lock().unwrap(), Some(Exit::PowerOff));
    }
}
