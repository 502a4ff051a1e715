//! `ovmf-loader`: the UEFI application that OVMF runs at BDS as its fw_cfg
//! "kernel" (as `qemu -kernel ovmf-loader.efi` does), which brings OVMF to
//! runtime and then serves efivmm's sandbox mailbox with OVMF's runtime
//! services.
//!
//! Steps (each announced on the debugcon port, `sandbox_abi::DEBUGCON_PORT`):
//!
//! 1. Allocate the mailbox block: `MAILBOX_BLOCK_SIZE` bytes of pages of
//!    type `EfiLoaderData` — memory that belongs to the loaded image and, after
//!    ExitBootServices, to the OS (us): the firmware never touches it again,
//!    and it is not runtime memory, so it stays out of the virtual address
//!    map and no firmware pointer conversion concerns it. Only the header
//!    page is zeroed (efivmm writes each request before resuming us).
//! 2. Read the memory map into pages allocated for it and call
//!    ExitBootServices, again with a fresh map while the key is stale
//!    (`EFI_INVALID_PARAMETER`), calling nothing but GetMemoryMap between
//!    attempts (UEFI 2.10 §7.4.6). Then interrupts off, our own IDT, and
//!    SetVirtualAddressMap exactly once with the identity map of the
//!    `EFI_MEMORY_RUNTIME` descriptors (as Linux passes only those). No
//!    ConvertPointer, no boot service after ExitBootServices.
//! 3. Switch to a stack of its own (`LOADER_STACK_SIZE` bytes of
//!    `EfiLoaderData`, allocated before ExitBootServices): from here on
//!    nothing the loader or OVMF's runtime touches lies outside runtime and
//!    loader memory, which is what efivmm maps when it runs them at CPL3.
//!    Ring the doorbell with `LOADER_READY` (RSI = block, RDX = system
//!    table, RCX = SetVirtualAddressMap's status, R8/R9/R10 = a copy of the
//!    whole memory map, its size, the descriptor size); on a failure before
//!    that, ring `LOADER_FAILED` (RSI = the `LoaderStep`, RDX = the status)
//!    forever.
//! 4. Serve: each time efivmm resumes the vCPU, read the header (volatile),
//!    run `ovmf_loader::serve` over OVMF's runtime-services table, write the
//!    header back and ring `LOADER_REPLY`. The serve loop uses no privileged
//!    instruction (only the doorbell's `out`), so efivmm may resume it at CPL3
//!    on page tables of its own.
//!
//! With `selftest` in the load options (the fw_cfg command line), steps 3–4
//! are replaced by `ovmf_loader::selftest` and a shutdown; with `faulttest`,
//! the loader first serves one `DiagFault` request it wrote into its own
//! header (for the QEMU test of the exception stubs).
//!
//! Built for the host (as the workspace's tests do) this is an empty program.
#![cfg_attr(target_os = "uefi", no_std, no_main)]

#[cfg(target_os = "uefi")]
mod efi {
    use core::arch::{asm, global_asm};
    use core::cell::UnsafeCell;
    use core::ffi::c_void;
    use core::fmt::Write;
    use core::ptr::{self, null_mut};

    use ovmf_loader::dispatch::{Block, CapsuleArray, Name, Outcome, Runtime};
    use ovmf_loader::{options, selftest, serve, SCRATCH_OFFSET, SCRATCH_SIZE};
    use sandbox_abi::time::EfiTime;
    use sandbox_abi::{
        LoaderStep, Mailbox, Service, DATA_IN_OFFSET, DATA_OUT_OFFSET, DATA_SIZE, DEBUGCON_PORT, DOORBELL_PORT,
        EXCEPTION_PORT, LOADER_FAILED, LOADER_READY, LOADER_REPLY, LOADER_STACK_SIZE, MAILBOX_BLOCK_SIZE,
        MAILBOX_MAGIC, NAME_OFFSET, NAME_SIZE,
    };
    use uefi_raw::capsule::CapsuleHeader;
    use uefi_raw::protocol::loaded_image::LoadedImageProtocol;
    use uefi_raw::table::boot::{AllocateType, BootServices, MemoryAttribute, MemoryDescriptor, MemoryType};
    use uefi_raw::table::runtime::{ResetType, RuntimeServices, TimeCapabilities, VariableAttributes};
    use uefi_raw::table::system::SystemTable;
    use uefi_raw::time::Time;
    use uefi_raw::{Boolean, Guid, Handle, Status};

    const PAGE: usize = 4096;
    /// ExitBootServices attempts before giving up on a map key that keeps
    /// going stale.
    const EBS_ATTEMPTS: usize = 8;

    const _: () = assert!(DOORBELL_PORT <= 0xFF, "the doorbell uses `out imm8, al` (DX carries an argument)");
    const _: () = assert!(core::mem::size_of::<EfiTime>() == core::mem::size_of::<Time>());
    const _: () = assert!(core::mem::align_of::<EfiTime>() >= core::mem::align_of::<Time>());
    const _: () = assert!(core::mem::size_of::<Guid>() == 16);

    // ---- debugcon -------------------------------------------------------

    /// Text to the debugcon port, one `out` per byte.
    struct Debugcon;

    impl Write for Debugcon {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            for b in s.bytes() {
                // SAFETY: a byte to the debug console port: QEMU's debugcon
                // or efivmm's log; no memory or other device is affected.
                unsafe {
                    asm!("out dx, al", in("dx") DEBUGCON_PORT, in("al") b, options(nomem, nostack, preserves_flags))
                };
            }
            Ok(())
        }
    }

    macro_rules! say {
        ($($t:tt)*) => {{
            let _ = writeln!(Debugcon, "ovmf-loader: {}", format_args!($($t)*));
        }};
    }

    // ---- doorbell --------------------------------------------------------

    /// `out DOORBELL_PORT, al` with the four argument registers. efivmm
    /// stops the vCPU here and resumes it after the instruction.
    fn doorbell(rdi: u64, rsi: u64, rdx: u64, rcx: u64) {
        // SAFETY: a port write that exits to the VMM (ignored by QEMU); the
        // registers are only inputs. Not `nomem`: the host reads and writes
        // the mailbox block while we are stopped here, so the compiler must
        // not keep block contents in registers across it.
        unsafe {
            asm!(
                "out {port}, al",
                port = const DOORBELL_PORT,
                in("al") 0u8,
                in("rdi") rdi,
                in("rsi") rsi,
                in("rdx") rdx,
                in("rcx") rcx,
                options(nostack, preserves_flags),
            )
        };
    }

    /// The `LOADER_READY` doorbell: [`doorbell`]'s registers and the memory
    /// map's copy in R8, R9, R10.
    fn doorbell_ready(block: u64, system_table: u64, svam: u64, map: &MemoryMap) {
        // SAFETY: as `doorbell`: a port write that exits to the VMM; the
        // registers are only inputs.
        unsafe {
            asm!(
                "out {port}, al",
                port = const DOORBELL_PORT,
                in("al") 0u8,
                in("rdi") LOADER_READY,
                in("rsi") block,
                in("rdx") system_table,
                in("rcx") svam,
                in("r8") map.copy as u64,
                in("r9") map.size as u64,
                in("r10") map.desc_size as u64,
                options(nostack, preserves_flags),
            )
        };
    }

    /// Reports a failed step to efivmm forever; never returns to BDS.
    fn fail(step: LoaderStep, status: Status) -> ! {
        say!("FAILED at {:?}: status {:#x}", step, status.0);
        loop {
            doorbell(LOADER_FAILED, step as u64, status.0 as u64, 0);
            core::hint::spin_loop();
        }
    }

    // ---- exceptions ------------------------------------------------------

    // One 16-byte stub per vector 0..32: `out EXCEPTION_PORT, al` with AL =
    // the vector, then halt for good. Nothing is pushed, so RSP points at the
    // CPU's exception frame (the error code first, for vectors that have
    // one), which efivmm reads (`Sandbox::fault_report`). The loader runs at
    // CPL0 (OVMF's privilege level, kept after ExitBootServices), so an
    // exception causes no privilege change and hence no stack switch: the
    // frame lies on the stack the faulting code was using (IST is 0).
    global_asm!(
        ".pushsection .text",
        ".balign 16",
        ".global ovmf_loader_exception_stubs",
        "ovmf_loader_exception_stubs:",
        ".set vector, 0",
        ".rept 32",
        ".balign 16",
        "movb $vector, %al",
        "movw ${port}, %dx",
        "outb %al, %dx",
        "1: hlt",
        "jmp 1b",
        ".set vector, vector + 1",
        ".endr",
        ".popsection",
        port = const EXCEPTION_PORT,
        options(att_syntax),
    );

    extern "C" {
        static ovmf_loader_exception_stubs: [u8; 32 * 16];
    }

    /// An interrupt-gate descriptor of the 64-bit IDT.
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Gate {
        offset_low: u16,
        selector: u16,
        ist: u8,
        type_attr: u8,
        offset_mid: u16,
        offset_high: u32,
        reserved: u32,
    }

    const EMPTY_GATE: Gate =
        Gate { offset_low: 0, selector: 0, ist: 0, type_attr: 0, offset_mid: 0, offset_high: 0, reserved: 0 };

    /// The IDT: 32 gates, in the image's data (ours after ExitBootServices).
    #[repr(C, align(16))]
    struct Idt(UnsafeCell<[Gate; 32]>);

    // SAFETY: written once, by the only CPU, before `lidt`; never after.
    unsafe impl Sync for Idt {}

    static IDT: Idt = Idt(UnsafeCell::new([EMPTY_GATE; 32]));

    #[repr(C, packed)]
    struct Idtr {
        limit: u16,
        base: u64,
    }

    /// Points vectors 0..32 at the stubs and loads the IDT. Interrupts must
    /// be off (they are: see the caller).
    fn install_idt() {
        let cs: u16;
        // SAFETY: reading CS has no side effects.
        unsafe { asm!("mov {0:x}, cs", out(reg) cs, options(nomem, nostack, preserves_flags)) };
        let stubs = ptr::addr_of!(ovmf_loader_exception_stubs) as u64;
        // SAFETY: single CPU, interrupts off, and the IDT is not loaded yet:
        // nothing else reads or writes IDT while this reference lives.
        let gates = unsafe { &mut *IDT.0.get() };
        for (v, g) in gates.iter_mut().enumerate() {
            let addr = stubs + 16 * v as u64;
            *g = Gate {
                offset_low: addr as u16,
                selector: cs,
                ist: 0,
                type_attr: 0x8E, // present, DPL 0, 64-bit interrupt gate
                offset_mid: (addr >> 16) as u16,
                offset_high: (addr >> 32) as u32,
                reserved: 0,
            };
        }
        let idtr = Idtr { limit: (core::mem::size_of::<[Gate; 32]>() - 1) as u16, base: IDT.0.get() as u64 };
        // SAFETY: the IDT lives in the image's static data for the program's
        // lifetime, every gate points at a stub in this image's code, and
        // the selector is the current code segment.
        unsafe { asm!("lidt [{0}]", in(reg) &idtr, options(readonly, nostack, preserves_flags)) };
    }

    // ---- boot services ---------------------------------------------------

    fn allocate(bs: &BootServices, pages: usize) -> Result<u64, Status> {
        let mut addr = 0u64;
        // SAFETY: AllocatePages is a boot service, called before
        // ExitBootServices with a valid out pointer.
        let s = unsafe { (bs.allocate_pages)(AllocateType::ANY_PAGES, MemoryType::LOADER_DATA, pages, &mut addr) };
        if s == Status::SUCCESS {
            Ok(addr)
        } else {
            Err(s)
        }
    }

    /// Whether the load options contain `word`.
    fn load_options_have(bs: &BootServices, image: Handle, word: &str) -> bool {
        let mut li: *mut c_void = null_mut();
        // SAFETY: HandleProtocol on our own image handle for the loaded-image
        // protocol, which every started image has; before ExitBootServices.
        let s = unsafe { (bs.handle_protocol)(image, &LoadedImageProtocol::GUID, &mut li) };
        if s != Status::SUCCESS || li.is_null() {
            return false;
        }
        // SAFETY: the firmware returned a valid loaded-image protocol.
        let li = unsafe { &*(li as *const LoadedImageProtocol) };
        if li.load_options.is_null() {
            return false;
        }
        let mut units = [0u16; 512];
        let len = (li.load_options_size as usize).min(units.len() * 2);
        // SAFETY: LoadOptions points at LoadOptionsSize bytes owned by the
        // firmware while the image runs (we read at most that many).
        let bytes = unsafe { core::slice::from_raw_parts(li.load_options as *const u8, len) };
        let n = options::units_from_bytes(bytes, &mut units);
        options::has_word(&units[..n], word)
    }

    /// The memory map as ExitBootServices saw it.
    struct MemoryMap {
        buf: *mut u8,
        /// An untouched copy of the map (for efivmm), in the same pages.
        copy: *mut u8,
        size: usize,
        desc_size: usize,
        desc_version: u32,
    }

    fn exit_boot_services(bs: &BootServices, image: Handle) -> Result<MemoryMap, (LoaderStep, Status)> {
        let (mut size, mut key, mut desc_size, mut desc_version) = (0usize, 0usize, 0usize, 0u32);
        // SAFETY: GetMemoryMap with a zero size only reports the size needed.
        let s = unsafe { (bs.get_memory_map)(&mut size, null_mut(), &mut key, &mut desc_size, &mut desc_version) };
        if s != Status::BUFFER_TOO_SMALL || desc_size < core::mem::size_of::<MemoryDescriptor>() {
            return Err((LoaderStep::GetMemoryMap, s));
        }
        // Room for the descriptors our own allocation adds, and then some.
        let capacity = (size + 32 * desc_size).next_multiple_of(PAGE);
        // Twice the capacity: the map, then its copy for efivmm (the map
        // itself is compacted for SetVirtualAddressMap).
        let buf = allocate(bs, 2 * capacity / PAGE).map_err(|s| (LoaderStep::GetMemoryMap, s))? as *mut u8;
        let mut last = Status::INVALID_PARAMETER;
        for _ in 0..EBS_ATTEMPTS {
            size = capacity;
            // SAFETY: `buf` is `capacity` bytes of our pages, 4 KiB aligned.
            let s = unsafe { (bs.get_memory_map)(&mut size, buf.cast(), &mut key, &mut desc_size, &mut desc_version) };
            if s != Status::SUCCESS {
                return Err((LoaderStep::GetMemoryMap, s));
            }
            // SAFETY: `image` is our handle and `key` the current map key;
            // after success no boot service is called again.
            last = unsafe { (bs.exit_boot_services)(image, key) };
            if last == Status::SUCCESS {
                // SAFETY: `size` <= `capacity` bytes from `buf` to the second
                // half of the same allocation; the halves do not overlap.
                let copy = unsafe { buf.add(capacity) };
                // SAFETY: see above.
                unsafe { ptr::copy_nonoverlapping(buf, copy, size) };
                return Ok(MemoryMap { buf, copy, size, desc_size, desc_version });
            }
            if last != Status::INVALID_PARAMETER {
                break;
            }
            // Stale key: only GetMemoryMap again (UEFI 2.10 §7.4.6).
        }
        Err((LoaderStep::ExitBootServices, last))
    }

    /// Compacts the map to its `EFI_MEMORY_RUNTIME` descriptors with
    /// `VirtualStart = PhysicalStart` and calls SetVirtualAddressMap once.
    fn set_identity_map(rt: *const RuntimeServices, map: &MemoryMap) -> Status {
        let mut kept = 0usize;
        for i in 0..map.size / map.desc_size {
            // SAFETY: descriptor `i` lies within the `size` bytes the firmware
            // wrote, and desc_size >= size_of::<MemoryDescriptor>() (checked
            // when the map was read); unaligned reads make no assumption on
            // desc_size's alignment.
            let d = unsafe { ptr::read_unaligned(map.buf.add(i * map.desc_size) as *const MemoryDescriptor) };
            if !d.att.contains(MemoryAttribute::RUNTIME) {
                continue;
            }
            say!(
                "runtime descriptor: type {} phys {:#x} pages {:#x} attributes {:#x}",
                d.ty.0,
                d.phys_start,
                d.page_count,
                d.att.bits()
            );
            // SAFETY: source and destination are whole descriptors within the
            // buffer (kept <= i); `copy` allows the overlap of kept == i; the
            // VirtualStart field lies within the destination descriptor.
            unsafe {
                let dst = map.buf.add(kept * map.desc_size);
                ptr::copy(map.buf.add(i * map.desc_size), dst, map.desc_size);
                let virt = dst.add(core::mem::offset_of!(MemoryDescriptor, virt_start));
                ptr::write_unaligned(virt as *mut u64, d.phys_start);
            }
            kept += 1;
        }
        say!("SetVirtualAddressMap: {} runtime descriptors, identity", kept);
        // SAFETY: after ExitBootServices, called once, with a map of
        // descriptors the firmware itself reported, each mapped to itself;
        // `rt` is the firmware's runtime-services table.
        unsafe {
            ((*rt).set_virtual_address_map)(
                kept * map.desc_size,
                map.desc_size,
                map.desc_version,
                map.buf as *const MemoryDescriptor,
            )
        }
    }

    // ---- the mailbox block ---------------------------------------------

    /// The block's buffers as slices.
    ///
    /// # Safety
    /// `block` is the address of our `MAILBOX_BLOCK_SIZE`-byte, page-aligned
    /// block, and the slices are dropped before efivmm next writes the block
    /// (that is, before the next doorbell).
    unsafe fn block_view<'a>(block: u64) -> Block<'a> {
        let at = |off: u64| (block + off) as *mut u8;
        // SAFETY: disjoint ranges within the block (sandbox_abi's offsets and
        // SCRATCH_OFFSET..DATA_IN_OFFSET), each aligned (page or 8 bytes).
        unsafe {
            Block {
                name: core::slice::from_raw_parts_mut(at(NAME_OFFSET), NAME_SIZE as usize),
                data_in: core::slice::from_raw_parts_mut(at(DATA_IN_OFFSET), DATA_SIZE as usize),
                data_out: core::slice::from_raw_parts_mut(at(DATA_OUT_OFFSET), DATA_SIZE as usize),
                scratch: core::slice::from_raw_parts_mut(at(SCRATCH_OFFSET) as *mut u64, SCRATCH_SIZE as usize / 8),
            }
        }
    }

    /// Serves the call whose request is in the block's header: reads the
    /// header (volatile), serves it, writes the reply back. Faults or hangs
    /// for the diagnostics that ask for it.
    fn serve_one(ovmf: &mut Ovmf, block: u64) {
        let header = block as *mut Mailbox;
        // SAFETY: the header is at the block's start, page aligned; the host
        // wrote it while we were stopped at the doorbell.
        let mut mb = unsafe { ptr::read_volatile(header) };
        // SAFETY: the view is dropped at the end of this statement, before
        // the caller rings the doorbell.
        let outcome = serve(ovmf, &mut mb, &mut unsafe { block_view(block) });
        match outcome {
            Outcome::Reply => {}
            Outcome::Fault => loop {
                // SAFETY: deliberately raises #UD, reported by our IDT.
                unsafe { asm!("ud2", options(nomem, nostack)) };
            },
            Outcome::Hang => loop {
                core::hint::spin_loop();
            },
        }
        // SAFETY: as the read above.
        unsafe { ptr::write_volatile(header, mb) };
    }

    /// Serves calls forever: efivmm resumes the vCPU after each doorbell
    /// with the next request in the block.
    fn serve_forever(ovmf: &mut Ovmf, block: u64) -> ! {
        loop {
            serve_one(ovmf, block);
            doorbell(LOADER_REPLY, 0, 0, 0);
        }
    }

    // ---- OVMF's runtime services ------------------------------------------

    /// OVMF's runtime-services table, called through its (1:1 mapped)
    /// function pointers.
    struct Ovmf {
        rt: *const RuntimeServices,
    }

    fn out_ptr<T, U>(o: Option<&mut T>) -> *mut U {
        o.map_or(null_mut(), |r| (r as *mut T).cast())
    }

    fn in_ptr<T, U>(o: Option<&T>) -> *const U {
        o.map_or(ptr::null(), |r| (r as *const T).cast())
    }

    fn st(s: Status) -> u64 {
        s.0 as u64
    }

    const INVALID: u64 = ovmf_loader::status::INVALID_PARAMETER;

    // SAFETY (every call below): `rt` is OVMF's runtime-services table, valid
    // for the program's lifetime and identity-mapped; each pointer argument
    // is NULL or points at a live, aligned value or slice of the type and
    // size the service's prototype uses (EfiTime has EFI_TIME's layout, GUIDs
    // are copied into aligned `Guid`s, names hold a NUL, data slices hold at least
    // the size passed — checked here where the size is separate), so the
    // firmware reads and writes only memory we lend it for the call.
    impl Runtime for Ovmf {
        fn get_time(&mut self, time: Option<&mut EfiTime>, caps: Option<&mut TimeCapabilities>) -> u64 {
            // SAFETY: see the impl.
            st(unsafe { ((*self.rt).get_time)(out_ptr(time), out_ptr(caps)) })
        }

        fn set_time(&mut self, time: Option<&EfiTime>) -> u64 {
            // SAFETY: see the impl.
            st(unsafe { ((*self.rt).set_time)(in_ptr(time)) })
        }

        fn get_wakeup_time(
            &mut self,
            enabled: Option<&mut u8>,
            pending: Option<&mut u8>,
            time: Option<&mut EfiTime>,
        ) -> u64 {
            // SAFETY: see the impl (Boolean is a transparent u8).
            st(unsafe { ((*self.rt).get_wakeup_time)(out_ptr(enabled), out_ptr(pending), out_ptr(time)) })
        }

        fn set_wakeup_time(&mut self, enable: u8, time: Option<&EfiTime>) -> u64 {
            // SAFETY: see the impl.
            st(unsafe { ((*self.rt).set_wakeup_time)(Boolean(enable), in_ptr(time)) })
        }

        fn get_variable(
            &mut self,
            name: Option<Name<'_>>,
            guid: Option<&[u8; 16]>,
            attributes: Option<&mut u32>,
            data_size: Option<&mut usize>,
            data: Option<&mut [u8]>,
        ) -> u64 {
            if let (Some(size), Some(d)) = (data_size.as_deref(), data.as_deref()) {
                if *size > d.len() {
                    return INVALID;
                }
            }
            let name = name.map_or(ptr::null(), |n| n.bytes().as_ptr() as *const u16);
            let data = data.map_or(null_mut(), |d| d.as_mut_ptr());
            let attributes: *mut VariableAttributes = out_ptr(attributes);
            let guid = guid.map(|g| Guid::from_bytes(*g));
            // SAFETY: see the impl; *DataSize <= the data slice (checked).
            st(unsafe { ((*self.rt).get_variable)(name, in_ptr(guid.as_ref()), attributes, out_ptr(data_size), data) })
        }

        fn get_next_variable_name(
            &mut self,
            name_size: Option<&mut usize>,
            name: Option<&mut [u8]>,
            guid: Option<&mut [u8; 16]>,
        ) -> u64 {
            if let (Some(size), Some(n)) = (name_size.as_deref(), name.as_deref()) {
                if *size > n.len() || !(n.as_ptr() as usize).is_multiple_of(2) {
                    return INVALID;
                }
            }
            let name = name.map_or(null_mut(), |n| n.as_mut_ptr() as *mut u16);
            let mut aligned = guid.as_deref().map(|g| Guid::from_bytes(*g));
            // SAFETY: see the impl; *VariableNameSize <= the name slice
            // (checked), and the firmware looks for the input NUL only within
            // *VariableNameSize bytes.
            let status =
                st(unsafe { ((*self.rt).get_next_variable_name)(out_ptr(name_size), name, out_ptr(aligned.as_mut())) });
            if let (Some(g), Some(a)) = (guid, aligned) {
                *g = a.to_bytes();
            }
            status
        }

        fn set_variable(
            &mut self,
            name: Option<Name<'_>>,
            guid: Option<&[u8; 16]>,
            attributes: u32,
            data_size: usize,
            data: Option<&[u8]>,
        ) -> u64 {
            if data.is_some_and(|d| data_size > d.len()) {
                return INVALID;
            }
            let name = name.map_or(ptr::null(), |n| n.bytes().as_ptr() as *const u16);
            let data = data.map_or(ptr::null(), |d| d.as_ptr());
            let attributes = VariableAttributes::from_bits_retain(attributes);
            let guid = guid.map(|g| Guid::from_bytes(*g));
            // SAFETY: see the impl; DataSize <= the data slice (checked).
            st(unsafe { ((*self.rt).set_variable)(name, in_ptr(guid.as_ref()), attributes, data_size, data) })
        }

        fn get_next_high_monotonic_count(&mut self, high: Option<&mut u32>) -> u64 {
            // SAFETY: see the impl.
            st(unsafe { ((*self.rt).get_next_high_monotonic_count)(out_ptr(high)) })
        }

        fn reset_system(&mut self, reset_type: u32, reset_status: u64, data_size: usize, data: Option<&[u8]>) {
            if data.is_some_and(|d| data_size > d.len()) {
                return;
            }
            type ResetThatMayReturn = unsafe extern "efiapi" fn(ResetType, Status, usize, *const u8);
            // SAFETY: the field holds edk2's `VOID EFIAPI ResetSystem(...)`;
            // uefi-raw types it `-> !`, but edk2 returns for a reset type it
            // does not know. Both pointer types have the same ABI (no return
            // value); this one describes the function truthfully.
            let reset: ResetThatMayReturn = unsafe { core::mem::transmute((*self.rt).reset_system) };
            let data = data.map_or(ptr::null(), |d| d.as_ptr());
            // SAFETY: see the impl; DataSize <= the data slice (checked).
            unsafe { reset(ResetType(reset_type), Status(reset_status as usize), data_size, data) };
        }

        fn update_capsule(&mut self, headers: Option<&CapsuleArray<'_>>, count: usize, sg_list: u64) -> u64 {
            if headers.is_some_and(|h| h.pointers().len() != count) {
                return INVALID;
            }
            let array = headers.map_or(ptr::null(), |h| h.pointers().as_ptr() as *const *const CapsuleHeader);
            // SAFETY: see the impl; the array holds `count` pointers to
            // 28-byte headers inside the block (CapsuleArray's invariant),
            // and `sg_list` is 0 or our empty list (see ovmf_loader::dispatch).
            st(unsafe { ((*self.rt).update_capsule)(array, count, sg_list) })
        }

        fn query_capsule_capabilities(
            &mut self,
            headers: Option<&CapsuleArray<'_>>,
            count: usize,
            max_size: Option<&mut u64>,
            reset_type: Option<&mut u32>,
        ) -> u64 {
            if headers.is_some_and(|h| h.pointers().len() != count) {
                return INVALID;
            }
            let array = headers.map_or(ptr::null(), |h| h.pointers().as_ptr() as *const *const CapsuleHeader);
            let reset_type: *mut ResetType = out_ptr(reset_type);
            // SAFETY: see the impl and update_capsule.
            st(unsafe { ((*self.rt).query_capsule_capabilities)(array, count, out_ptr(max_size), reset_type) })
        }

        fn query_variable_info(
            &mut self,
            attributes: u32,
            max_storage: Option<&mut u64>,
            remaining: Option<&mut u64>,
            max_size: Option<&mut u64>,
        ) -> u64 {
            let attributes = VariableAttributes::from_bits_retain(attributes);
            // SAFETY: see the impl.
            st(unsafe {
                ((*self.rt).query_variable_info)(
                    attributes,
                    out_ptr(max_storage),
                    out_ptr(remaining),
                    out_ptr(max_size),
                )
            })
        }

        fn privileged(&mut self, halt: bool) -> [u64; 3] {
            let (cr0, cr3): (u64, u64);
            let byte: u8;
            // SAFETY: at CPL0 (OVMF booted with --firmware-cpl0) these run
            // natively: IF is saved and restored around `cli`, the control
            // registers are only read, port 0x80 is the POST-code port
            // (reads all-ones on efivmm's platform), `wbinvd` only flushes
            // caches. At CPL3 each raises #GP and efivmm emulates it. No
            // memory is touched but the stack slot of pushfq/popfq.
            unsafe {
                asm!(
                    "pushfq",
                    "cli",
                    "mov {cr0}, cr0",
                    "mov {cr3}, cr3",
                    "in al, 0x80",
                    "wbinvd",
                    "popfq",
                    cr0 = out(reg) cr0,
                    cr3 = out(reg) cr3,
                    out("al") byte,
                    options(nomem),
                )
            };
            if halt {
                // SAFETY: at CPL3 a #GP that efivmm refuses (the call
                // fails); at CPL0 with interrupts off, a halt efivmm's run
                // loop resumes from (the sandbox has no interrupts).
                unsafe { asm!("hlt", options(nomem, nostack)) };
            }
            [cr0, cr3, u64::from(byte)]
        }

        fn cpl(&self) -> u64 {
            let cs: u16;
            // SAFETY: reading CS has no side effects.
            unsafe { asm!("mov {0:x}, cs", out(reg) cs, options(nomem, nostack, preserves_flags)) };
            u64::from(cs & 3)
        }
    }

    // ---- entry -----------------------------------------------------------

    /// The image entry point, called by OVMF's `StartImage` at BDS.
    #[no_mangle]
    extern "efiapi" fn efi_main(image: Handle, system_table: *mut SystemTable) -> Status {
        say!("start: image {:#x}, system table {:#x}", image as u64, system_table as u64);
        // SAFETY: the firmware passes a valid system table; its boot-services
        // table is valid until ExitBootServices, after which `bs` is no
        // longer used.
        let (bs, rt) = unsafe { (&*(*system_table).boot_services, (*system_table).runtime_services as *const _) };
        let selftest = load_options_have(bs, image, "selftest");
        let faulttest = load_options_have(bs, image, "faulttest");

        let block = match allocate(bs, MAILBOX_BLOCK_SIZE as usize / PAGE) {
            Ok(a) => a,
            Err(s) => fail(LoaderStep::AllocateMailbox, s),
        };
        // SAFETY: the first page of the block we just allocated.
        unsafe { ptr::write_bytes(block as *mut u8, 0, PAGE) };
        say!("mailbox block {:#x} ({:#x} bytes, EfiLoaderData)", block, MAILBOX_BLOCK_SIZE);
        let stack = match allocate(bs, LOADER_STACK_SIZE as usize / PAGE) {
            Ok(a) => a,
            Err(s) => fail(LoaderStep::AllocateMailbox, s),
        };

        say!("ExitBootServices");
        let map = match exit_boot_services(bs, image) {
            Ok(m) => m,
            Err((step, s)) => fail(step, s),
        };
        // Boot services are gone: from here on only runtime services, port
        // I/O and our own memory. The loader owns the CPU; interrupts stay
        // off (ExitBootServices disabled them; make sure).
        // SAFETY: `cli` at CPL0 only clears IF.
        unsafe { asm!("cli", options(nomem, nostack)) };
        install_idt();
        say!("boot services exited; IDT installed");

        let svam = set_identity_map(rt, &map);
        say!("SetVirtualAddressMap status {:#x}", svam.0);
        if svam != Status::SUCCESS {
            fail(LoaderStep::SetVirtualAddressMap, svam);
        }

        let mut ovmf = Ovmf { rt };
        if selftest {
            say!("selftest");
            // SAFETY: no doorbell rings while the view lives: the self-test
            // is the only user of the block.
            let mut view = unsafe { block_view(block) };
            selftest::run(&mut ovmf, &mut view, &mut Debugcon);
            let s = selftest::shutdown(&mut ovmf, &mut view);
            say!("ResetSystem returned {:#x}", s);
            loop {
                // SAFETY: interrupts are off: halts this CPU for good.
                unsafe { asm!("hlt", options(nomem, nostack)) };
            }
        }
        if faulttest {
            // Plays host for one DiagFault call through the header, as
            // efivmm sends it: exercises the exception stubs (the QEMU test
            // listens on EXCEPTION_PORT and reads the frame at RSP).
            say!("faulttest");
            let mb = Mailbox { magic: MAILBOX_MAGIC, service: Service::DiagFault as u64, ..Default::default() };
            // SAFETY: the header is ours and page aligned; nothing else uses
            // the block in this mode.
            unsafe { ptr::write_volatile(block as *mut Mailbox, mb) };
            serve_one(&mut ovmf, block);
            say!("DiagFault did not fault");
        }
        say!("ready");
        // SAFETY: single CPU, before the switch; read once by serve_ready.
        unsafe {
            *READY.0.get() = Some(Ready { rt, block, system_table: system_table as u64, svam: svam.0 as u64, map })
        };
        let top = stack + LOADER_STACK_SIZE - 64;
        // SAFETY: `top` is 16-byte aligned and 64 bytes below the end of our
        // LOADER_STACK_SIZE-byte allocation (room above for the callee's
        // home space); `serve_ready` never returns, so nothing of the old
        // stack is used again.
        unsafe { asm!("mov rsp, {top}", "call {f}", top = in(reg) top, f = sym serve_ready, options(noreturn)) }
    }

    /// What `serve_ready` needs, handed over across the stack switch.
    struct Ready {
        rt: *const RuntimeServices,
        block: u64,
        system_table: u64,
        svam: u64,
        map: MemoryMap,
    }

    struct ReadyCell(UnsafeCell<Option<Ready>>);

    // SAFETY: written once before the stack switch and read once after it,
    // by the only CPU.
    unsafe impl Sync for ReadyCell {}

    static READY: ReadyCell = ReadyCell(UnsafeCell::new(None));

    /// On the loader's own stack: rings `LOADER_READY` and serves forever.
    extern "efiapi" fn serve_ready() -> ! {
        // SAFETY: written by efi_main before the switch; nothing else
        // refers to it.
        let Some(ready) = (unsafe { (*READY.0.get()).take() }) else {
            fail(LoaderStep::SetVirtualAddressMap, Status::ABORTED)
        };
        let mut ovmf = Ovmf { rt: ready.rt };
        doorbell_ready(ready.block, ready.system_table, ready.svam, &ready.map);
        serve_forever(&mut ovmf, ready.block)
    }

    #[panic_handler]
    fn panic(info: &core::panic::PanicInfo) -> ! {
        say!("panic: {}", info);
        loop {
            // SAFETY: `ud2` only raises #UD, which our IDT (or the
            // firmware's, before ExitBootServices) reports.
            unsafe { asm!("ud2", options(nomem, nostack)) };
        }
    }
}

#[cfg(not(target_os = "uefi"))]
fn main() {}
