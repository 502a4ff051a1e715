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
