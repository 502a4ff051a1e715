//! UEFI device paths to text, following edk2's `DevicePathToText`
//! (`MdePkg/Library/UefiDevicePathLib/DevicePathToText.c`, not display-only
//! form) for the node types OVMF writes; any other node prints as
//! `Path(type,subtype,hexdata)`.

use std::fmt::Write;

use varstore::Guid;

fn u16_at(d: &[u8], o: usize) -> u64 {
    d.get(o..o + 2).map_or(0, |b| u64::from(u16::from_le_bytes([b[0], b[1]])))
}
fn u32_at(d: &[u8], o: usize) -> u64 {
    d.get(o..o + 4).map_or(0, |b| u64::from(u32::from_le_bytes(b.try_into().unwrap())))
}
fn u64_at(d: &[u8], o: usize) -> u64 {
    d.get(o..o + 8).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()))
}
fn guid_at(d: &[u8], o: usize) -> String {
    d.get(o..o + 16).map_or_else(|| "?".into(), |b| Guid(b.try_into().unwrap()).to_string())
}
fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}
fn ip4(d: &[u8], o: usize) -> String {
    d.get(o..o + 4).map_or_else(|| "?".into(), |b| format!("{}.{}.{}.{}", b[0], b[1], b[2], b[3]))
}
fn ucs2(d: &[u8]) -> String {
    crate::efi::name_from_utf16(d)
}

const VENDOR_TERMINALS: [(&str, &str); 4] = [
    ("e0c14753-f9be-11d2-9a0c-0090273fc14d", "VenPcAnsi()"),
    ("dfa66065-b419-11d3-9a2d-0090273fc14d", "VenVt100()"),
    ("7baec70b-57e0-4c76-8e87-2f9e28088343", "VenVt100Plus()"),
    ("ad15a0d6-8bec-4acf-a073-d01de77e2d88", "VenUtf8()"),
];

fn vendor(kind: &str, d: &[u8]) -> String {
    let g = guid_at(d, 0);
    if kind == "VenMsg" {
        if let Some((_, t)) = VENDOR_TERMINALS.iter().find(|(x, _)| *x == g) {
            return (*t).into();
        }
        if g == "37499a9d-542f-4c89-a026-35da142094e4" {
            let f = match u32_at(d, 16) & 3 {
                0 => "None",
                1 => "Hardware",
                2 => "XonXoff",
                _ => "",
            };
            return format!("UartFlowCtrl({f})");
        }
    }
    match d.get(16..) {
        Some(rest) if !rest.is_empty() => format!("{kind}({g},{})", hex(rest)),
        _ => format!("{kind}({g})"),
    }
}

/// One node's text. `t`/`s` are type and subtype, `d` the node's data
/// (after its 4-byte header).
fn node(t: u8, s: u8, d: &[u8]) -> String {
    match (t, s) {
        (1, 1) => format!("Pci(0x{:x},0x{:x})", d.get(1).copied().unwrap_or(0), d.first().copied().unwrap_or(0)),
        (1, 2) => format!("PcCard(0x{:x})", d.first().copied().unwrap_or(0)),
        (1, 3) => format!("MemoryMapped(0x{:x},0x{:x},0x{:x})", u32_at(d, 0), u64_at(d, 4), u64_at(d, 12)),
        (1, 4) => vendor("VenHw", d),
        (1, 5) => format!("Ctrl(0x{:x})", u32_at(d, 0)),
        (2, 1) => {
            let (hid, uid) = (u32_at(d, 0), u32_at(d, 4));
            if hid & 0xffff == 0x41d0 {
                match hid >> 16 {
                    0x0a03 => format!("PciRoot(0x{uid:x})"),
                    0x0a08 => format!("PcieRoot(0x{uid:x})"),
                    0x0604 => format!("Floppy(0x{uid:x})"),
                    0x0301 => format!("Keyboard(0x{uid:x})"),
                    0x0501 => format!("Serial(0x{uid:x})"),
                    0x0401 => format!("ParallelPort(0x{uid:x})"),
                    p => format!("Acpi(PNP{p:04x},0x{uid:x})"),
                }
            } else {
                format!("Acpi(0x{hid:08x},0x{uid:x})")
            }
        }
        (2, 3) => format!("AcpiAdr(0x{:x})", u32_at(d, 0)),
        (3, 1) => format!(
            "Ata({},{},0x{:x})",
            if d.first() == Some(&0) { "Primary" } else { "Secondary" },
            if d.get(1) == Some(&0) { "Master" } else { "Slave" },
            u16_at(d, 2)
        ),
        (3, 2) => format!("Scsi(0x{:x},0x{:x})", u16_at(d, 0), u16_at(d, 2)),
        (3, 5) => format!("USB(0x{:x},0x{:x})", d.first().copied().unwrap_or(0), d.get(1).copied().unwrap_or(0)),
        (3, 10) => vendor("VenMsg", d),
        (3, 11) => {
            let if_type = d.get(32).copied().unwrap_or(0);
            let n = if if_type <= 1 { 6 } else { 32 };
            format!("MAC({},0x{if_type:x})", hex(d.get(..n).unwrap_or(d)))
        }
        (3, 12) => {
            let proto = match u16_at(d, 12) {
                6 => "TCP".to_string(),
                17 => "UDP".to_string(),
                p => format!("0x{p:x}"),
            };
            let origin = if d.get(14).copied().unwrap_or(0) != 0 { "Static" } else { "DHCP" };
            let mut s = format!("IPv4({},{proto},{origin},{}", ip4(d, 4), ip4(d, 0));
            if d.len() >= 23 {
                let _ = write!(s, ",{},{}", ip4(d, 15), ip4(d, 19));
            }
            s + ")"
        }
        (3, 14) => {
            let baud = u64_at(d, 4);
            let parity = match d.get(13).copied().unwrap_or(0) {
                0 => "D",
                1 => "N",
                2 => "E",
                3 => "O",
                4 => "M",
                5 => "S",
                _ => "x",
            };
            let stop = match d.get(14).copied().unwrap_or(0) {
                0 => "D",
                1 => "1",
                2 => "1.5",
                3 => "2",
                _ => "x",
            };
            let baud = if baud == 0 { "DEFAULT".into() } else { baud.to_string() };
            format!("Uart({baud},{},{parity},{stop})", d.get(12).copied().unwrap_or(0))
        }
        (3, 15) => {
            let (vid, pid) = (u16_at(d, 0), u16_at(d, 2));
            let b = |i: usize| d.get(i).copied().unwrap_or(0);
            if b(4) == 3 {
                format!("UsbHID(0x{vid:x},0x{pid:x},0x{:x},0x{:x})", b(5), b(6))
            } else {
                format!("UsbClass(0x{vid:x},0x{pid:x},0x{:x},0x{:x},0x{:x})", b(4), b(5), b(6))
            }
        }
        (3, 17) => format!("Unit(0x{:x})", d.first().copied().unwrap_or(0)),
        (3, 18) => format!("Sata(0x{:x},0x{:x},0x{:x})", u16_at(d, 0), u16_at(d, 2), u16_at(d, 4)),
        (3, 20) => format!("Vlan({})", u16_at(d, 0)),
        (3, 23) => {
            let eui: Vec<String> = d.get(4..12).unwrap_or(&[]).iter().rev().map(|b| format!("{b:02X}")).collect();
            format!("NVMe(0x{:x},{})", u32_at(d, 0), eui.join("-"))
        }
        (3, 24) => format!("Uri({})", String::from_utf8_lossy(d)),
        (4, 1) => {
            let (num, start, size) = (u32_at(d, 0), u64_at(d, 4), u64_at(d, 12));
            let sig = match d.get(37).copied().unwrap_or(0) {
                1 => format!("MBR,0x{:08x}", u32_at(d, 20)),
                2 => format!("GPT,{}", guid_at(d, 20)),
                other => format!("{other},0"),
            };
            format!("HD({num},{sig},0x{start:x},0x{size:x})")
        }
        (4, 2) => format!("CDROM(0x{:x},0x{:x},0x{:x})", u32_at(d, 0), u64_at(d, 4), u64_at(d, 12)),
        (4, 3) => vendor("VenMedia", d),
        (4, 4) => ucs2(d),
        (4, 5) => format!("Media({})", guid_at(d, 0)),
        (4, 6) => format!("FvFile({})", guid_at(d, 0)),
        (4, 7) => format!("Fv({})", guid_at(d, 0)),
        (4, 8) => format!("Offset(0x{:x},0x{:x})", u64_at(d, 4), u64_at(d, 12)),
        _ if d.is_empty() => format!("Path({t},{s})"),
        _ => format!("Path({t},{s},{})", hex(d)),
    }
}

/// The text form of a (possibly multi-instance) device path: nodes joined
/// by `/`, instances by `,`. A malformed path ends with
/// `<malformed: ...>` after the nodes that could be read; bytes after the
/// end node are ignored.
pub fn to_text(path: &[u8]) -> String {
    let mut out = String::new();
    let mut off = 0;
    let mut first = true;
    loop {
        let Some(h) = path.get(off..off + 4) else {
            out.push_str(if first { "" } else { "/" });
            out.push_str("<malformed: no end node>");
            return out;
        };
        let (t, s, len) = (h[0], h[1], usize::from(u16::from_le_bytes([h[2], h[3]])));
        if len < 4 || off + len > path.len() {
            let _ = write!(out, "{}<malformed: node length {len} at byte {off}>", if first { "" } else { "/" });
            return out;
        }
        match (t, s) {
            (0x7f, 0xff) => return out,
            (0x7f, 0x01) => {
                out.push(',');
                first = true;
            }
            _ => {
                if !first {
                    out.push('/');
                }
                out.push_str(&node(t, s, &path[off + 4..off + len]));
                first = false;
            }
        }
        off += len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(t: u8, s: u8, data: &[u8]) -> Vec<u8> {
        let mut v = vec![t, s];
        v.extend_from_slice(&((data.len() + 4) as u16).to_le_bytes());
        v.extend_from_slice(data);
        v
    }
    const END: [u8; 4] = [0x7f, 0xff, 4, 0];

    #[test]
    fn vars_devpath_disk_file_path() {
        let mut p = n(2, 1, &[0xd0, 0x41, 0x03, 0x0a, 0, 0, 0, 0]);
        p.extend(n(1, 1, &[0, 2]));
        p.extend(n(3, 2, &[0, 0, 0, 0]));
        let mut hd = vec![1, 0, 0, 0];
        hd.extend(0x800u64.to_le_bytes());
        hd.extend(0x100000u64.to_le_bytes());
        let g = Guid::parse("1b2c3d4e-0001-0002-0304-05060708090a").unwrap();
        hd.extend(g.0);
        hd.extend([2, 2]);
        p.extend(n(4, 1, &hd));
        p.extend(n(4, 4, &crate::efi::name_to_utf16("\\EFI\\debian\\shimx64.efi")));
        p.extend(END);
        assert_eq!(
            to_text(&p),
            "PciRoot(0x0)/Pci(0x2,0x0)/Scsi(0x0,0x0)/HD(1,GPT,1b2c3d4e-0001-0002-0304-05060708090a,0x800,0x100000)/\\EFI\\debian\\shimx64.efi"
        );
    }

    #[test]
    fn vars_devpath_fv_mac_uri_unknown_and_malformed() {
        let g = Guid::parse("7cb8bdc9-f8eb-4f34-aaea-3ee4af6516a1").unwrap();
        let mut p = n(4, 7, &g.0);
        p.extend(n(4, 6, &g.0));
        p.extend([0x7f, 0x01, 4, 0]);
        let mut mac = [0u8; 33];
        mac[..6].copy_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        mac[32] = 1;
        p.extend(n(3, 11, &mac));
        p.extend(n(3, 24, b"http://x/y.iso"));
        p.extend(n(9, 9, &[0xab]));
        p.extend(END);
        assert_eq!(
            to_text(&p),
            "Fv(7cb8bdc9-f8eb-4f34-aaea-3ee4af6516a1)/FvFile(7cb8bdc9-f8eb-4f34-aaea-3ee4af6516a1),\
             MAC(525400123456,0x1)/Uri(http://x/y.iso)/Path(9,9,ab)"
        );
        assert!(to_text(&[1, 1, 2, 0]).contains("malformed"));
        assert!(to_text(&n(1, 1, &[0, 2])).ends_with("<malformed: no end node>"));
    }
}
