//! SIGKILL of efivmm at random moments during a SetVariable storm loses no
//! acknowledged write and never leaves an unreadable store.

mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{rt_ok, status, Rng, TEST_GUID};

const NAMES: u64 = 24;
const WRITES: u64 = 240;

fn value(i: u64) -> String {
    // 600 bytes, distinct per write: the store fills and must be reclaimed.
    (0..600u64).map(|k| format!("{:02x}", (i * 7 + k) as u8)).collect()
}

#[test]
fn sigkill_during_a_set_variable_storm_loses_no_acknowledged_write() {
    let seed = std::env::var("EFIVMM_STORM_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_1234_u64);
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let vars = dir.path().join("vars.fd");
    rt_ok(&vars, &["list-variables"]); // create the file

    // For every name: the writes attempted, in order, and which were acknowledged.
    let mut attempts: HashMap<String, Vec<(u64, bool)>> = HashMap::new();
    let (mut acked, mut killed) = (0, 0);
    for i in 0..WRITES {
        let name = format!("Storm{}", i % NAMES);
        let data = value(i);
        let child = Command::new(env!("CARGO_BIN_EXE_efivmm"))
            .args(["rt", "--vars"])
            .arg(&vars)
            .args(["set-variable", &name, TEST_GUID, "--attrs", "7", "--data-hex", &data])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        if !rng.next().is_multiple_of(3) {
            // Kill it somewhere in its life: start-up, the call, the commit.
            std::thread::sleep(Duration::from_micros(rng.next() % 40_000));
            // SAFETY: kill(2) on our own child's pid; no memory is involved.
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        }
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let ok = out.status.success()
            && serde_json::from_str::<serde_json::Value>(stdout.trim())
                .map(|v| status(&v) == "EFI_SUCCESS")
                .unwrap_or(false);
        if ok {
            acked += 1;
        } else {
            killed += 1;
        }
        attempts.entry(name).or_default().push((i, ok));
    }
    eprintln!("storm: {acked} acknowledged, {killed} cut short (seed {seed:#x})");
    assert!(
        acked > 20 && killed > 20,
        "the storm must have both ({acked} acknowledged, {killed} cut short): tune the timing"
    );

    // The store is readable, and each name holds its last acknowledged value
    // or the value of a later attempt (which may have committed before it died).
    let list = rt_ok(&vars, &["list-variables"]);
    assert_eq!(status(&list), "EFI_SUCCESS");
    for (name, tries) in &attempts {
        let Some(last_ack) = tries.iter().rposition(|(_, ok)| *ok) else { continue };
        let got = rt_ok(&vars, &["get-variable", name, TEST_GUID]);
        assert_eq!(status(&got), "EFI_SUCCESS", "{name} lost (seed {seed:#x})");
        let allowed: Vec<String> = tries[last_ack..].iter().map(|(i, _)| value(*i)).collect();
        assert!(
            allowed.contains(&got["data_hex"].as_str().unwrap().to_string()),
            "{name} holds a value older than its last acknowledged write (seed {seed:#x})"
        );
    }
    // No temporary file is left behind after a clean run.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
}

#[test]
fn two_efivmm_racing_to_create_one_new_vars_file_lose_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut refused = 0;
    for i in 0..40 {
        let vars = dir.path().join(format!("new{i}.fd"));
        let racers: Vec<_> = ["RaceA", "RaceB"]
            .into_iter()
            .map(|name| {
                let child = Command::new(env!("CARGO_BIN_EXE_efivmm"))
                    .args(["rt", "--vars"])
                    .arg(&vars)
                    .args(["set-variable", name, TEST_GUID, "--attrs", "7", "--data-hex", "01"])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap();
                (name, child)
            })
            .collect();
        // Both end before the file is read back (a reader would itself be
        // refused while the other racer holds the lock).
        let outcomes: Vec<_> =
            racers.into_iter().map(|(name, child)| (name, child.wait_with_output().unwrap())).collect();
        for (name, out) in outcomes {
            let stderr = String::from_utf8_lossy(&out.stderr);
            if out.status.success() {
                // Acknowledged: it must be in the file.
                let got = rt_ok(&vars, &["get-variable", name, TEST_GUID]);
                assert_eq!(status(&got), "EFI_SUCCESS", "iteration {i}: acknowledged {name} is lost");
            } else {
                assert_eq!(out.status.code(), Some(4), "iteration {i}: {name}: {stderr}");
                assert!(stderr.contains("in use by another efivmm"), "iteration {i}: {name}: {stderr}");
                refused += 1;
            }
        }
    }
    eprintln!("{refused} of 80 starts refused as locked");
}
