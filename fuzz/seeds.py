#!/usr/bin/env python3
"""Writes the seed corpora of the store_parser and json_import fuzz targets
(fuzz/corpus/<target>/), from Debian's OVMF vars files (package `ovmf`) and
small synthetic inputs. Standard library only; `virt-fw-vars` (PyPI
virt-firmware) is used for one JSON seed when it is installed.

    python3 fuzz/seeds.py

The proxy_translation and sandbox_replies seeds are not made here: their
inputs are `arbitrary`-decoded structures, so their seeds are a corpus grown
by fuzzing and minimized (see fuzz/README.md).
"""
import json
import os
import shutil
import struct
import subprocess
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
OVMF = "/usr/share/OVMF"
GLOBAL = bytes.fromhex("61dfe48bca93d211aa0d00e098032b8c")  # 8be4df61-93ca-11d2-aa0d-00e098032b8c


def out(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def used(image):
    """The image up to its last record (the store's erased tail dropped)."""
    end = 0x48 + struct.unpack_from("<I", image, 0x58)[0]
    return image[:end].rstrip(b"\xff")


def record(state, name, data, attrs=7, guid=GLOBAL):
    n = (name + "\0").encode("utf-16-le")
    hdr = struct.pack("<HBBIQ16sIII16s", 0x55AA, state, 0, attrs, 0, bytes(16), 0, len(n), len(data), guid)
    r = hdr + n + data
    return r + b"\xff" * (-len(r) % 4)


def store_parser():
    empty = open(f"{OVMF}/OVMF_VARS.fd", "rb").read()
    ms = open(f"{OVMF}/OVMF_VARS.ms.fd", "rb").read()
    ms4 = open(f"{OVMF}/OVMF_VARS_4M.ms.fd", "rb").read()
    # Mode byte: 0 raw image, 1/2 start of a 2M/4M file (rest 0xFF),
    # +4 fix the FV checksum, 3 flash image ((mode >> 4) code pages, +8 4M).
    out("store_parser", "raw-ovmf-vars-ms-2m", b"\x00" + ms)
    out("store_parser", "2m-empty", b"\x01" + used(empty))
    out("store_parser", "2m-ms", b"\x01" + used(ms))
    out("store_parser", "4m-ms", b"\x02" + used(ms4))
    out("store_parser", "flash-2m-ms", b"\x13" + used(ms))
    # Every record state: live, deleted, replaced (in transition + new),
    # two in-transition copies, header-valid-only, a torn (0xFF) header.
    recs = [
        record(0x3F, "BootOrder", b"\x00\x00"),
        record(0x3D, "Boot0000", b"\x01" * 62),
        record(0x3E, "Timeout", b"\x05\x00"),
        record(0x3F, "Timeout", b"\x06\x00"),
        record(0x3E, "Lang", b"eng"),
        record(0x3E, "Lang", b"fra"),
        record(0x7F, "Half", b"\x01" * 9),
        record(0x3F, "db", b"\x02" * 33, attrs=0x27),
        record(0xFF, "Torn", b""),
    ]
    out("store_parser", "2m-states", b"\x01" + used(empty) + b"".join(recs))
    out("store_parser", "4m-states-fixsum", b"\x06" + used(ms4)[:0x64] + b"".join(recs))


def load_option():
    path = bytes.fromhex("02010c00d041030a00000000" "01010600001f")
    f = "\\EFI\\linux.efi\0".encode("utf-16-le")
    path += struct.pack("<BBH", 4, 4, 4 + len(f)) + f + bytes.fromhex("7fff0400")
    desc = "Linux\0".encode("utf-16-le")
    return struct.pack("<IH", 1, len(path)) + desc + path + b"extra"


def json_import():
    def doc(variables):
        return json.dumps({"version": 2, "variables": variables}, indent=4).encode()

    out("json_import", "boot", doc([
        {"name": "BootOrder", "guid": "8be4df61-93ca-11d2-aa0d-00e098032b8c", "attr": 7, "data": "01000000"},
        # EFI_LOAD_OPTION: active, "Linux", PciRoot(0)/Pci(0x1f,0)/\\EFI\\linux.efi, then optional data.
        {"name": "Boot0001", "guid": "global", "attr": 7, "data": load_option().hex()},
        {"name": "Timeout", "guid": "global", "attr": 7, "data": "0500"},
        {"name": "Lang", "guid": "global", "attr": 7, "data": "656e6700"},
        {"name": "SecureBootEnable", "guid": "f0a30bc7-af08-4556-99c4-001009c93a44", "attr": 3, "data": "01"},
        {"name": "dbx", "guid": "d719b2cb-3d3a-4596-a3bc-dad00e67656f", "attr": 0x27,
         "data": "2616c4c14c509240aca941f936934328" "4c000000" "00000000" "30000000"
                 + "00" * 16 + "11" * 32,
         "time": "e907030a023527000000000000000000"},
        {"name": "Gr\u00fc\u00dfe\U0001f600", "guid": "3cc9ad5e-7a1c-4b1f-9a3e-5f0c8d2b6e71", "attr": 3, "data": "00"},
    ]))
    out("json_import", "bad", b'{"version": 2, "variables": [{"name": "X", "guid": "nope", "attr": 7, "data": "0"}]}')
    if shutil.which("virt-fw-vars"):
        with tempfile.TemporaryDirectory() as t:
            dst = os.path.join(t, "ms.json")
            subprocess.run(["virt-fw-vars", "-i", f"{OVMF}/OVMF_VARS.ms.fd", "--output-json", dst],
                           check=True, capture_output=True)
            out("json_import", "virt-fw-vars-ms", open(dst, "rb").read())


if __name__ == "__main__":
    store_parser()
    json_import()
