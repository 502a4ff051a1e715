//! What a running guest's runtime services did, for the control API's
//! `GET /metrics` (`crate::api`): per-service call and error counts, a
//! latency histogram, SetVirtualAddressMap calls absorbed, sandbox failures
//! (each one restored the firmware's last good state) and bytes committed to
//! the vars file.
//!
//! Everything is an atomic counter written by the vCPU thread that served
//! the call (with the runtime lock held, so the firmware's own counters are
//! copied here at no extra cost) and read without any lock: a client that
//! polls `/metrics` never waits for, nor delays, a guest's call.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{json, Map, Value};

/// The runtime services by number (`sandbox_abi::Service`), as named in
/// the UEFI specification.
pub const SERVICES: [&str; 14] = [
    "GetTime",
    "SetTime",
    "GetWakeupTime",
    "SetWakeupTime",
    "SetVirtualAddressMap",
    "ConvertPointer",
    "GetVariable",
    "GetNextVariableName",
    "SetVariable",
    "GetNextHighMonotonicCount",
    "ResetSystem",
    "UpdateCapsule",
    "QueryCapsuleCapabilities",
    "QueryVariableInfo",
];

/// Upper bounds of the latency histogram's buckets, in microseconds (the
/// last bucket, past 1 s, has none). From one guest exit (~10 µs) to a
/// SetVariable that compacts and fsyncs a 4 MiB store (tens of ms).
pub const BUCKETS_US: [u64; 14] =
    [10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 1_000_000];

/// The counters.
#[derive(Default)]
pub struct Metrics {
    calls: [AtomicU64; SERVICES.len()],
    /// Calls that returned an EFI error status (the high bit set; this
    /// includes the everyday EFI_NOT_FOUND and EFI_BUFFER_TOO_SMALL).
    errors: [AtomicU64; SERVICES.len()],
    /// Call latency, host time from the guest's exit to its registers set.
    buckets: [AtomicU64; BUCKETS_US.len() + 1],
    latency_ns: AtomicU64,
    /// Calls of a service number outside the 14.
    unknown_service: AtomicU64,
    /// Copied from the firmware after each call.
    sandbox_failures: AtomicU64,
    commits: AtomicU64,
    bytes_committed: AtomicU64,
    /// Requests the control API answered, and those it answered with an
    /// HTTP error (4xx, 5xx).
    api_requests: AtomicU64,
    api_errors: AtomicU64,
}

/// The firmware's own totals, copied into the metrics after a call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FirmwareTotals {
    /// Calls that failed in the sandbox (each restored the last good state).
    pub sandbox_failures: u64,
    /// Store commits.
    pub commits: u64,
    /// Bytes those commits wrote.
    pub bytes_committed: u64,
}

impl Metrics {
    /// Counts one call of `service` that ended with `status` after `elapsed`.
    pub fn record(&self, service: u64, status: u64, elapsed: Duration) {
        let Some(i) = usize::try_from(service).ok().filter(|&i| i < SERVICES.len()) else {
            self.unknown_service.fetch_add(1, Ordering::Relaxed);
            return;
        };
        self.calls[i].fetch_add(1, Ordering::Relaxed);
        if status & crate::efi::ERROR_BIT != 0 {
            self.errors[i].fetch_add(1, Ordering::Relaxed);
        }
        let us = elapsed.as_micros();
        let bucket = BUCKETS_US.iter().position(|&b| us <= u128::from(b)).unwrap_or(BUCKETS_US.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_ns.fetch_add(elapsed.as_nanos().min(u128::from(u64::MAX)) as u64, Ordering::Relaxed);
    }

    /// Copies the firmware's totals (they only grow).
    pub fn firmware(&self, totals: FirmwareTotals) {
        self.sandbox_failures.store(totals.sandbox_failures, Ordering::Relaxed);
        self.commits.store(totals.commits, Ordering::Relaxed);
        self.bytes_committed.store(totals.bytes_committed, Ordering::Relaxed);
    }

    /// Counts one control-API request (`error`: answered with 4xx or 5xx).
    pub fn api_request(&self, error: bool) {
        self.api_requests.fetch_add(1, Ordering::Relaxed);
        if error {
            self.api_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Calls of `service` so far.
    pub fn calls_of(&self, service: usize) -> u64 {
        self.calls.get(service).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    fn load(counters: &[AtomicU64]) -> Vec<u64> {
        counters.iter().map(|c| c.load(Ordering::Relaxed)).collect()
    }

    /// The JSON form, with the VM's own counters (SetVirtualAddressMap
    /// calls absorbed, calls refused from user mode) merged in.
    pub fn to_json(&self, svam_absorbed: u64, refused_calls: u64) -> Value {
        let calls = Self::load(&self.calls);
        let errors = Self::load(&self.errors);
        let mut services = Map::new();
        for (i, name) in SERVICES.iter().enumerate() {
            services.insert((*name).into(), json!({"calls": calls[i], "errors": errors[i]}));
        }
        let counts = Self::load(&self.buckets);
        let buckets: Vec<Value> = counts
            .iter()
            .enumerate()
            .map(|(i, n)| match BUCKETS_US.get(i) {
                Some(le) => json!({"le_us": le, "count": n}),
                None => json!({"le_us": null, "count": n}),
            })
            .collect();
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        json!({
            "services": services,
            "calls": calls.iter().sum::<u64>(),
            "errors": errors.iter().sum::<u64>(),
            "unknown_service_calls": n(&self.unknown_service),
            "refused_user_mode_calls": refused_calls,
            "set_virtual_address_map_absorbed": svam_absorbed,
            "latency": {"buckets": buckets, "sum_ns": n(&self.latency_ns), "count": counts.iter().sum::<u64>()},
            "sandbox_failures": n(&self.sandbox_failures),
            "sandbox_restores": n(&self.sandbox_failures),
            "commits": n(&self.commits),
            "bytes_committed": n(&self.bytes_committed),
            "api": {"requests": n(&self.api_requests), "errors": n(&self.api_errors)},
        })
    }

    /// The same in Prometheus' text exposition format (version 0.0.4).
    pub fn to_prometheus(&self, svam_absorbed: u64, refused_calls: u64) -> String {
        use std::fmt::Write;
        fn family(out: &mut String, name: &str, kind: &str, help: &str) {
            let _ = writeln!(out, "# HELP efivmm_{name} {help}\n# TYPE efivmm_{name} {kind}");
        }
        let mut out = String::new();
        for (name, help, counts) in [
            ("runtime_calls_total", "Runtime-service calls by the guest, by service.", Self::load(&self.calls)),
            ("runtime_errors_total", "Calls that returned an EFI error status, by service.", Self::load(&self.errors)),
        ] {
            family(&mut out, name, "counter", help);
            for (service, n) in SERVICES.iter().zip(counts) {
                let _ = writeln!(out, "efivmm_{name}{{service=\"{service}\"}} {n}");
            }
        }
        family(&mut out, "runtime_call_duration_seconds", "histogram", "Host time serving a runtime call.");
        let mut cumulative = 0;
        for (i, n) in Self::load(&self.buckets).into_iter().enumerate() {
            cumulative += n;
            let le = BUCKETS_US.get(i).map_or("+Inf".to_string(), |us| format!("{}", *us as f64 / 1e6));
            let _ = writeln!(out, "efivmm_runtime_call_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let sum = self.latency_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "efivmm_runtime_call_duration_seconds_sum {sum}");
        let _ = writeln!(out, "efivmm_runtime_call_duration_seconds_count {cumulative}");
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        for (name, help, value) in [
            (
                "svam_absorbed_total",
                "SetVirtualAddressMap calls served by efivmm (never by the firmware).",
                svam_absorbed,
            ),
            (
                "refused_calls_total",
                "Runtime-call exits refused because they came from guest user mode.",
                refused_calls,
            ),
            (
                "sandbox_failures_total",
                "Calls that failed in the sandbox; each restored the last good state.",
                n(&self.sandbox_failures),
            ),
            ("commits_total", "Commits of the vars file.", n(&self.commits)),
            ("committed_bytes_total", "Bytes written to the vars file by commits.", n(&self.bytes_committed)),
            ("api_requests_total", "Requests answered by the control API.", n(&self.api_requests)),
            ("api_errors_total", "Requests the control API answered with an HTTP error.", n(&self.api_errors)),
        ] {
            family(&mut out, name, "counter", help);
            let _ = writeln!(out, "efivmm_{name} {value}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::efi::{EFI_NOT_FOUND, EFI_SUCCESS};

    #[test]
    fn calls_land_in_their_service_and_bucket() {
        let m = Metrics::default();
        m.record(6, EFI_SUCCESS, Duration::from_micros(15));
        m.record(6, EFI_NOT_FOUND, Duration::from_micros(20));
        m.record(8, EFI_SUCCESS, Duration::from_millis(3));
        m.record(99, EFI_SUCCESS, Duration::from_secs(5));
        m.record(0, EFI_SUCCESS, Duration::from_secs(2));
        let j = m.to_json(2, 1);
        assert_eq!(j["services"]["GetVariable"], json!({"calls": 2, "errors": 1}));
        assert_eq!(j["services"]["SetVariable"], json!({"calls": 1, "errors": 0}));
        assert_eq!(j["calls"], 4);
        assert_eq!(j["unknown_service_calls"], 1);
        assert_eq!(j["set_virtual_address_map_absorbed"], 2);
        let b = &j["latency"]["buckets"];
        // 15 µs and 20 µs fall in the (10, 20] bucket; 3 ms in (2, 5] ms; 2 s past the last bound.
        assert_eq!(b[1], json!({"le_us": 20, "count": 2}));
        assert_eq!(b[8], json!({"le_us": 5000, "count": 1}));
        assert_eq!(b[BUCKETS_US.len()], json!({"le_us": null, "count": 1}));
        assert_eq!(j["latency"]["count"], 4);
        assert_eq!(j["latency"]["sum_ns"], 15_000 + 20_000 + 3_000_000 + 2_000_000_000u64);
    }

    #[test]
    fn the_prometheus_histogram_is_cumulative() {
        let m = Metrics::default();
        m.record(6, EFI_SUCCESS, Duration::from_micros(5));
        m.record(6, EFI_SUCCESS, Duration::from_micros(150));
        m.firmware(FirmwareTotals { sandbox_failures: 1, commits: 3, bytes_committed: 4096 });
        let text = m.to_prometheus(0, 0);
        assert!(text.contains("efivmm_runtime_calls_total{service=\"GetVariable\"} 2\n"), "{text}");
        assert!(text.contains("efivmm_runtime_call_duration_seconds_bucket{le=\"0.00001\"} 1\n"), "{text}");
        assert!(text.contains("efivmm_runtime_call_duration_seconds_bucket{le=\"0.0002\"} 2\n"), "{text}");
        assert!(text.contains("efivmm_runtime_call_duration_seconds_bucket{le=\"+Inf\"} 2\n"), "{text}");
        assert!(text.contains("efivmm_runtime_call_duration_seconds_count 2\n"), "{text}");
        assert!(text.contains("efivmm_committed_bytes_total 4096\n"), "{text}");
        assert!(text.contains("efivmm_sandbox_failures_total 1\n"), "{text}");
        // Every sample line belongs to a family announced before it.
        let mut announced = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                announced.insert(rest.split(' ').next().unwrap().to_string());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                let family = name.trim_end_matches("_bucket").trim_end_matches("_sum").trim_end_matches("_count");
                assert!(announced.contains(family) || announced.contains(name), "{line}");
            }
        }
    }
}
