//! The sandbox entry point of the built-in firmware.
//!
//! efivmm starts the sandbox vCPU at `_start` at CPL3 with
//! `RSP = STACK_TOP - 8`; the mailbox and buffers are at the fixed addresses
//! of `sandbox_abi`. The firmware serves the call, rings the doorbell
//! (`out DOORBELL_PORT`) and jumps back to `_start` on a fresh stack, where the
//! next call begins when efivmm resumes the vCPU. Each call starts afresh, so
//! no state survives a call except the store. efivmm enforces this: the
//! text and rodata are mapped read-only, `.data`/`.bss` are reset from the
//! image before every call, and after a failed call it also resets the
//! registers (general, special, FPU/SSE) and the buffers.
//!
//! The fast path (`sandbox_abi::POLL_WINDOW` non-zero): instead of the
//! doorbell, the firmware writes the request number it served to
//! `POLL_DONE` and polls `POLL_REQUEST` for the window (timed with `rdtsc`),
//! serving the next request without any exit; only when the window passes
//! does it park with the doorbell (after the `POLL_STATE` handshake that
//! `sandbox_abi` describes). Polling touches the poll words and the stack
//! only, so efivmm may reset `.data`/`.bss` and write the next request while
//! it runs.
//!
//! Built for the host (as the workspace's tests do) this is an empty program.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod entry {
    use core::arch::asm;
    use firmware::{serve, Call};
    use sandbox_abi::*;

    const EFI_SUCCESS: u64 = 0;
    const EFI_INVALID_PARAMETER: u64 = 0x8000_0000_0000_0002;
    const EFI_BAD_BUFFER_SIZE: u64 = 0x8000_0000_0000_0004;

    /// A byte of the firmware's text for `DiagPatchText` (never executed).
    #[link_section = ".text.diag"]
    #[used]
    static DIAG_TEXT_BYTE: u8 = 0x5a;

    /// The heap of one call (`sandbox_abi::HEAP_ADDR`). The allocator's
    /// state is in `.bss`, which efivmm resets before every call: each call
    /// starts with an empty, uninitialised heap and [`_start`] gives it the
    /// region again. Running out fails an allocation, which panics: the
    /// call ends in EFI_DEVICE_ERROR (the firmware bounds its inputs so that
    /// this cannot happen: `firmware::pkcs7`).
    #[global_allocator]
    static HEAP: linked_list_allocator::LockedHeap = linked_list_allocator::LockedHeap::empty();

    /// A `.bss` counter for `DiagCounter`.
    static mut DIAG_COUNTER: u64 = 0;

    /// The firmware's entry for one call.
    #[no_mangle]
    #[link_section = ".text.entry"]
    pub extern "C" fn _start() -> ! {
        let window = word(POLL_WINDOW);
        if window != 0 {
            // Running (entered, restarted or resumed): a new request needs
            // no wake-up, this loop will see it.
            set_word(POLL_STATE, POLL_POLLING);
        }
        let seq = word(POLL_REQUEST);
        if window != 0 && seq == word(POLL_DONE) {
            // Entered (or resumed after parking) with nothing to serve.
            poll(window);
        }
        // The request's mailbox and buffers were written before its number.
        core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::Acquire);
        // SAFETY: MAILBOX_ADDR is a mapped, writable, suitably aligned page of
        // the sandbox reserved for the header, and nothing else in this
        // single-threaded program refers to it while this reference lives.
        let mailbox = unsafe { &mut *(MAILBOX_ADDR as *mut Mailbox) };
        mailbox.outs = [0; 8];
        mailbox.store_dirty = 0;
        if mailbox.magic != MAILBOX_MAGIC {
            mailbox.status = EFI_INVALID_PARAMETER;
            complete(window, seq);
        }
        if mailbox.store_len > STORE_MAX {
            mailbox.status = EFI_BAD_BUFFER_SIZE;
            complete(window, seq);
        }
        match Service::from_u64(mailbox.service) {
            Some(Service::DiagNop) => mailbox.status = EFI_SUCCESS,
            Some(Service::DiagCpl) => {
                let cs: u16;
                // SAFETY: reading CS has no side effects.
                unsafe { asm!("mov {0:x}, cs", out(reg) cs, options(nomem, nostack)) };
                mailbox.outs[0] = u64::from(cs & 3);
                mailbox.status = EFI_SUCCESS;
            }
            Some(Service::DiagFault) => {
                // SAFETY: deliberately faults: UNMAPPED_ADDR is never mapped,
                // so this read raises #PF and efivmm ends the call.
                let v = unsafe { core::ptr::read_volatile(UNMAPPED_ADDR as *const u8) };
                mailbox.outs[0] = u64::from(v);
            }
            Some(Service::DiagHang) => loop {
                core::hint::spin_loop();
            },
            Some(Service::DiagScribble) => {
                let len = mailbox.args[0].min(mailbox.store_len);
                // SAFETY: the store region is mapped writable for CPL3 and
                // `len` is at most store_len <= STORE_MAX bytes.
                unsafe { core::ptr::write_bytes(STORE_ADDR as *mut u8, 0, len as usize) };
                if mailbox.args[1] != 0 {
                    // SAFETY: deliberately faults (#PF on an unmapped address).
                    let v = unsafe { core::ptr::read_volatile(UNMAPPED_ADDR as *const u8) };
                    mailbox.outs[0] = u64::from(v);
                }
                mailbox.store_dirty = 1;
                mailbox.status = EFI_SUCCESS;
            }
            Some(Service::DiagPatchText) => {
                let at = core::ptr::addr_of!(DIAG_TEXT_BYTE);
                // SAFETY: reads a byte of the firmware's own text (mapped
                // readable); volatile, as efivmm's test may have changed it.
                mailbox.outs[0] = u64::from(unsafe { core::ptr::read_volatile(at) });
                mailbox.outs[1] = at as u64;
                if mailbox.args[0] != 0 {
                    // SAFETY: deliberately writes the firmware's own text,
                    // which efivmm maps read-only: a #PF ends the call.
                    unsafe {
                        asm!("mov byte ptr [{0}], {1}", in(reg) at, in(reg_byte) mailbox.args[0] as u8, options(nostack))
                    };
                }
                mailbox.status = EFI_SUCCESS;
            }
            Some(Service::DiagCounter) => {
                // SAFETY: a counter in .bss; the firmware is single-threaded
                // and nothing else refers to it.
                unsafe {
                    let counter = core::ptr::addr_of_mut!(DIAG_COUNTER);
                    mailbox.outs[0] = core::ptr::read_volatile(counter);
                    core::ptr::write_volatile(counter, mailbox.outs[0].wrapping_add(1));
                }
                mailbox.status = EFI_SUCCESS;
            }
            Some(Service::DiagFpu) => {
                let mut mxcsr = 0u32;
                // SAFETY: stmxcsr stores 4 bytes into `mxcsr` (CR4.OSFXSR is set).
                unsafe { asm!("stmxcsr [{0}]", in(reg) &mut mxcsr, options(nostack)) };
                mailbox.outs[0] = u64::from(mxcsr);
                if mailbox.args[0] != 0 {
                    let value = mailbox.args[0] as u32;
                    // SAFETY: loads MXCSR (a #GP if reserved bits are set),
                    // then faults deliberately with #UD.
                    unsafe { asm!("ldmxcsr [{0}]", "ud2", in(reg) &value, options(nostack, noreturn)) };
                }
                mailbox.status = EFI_SUCCESS;
            }
            Some(Service::DiagBuffers) => {
                let extent = |addr: u64, size: u64| {
                    // SAFETY: the buffers are mapped readable for CPL3.
                    let bytes = unsafe { core::slice::from_raw_parts(addr as *const u8, size as usize) };
                    bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i as u64 + 1)
                };
                mailbox.outs[0] = extent(NAME_ADDR, NAME_SIZE);
                mailbox.outs[1] = extent(DATA_IN_ADDR, DATA_SIZE);
                mailbox.outs[2] = extent(DATA_OUT_ADDR, DATA_SIZE);
                let fill = mailbox.args[0].min(DATA_SIZE) as usize;
                // SAFETY: DATA_OUT is mapped writable for CPL3; `fill` <= DATA_SIZE.
                unsafe { core::ptr::write_bytes(DATA_OUT_ADDR as *mut u8, 0xaa, fill) };
                mailbox.status = EFI_SUCCESS;
            }
            Some(Service::DiagPrivileged) => {
                // SAFETY: `hlt` at CPL3 raises #GP; efivmm ends the call.
                unsafe { asm!("hlt", options(nomem, nostack)) };
            }
            _ => {
                // SAFETY: HEAP_ADDR..+HEAP_SIZE is sandbox memory mapped
                // writable for CPL3 that nothing else uses (sandbox_abi's
                // regions are disjoint); the allocator is empty here, as
                // .bss was reset before this call, so `init` runs once
                // per heap, as it requires.
                unsafe { HEAP.lock().init(HEAP_ADDR as *mut u8, HEAP_SIZE as usize) };
                // SAFETY: these are disjoint regions of the sandbox's own
                // memory map (sandbox_abi, checked by its tests), all mapped
                // writable for CPL3; store_len was checked against STORE_MAX
                // above. Nothing else aliases them during the call.
                let mut call = unsafe {
                    Call {
                        name: core::slice::from_raw_parts_mut(NAME_ADDR as *mut u8, NAME_SIZE as usize),
                        data_in: core::slice::from_raw_parts(DATA_IN_ADDR as *const u8, DATA_SIZE as usize),
                        data_out: core::slice::from_raw_parts_mut(DATA_OUT_ADDR as *mut u8, DATA_SIZE as usize),
                        store: core::slice::from_raw_parts_mut(STORE_ADDR as *mut u8, mailbox.store_len as usize),
                        mailbox,
                    }
                };
                serve(&mut call);
            }
        }
        complete(window, seq)
    }

    /// A word of the poll page (mapped, aligned, written by efivmm).
    fn word(addr: u64) -> u64 {
        // SAFETY: the poll words lie in the mailbox page, mapped readable
        // for CPL3 and 8-byte aligned (sandbox_abi); volatile, as efivmm
        // writes them while the firmware runs.
        unsafe { core::ptr::read_volatile(addr as *const u64) }
    }

    fn set_word(addr: u64, value: u64) {
        // SAFETY: as in `word`; the mailbox page is writable for CPL3.
        unsafe { core::ptr::write_volatile(addr as *mut u64, value) }
    }

    fn rdtsc() -> u64 {
        // SAFETY: rdtsc only reads the time-stamp counter (CR4.TSD is clear).
        unsafe { core::arch::x86_64::_rdtsc() }
    }

    /// The call `seq` is complete: the doorbell, or (fast path) its number
    /// in POLL_DONE and polling for the next.
    fn complete(window: u64, seq: u64) -> ! {
        if window == 0 {
            doorbell()
        }
        // The replies (mailbox, buffers, store) before the number.
        core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::Release);
        set_word(POLL_DONE, seq);
        poll(window)
    }

    /// Polls for a new request for `window` TSC ticks, then parks.
    fn poll(window: u64) -> ! {
        let started = rdtsc();
        loop {
            if word(POLL_REQUEST) != word(POLL_DONE) {
                restart()
            }
            if rdtsc().wrapping_sub(started) > window {
                break;
            }
            core::hint::spin_loop();
        }
        // Parking: announce it, then look once more (efivmm writes the
        // request, fences, reads the state: one side sees the other).
        set_word(POLL_STATE, POLL_PARKING);
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
        if word(POLL_REQUEST) != word(POLL_DONE) {
            set_word(POLL_STATE, POLL_POLLING);
            restart()
        }
        park()
    }

    /// Starts over at `_start` on a fresh stack (the next request, or
    /// polling for one).
    fn restart() -> ! {
        // SAFETY: a jump to the entry point with the stack reset to where
        // efivmm starts it, exactly the state of a first call; nothing is
        // live across the jump.
        unsafe {
            asm!(
                "mov rsp, {stack}",
                "jmp {entry}",
                stack = const STACK_TOP - 8,
                entry = sym _start,
                options(noreturn),
            )
        }
    }

    /// Rings efivmm's doorbell: an exit to efivmm, which resumes the vCPU
    /// right after it for the next call.
    fn ring_doorbell() {
        // SAFETY: port I/O to efivmm's doorbell (the TSS I/O bitmap lets CPL3
        // use this one port, and it only exits to efivmm). Not `nomem`: the
        // replies written before it must be in memory when efivmm looks.
        unsafe { asm!("out dx, al", in("dx") DOORBELL_PORT, in("al") 0u8, options(nostack, preserves_flags)) }
    }

    /// Parks with the doorbell; efivmm resumes the vCPU for the next
    /// request, which then starts over at `_start` (polling again).
    fn park() -> ! {
        ring_doorbell();
        set_word(POLL_STATE, POLL_POLLING);
        restart()
    }

    /// Tells efivmm the call is complete, then waits for the next call by
    /// starting over at `_start` on a fresh stack: efivmm resumes the vCPU
    /// after the doorbell for the next call, so no register set-up is needed
    /// per call, and nothing on the stack survives a call.
    fn doorbell() -> ! {
        ring_doorbell();
        restart()
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        // A panic is a firmware bug: fault (#UD) so efivmm fails the call
        // with EFI_DEVICE_ERROR and restores the sandbox.
        loop {
            // SAFETY: `ud2` only raises #UD, which efivmm handles.
            unsafe { asm!("ud2", options(nomem, nostack)) };
        }
    }
}

#[cfg(not(target_os = "none"))]
fn main() {}
