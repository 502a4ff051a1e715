//! A runtime-service call from the guest: the trampoline's `out` to
//! `guest_shim::CALL_PORT` with the service number in EAX. SetVirtualAddressMap
//! and ConvertPointer are handled against the shim (they never reach the
//! firmware); every other service goes through the proxy to the sandbox.
//! The EFI_STATUS goes to RAX and the guest resumes after the `out`.
//!
//! The call runs on the calling vCPU's thread with the runtime lock held:
//! calls from several vCPUs are served one at a time, in the order they take
//! the lock.

use std::sync::atomic::Ordering;

use kvm_ioctls::VcpuFd;
use sandbox_abi::Service;

use super::{Exit, Runtime, Shared, SvamPolicy, SHIM_RESERVE};
use crate::efi::{EFI_INVALID_PARAMETER, EFI_SUCCESS, EFI_UNSUPPORTED};
use crate::proxy::paging::{read_guest, write_guest, GuestPaging};
use crate::proxy::{call_service, GuestRegs};
use vm_memory::GuestMemoryMmap;

/// Largest memory map SetVirtualAddressMap accepts.
const MAX_MAP: u64 = 0x1_0000;

impl Shared {
    /// Serves one call from `vcpu`; `Some(exit)` when the guest asked to
    /// reset or power off.
    pub(super) fn runtime_call(&self, vcpu: &VcpuFd, service: u64) -> Result<Option<Exit>, String> {
        let started = std::time::Instant::now();
        let result = self.serve(vcpu, service);
        self.call_ns.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        result
    }

    fn serve(&self, vcpu: &VcpuFd, service: u64) -> Result<Option<Exit>, String> {
        let mut regs = vcpu.get_regs().map_err(|e| format!("get regs: {e}"))?;
        let sregs = vcpu.get_sregs().map_err(|e| format!("get sregs: {e}"))?;
        let paging = GuestPaging { cr0: sregs.cr0, cr3: sregs.cr3, cr4: sregs.cr4, efer: sregs.efer };
        self.calls.fetch_add(1, Ordering::Relaxed);
        // A panic while serving a call leaves nothing half-done that the
        // next call could trip on (the sandbox restores itself on failure),
        // so a poisoned lock is taken over.
        let mut runtime = self.runtime.lock().unwrap_or_else(|p| p.into_inner());
        let rt = &mut *runtime;
        // Only the 14 runtime services: the sandbox's diagnostic numbers are
        // not reachable from a guest.
        let status = match guest_shim::guest_service(service as u32) {
            Some(Service::SetVirtualAddressMap) => {
                self.svam_calls.fetch_add(1, Ordering::Relaxed);
                rt.set_virtual_address_map(&self.mem, &regs, &paging)
            }
            Some(Service::ConvertPointer) => rt.convert_pointer(&self.mem, &regs, &paging),
            None => EFI_UNSUPPORTED,
            Some(_) => {
                let guest = GuestRegs { rcx: regs.rcx, rdx: regs.rdx, r8: regs.r8, r9: regs.r9, rsp: regs.rsp };
                let forbidden = rt.shim.base()..rt.shim.base() + SHIM_RESERVE;
                let result = call_service(service, &guest, &paging, &self.mem, forbidden, &mut rt.firmware);
                if let Some((reset_type, _)) = result.reset {
                    tracing::info!(reset_type, "the guest called ResetSystem");
                    return Ok(Some(if reset_type == 2 { Exit::PowerOff } else { Exit::Reset("ResetSystem") }));
                }
                result.status
            }
        };
        drop(runtime);
        regs.rax = status;
        vcpu.set_regs(&regs).map_err(|e| format!("set regs: {e}"))?;
        Ok(None)
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
