//! The control API's endpoints (docs/api.md):
//!
//! | method and path | what |
//! |---|---|
//! | `GET /vm` | state, uptime, vCPUs, memory, firmware, vars file, call counters |
//! | `GET /vars` | every variable: name, GUID, attributes, size |
//! | `GET /vars/{guid}/{name}` | `{"attributes": N, "data_hex": "..."}`; 404 if absent |
//! | `PUT /vars/{guid}/{name}` | SetVariable with `{"attributes": N, "data_hex": "..."}` |
//! | `DELETE /vars/{guid}/{name}` | SetVariable with no data |
//! | `GET /metrics` | counters and the latency histogram (JSON; Prometheus text with `?format=prometheus` or `Accept: text/plain`) |
//! | `PUT /vm/shutdown` | the ACPI power button; `{"timeout_s": N}` (default 30) until the guest is stopped |
//! | `PUT /vm/stop` | stop the guest now |
//!
//! Variable calls go to the guest's firmware, serialized with the guest's
//! calls, and a write is committed to the vars file before the response.
//! The host is not bound by `--var-policy`, and it sees the variables a
//! guest's runtime calls cannot: the boot-time-only ones are read from the
//! committed store. Every answer of a variable call carries the EFI status
//! (`status`, `status_code`); the HTTP code follows it (200 success, 404
//! EFI_NOT_FOUND, 400 EFI_INVALID_PARAMETER, 403 EFI_WRITE_PROTECTED or
//! EFI_SECURITY_VIOLATION, 507 EFI_OUT_OF_RESOURCES, 500 EFI_DEVICE_ERROR,
//! 409 any other).

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{json, Map, Value};
use varstore::Guid;

use super::{Request, Response};
use crate::efi::{self, EFI_BUFFER_TOO_SMALL, EFI_NOT_FOUND, EFI_SUCCESS};
use crate::vm::control::Shutdown;
use crate::vm::Shared;

/// The default and the longest time a shutdown may take before the guest
/// is stopped.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_SHUTDOWN_TIMEOUT_S: u64 = 24 * 3600;
/// GetNextVariableName steps in one listing (a firmware that never ends).
const MAX_LISTED: usize = 100_000;

/// The host's own commit budget (`firmware::budget`'s token bucket, the
/// same rate as a guest's): a PUT or DELETE takes its token here, waiting
/// on the API's thread if it must, and only then takes the runtime lock,
/// with the firmware's (the guest's) budget lifted for that call. A host
/// that floods writes is slowed down without a guest call ever waiting
/// behind a sleeping host write, and without spending the guest's tokens.
pub(crate) struct HostBudget(crate::firmware::budget::CommitBudget);

impl HostBudget {
    pub fn new() -> Self {
        HostBudget(crate::firmware::budget::CommitBudget::new(std::time::Instant::now()))
    }

    fn pay(&mut self) {
        let wait = self.0.take(std::time::Instant::now());
        if !wait.is_zero() {
            tracing::debug!(?wait, "control API: the host's commit budget is spent; the write waits");
            std::thread::sleep(wait);
        }
    }
}

/// Answers one request.
pub(crate) fn route(req: &Request, shared: &Shared, budget: &mut HostBudget) -> Response {
    let segments: Vec<&str> = req.path.trim_end_matches('/').split('/').skip(1).collect();
    let method = req.method.as_str();
    match (segments.as_slice(), method) {
        (["vm"], "GET") => Response::json(200, &shared.describe()),
        (["vm"], _) => not_allowed("GET"),
        (["vars"], "GET") => list(shared),
        (["vars"], _) => not_allowed("GET"),
        (["vars", guid, name], "GET" | "PUT" | "DELETE") => variable(req, shared, guid, name, budget),
        (["vars", _, _], _) => not_allowed("GET, PUT, DELETE"),
        (["metrics"], "GET") => {
            let prometheus = req.query.as_deref().is_some_and(|q| q.split('&').any(|p| p == "format=prometheus"));
            if prometheus || req.accepts_text {
                let body = shared.metrics_text().into_bytes();
                Response { code: 200, content_type: "text/plain; version=0.0.4", body, allow: None }
            } else {
                Response::json(200, &shared.metrics_json())
            }
        }
        (["metrics"], _) => not_allowed("GET"),
        (["vm", "shutdown"], "PUT") => shutdown(req, shared),
        (["vm", "stop"], "PUT") => {
            shared.request_stop();
            Response::json(202, &json!({"state": "stopping"}))
        }
        (["vm", "shutdown" | "stop"], _) => not_allowed("PUT"),
        _ => Response::error(
            404,
            format!(
                "no endpoint {}: use /vm, /vars, /vars/{{guid}}/{{name}}, /metrics, /vm/shutdown or /vm/stop",
                efi::escape_controls(&req.path)
            ),
        ),
    }
}

fn not_allowed(allow: &'static str) -> Response {
    let mut r = Response::error(405, format!("use {allow} here"));
    r.allow = Some(allow);
    r
}

fn stopping() -> Response {
    Response::error(503, "the guest is stopping: its firmware takes no more calls")
}

/// The HTTP code for an EFI status.
fn http_code(status: u64) -> u16 {
    use crate::efi::{EFI_DEVICE_ERROR, EFI_INVALID_PARAMETER, EFI_WRITE_PROTECTED};
    const EFI_OUT_OF_RESOURCES: u64 = efi::ERROR_BIT | 9;
    const EFI_SECURITY_VIOLATION: u64 = efi::ERROR_BIT | 26;
    match status {
        EFI_SUCCESS => 200,
        EFI_NOT_FOUND => 404,
        EFI_INVALID_PARAMETER => 400,
        EFI_WRITE_PROTECTED | EFI_SECURITY_VIOLATION => 403,
        EFI_OUT_OF_RESOURCES => 507,
        EFI_DEVICE_ERROR => 500,
        _ => 409,
    }
}

fn with_status(status: u64) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("status".into(), json!(efi::status_name(status)));
    out.insert("status_code".into(), json!(status));
    out
}

/// `{guid}` (text or `global`) and `{name}` (percent-encoded UTF-8) of a
/// variable's path, the name as UTF-16LE with its NUL.
fn variable_key(guid: &str, name: &str) -> Result<(Guid, Vec<u8>), Response> {
    let guid = efi::parse_guid(guid).map_err(|e| Response::error(400, format!("the GUID {e}")))?;
    let name = percent_encoding::percent_decode_str(name)
        .decode_utf8()
        .map_err(|_| Response::error(400, "the variable's name is not UTF-8 once percent-decoded"))?;
    if name.is_empty() || name.contains('\0') {
        return Err(Response::error(400, "the variable's name is empty or holds a NUL"));
    }
    let utf16 = efi::name_to_utf16(&name);
    if utf16.len() as u64 > sandbox_abi::NAME_SIZE {
        return Err(Response::error(
            400,
            format!("the name is {} bytes in UTF-16; at most {}", utf16.len(), sandbox_abi::NAME_SIZE),
        ));
    }
    Ok((guid, utf16))
}

fn variable(req: &Request, shared: &Shared, guid: &str, name: &str, budget: &mut HostBudget) -> Response {
    let (guid, name) = match variable_key(guid, name) {
        Ok(k) => k,
        Err(r) => return r,
    };
    match req.method.as_str() {
        "GET" => get(shared, &guid, &name),
        "PUT" => {
            let (attributes, data) = match put_body(&req.body) {
                Ok(b) => b,
                Err(why) => return Response::error(400, why),
            };
            budget.pay();
            set(shared, &guid, &name, attributes, &data)
        }
        _ => {
            budget.pay();
            set(shared, &guid, &name, 0, &[])
        }
    }
}

/// The body of a PUT: `{"attributes": N, "data_hex": "..."}`.
fn put_body(body: &[u8]) -> Result<(u32, Vec<u8>), String> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| format!("the body is not JSON ({e}): send {{\"attributes\": N, \"data_hex\": \"...\"}}"))?;
    let Value::Object(fields) = value else {
        return Err("the body must be a JSON object {\"attributes\": N, \"data_hex\": \"...\"}".into());
    };
    if let Some(unknown) = fields.keys().find(|k| *k != "attributes" && *k != "data_hex") {
        return Err(format!(
            "unknown field `{}`: the fields are attributes and data_hex",
            efi::escape_controls(unknown)
        ));
    }
    let attributes = fields
        .get("attributes")
        .and_then(Value::as_u64)
        .and_then(|a| u32::try_from(a).ok())
        .ok_or("`attributes` must be a number from 0 to 4294967295 (7 = non-volatile, boot and runtime access)")?;
    let data_hex = fields.get("data_hex").and_then(Value::as_str).ok_or("`data_hex` must be a string of hex digits")?;
    let data = efi::decode_hex(data_hex).map_err(|e| format!("`data_hex`: {e}"))?;
    if data.len() as u64 > sandbox_abi::DATA_SIZE {
        return Err(format!("the data is {} bytes; at most {}", data.len(), sandbox_abi::DATA_SIZE));
    }
    Ok((attributes, data))
}

fn get(shared: &Shared, guid: &Guid, name: &[u8]) -> Response {
    let Ok(r) = shared.with_firmware(|fw| fw.get_variable(name, guid, sandbox_abi::DATA_SIZE)) else {
        return stopping();
    };
    if r.status == EFI_NOT_FOUND {
        // Not visible to runtime calls: a boot-time-only variable is still
        // in the store, and the host may read it.
        if let Ok(Some((attributes, data))) = shared.with_firmware(|fw| stored(fw.vars().image(), guid, name)) {
            let mut out = with_status(EFI_SUCCESS);
            out.insert("attributes".into(), json!(attributes));
            out.insert("data_hex".into(), json!(efi::encode_hex(&data)));
            out.insert("boot_time_only".into(), json!(true));
            return Response::json(200, &Value::Object(out));
        }
    }
    let mut out = with_status(r.status);
    if r.status == EFI_SUCCESS {
        out.insert("attributes".into(), json!(r.attributes));
        out.insert("data_hex".into(), json!(efi::encode_hex(&r.data)));
    } else {
        out.insert("error".into(), json!(format!("GetVariable returned {}", efi::status_name(r.status))));
    }
    Response::json(http_code(r.status), &Value::Object(out))
}

fn set(shared: &Shared, guid: &Guid, name: &[u8], attributes: u32, data: &[u8]) -> Response {
    let Ok((status, failure)) = shared.with_firmware(|fw| {
        let status = fw.with_budget_paid(|fw| fw.set_variable(name, guid, attributes, data));
        (status, fw.last_failure().map(str::to_string))
    }) else {
        return stopping();
    };
    let mut out = with_status(status);
    if status != EFI_SUCCESS {
        out.insert("error".into(), json!(format!("SetVariable returned {}", efi::status_name(status))));
    }
    if let Some(why) = failure {
        out.insert("sandbox_failure".into(), json!(why));
    }
    Response::json(http_code(status), &Value::Object(out))
}

/// A variable's attributes and data as committed in the store `image`.
fn stored(image: &[u8], guid: &Guid, name: &[u8]) -> Option<(u32, Vec<u8>)> {
    let mut copy = image.to_vec();
    let store = varstore::Store::open(&mut copy).ok()?;
    store.find(name, guid).map(|v| (v.attributes, v.data.to_vec()))
}

/// `GET /vars`: the committed store's variables (every non-volatile one,
/// boot-time-only ones too), then the volatile ones the firmware's
/// GetNextVariableName walk adds. Each walk step is one locked call: a
/// listing never holds the guest's calls back for more than one call.
fn list(shared: &Shared) -> Response {
    let Ok(image) = shared.with_firmware(|fw| fw.vars().image().to_vec()) else {
        return stopping();
    };
    let mut copy = image;
    let mut variables = Vec::new();
    let mut seen = HashSet::new();
    match varstore::Store::open(&mut copy) {
        Ok(store) => {
            for v in store.iter() {
                seen.insert((v.guid.0, v.name.to_vec()));
                variables.push(json!({
                    "name": efi::name_from_utf16(v.name),
                    "guid": v.guid.to_string(),
                    "attributes": v.attributes,
                    "size": v.data.len(),
                }));
            }
        }
        Err(e) => return Response::error(500, format!("the committed store does not parse: {e}")),
    }
    let mut name = vec![0u8, 0];
    let mut guid = Guid([0; 16]);
    let mut walk_status = EFI_SUCCESS;
    for _ in 0..MAX_LISTED {
        let Ok(next) = shared.with_firmware(|fw| fw.get_next_variable_name(&name, &guid, sandbox_abi::NAME_SIZE))
        else {
            return stopping();
        };
        if next.status != EFI_SUCCESS {
            if next.status != EFI_NOT_FOUND {
                walk_status = next.status;
            }
            break;
        }
        (name, guid) = (next.name, next.guid);
        if seen.contains(&(guid.0, name.clone())) {
            continue;
        }
        // Not in the store: volatile. Its attributes and size.
        let Ok(r) = shared.with_firmware(|fw| fw.get_variable(&name, &guid, 0)) else {
            return stopping();
        };
        if r.status == EFI_BUFFER_TOO_SMALL || r.status == EFI_SUCCESS {
            variables.push(json!({
                "name": efi::name_from_utf16(&name),
                "guid": guid.to_string(),
                "attributes": r.attributes,
                "size": r.data_size,
            }));
        }
    }
    let mut out = with_status(EFI_SUCCESS);
    if walk_status != EFI_SUCCESS {
        // A guest's call changed the variables under the walk, say: the
        // committed ones are complete, the volatile ones may not be.
        out.insert("volatile_walk_status".into(), json!(efi::status_name(walk_status)));
    }
    out.insert("variables".into(), Value::Array(variables));
    Response::json(200, &Value::Object(out))
}

/// `PUT /vm/shutdown` with an optional `{"timeout_s": N}`.
fn shutdown(req: &Request, shared: &Shared) -> Response {
    let timeout = if req.body.iter().all(u8::is_ascii_whitespace) {
        DEFAULT_SHUTDOWN_TIMEOUT
    } else {
        let parsed: Result<Value, _> = serde_json::from_slice(&req.body);
        match parsed.ok().as_ref().and_then(|v| v.as_object()) {
            Some(o) if o.keys().all(|k| k == "timeout_s") => match o.get("timeout_s").map(Value::as_u64) {
                None => DEFAULT_SHUTDOWN_TIMEOUT,
                Some(Some(s)) if (1..=MAX_SHUTDOWN_TIMEOUT_S).contains(&s) => Duration::from_secs(s),
                Some(_) => {
                    return Response::error(400, format!("`timeout_s` must be 1 to {MAX_SHUTDOWN_TIMEOUT_S} seconds"));
                }
            },
            _ => return Response::error(400, "the body must be empty or {\"timeout_s\": N}"),
        }
    };
    match shared.request_shutdown(timeout) {
        Shutdown::Requested => Response::json(202, &json!({"state": "shutting-down", "timeout_s": timeout.as_secs()})),
        Shutdown::AlreadyRequested(t) => Response::json(
            202,
            &json!({"state": "shutting-down", "timeout_s": t.as_secs(), "note": "a shutdown was already requested"}),
        ),
        Shutdown::Stopping => Response::json(202, &json!({"state": "stopping"})),
    }
}
