//! Guest-driven disk writes are bounded (audit finding F4): a burst of
//! GetNextHighMonotonicCount costs one store write per reserved block of
//! values, and the count stays strictly increasing, also across a restart
//! in the middle of a reservation (as after a SIGKILL).

use efivmm::firmware::builtin::COUNT_LEASE;
use efivmm::firmware::{Firmware, FirmwareSource};
use efivmm::varsfile::VarsFile;

fn firmware(path: &std::path::Path) -> Firmware {
    let vars = VarsFile::open_or_create(path, varstore::Layout::Ovmf2M).unwrap();
    Firmware::start(&FirmwareSource::Builtin, vars).unwrap()
}

#[test]
fn a_thousand_monotonic_counts_write_the_store_once_per_reservation() {
    let dir = tempfile::tempdir().unwrap();
    let mut fw = firmware(&dir.path().join("vars.fd"));
    let mut last = 0;
    for _ in 0..1000 {
        let (status, high) = fw.get_next_high_monotonic_count();
        assert_eq!(status, 0);
        assert!(u64::from(high) > last, "{high} after {last}");
        last = u64::from(high);
    }
    let (commits, bytes) = fw.commits();
    let bound = 1000u64.div_ceil(COUNT_LEASE);
    assert!(commits <= bound, "{commits} store writes for 1000 counts; at most {bound}");
    println!(
        "1000 GetNextHighMonotonicCount: {commits} commits, {bytes} bytes written (one per call would be {})",
        1000 * 0x20000
    );
    assert!(bytes <= bound * 0x20000);
}

#[test]
fn the_count_never_repeats_across_a_restart_inside_a_reservation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vars.fd");
    let handed_out = {
        let mut fw = firmware(&path);
        (0..10).map(|_| fw.get_next_high_monotonic_count().1).max().unwrap()
    }; // dropped mid-reservation: the unused values are lost, as after a kill
    let mut fw = firmware(&path);
    let (status, next) = fw.get_next_high_monotonic_count();
    assert_eq!(status, 0);
    assert!(next > handed_out, "{next} after a restart, {handed_out} handed out before");
}
