//! GetNextVariableName.

use r_efi::efi::Status;
use sandbox_abi::Service;

use super::*;
use crate::wellknown::NV_BS;

#[test]
fn empty_store_enumerates_only_the_secure_boot_state() {
    let mut m = Machine::new();
    assert!(m.enumerate().is_empty());
    assert_eq!(m.enumerate_all().len(), crate::secureboot::NAMES.len());
    // After the last one: the end.
    let (r, _, _) = m.next(&u16z("VendorKeys"), 1024, crate::wellknown::GLOBAL_VARIABLE);
    assert_eq!(r.status, Status::NOT_FOUND);
}

#[test]
fn full_enumeration_visits_each_runtime_variable_once_in_store_order() {
    let mut m = Machine::new();
    m.put("Testvar", TEST_GUID, b"1");
    m.inject("Hidden", TEST_GUID, NV_BS, b"boot only");
    m.put("Testvar ", TEST_GUID, b"2");
    m.put("Testva", TEST_GUID, b"3");
    m.put("Testvar", OTHER_GUID, b"4");
    m.put("Gone", TEST_GUID, b"5");
    assert_eq!(m.set("Gone", TEST_GUID, 0, &[]).status, Status::SUCCESS);
    // A rewrite moves the variable to the end of the store.
    m.put("Testva", TEST_GUID, b"33");
    let seen = m.enumerate();
    let expect = vec![
        ("Testvar".to_string(), TEST_GUID),
        ("Testvar ".to_string(), TEST_GUID),
        ("Testvar".to_string(), OTHER_GUID),
        ("Testva".to_string(), TEST_GUID),
    ];
    assert_eq!(seen, expect);
}

#[test]
fn name_sizes_zero_and_one_are_invalid_parameter() {
    let mut m = Machine::new();
    m.put("A", TEST_GUID, b"1");
    for size in [0, 1] {
        let (r, _, _) = m.next(&u16z(""), size, Guid::default());
        assert_eq!(r.status, Status::INVALID_PARAMETER, "size {size}");
    }
}

#[test]
fn name_size_two_gets_buffer_too_small_with_needed_size() {
    let mut m = Machine::new();
    m.put("Abc", TEST_GUID, b"1");
    let (r, _, _) = m.next(&u16z(""), 2, Guid::default());
    assert_eq!(r.status, Status::BUFFER_TOO_SMALL);
    assert_eq!(r.outs[1], 8);
    let (r, _, _) = m.next(&u16z(""), 7, Guid::default());
    assert_eq!(r.status, Status::BUFFER_TOO_SMALL);
    assert_eq!(r.outs[1], 8);
    let (r, name, guid) = m.next(&u16z(""), 8, Guid::default());
    assert_eq!(r.status, Status::SUCCESS);
    assert_eq!(name, u16z("Abc"));
    assert_eq!(guid, TEST_GUID);
    assert_eq!(r.outs[1], 8);
}

#[test]
fn input_name_without_nul_within_size_is_invalid_parameter() {
    let mut m = Machine::new();
    m.put("Abc", TEST_GUID, b"1");
    // "Abc\0" with *VariableNameSize = 6: the NUL lies beyond.
    let (r, _, _) = m.next(&u16z("Abc"), 6, TEST_GUID);
    assert_eq!(r.status, Status::INVALID_PARAMETER);
    // With size 8 it is found, and it is the store's last variable: the
    // Secure Boot state variables follow.
    // (SetupMode, whose 20 bytes do not fit in 8).
    let (r, _, _) = m.next(&u16z("Abc"), 8, TEST_GUID);
    assert_eq!(r.status, Status::BUFFER_TOO_SMALL);
    assert_eq!(r.outs[1], 20);
}

#[test]
fn input_name_that_is_not_a_variable_is_invalid_parameter() {
    let mut m = Machine::new();
    m.put("Abc", TEST_GUID, b"1");
    m.inject("Hidden", TEST_GUID, NV_BS, b"x");
    m.put("Gone", TEST_GUID, b"x");
    assert_eq!(m.set("Gone", TEST_GUID, 0, &[]).status, Status::SUCCESS);
    for (name, guid) in [("Abd", TEST_GUID), ("Abc", OTHER_GUID), ("Hidden", TEST_GUID), ("Gone", TEST_GUID)] {
        let (r, _, _) = m.next(&u16z(name), 100, guid);
        assert_eq!(r.status, Status::INVALID_PARAMETER, "{name}");
    }
}

#[test]
fn null_pointers_are_invalid_parameter() {
    let mut m = Machine::new();
    m.put("Abc", TEST_GUID, b"1");
    let name = u16z("");
    for missing in 0..3 {
        let r = m.call(Service::GetNextVariableName, [100, 0, 0, 2, 0, 0, 0], ALL & !(1 << missing), &name, &[]);
        assert_eq!(r.status, Status::INVALID_PARAMETER, "pointer {missing}");
    }
}

#[test]
fn copied_bytes_beyond_the_name_buffer_are_invalid_parameter() {
    let mut m = Machine::new();
    m.put("Abc", TEST_GUID, b"1");
    let r = m.call(Service::GetNextVariableName, [1 << 20, 0, 0, 1 << 20, 0, 0, 0], ALL, &[1, 0], &[]);
    assert_eq!(r.status, Status::INVALID_PARAMETER);
    // A huge *VariableNameSize with a proper copy works.
    let r = m.call(Service::GetNextVariableName, [1 << 40, 0, 0, 0x1_0000, 0, 0, 0], ALL, &[0, 0], &[]);
    assert_eq!(r.status, Status::SUCCESS);
}

#[test]
fn enumeration_with_exact_buffers_matches_large_buffers() {
    let mut m = Machine::new();
    for i in 0..20 {
        m.put(&format!("Var{}", "x".repeat(i)), if i % 2 == 0 { TEST_GUID } else { OTHER_GUID }, b"v");
    }
    let large = m.enumerate_all();
    let mut exact = Vec::new();
    let mut prev = u16z("");
    let mut guid = Guid::default();
    loop {
        let (mut r, mut name, mut g) = m.next(&prev, prev.len() as u64, guid);
        if r.status == Status::NOT_FOUND {
            break;
        }
        if r.status == Status::BUFFER_TOO_SMALL {
            assert!(r.outs[1] > prev.len() as u64);
            (r, name, g) = m.next(&prev, r.outs[1], guid);
        }
        assert_eq!(r.status, Status::SUCCESS);
        exact.push((from_u16z(&name), g));
        prev = name;
        guid = g;
    }
    assert_eq!(exact, large);
    assert_eq!(large.len(), 20 + crate::secureboot::NAMES.len());
}
