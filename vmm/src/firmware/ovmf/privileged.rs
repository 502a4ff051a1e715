//! Privileged instructions of OVMF's runtime at CPL3.
//!
//! efivmm runs OVMF's runtime services at CPL3 in the sandbox VM (its own
//! GDT, TSS, IDT and page tables; IOPL=0; the ports the runtime needs are
//! open in the TSS I/O bitmap). OVMF's code was written for CPL0, so it may
//! still execute a privileged instruction; that raises #GP, a CPL0 stub
//! reports it, and efivmm hands the instruction bytes at the faulting RIP to
//! [`emulate`], which either emulates the instruction or refuses it (the
//! runtime call then fails with EFI_DEVICE_ERROR). Every trap is counted by
//! [`Kind`] in [`Counts`].
//!
//! The bytes are decoded with iced-x86 in 64-bit mode. The policy, and why:
//!
//! - `cli` / `sti`: emulated. The sandbox has no interrupts, so the flag has
//!   no effect; [`VirtualCpu::interrupts_enabled`] keeps the firmware's view
//!   of it.
//! - `hlt`: refused. At runtime nothing would ever wake the vCPU: a
//!   firmware that halts is dead-looping.
//! - `in` / `out` with an immediate or DX port and AL/AX/EAX: emulated
//!   through [`Ports`] (a port closed in the I/O bitmap is still a platform
//!   device; reaching it through the trap is slower, not different). `in al`
//!   and `in ax` keep the other bits of RAX; `in eax` zero-extends into RAX,
//!   as every 32-bit register write does in 64-bit mode.
//! - `ins` / `outs` (with or without `rep`): refused. They address guest
//!   memory through ES:RDI / DS:RSI with a count; OVMF's runtime has no need
//!   of them, and emulating them is memory access efivmm does not do here.
//! - `mov` from CR0/CR2/CR3/CR4/CR8: emulated with the [`VirtualCpu`] value
//!   (the registers of the firmware's CPL0 life, not the sandbox's).
//! - `mov` to a CR: emulated as a no-op only if the value equals the virtual
//!   one (a firmware writing back what it read, e.g. around a cache flush);
//!   any real change (paging, caching, protection) is refused: the sandbox's
//!   control registers belong to efivmm.
//! - `rdmsr` / `wrmsr`: refused, with the MSR number (ECX) in the detail. No
//!   MSR of the sandbox is the firmware's to read or write.
//! - `wbinvd`, `invd`, `invlpg`: emulated as no-ops. The sandbox's memory is
//!   coherent, and efivmm owns the page tables (there is no stale
//!   translation of the firmware's to flush).
//! - `lgdt`, `lidt`, `lldt`, `ltr` and the stores `sgdt`, `sidt`, `sldt`,
//!   `str`: refused as [`Kind::DescriptorTable`]; the descriptor tables are
//!   the sandbox's. `lmsw`, `clts`, `swapgs`, `sysret` and any other
//!   instruction: refused as [`Kind::Other`].
//! - Bytes that do not decode (invalid, or an instruction longer than the
//!   bytes given): refused as [`Kind::Other`].
//!
//! An emulated instruction advances RIP by its decoded length; a refused one
//! leaves the registers untouched.

use std::collections::BTreeMap;
use std::fmt;

use iced_x86::{
    Code, Decoder, DecoderError, DecoderOptions, Formatter, Instruction, IntelFormatter, Mnemonic, OpKind, Register,
};
use kvm_bindings::kvm_regs;

/// The longest x86 instruction, in bytes.
const MAX_INSTRUCTION_LEN: usize = 15;

/// What kind of privileged instruction trapped (counted per kind).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `cli`.
    Cli,
    /// `sti`.
    Sti,
    /// `hlt`.
    Hlt,
    /// `in` from an immediate or DX port.
    PortIn,
    /// `out` to an immediate or DX port.
    PortOut,
    /// `ins` / `outs`, with or without `rep`.
    StringPortIo,
    /// `mov` from a control register.
    ReadCr,
    /// `mov` to a control register.
    WriteCr,
    /// `rdmsr`.
    Rdmsr,
    /// `wrmsr`.
    Wrmsr,
    /// `wbinvd`, `invd`, `invlpg`.
    CacheControl,
    /// `lgdt`, `lidt`, `lldt`, `ltr`, `sgdt`, `sidt`, `sldt`, `str`.
    DescriptorTable,
    /// Anything else, including bytes that do not decode.
    Other,
}

impl Kind {
    /// The name used by [`Counts`]'s `Display`.
    fn name(self) -> &'static str {
        match self {
            Kind::Cli => "cli",
            Kind::Sti => "sti",
            Kind::Hlt => "hlt",
            Kind::PortIn => "in",
            Kind::PortOut => "out",
            Kind::StringPortIo => "ins/outs",
            Kind::ReadCr => "mov from cr",
            Kind::WriteCr => "mov to cr",
            Kind::Rdmsr => "rdmsr",
            Kind::Wrmsr => "wrmsr",
            Kind::CacheControl => "cache control",
            Kind::DescriptorTable => "descriptor table",
            Kind::Other => "other",
        }
    }
}

/// The control-register values the firmware believes it runs with (those of
/// its CPL0 life), and its view of the interrupt flag.
#[derive(Clone, Copy, Debug, Default)]
pub struct VirtualCpu {
    /// CR0 as the firmware set it.
    pub cr0: u64,
    /// CR2 (the last page-fault address the firmware saw).
    pub cr2: u64,
    /// CR3 as the firmware set it.
    pub cr3: u64,
    /// CR4 as the firmware set it.
    pub cr4: u64,
    /// CR8 (the task priority) as the firmware set it.
    pub cr8: u64,
    /// The firmware's view of RFLAGS.IF, toggled by `cli` / `sti`.
    pub interrupts_enabled: bool,
}

/// Ports reached by a trapped `in`/`out` (the platform's devices).
pub trait Ports {
    /// Reads `data.len()` (1, 2 or 4) bytes from `port` into `data`.
    fn port_in(&mut self, port: u16, data: &mut [u8]);
    /// Writes `data` (1, 2 or 4 bytes) to `port`.
    fn port_out(&mut self, port: u16, data: &[u8]);
}

/// What [`emulate`] did with a trapped instruction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Emulated: `regs` were updated (result registers, RIP advanced past the instruction).
    Emulated(Kind),
    /// Not emulated: the call fails. `detail` names the instruction (iced-x86's formatted text, e.g. "wrmsr").
    Refused {
        /// The kind of instruction refused.
        kind: Kind,
        /// The instruction's text, or why the bytes did not decode.
        detail: String,
    },
}

/// Trap counts per kind, emulated and refused.
#[derive(Clone, Debug, Default)]
pub struct Counts {
    emulated: BTreeMap<Kind, u64>,
    refused: BTreeMap<Kind, u64>,
}

impl Counts {
    /// Counts one trap.
    pub fn record(&mut self, o: &Outcome) {
        let (map, kind) = match o {
            Outcome::Emulated(kind) => (&mut self.emulated, *kind),
            Outcome::Refused { kind, .. } => (&mut self.refused, *kind),
        };
        *map.entry(kind).or_default() += 1;
    }

    /// Traps of kind `k` that were emulated.
    pub fn emulated(&self, k: Kind) -> u64 {
        self.emulated.get(&k).copied().unwrap_or(0)
    }

    /// Traps of kind `k` that were refused.
    pub fn refused(&self, k: Kind) -> u64 {
        self.refused.get(&k).copied().unwrap_or(0)
    }

    /// All traps counted, emulated and refused.
    pub fn total(&self) -> u64 {
        self.emulated.values().chain(self.refused.values()).sum()
    }
}

/// Writes `name count` pairs separated by ", ".
fn write_counts(f: &mut fmt::Formatter<'_>, map: &BTreeMap<Kind, u64>) -> fmt::Result {
    for (i, (kind, n)) in map.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{} {}", kind.name(), n)?;
    }
    Ok(())
}

impl fmt::Display for Counts {
    /// E.g. "cli 12, sti 12, in 3 (refused: wrmsr 1)"; "refused: hlt 1"
    /// when nothing was emulated; "none" when empty.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.emulated.is_empty(), self.refused.is_empty()) {
            (true, true) => f.write_str("none"),
            (false, true) => write_counts(f, &self.emulated),
            (true, false) => {
                f.write_str("refused: ")?;
                write_counts(f, &self.refused)
            }
            (false, false) => {
                write_counts(f, &self.emulated)?;
                f.write_str(" (refused: ")?;
                write_counts(f, &self.refused)?;
                f.write_str(")")
            }
        }
    }
}

/// The 64-bit general-purpose register `reg` (RAX..R15) in `regs`; `None`
/// for any other register.
fn gpr64(regs: &mut kvm_regs, reg: Register) -> Option<&mut u64> {
    Some(match reg {
        Register::RAX => &mut regs.rax,
        Register::RCX => &mut regs.rcx,
        Register::RDX => &mut regs.rdx,
        Register::RBX => &mut regs.rbx,
        Register::RSP => &mut regs.rsp,
        Register::RBP => &mut regs.rbp,
        Register::RSI => &mut regs.rsi,
        Register::RDI => &mut regs.rdi,
        Register::R8 => &mut regs.r8,
        Register::R9 => &mut regs.r9,
        Register::R10 => &mut regs.r10,
        Register::R11 => &mut regs.r11,
        Register::R12 => &mut regs.r12,
        Register::R13 => &mut regs.r13,
        Register::R14 => &mut regs.r14,
        Register::R15 => &mut regs.r15,
        _ => return None,
    })
}

/// The virtual control register `reg`, if it is one the firmware may use.
fn virtual_cr(cpu: &mut VirtualCpu, reg: Register) -> Option<&mut u64> {
    Some(match reg {
        Register::CR0 => &mut cpu.cr0,
        Register::CR2 => &mut cpu.cr2,
        Register::CR3 => &mut cpu.cr3,
        Register::CR4 => &mut cpu.cr4,
        Register::CR8 => &mut cpu.cr8,
        _ => return None,
    })
}

/// iced-x86's Intel-syntax text of `instr`.
fn format(instr: &Instruction) -> String {
    let mut text = String::new();
    IntelFormatter::new().format(instr, &mut text);
    text
}

/// Bytes as space-separated hex, for a detail.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
}

/// The width in bytes (1, 2, 4) of `in`/`out`'s data register.
fn port_width(reg: Register) -> Option<usize> {
    match reg {
        Register::AL => Some(1),
        Register::AX => Some(2),
        Register::EAX => Some(4),
        _ => None,
    }
}

/// The port of an `in`/`out` operand: an 8-bit immediate or DX.
fn port_operand(instr: &Instruction, operand: u32, regs: &kvm_regs) -> Option<u16> {
    match instr.op_kind(operand) {
        OpKind::Immediate8 => Some(u16::from(instr.immediate8())),
        OpKind::Register if instr.op_register(operand) == Register::DX => Some(regs.rdx as u16),
        _ => None,
    }
}

/// Emulates the instruction whose bytes start `bytes` (up to 15, fewer if
/// the page ended), executed at `regs.rip` in 64-bit mode at CPL3, that
/// raised #GP. See the module documentation for the policy.
pub fn emulate(bytes: &[u8], regs: &mut kvm_regs, cpu: &mut VirtualCpu, ports: &mut dyn Ports) -> Outcome {
    let bytes = &bytes[..bytes.len().min(MAX_INSTRUCTION_LEN)];
    let mut decoder = Decoder::with_ip(64, bytes, regs.rip, DecoderOptions::NONE);
    let instr = decoder.decode();
    if instr.is_invalid() || instr.len() > bytes.len() {
        let why = match decoder.last_error() {
            DecoderError::NoMoreBytes => "truncated instruction",
            _ => "invalid instruction",
        };
        return Outcome::Refused { kind: Kind::Other, detail: format!("{why}: {}", hex(bytes)) };
    }

    let refuse = |kind: Kind| Outcome::Refused { kind, detail: format(&instr) };
    // Each arm either refuses (regs untouched) or applies its effect and
    // falls through to advance RIP.
    let kind = match instr.mnemonic() {
        Mnemonic::Cli => {
            cpu.interrupts_enabled = false;
            Kind::Cli
        }
        Mnemonic::Sti => {
            cpu.interrupts_enabled = true;
            Kind::Sti
        }
        Mnemonic::Hlt => return refuse(Kind::Hlt),
        Mnemonic::In => {
            let (Some(width), Some(port)) = (port_width(instr.op0_register()), port_operand(&instr, 1, regs)) else {
                return refuse(Kind::PortIn);
            };
            let mut data = [0u8; 4];
            ports.port_in(port, &mut data[..width]);
            let value = u64::from(u32::from_le_bytes(data));
            regs.rax = match width {
                1 => (regs.rax & !0xff) | value,
                2 => (regs.rax & !0xffff) | value,
                // A 32-bit register write zero-extends into the 64-bit one.
                _ => value,
            };
            Kind::PortIn
        }
        Mnemonic::Out => {
            let (Some(width), Some(port)) = (port_width(instr.op1_register()), port_operand(&instr, 0, regs)) else {
                return refuse(Kind::PortOut);
            };
            ports.port_out(port, &(regs.rax as u32).to_le_bytes()[..width]);
            Kind::PortOut
        }
        Mnemonic::Insb | Mnemonic::Insw | Mnemonic::Insd | Mnemonic::Outsb | Mnemonic::Outsw | Mnemonic::Outsd => {
            return refuse(Kind::StringPortIo)
        }
        Mnemonic::Mov if instr.code() == Code::Mov_r64_cr => {
            let Some(&mut value) = virtual_cr(cpu, instr.op1_register()) else {
                return refuse(Kind::ReadCr);
            };
            let Some(dst) = gpr64(regs, instr.op0_register()) else {
                return refuse(Kind::ReadCr);
            };
            *dst = value;
            Kind::ReadCr
        }
        Mnemonic::Mov if instr.code() == Code::Mov_cr_r64 => {
            let Some(&mut current) = virtual_cr(cpu, instr.op0_register()) else {
                return refuse(Kind::WriteCr);
            };
            let Some(&mut value) = gpr64(regs, instr.op1_register()) else {
                return refuse(Kind::WriteCr);
            };
            if value != current {
                return Outcome::Refused {
                    kind: Kind::WriteCr,
                    detail: format!("{} (value {value:#x}, firmware's {current:#x})", format(&instr)),
                };
            }
            Kind::WriteCr
        }
        Mnemonic::Rdmsr | Mnemonic::Wrmsr => {
            let kind = if instr.mnemonic() == Mnemonic::Rdmsr { Kind::Rdmsr } else { Kind::Wrmsr };
            return Outcome::Refused { kind, detail: format!("{} (MSR {:#x})", format(&instr), regs.rcx as u32) };
        }
        Mnemonic::Wbinvd | Mnemonic::Invd | Mnemonic::Invlpg => Kind::CacheControl,
        Mnemonic::Lgdt
        | Mnemonic::Lidt
        | Mnemonic::Lldt
        | Mnemonic::Ltr
        | Mnemonic::Sgdt
        | Mnemonic::Sidt
        | Mnemonic::Sldt
        | Mnemonic::Str => return refuse(Kind::DescriptorTable),
        _ => return refuse(Kind::Other),
    };
    regs.rip = regs.rip.wrapping_add(instr.len() as u64);
    Outcome::Emulated(kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Ports double recording every access; `in` returns 0xa1 0xb2 0xc3 0xd4.
    #[derive(Default)]
    struct Recording {
        ins: Vec<(u16, usize)>,
        outs: Vec<(u16, Vec<u8>)>,
    }

    impl Ports for Recording {
        fn port_in(&mut self, port: u16, data: &mut [u8]) {
            self.ins.push((port, data.len()));
            data.copy_from_slice(&[0xa1, 0xb2, 0xc3, 0xd4][..data.len()]);
        }
        fn port_out(&mut self, port: u16, data: &[u8]) {
            self.outs.push((port, data.to_vec()));
        }
    }

    /// Asserts that iced-x86 decodes `bytes` (all of them) as `text`, so
    /// the hand-assembled test bytes are what the test says they are.
    fn check(bytes: &[u8], text: &str) {
        let instr = Decoder::with_ip(64, bytes, 0, DecoderOptions::NONE).decode();
        assert!(!instr.is_invalid(), "{bytes:02x?} does not decode");
        assert_eq!(instr.len(), bytes.len(), "{bytes:02x?} is not one instruction");
        assert_eq!(format(&instr), text, "{bytes:02x?}");
    }

    fn regs() -> kvm_regs {
        kvm_regs {
            rax: 0x1111_2222_3333_4444,
            rbx: 0xbbbb,
            rcx: 0xcccc,
            rdx: 0xdddd_dddd_dddd_0071,
            r9: 0x9999,
            rip: 0x7f00_1000,
            ..Default::default()
        }
    }

    fn cpu() -> VirtualCpu {
        VirtualCpu { cr0: 0x8000_0033, cr2: 0x2222, cr3: 0x0080_0000, cr4: 0x0668, cr8: 0x3, interrupts_enabled: true }
    }

    /// Emulates `bytes` (checked to decode as `text`) on fresh state.
    fn run(bytes: &[u8], text: &str) -> (Outcome, kvm_regs, VirtualCpu, Recording) {
        check(bytes, text);
        let (mut r, mut c, mut p) = (regs(), cpu(), Recording::default());
        let o = emulate(bytes, &mut r, &mut c, &mut p);
        (o, r, c, p)
    }

    /// Asserts `o` is a refusal of `kind` whose detail contains `needle`,
    /// and that the registers and ports were not touched.
    fn assert_refused(o: &Outcome, r: &kvm_regs, p: &Recording, kind: Kind, needle: &str) {
        match o {
            Outcome::Refused { kind: k, detail } => {
                assert_eq!(*k, kind);
                assert!(detail.contains(needle), "detail {detail:?} lacks {needle:?}");
            }
            o => panic!("expected a refusal, got {o:?}"),
        }
        assert_eq!(*r, regs(), "refused instruction changed registers");
        assert!(p.ins.is_empty() && p.outs.is_empty());
    }

    #[test]
    fn cli_sti_toggle_virtual_flag() {
        let (o, r, c, _) = run(&[0xfa], "cli");
        assert_eq!(o, Outcome::Emulated(Kind::Cli));
        assert!(!c.interrupts_enabled);
        assert_eq!(r.rip, regs().rip + 1);
        assert_eq!(r.rflags, regs().rflags);

        check(&[0xfb], "sti");
        let (mut r, mut c, mut p) = (regs(), VirtualCpu::default(), Recording::default());
        assert_eq!(emulate(&[0xfb, 0xfa], &mut r, &mut c, &mut p), Outcome::Emulated(Kind::Sti));
        assert!(c.interrupts_enabled);
        assert_eq!(r.rip, regs().rip + 1);
    }

    #[test]
    fn in_al_imm_preserves_upper_rax() {
        let (o, r, _, p) = run(&[0xe4, 0x71], "in al,71h");
        assert_eq!(o, Outcome::Emulated(Kind::PortIn));
        assert_eq!(p.ins, vec![(0x71, 1)]);
        assert_eq!(r.rax, 0x1111_2222_3333_44a1);
        assert_eq!(r.rip, regs().rip + 2);
    }

    #[test]
    fn in_eax_dx_zero_extends() {
        let (o, r, _, p) = run(&[0xed], "in eax,dx");
        assert_eq!(o, Outcome::Emulated(Kind::PortIn));
        assert_eq!(p.ins, vec![(0x0071, 4)]);
        assert_eq!(r.rax, 0xd4c3_b2a1);
        assert_eq!(r.rip, regs().rip + 1);
    }

    #[test]
    fn in_ax_dx_preserves_upper_rax() {
        let (o, r, _, p) = run(&[0x66, 0xed], "in ax,dx");
        assert_eq!(o, Outcome::Emulated(Kind::PortIn));
        assert_eq!(p.ins, vec![(0x0071, 2)]);
        assert_eq!(r.rax, 0x1111_2222_3333_b2a1);
        assert_eq!(r.rip, regs().rip + 2);
    }

    #[test]
    fn in_with_rex_w_is_still_eax() {
        // REX.W does not widen `in`: the data register stays EAX.
        let (o, r, _, p) = run(&[0x48, 0xe5, 0x70], "in eax,70h");
        assert_eq!(o, Outcome::Emulated(Kind::PortIn));
        assert_eq!(p.ins, vec![(0x70, 4)]);
        assert_eq!(r.rax, 0xd4c3_b2a1);
        assert_eq!(r.rip, regs().rip + 3);
    }

    #[test]
    fn in_from_wide_dx_port() {
        check(&[0xec], "in al,dx");
        let (mut r, mut c, mut p) = (regs(), cpu(), Recording::default());
        r.rdx = 0xffff_0000_0000_0cf8;
        assert_eq!(emulate(&[0xec], &mut r, &mut c, &mut p), Outcome::Emulated(Kind::PortIn));
        assert_eq!(p.ins, vec![(0x0cf8, 1)]);
    }

    #[test]
    fn out_passes_the_byte() {
        let (o, r, _, p) = run(&[0xee], "out dx,al");
        assert_eq!(o, Outcome::Emulated(Kind::PortOut));
        assert_eq!(p.outs, vec![(0x0071, vec![0x44])]);
        assert_eq!(r.rax, regs().rax);
        assert_eq!(r.rip, regs().rip + 1);

        let (o, r, _, p) = run(&[0xe6, 0x70], "out 70h,al");
        assert_eq!(o, Outcome::Emulated(Kind::PortOut));
        assert_eq!(p.outs, vec![(0x70, vec![0x44])]);
        assert_eq!(r.rip, regs().rip + 2);

        let (o, _, _, p) = run(&[0xef], "out dx,eax");
        assert_eq!(o, Outcome::Emulated(Kind::PortOut));
        assert_eq!(p.outs, vec![(0x0071, vec![0x44, 0x44, 0x33, 0x33])]);

        let (o, _, _, p) = run(&[0x66, 0xe7, 0x80], "out 80h,ax");
        assert_eq!(o, Outcome::Emulated(Kind::PortOut));
        assert_eq!(p.outs, vec![(0x80, vec![0x44, 0x44])]);
    }

    #[test]
    fn mov_from_cr_reads_virtual_values() {
        let (o, r, _, _) = run(&[0x0f, 0x20, 0xc0], "mov rax,cr0");
        assert_eq!(o, Outcome::Emulated(Kind::ReadCr));
        assert_eq!(r.rax, cpu().cr0);
        assert_eq!(r.rip, regs().rip + 3);

        let (o, r, _, _) = run(&[0x41, 0x0f, 0x20, 0xd9], "mov r9,cr3");
        assert_eq!(o, Outcome::Emulated(Kind::ReadCr));
        assert_eq!(r.r9, cpu().cr3);
        assert_eq!(r.rcx, regs().rcx, "REX.B ignored: wrote rcx instead of r9");
        assert_eq!(r.rip, regs().rip + 4);

        let (o, r, _, _) = run(&[0x0f, 0x20, 0xe1], "mov rcx,cr4");
        assert_eq!(o, Outcome::Emulated(Kind::ReadCr));
        assert_eq!(r.rcx, cpu().cr4);

        let (o, r, _, _) = run(&[0x44, 0x0f, 0x20, 0xc2], "mov rdx,cr8");
        assert_eq!(o, Outcome::Emulated(Kind::ReadCr));
        assert_eq!(r.rdx, cpu().cr8);
        assert_eq!(r.rip, regs().rip + 4);

        let (o, r, _, _) = run(&[0x0f, 0x20, 0xd3], "mov rbx,cr2");
        assert_eq!(o, Outcome::Emulated(Kind::ReadCr));
        assert_eq!(r.rbx, cpu().cr2);
    }

    #[test]
    fn mov_to_cr_only_if_unchanged() {
        check(&[0x0f, 0x22, 0xc0], "mov cr0,rax");
        let (mut r, mut c, mut p) = (regs(), cpu(), Recording::default());
        r.rax = c.cr0;
        let before = r;
        assert_eq!(emulate(&[0x0f, 0x22, 0xc0], &mut r, &mut c, &mut p), Outcome::Emulated(Kind::WriteCr));
        assert_eq!(r.rip, before.rip + 3);
        assert_eq!(r.rax, before.rax);
        assert_eq!(c.cr0, cpu().cr0);

        let (o, r, c, p) = run(&[0x0f, 0x22, 0xc0], "mov cr0,rax");
        assert_refused(&o, &r, &p, Kind::WriteCr, "mov cr0,rax");
        assert_eq!(c.cr0, cpu().cr0);

        // mov cr8, r9 (REX.R and REX.B): a different value is refused.
        let (o, r, _, p) = run(&[0x45, 0x0f, 0x22, 0xc1], "mov cr8,r9");
        assert_refused(&o, &r, &p, Kind::WriteCr, "cr8");
    }

    #[test]
    fn msrs_refused_with_number() {
        let (o, r, _, p) = run(&[0x0f, 0x32], "rdmsr");
        assert_refused(&o, &r, &p, Kind::Rdmsr, "rdmsr (MSR 0xcccc)");
        let (o, r, _, p) = run(&[0x0f, 0x30], "wrmsr");
        assert_refused(&o, &r, &p, Kind::Wrmsr, "wrmsr (MSR 0xcccc)");
    }

    #[test]
    fn cache_control_is_a_no_op() {
        let (o, r, c, _) = run(&[0x0f, 0x09], "wbinvd");
        assert_eq!(o, Outcome::Emulated(Kind::CacheControl));
        assert_eq!(r.rip, regs().rip + 2);
        assert_eq!(r.rax, regs().rax);
        assert_eq!(c.cr3, cpu().cr3);

        let (o, r, _, _) = run(&[0x0f, 0x01, 0x38], "invlpg [rax]");
        assert_eq!(o, Outcome::Emulated(Kind::CacheControl));
        assert_eq!(r.rip, regs().rip + 3);

        let (o, r, _, _) = run(&[0x0f, 0x08], "invd");
        assert_eq!(o, Outcome::Emulated(Kind::CacheControl));
        assert_eq!(r.rip, regs().rip + 2);
    }

    #[test]
    fn refused_instructions() {
        let (o, r, _, p) = run(&[0xf4], "hlt");
        assert_refused(&o, &r, &p, Kind::Hlt, "hlt");
        let (o, r, _, p) = run(&[0x0f, 0x01, 0x10], "lgdt [rax]");
        assert_refused(&o, &r, &p, Kind::DescriptorTable, "lgdt");
        let (o, r, _, p) = run(&[0x0f, 0x00, 0xd8], "ltr ax");
        assert_refused(&o, &r, &p, Kind::DescriptorTable, "ltr");
        let (o, r, _, p) = run(&[0x0f, 0x01, 0xf8], "swapgs");
        assert_refused(&o, &r, &p, Kind::Other, "swapgs");
        let (o, r, _, p) = run(&[0x0f, 0x06], "clts");
        assert_refused(&o, &r, &p, Kind::Other, "clts");
        let (o, r, _, p) = run(&[0xf3, 0x6c], "rep insb [rdi],dx");
        assert_refused(&o, &r, &p, Kind::StringPortIo, "insb");
        let (o, r, _, p) = run(&[0x6f], "outsd dx,[rsi]");
        assert_refused(&o, &r, &p, Kind::StringPortIo, "outsd");
    }

    #[test]
    fn truncated_bytes_refused() {
        check(&[0x0f, 0x20, 0xc0], "mov rax,cr0");
        let (mut r, mut c, mut p) = (regs(), cpu(), Recording::default());
        let o = emulate(&[0x0f, 0x20], &mut r, &mut c, &mut p);
        assert_refused(&o, &r, &p, Kind::Other, "truncated");
        let o = emulate(&[], &mut r, &mut c, &mut p);
        assert_refused(&o, &r, &p, Kind::Other, "truncated");
    }

    #[test]
    fn garbage_refused() {
        for bytes in [&[0x0f, 0x04][..], &[0xff, 0xff], &[0x06], &[0xf0, 0xfa], &[0x66; 15]] {
            let (mut r, mut c, mut p) = (regs(), cpu(), Recording::default());
            let o = emulate(bytes, &mut r, &mut c, &mut p);
            assert_refused(&o, &r, &p, Kind::Other, "instruction");
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut counts = Counts::default();
        for _ in 0..10_000 {
            let mut bytes = [0u8; 15];
            for chunk in bytes.chunks_mut(8) {
                chunk.copy_from_slice(&next().to_le_bytes()[..chunk.len()]);
            }
            // Bias toward the interesting opcodes so some get emulated.
            if next() % 4 == 0 {
                bytes[0] = [0xfa, 0xfb, 0xe4, 0xed, 0xee, 0x0f][(next() % 6) as usize];
            }
            let (mut r, mut c, mut p) = (regs(), cpu(), Recording::default());
            let o = emulate(&bytes, &mut r, &mut c, &mut p);
            match &o {
                Outcome::Emulated(_) => {
                    let advanced = r.rip.wrapping_sub(regs().rip);
                    assert!((1..=15).contains(&advanced), "{bytes:02x?} advanced RIP by {advanced}");
                }
                Outcome::Refused { .. } => assert_eq!(r, regs(), "{bytes:02x?} refused but changed registers"),
            }
            counts.record(&o);
        }
        assert_eq!(counts.total(), 10_000);
        assert!(counts.emulated(Kind::Cli) > 0 && counts.emulated(Kind::PortIn) > 0);
    }

    #[test]
    fn counts_record_and_display() {
        let mut counts = Counts::default();
        assert_eq!(counts.to_string(), "none");
        assert_eq!(counts.total(), 0);
        let refused = Outcome::Refused { kind: Kind::Wrmsr, detail: "wrmsr".into() };
        counts.record(&refused);
        assert_eq!(counts.to_string(), "refused: wrmsr 1");
        for _ in 0..12 {
            counts.record(&Outcome::Emulated(Kind::Sti));
            counts.record(&Outcome::Emulated(Kind::Cli));
        }
        for _ in 0..3 {
            counts.record(&Outcome::Emulated(Kind::PortIn));
        }
        assert_eq!(counts.emulated(Kind::Cli), 12);
        assert_eq!(counts.emulated(Kind::Wrmsr), 0);
        assert_eq!(counts.refused(Kind::Wrmsr), 1);
        assert_eq!(counts.refused(Kind::Cli), 0);
        assert_eq!(counts.total(), 28);
        assert_eq!(counts.to_string(), "cli 12, sti 12, in 3 (refused: wrmsr 1)");
    }
}
