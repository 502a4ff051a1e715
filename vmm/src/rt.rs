//! `efivmm rt`: call one runtime service in a fresh sandbox, without a guest,
//! and print one JSON object.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use sandbox_abi::{DATA_SIZE, NAME_SIZE};
use serde_json::{json, Map, Value};

use crate::efi::{self, EfiTime, Guid, Rfc3339, EFI_BUFFER_TOO_SMALL, EFI_NOT_FOUND, EFI_SUCCESS};
use crate::firmware::{calls, Firmware, FirmwareSource};
use crate::ExitError;

/// Options of `efivmm rt`.
#[derive(Args, Debug)]
pub struct RtArgs {
    /// Firmware that serves the call: `builtin` (efivmm's own runtime
    /// firmware, at CPL3) or the path of an OVMF image (`OVMF.fd`, or
    /// `OVMF_CODE.fd`/`OVMF_CODE_4M.fd` with a vars file of the same build),
    /// booted to runtime in the sandbox first (needs hardware virtualization).
    #[arg(long, default_value = "builtin", value_name = "builtin|PATH")]
    pub firmware: FirmwareSource,
    /// The VM's vars file (OVMF format, 2 MiB or 4 MiB build's layout). A
    /// missing file is created as a fresh, empty store in the firmware's
    /// layout (128 KiB for `builtin` and the 2 MiB OVMF build).
    #[arg(long, value_name = "FILE")]
    pub vars: PathBuf,
    /// Deadline of the call in the sandbox, in milliseconds; a firmware that
    /// runs longer is stopped and the call returns EFI_DEVICE_ERROR.
    /// Default: 1000 for `builtin`, 5000 for OVMF.
    #[arg(long, value_name = "MS")]
    pub deadline_ms: Option<u64>,
    /// OVMF's snapshot and privilege level.
    #[command(flatten)]
    pub ovmf: crate::firmware::prepare::OvmfArgs,
    /// The service to call.
    #[command(subcommand)]
    pub service: RtService,
}

/// The runtime services `efivmm rt` can call.
#[derive(Subcommand, Debug)]
pub enum RtService {
    /// GetVariable(NAME, GUID): prints attributes, data_size and data_hex.
    GetVariable {
        /// Variable name.
        name: String,
        /// Vendor GUID (8be4df61-93ca-11d2-aa0d-00e098032b8c, or `global`).
        guid: String,
        /// DataSize passed in (the caller's buffer size); default: large enough.
        #[arg(long)]
        size: Option<u64>,
    },
    /// SetVariable(NAME, GUID, --attrs, data). No data means DataSize 0 (delete).
    SetVariable {
        /// Variable name.
        name: String,
        /// Vendor GUID.
        guid: String,
        /// EFI_VARIABLE_* attributes in hex (e.g. 7 = NV|BS|RT).
        #[arg(long, value_parser = parse_hex_u32)]
        attrs: u32,
        /// The data, as hex digits.
        #[arg(long, conflicts_with = "data_file")]
        data_hex: Option<String>,
        /// The data, from a file.
        #[arg(long)]
        data_file: Option<PathBuf>,
    },
    /// GetNextVariableName: from the start (no NAME GUID) or after NAME GUID.
    GetNextVariableName {
        /// The previous name (omit to start).
        name: Option<String>,
        /// The previous name's GUID.
        guid: Option<String>,
        /// VariableNameSize passed in, in bytes; default: large enough.
        #[arg(long)]
        size: Option<u64>,
    },
    /// Enumerates every variable visible at runtime (GetNextVariableName and
    /// GetVariable), with attributes and data.
    ListVariables,
    /// QueryVariableInfo(--attrs): storage sizes.
    QueryVariableInfo {
        /// Attributes in hex (e.g. 7).
        #[arg(long, value_parser = parse_hex_u32)]
        attrs: u32,
    },
    /// GetTime: the firmware's time and clock capabilities.
    GetTime,
    /// SetTime(RFC3339). Fields are passed as written, unchecked, so the
    /// firmware's validation decides.
    SetTime {
        /// e.g. 2024-02-29T12:34:56Z, or with an offset (+01:00 = TimeZone 60).
        time: String,
        /// TimeZone in minutes (-1440..1440, or 2047 for unspecified).
        #[arg(long, allow_hyphen_values = true)]
        timezone: Option<i16>,
        /// Daylight flags (1 = adjust, 2 = in daylight time).
        #[arg(long)]
        daylight: Option<u8>,
    },
    /// GetWakeupTime: enabled, pending, time.
    GetWakeupTime,
    /// SetWakeupTime: arm at RFC3339, or --disable.
    SetWakeupTime {
        /// Wake-up time (RFC 3339).
        #[arg(required_unless_present = "disable")]
        time: Option<String>,
        /// Disable the wake-up timer.
        #[arg(long, conflicts_with = "time")]
        disable: bool,
    },
    /// GetNextHighMonotonicCount: the next high 32 bits of the counter.
    GetNextHighMonotonicCount,
    /// QueryCapsuleCapabilities for one capsule header.
    QueryCapsuleCapabilities {
        /// CapsuleGuid of the header.
        #[arg(long, default_value = "00000000-0000-0000-0000-000000000000")]
        capsule_guid: String,
        /// Flags of the header, hex.
        #[arg(long, value_parser = parse_hex_u32, default_value = "0")]
        flags: u32,
        /// CapsuleImageSize of the header.
        #[arg(long, default_value_t = 28)]
        image_size: u32,
    },
    /// ResetSystem: reported by the firmware (nothing is reset: there is no guest).
    ResetSystem {
        /// cold, warm or shutdown.
        #[arg(value_parser = ["cold", "warm", "shutdown"])]
        kind: String,
    },
}

fn parse_hex_u32(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")).unwrap_or(s);
    u32::from_str_radix(digits, 16).map_err(|_| format!("`{s}` is not a hex number (e.g. 7 or 0x27)"))
}

/// Runs `efivmm rt`, returning the JSON object to print.
pub fn run(args: RtArgs) -> Result<Value, ExitError> {
    let mut fw = Firmware::start_on_with(&args.firmware, &args.vars, &args.ovmf.options())?;
    if let Some(ms) = args.deadline_ms {
        fw.set_deadline(Duration::from_millis(ms));
    }
    // This thread now serves the call: confined as a vCPU thread is.
    let rebuild_sandbox = matches!(args.firmware, FirmwareSource::Ovmf(_));
    crate::confine::install_if_enabled(crate::confine::Role::Vcpu { rebuild_sandbox })?;
    serve(&mut fw, args.service)
}

fn status(out: &mut Map<String, Value>, status: u64) {
    out.insert("status".into(), json!(efi::status_name(status)));
    out.insert("status_code".into(), json!(status));
}

fn with_status(status_code: u64) -> Map<String, Value> {
    let mut out = Map::new();
    status(&mut out, status_code);
    out
}

fn name_arg(name: &str) -> Result<Vec<u8>, ExitError> {
    let bytes = efi::name_to_utf16(name);
    if bytes.len() as u64 > NAME_SIZE {
        return Err(ExitError::Usage(format!("the name is {} bytes in UTF-16; at most {NAME_SIZE}", bytes.len())));
    }
    Ok(bytes)
}

fn guid_arg(guid: &str) -> Result<Guid, ExitError> {
    efi::parse_guid(guid).map_err(ExitError::Usage)
}

fn time_arg(text: &str) -> Result<EfiTime, ExitError> {
    EfiTime::parse_rfc3339(text).map_err(ExitError::Usage)
}

fn time_json(t: &EfiTime) -> Value {
    json!({
        "rfc3339": t.to_rfc3339(),
        "year": t.year, "month": t.month, "day": t.day,
        "hour": t.hour, "minute": t.minute, "second": t.second,
        "nanosecond": t.nanosecond, "timezone": t.time_zone, "daylight": t.daylight,
    })
}

fn get_variable_json(r: &calls::GetVariable) -> Map<String, Value> {
    let mut out = with_status(r.status);
    if r.status == EFI_SUCCESS || r.status == EFI_BUFFER_TOO_SMALL {
        out.insert("attributes".into(), json!(r.attributes));
        out.insert("data_size".into(), json!(r.data_size));
    }
    if r.status == EFI_SUCCESS {
        out.insert("data_hex".into(), json!(efi::encode_hex(&r.data)));
    }
    out
}

fn serve(fw: &mut Firmware, service: RtService) -> Result<Value, ExitError> {
    let out = match service {
        RtService::GetVariable { name, guid, size } => {
            let r = fw.get_variable(&name_arg(&name)?, &guid_arg(&guid)?, size.unwrap_or(DATA_SIZE));
            get_variable_json(&r)
        }
        RtService::SetVariable { name, guid, attrs, data_hex, data_file } => {
            let data = match (data_hex, data_file) {
                (Some(hex), _) => efi::decode_hex(&hex).map_err(ExitError::Usage)?,
                // Checked before it is read: the vars file is locked meanwhile.
                (None, Some(path)) => crate::varsfile::read_input(&path, DATA_SIZE)
                    .map_err(|e| ExitError::Usage(format!("cannot read --data-file {}: {e}", path.display())))?,
                (None, None) => Vec::new(),
            };
            if data.len() as u64 > DATA_SIZE {
                return Err(ExitError::Usage(format!("the data is {} bytes; at most {DATA_SIZE}", data.len())));
            }
            with_status(fw.set_variable(&name_arg(&name)?, &guid_arg(&guid)?, attrs, &data))
        }
        RtService::GetNextVariableName { name, guid, size } => {
            let (name, guid) = match (name, guid) {
                (Some(n), Some(g)) => (name_arg(&n)?, guid_arg(&g)?),
                (None, None) => (vec![0, 0], Guid([0; 16])),
                _ => return Err(ExitError::Usage("give both NAME and GUID, or neither to start".into())),
            };
            let r = fw.get_next_variable_name(&name, &guid, size.unwrap_or(NAME_SIZE));
            let mut out = with_status(r.status);
            if r.status == EFI_SUCCESS || r.status == EFI_BUFFER_TOO_SMALL {
                out.insert("name_size".into(), json!(r.name_size));
            }
            if r.status == EFI_SUCCESS {
                out.insert("name".into(), json!(efi::name_from_utf16(&r.name)));
                out.insert("guid".into(), json!(r.guid.to_string()));
            }
            out
        }
        RtService::ListVariables => list_variables(fw),
        RtService::QueryVariableInfo { attrs } => {
            let r = fw.query_variable_info(attrs);
            let mut out = with_status(r.status);
            if r.status == EFI_SUCCESS {
                out.insert("maximum_variable_storage_size".into(), json!(r.maximum_storage));
                out.insert("remaining_variable_storage_size".into(), json!(r.remaining_storage));
                out.insert("maximum_variable_size".into(), json!(r.maximum_variable_size));
            }
            out
        }
        RtService::GetTime => {
            let r = fw.get_time();
            let mut out = with_status(r.status);
            if r.status == EFI_SUCCESS {
                out.insert("time".into(), time_json(&r.time));
                let (resolution, accuracy, sets_to_zero) = r.capabilities;
                out.insert(
                    "capabilities".into(),
                    json!({"resolution": resolution, "accuracy": accuracy, "sets_to_zero": sets_to_zero}),
                );
            }
            out
        }
        RtService::SetTime { time, timezone, daylight } => {
            let mut t = time_arg(&time)?;
            t.time_zone = timezone.unwrap_or(t.time_zone);
            t.daylight = daylight.unwrap_or(t.daylight);
            with_status(fw.set_time(&t))
        }
        RtService::GetWakeupTime => {
            let r = fw.get_wakeup_time();
            let mut out = with_status(r.status);
            if r.status == EFI_SUCCESS {
                out.insert("enabled".into(), json!(r.enabled));
                out.insert("pending".into(), json!(r.pending));
                out.insert("time".into(), time_json(&r.time));
            }
            out
        }
        RtService::SetWakeupTime { time, disable } => {
            let t = time.as_deref().map(time_arg).transpose()?;
            with_status(fw.set_wakeup_time(!disable, t.as_ref()))
        }
        RtService::GetNextHighMonotonicCount => {
            let (code, high) = fw.get_next_high_monotonic_count();
            let mut out = with_status(code);
            if code == EFI_SUCCESS {
                out.insert("high_count".into(), json!(high));
            }
            out
        }
        RtService::QueryCapsuleCapabilities { capsule_guid, flags, image_size } => {
            let header = calls::capsule_header(&guid_arg(&capsule_guid)?, 28, flags, image_size);
            let (code, max_size, reset_type) = fw.query_capsule_capabilities(&header, 1);
            let mut out = with_status(code);
            if code == EFI_SUCCESS {
                out.insert("maximum_capsule_size".into(), json!(max_size));
                out.insert("reset_type".into(), json!(reset_type));
            }
            out
        }
        RtService::ResetSystem { kind } => {
            let reset_type = match kind.as_str() {
                "cold" => 0,
                "warm" => 1,
                _ => 2,
            };
            let (code, reset) = fw.reset_system(reset_type, EFI_SUCCESS, &[]);
            let mut out = with_status(code);
            if let Some(r) = reset {
                let name = ["cold", "warm", "shutdown", "platform-specific"].get(r.reset_type as usize);
                out.insert(
                    "reset".into(),
                    json!({"type": name.copied().unwrap_or("unknown"), "status_code": r.status, "data_size": r.data_size}),
                );
            }
            out
        }
    };
    let mut out = out;
    if let Some(why) = fw.last_failure() {
        out.insert("sandbox_failure".into(), json!(why));
    }
    Ok(Value::Object(out))
}

/// Walks GetNextVariableName from the start and reads each variable.
fn list_variables(fw: &mut Firmware) -> Map<String, Value> {
    let mut variables = Vec::new();
    let mut name = vec![0u8, 0];
    let mut guid = Guid([0; 16]);
    loop {
        let next = fw.get_next_variable_name(&name, &guid, NAME_SIZE);
        if next.status == EFI_NOT_FOUND {
            break;
        }
        if next.status != EFI_SUCCESS || variables.len() > 100_000 {
            // Report the step that failed (or a firmware that never ends).
            let mut out = with_status(next.status);
            out.insert("variables".into(), Value::Array(variables));
            return out;
        }
        (name, guid) = (next.name, next.guid);
        let mut entry = Map::new();
        entry.insert("name".into(), json!(efi::name_from_utf16(&name)));
        entry.insert("guid".into(), json!(guid.to_string()));
        entry.extend(get_variable_json(&fw.get_variable(&name, &guid, DATA_SIZE)));
        variables.push(Value::Object(entry));
    }
    let mut out = with_status(EFI_SUCCESS);
    out.insert("variables".into(), Value::Array(variables));
    out
}
