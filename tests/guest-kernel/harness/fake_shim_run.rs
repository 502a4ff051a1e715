//! Smoke harness (NOT built by cargo; copy to vmm/examples/ to use): boots the test kernel with
//! efivmm::boot and a FAKE shim (trampolines `mov eax,n; out 0xf0,al; ret`) whose services it emulates.
//! Usage: cargo run -p efivmm --example fake_shim_run -- KERNEL.elf "efivmm.gen=0 efivmm.generations=5 efivmm.shape=A"
use efivmm::boot::{self, entry};
use kvm_ioctls::{Kvm, VcpuExit};
use std::collections::HashMap;
use std::io::Cursor;
use linux_loader::loader::{elf::Elf, KernelLoader};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};
use vm_memory::GuestMemoryBackend as _;

const MEM: u64 = 256 << 20;
const SHIM: u64 = 0xfe0_0000;
const INITRD: u64 = 0x300_0000;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let img = std::fs::read(&a[1]).unwrap();
    let cmdline = format!("{}\0", a[2]);
    let kvm = Kvm::new().unwrap();
    let vm = kvm.create_vm().unwrap();
    vm.set_tss_address(0xfffb_d000).unwrap();
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
    let host = mem.get_host_address(GuestAddress(0)).unwrap();
    unsafe {
        vm.set_user_memory_region(kvm_bindings::kvm_userspace_memory_region {
            slot: 0, flags: 0, guest_phys_addr: 0, memory_size: MEM, userspace_addr: host as u64,
        })
    }
    .unwrap();
    entry::write_page_tables_and_gdt(&mem).unwrap();
    let loaded = Elf::load(&mem, None, &mut Cursor::new(&img), None).unwrap();
    mem.write_slice(&img, GuestAddress(INITRD)).unwrap();
    mem.write_slice(cmdline.as_bytes(), GuestAddress(boot::CMDLINE_ADDR)).unwrap();
    // Shim: code page with 14 trampolines, data page with systab (+0) and RT (+0x100).
    for n in 0..14u64 {
        let t = [0xb8, n as u8, 0, 0, 0, 0xe6, 0xf0, 0xc3];
        mem.write_slice(&t, GuestAddress(SHIM + n * 16)).unwrap();
    }
    let st = SHIM + 0x1000;
    let rt = st + 0x100;
    mem.write_obj(0x5453_5953_2049_4249u64, GuestAddress(st)).unwrap();
    mem.write_obj(rt, GuestAddress(st + 88)).unwrap();
    mem.write_obj(0x5652_4553_544e_5552u64, GuestAddress(rt)).unwrap();
    let set_ptrs = |base: u64| {
        for n in 0..14u64 {
            let b = if n == 4 { SHIM } else { base };
            mem.write_obj(b + n * 16, GuestAddress(rt + 24 + n * 8)).unwrap();
        }
    };
    set_ptrs(SHIM);
    let e820 = boot::e820_map(MEM, &[SHIM..SHIM + 0x2000]);
    let mut map = vec![0u8; 3 * 48];
    let d = |m: &mut Vec<u8>, i: usize, t: u32, p: u64, n: u64, at: u64| {
        m[i * 48..i * 48 + 4].copy_from_slice(&t.to_le_bytes());
        m[i * 48 + 8..i * 48 + 16].copy_from_slice(&p.to_le_bytes());
        m[i * 48 + 24..i * 48 + 32].copy_from_slice(&n.to_le_bytes());
        m[i * 48 + 32..i * 48 + 40].copy_from_slice(&at.to_le_bytes());
    };
    d(&mut map, 0, 7, 0x10_0000, (SHIM - 0x10_0000) / 4096, 0xf);
    d(&mut map, 1, 5, SHIM, 1, 1 << 63 | 0xf);
    d(&mut map, 2, 6, SHIM + 0x1000, 1, 1 << 63 | 0xf);
    mem.write_slice(&map, GuestAddress(boot::EFI_MEMMAP_ADDR)).unwrap();
    let efi = boot::EfiHandover { systab: st, memmap: boot::EFI_MEMMAP_ADDR, memmap_size: 144, desc_size: 48, desc_version: 1 };
    let params = boot::boot_params(None, cmdline.len() - 1, Some((INITRD, img.len() as u64)), &e820, Some(efi)).unwrap();
    boot::write_boot_params(&mem, &params).unwrap();

    let vcpu = vm.create_vcpu(0).unwrap();
    vcpu.set_cpuid2(&kvm.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES).unwrap()).unwrap();
    vcpu.set_sregs(&entry::boot_sregs(vcpu.get_sregs().unwrap())).unwrap();
    vcpu.set_regs(&entry::boot_regs(loaded.kernel_load.raw_value())).unwrap();
    let mut vcpu = vcpu;
    let mut vars: HashMap<Vec<u16>, (u32, Vec<u8>)> = HashMap::new();
    let mut line = Vec::new();
    let t0 = std::time::Instant::now();
    let mut ncalls = 0;
    let name = |mem: &GuestMemoryMmap, p: u64| {
        let mut v = Vec::new();
        for i in 0.. {
            let c: u16 = mem.read_obj(GuestAddress(p + 2 * i)).unwrap();
            if c == 0 { break; }
            v.push(c);
        }
        v
    };
    loop {
        let mut svc = None;
        match vcpu.run().unwrap() {
            VcpuExit::IoOut(0x3f8, data) => {
                if data[0] == b'\n' {
                    println!("[{:>8.3}s] {}", t0.elapsed().as_secs_f64(), String::from_utf8_lossy(&line));
                    line.clear();
                } else {
                    line.push(data[0]);
                }
            }
            VcpuExit::IoOut(0xf0, data) => svc = Some(data[0]),
            VcpuExit::IoIn(_, data) => data.iter_mut().for_each(|b| *b = 0x60),
            VcpuExit::Hlt => { println!("HLT after {:?}", t0.elapsed()); break; }
            e => { println!("exit {e:?}"); let r = vcpu.get_regs().unwrap(); println!("{r:x?}"); break; }
        }
        let Some(n) = svc else { continue };
        ncalls += 1;
        let mut r = vcpu.get_regs().unwrap();
        let arg5: u64 = mem.read_obj(GuestAddress(r.rsp + 0x28)).unwrap();
        let (c, dx, r8, r9) = (r.rcx, r.rdx, r.r8, r.r9);
        let status: u64 = match n {
            0 => { mem.write_obj(2026u16, GuestAddress(c)).unwrap(); 0 }
            4 => {
                let mut m = vec![0u8; c as usize];
                mem.read_slice(&mut m, GuestAddress(r9)).unwrap();
                let va = u64::from_le_bytes(m[48 + 16..48 + 24].try_into().unwrap());
                println!("   (harness: SVAM size={c} desc={dx} ver={r8} code VA {va:#x})");
                set_ptrs(va);
                0
            }
            6 => match vars.get(&name(&mem, c)) {
                None => 0x8000_0000_0000_000e,
                Some((at, data)) => {
                    let size: u64 = mem.read_obj(GuestAddress(r9)).unwrap();
                    mem.write_obj(data.len() as u64, GuestAddress(r9)).unwrap();
                    if r8 != 0 { mem.write_obj(*at, GuestAddress(r8)).unwrap(); }
                    if size < data.len() as u64 { 0x8000_0000_0000_0005 } else { mem.write_slice(data, GuestAddress(arg5)).unwrap(); 0 }
                }
            },
            8 => {
                let mut data = vec![0u8; r9 as usize];
                mem.read_slice(&mut data, GuestAddress(arg5)).unwrap();
                vars.insert(name(&mem, c), (r8 as u32, data));
                0
            }
            9 => { mem.write_obj(1u32, GuestAddress(c)).unwrap(); 0 }
            10 => { println!("   (harness: ResetSystem type={c}) after {:?}, {ncalls} calls", t0.elapsed()); break; }
            _ => 0x8000_0000_0000_0003,
        };
        r.rax = status;
        vcpu.set_regs(&r).unwrap();
    }
}
