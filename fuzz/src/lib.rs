//! Shared parts of efivmm's fuzz targets (`fuzz_targets/`):
//!
//! - [`guest`]: synthetic guests (memory with holes, page tables built from
//!   fuzz input, registers) and a reference page walker, written from the
//!   x86-64 rules independently of `efivmm::proxy::paging`.
//! - [`double`]: a firmware double, a [`efivmm::firmware::Backend`] whose
//!   replies (status, `outs`, output bytes, store images, failures) come
//!   from the fuzz input: a firmware that lies.
//! - [`model`]: what `efivmm::proxy::call_service` must do with a call,
//!   restated from its documented contract: the request the firmware must
//!   see (or the refusal), and guest memory after the call, byte for byte.
//! - [`store`]: invariants of an opened variable store (liveness recomputed
//!   from the raw records, compaction, appends).
//!
//! Every check panics with a message on a violation, which libFuzzer
//! reports as a crash.

pub mod double;
pub mod guest;
pub mod model;
pub mod store;

/// A private directory for vars files, removed when dropped: inside
/// `$EFIVMM_FUZZ_SCRATCH` when `scripts/fuzz.sh` sets it (a directory of that
/// run's own, which it removes afterwards even if a crash skipped the drop),
/// else on tmpfs when there is one (commits fsync).
pub fn scratch_dir() -> tempfile::TempDir {
    let parent = std::env::var_os("EFIVMM_FUZZ_SCRATCH").map(std::path::PathBuf::from);
    let shm = parent.unwrap_or_else(|| "/dev/shm".into());
    let b = tempfile::Builder::new().prefix("efivmm-fuzz-").tempdir_in(&shm);
    b.or_else(|_| tempfile::Builder::new().prefix("efivmm-fuzz-").tempdir()).expect("cannot create a temp directory")
}
