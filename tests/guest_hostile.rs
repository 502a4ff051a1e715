//! Hostile runtime-service arguments from inside a real guest on /dev/kvm:
//! the embedded test kernel booted with `efivmm.mode=hostile` (through
//! `efivmm demo --mode hostile`) builds its own page tables with holes, a
//! page mapped past guest memory and the last page of the address space,
//! then calls the shim's trampolines with bad pointers and sizes. The
//! proxy-level versions of these cases (no vCPU) are in
//! `vmm/src/proxy/tests.rs`; here the whole path runs: trampoline exit,
//! page walk from the guest's CR3, sandbox, status in RAX.

use std::collections::BTreeMap;
use std::process::Command;

const SUCCESS: u64 = 0;
const INVALID_PARAMETER: u64 = 0x8000_0000_0000_0002;
const BUFFER_TOO_SMALL: u64 = 0x8000_0000_0000_0005;
const NOT_FOUND: u64 = 0x8000_0000_0000_000e;

/// Every case and the status UEFI (and efivmm's proxy docs) call for. Kept
/// here independently of the kernel's own `expect=` so a wrong expectation
/// in either place fails the test.
fn expected() -> BTreeMap<&'static str, u64> {
    let inv = INVALID_PARAMETER;
    [
        ("setup_set_variable", SUCCESS),
        // GetVariable: every pointer unmapped (PTE hole, PML4 hole,
        // non-canonical), outside guest memory, in the shim (by its VA and
        // its 1:1 physical alias), wrapping, huge sizes, bad names, and the
        // 5th argument's stack slot itself unmapped.
        ("get_name_unmapped", inv),
        ("get_name_unmapped_pml4", inv),
        ("get_name_non_canonical", inv),
        ("get_name_past_ram", inv),
        ("get_guid_unmapped", inv),
        ("get_attr_unmapped", inv),
        ("get_size_ptr_unmapped", inv),
        ("get_data_unmapped", inv),
        ("get_data_runs_into_hole", inv),
        ("get_data_past_ram", inv),
        ("get_data_wraps", inv),
        ("get_size_max", inv),
        ("get_size_1t", inv),
        ("get_data_in_shim_code", inv),
        ("get_data_in_shim_phys", inv),
        ("get_attr_in_shim_rt_table", inv),
        ("get_size_ptr_in_shim", inv),
        ("get_name_unterminated", inv),
        ("get_name_crosses_hole", inv),
        ("get_fifth_slot_unmapped", inv),
        // Allowed, and must work.
        ("get_name_ends_at_hole", SUCCESS),
        ("get_odd_name_odd_data", SUCCESS),
        ("get_odd_name_missing", NOT_FOUND),
        ("get_buffer_too_small", BUFFER_TOO_SMALL),
        // SetVariable, aimed at the variable the round trip checks.
        ("set_name_unmapped", inv),
        ("set_guid_unmapped", inv),
        ("set_data_unmapped", inv),
        ("set_data_unmapped_pml4", inv),
        ("set_data_past_ram", inv),
        ("set_data_wraps", inv),
        ("set_data_runs_into_hole", inv),
        ("set_size_max", inv),
        ("set_size_1t", inv),
        ("set_name_unterminated", inv),
        ("set_name_crosses_hole", inv),
        ("set_fifth_slot_unmapped", inv),
        ("set_odd_name_odd_data", SUCCESS),
        // GetTime: Time is required (NULL is the firmware's
        // EFI_INVALID_PARAMETER), Capabilities optional but checked.
        ("gettime_null", inv),
        ("gettime_unmapped", inv),
        ("gettime_past_ram", inv),
        ("gettime_wraps", inv),
        ("gettime_in_shim_rt_table", inv),
        ("gettime_caps_unmapped", inv),
        ("gettime_ok", SUCCESS),
        // QueryVariableInfo: all three outputs are required.
        ("qvi_max_storage_unmapped", inv),
        ("qvi_remaining_null", inv),
        ("qvi_max_size_in_shim", inv),
        ("qvi_past_ram", inv),
        ("qvi_wraps", inv),
        ("qvi_ok", SUCCESS),
        ("next_name_size_unmapped", inv),
        ("next_name_buffer_in_shim", inv),
        ("next_name_guid_past_ram", inv),
    ]
    .into_iter()
    .collect()
}

fn hex(v: &str) -> u64 {
    u64::from_str_radix(v.strip_prefix("0x").expect("0x-prefixed"), 16).expect("hex")
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split(' ').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

#[test]
fn hostile_arguments_from_a_real_guest_are_refused_and_efivmm_keeps_serving() {
    let out = Command::new(env!("CARGO_BIN_EXE_efivmm")).args(["demo", "--mode", "hostile"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let all = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "efivmm must exit 0 (guest powered off, bad=0): {all}");
    assert!(all.contains("guest exit PowerOff"), "{all}");

    // Every case once, with the status the table above calls for.
    let want = expected();
    let mut seen = BTreeMap::new();
    for line in stdout.lines().filter(|l| l.starts_with("HOSTILE case=")) {
        let name = field(line, "case").unwrap();
        let status = hex(field(line, "status").unwrap_or_else(|| panic!("no status: {line}")));
        let expect = hex(field(line, "expect").unwrap());
        assert!(seen.insert(name, status).is_none(), "case {name} reported twice: {all}");
        let Some(&w) = want.get(name) else { panic!("unknown case {name}: {all}") };
        assert_eq!(status, w, "case {name}: {line}");
        assert_eq!(expect, w, "the kernel expects another status for {name}: {line}");
        assert!(line.ends_with(" ok"), "{line}");
    }
    let missing: Vec<_> = want.keys().filter(|k| !seen.contains_key(*k)).collect();
    assert!(missing.is_empty(), "cases missing: {missing:?}\n{all}");

    // The shim's pages were never written, the target variable kept its
    // value through the refused SetVariables, and a normal round trip works.
    let shim = stdout.lines().find(|l| l.starts_with("HOSTILE-SHIM ")).unwrap_or_else(|| panic!("{all}"));
    assert_eq!(field(shim, "pages"), Some("2"), "{shim}");
    assert_eq!(field(shim, "before"), field(shim, "after"), "{shim}");
    assert!(shim.ends_with(" unchanged"), "{shim}");
    let rt = stdout.lines().find(|l| l.starts_with("HOSTILE-ROUNDTRIP ")).unwrap_or_else(|| panic!("{all}"));
    assert_eq!(rt, "HOSTILE-ROUNDTRIP kept=ok set=0x0 get=0x0 value=ok");
    let done = stdout.lines().find(|l| l.starts_with("HOSTILE-DONE ")).unwrap_or_else(|| panic!("{all}"));
    assert_eq!(done, format!("HOSTILE-DONE cases={} bad=0", want.len()));
    // The normal pass before the cases passed too.
    assert!(stdout.contains("mode=hostile") && stdout.contains("result=PASS"), "{all}");
}
