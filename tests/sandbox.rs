//! The sandbox VM on this machine's real /dev/kvm: the firmware runs at CPL3
//! in a VM of its own; faults and hangs are contained.

use std::time::{Duration, Instant};

use efivmm::sandbox::{CallFailure, Sandbox, BUILTIN_FIRMWARE};
use sandbox_abi::{Mailbox, Service, UNMAPPED_ADDR};

/// Diagnostics don't read the store: any bytes do.
fn empty_store() -> Vec<u8> {
    vec![0xff; varstore::Layout::Ovmf2M.file_size()]
}

fn diag(service: Service) -> Mailbox {
    Mailbox { service: service as u64, ..Default::default() }
}

#[test]
fn firmware_runs_at_cpl3_in_its_own_vm() {
    let mut sb = Sandbox::new(BUILTIN_FIRMWARE, &empty_store()).unwrap();
    let reply = sb.call(&diag(Service::DiagCpl), &[], &[]).unwrap();
    // What the firmware saw in CS ...
    assert_eq!(reply.status, 0);
    assert_eq!(reply.outs[0], 3, "the firmware must see CPL3");
    // ... and what KVM says about the vCPU that rang the doorbell.
    assert_eq!(sb.vcpu_cpl().unwrap(), 3);
}

#[test]
fn a_privileged_instruction_faults_with_gp() {
    let mut sb = Sandbox::new(BUILTIN_FIRMWARE, &empty_store()).unwrap();
    match sb.call(&diag(Service::DiagPrivileged), &[], &[]) {
        Err(CallFailure::Fault { vector: 13, rip, .. }) => {
            assert!((sandbox_abi::FIRMWARE_ADDR..sandbox_abi::FIRMWARE_END).contains(&rip), "rip {rip:#x}");
        }
        other => panic!("expected #GP, got {other:?}"),
    }
    // The next call works, at CPL3 again.
    assert_eq!(sb.call(&diag(Service::DiagCpl), &[], &[]).unwrap().outs[0], 3);
}

#[test]
fn a_page_fault_is_reported_with_cr2_and_contained() {
    let mut sb = Sandbox::new(BUILTIN_FIRMWARE, &empty_store()).unwrap();
    match sb.call(&diag(Service::DiagFault), &[], &[]) {
        Err(CallFailure::Fault { vector: 14, cr2, error_code, .. }) => {
            assert_eq!(cr2, UNMAPPED_ADDR);
            assert_eq!(error_code & 0b100, 0b100, "a user-mode access");
        }
        other => panic!("expected #PF, got {other:?}"),
    }
    assert_eq!(sb.call(&diag(Service::DiagCpl), &[], &[]).unwrap().outs[0], 3);
}

#[test]
fn a_hang_ends_at_the_deadline_and_the_next_call_works() {
    let mut sb = Sandbox::new(BUILTIN_FIRMWARE, &empty_store()).unwrap();
    sb.set_deadline(Duration::from_millis(200));
    let start = Instant::now();
    let result = sb.call(&diag(Service::DiagHang), &[], &[]);
    assert_eq!(result, Err(CallFailure::Timeout(Duration::from_millis(200))));
    assert!(start.elapsed() >= Duration::from_millis(200));
    assert_eq!(sb.call(&diag(Service::DiagCpl), &[], &[]).unwrap().outs[0], 3);
}
