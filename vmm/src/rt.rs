//! `efivmm rt`: call one runtime service in a fresh sandbox, without a guest,
//! and print one JSON object.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use sandbox_abi::{Mailbox, Service, DATA_OUT_ADDR, DATA_SIZE, FLAGS_ARG, NAME_ADDR, NAME_SIZE};
use serde_json::{json, Map, Value};
use varstore::Layout;

use crate::efi::{self, EfiTime, Guid, EFI_BUFFER_TOO_SMALL, EFI_NOT_FOUND, EFI_SUCCESS};
use crate::firmware::{Firmware, FirmwareSource};
use crate::varsfile::VarsFile;
use crate::ExitError;

/// Options of `efivmm rt`.
#[derive(Args, Debug)]
pub struct RtArgs {
    /// Firmware that serves the call. Only `builtin` (efivmm's own runtime
    /// firmware) is available so far.
    #[arg(long, default_value = "builtin", value_name = "builtin")]
    pub firmware: FirmwareSource,
    /// The VM's vars file (OVMF format, 2 MiB or 4 MiB build's layout). A
    /// missing file is created as a fresh, empty store (128 KiB layout).
    #[arg(long, value_name = "FILE")]
    pub vars: PathBuf,
    /// Deadline of the call in the sandbox, in milliseconds; a firmware that
    /// runs longer is stopped and the call returns EFI_DEVICE_ERROR.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub deadline_ms: u64,
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

/// Pointer-presence flags for the first `n` pointer arguments.
fn all_ptrs(n: u32) -> u64 {
    (1u64 << n) - 1
}

/// A call request: the header plus the name and data inputs.
struct Request {
    mailbox: Mailbox,
    name: Vec<u8>,
    data: Vec<u8>,
}

impl Request {
    fn new(service: Service, pointers: u32) -> Self {
        let mut mailbox = Mailbox { service: service as u64, ..Default::default() };
        mailbox.args[FLAGS_ARG] = all_ptrs(pointers);
        Request { mailbox, name: Vec::new(), data: Vec::new() }
    }
}

/// Runs `efivmm rt`, returning the JSON object to print.
pub fn run(args: RtArgs) -> Result<Value, ExitError> {
    let vars = VarsFile::open_or_create(&args.vars, Layout::Ovmf2M).map_err(ExitError::Vars)?;
    let mut fw = Firmware::start(&args.firmware, vars).map_err(ExitError::Setup)?;
    fw.set_deadline(Duration::from_millis(args.deadline_ms));
    serve(&mut fw, args.service)
}

fn call(fw: &mut Firmware, req: &Request) -> (Mailbox, Map<String, Value>) {
    let done = fw.call(&req.mailbox, &req.name, &req.data);
    let mut out = Map::new();
    out.insert("status".into(), json!(efi::status_name(done.reply.status)));
    out.insert("status_code".into(), json!(done.reply.status));
    if let Some(why) = done.failure {
        out.insert("sandbox_failure".into(), json!(why));
    }
    (done.reply, out)
}

fn name_arg(name: &str) -> Result<Vec<u8>, ExitError> {
    let bytes = efi::name_to_utf16(name);
    if bytes.len() as u64 > NAME_SIZE {
        return Err(ExitError::Usage(format!("the name is {} bytes in UTF-16; at most {NAME_SIZE}", bytes.len())));
    }
    Ok(bytes)
}

fn guid_arg(guid: &str) -> Result<Guid, ExitError> {
    Guid::parse(guid).map_err(ExitError::Usage)
}

fn time_arg(text: &str) -> Result<EfiTime, ExitError> {
    EfiTime::parse_rfc3339(text).map_err(ExitError::Usage)
}

fn get_variable(fw: &mut Firmware, name: Vec<u8>, guid: Guid, size: u64) -> (Mailbox, Map<String, Value>) {
    let mut req = Request::new(Service::GetVariable, 5);
    req.mailbox.args[0] = name.len() as u64;
    [req.mailbox.args[1], req.mailbox.args[2]] = guid.halves();
    req.mailbox.args[3] = size;
    req.name = name;
    let (reply, mut out) = call(fw, &req);
    if reply.status == EFI_SUCCESS || reply.status == EFI_BUFFER_TOO_SMALL {
        out.insert("attributes".into(), json!(reply.outs[0]));
        out.insert("data_size".into(), json!(reply.outs[1]));
    }
    if reply.status == EFI_SUCCESS {
        let data = fw.sandbox().read_output(DATA_OUT_ADDR, reply.outs[1]);
        out.insert("data_hex".into(), json!(efi::encode_hex(&data)));
    }
    (reply, out)
}

fn get_next_name(fw: &mut Firmware, name: &[u8], guid: Guid, size: u64) -> (Mailbox, Map<String, Value>) {
    let mut req = Request::new(Service::GetNextVariableName, 3);
    // The caller's buffer holds the name and is `size` bytes long.
    let mut buffer = name.to_vec();
    buffer.resize(size.min(NAME_SIZE) as usize, 0);
    req.mailbox.args[0] = size;
    [req.mailbox.args[1], req.mailbox.args[2]] = guid.halves();
    req.mailbox.args[3] = buffer.len() as u64;
    req.name = buffer;
    let (reply, mut out) = call(fw, &req);
    if reply.status == EFI_SUCCESS || reply.status == EFI_BUFFER_TOO_SMALL {
        out.insert("name_size".into(), json!(reply.outs[1]));
    }
    if reply.status == EFI_SUCCESS {
        let name = fw.sandbox().read_output(NAME_ADDR, reply.outs[1]);
        out.insert("name".into(), json!(efi::name_from_utf16(&name)));
        out.insert("guid".into(), json!(Guid::from_halves(reply.outs[2], reply.outs[3]).to_string()));
    }
    (reply, out)
}

fn time_json(t: &EfiTime) -> Value {
    json!({
        "rfc3339": t.to_rfc3339(),
        "year": t.year, "month": t.month, "day": t.day,
        "hour": t.hour, "minute": t.minute, "second": t.second,
        "nanosecond": t.nanosecond, "timezone": t.timezone, "daylight": t.daylight,
    })
}

fn serve(fw: &mut Firmware, service: RtService) -> Result<Value, ExitError> {
    let out = match service {
        RtService::GetVariable { name, guid, size } => {
            get_variable(fw, name_arg(&name)?, guid_arg(&guid)?, size.unwrap_or(DATA_SIZE)).1
        }
        RtService::SetVariable { name, guid, attrs, data_hex, data_file } => {
            let data = match (data_hex, data_file) {
                (Some(hex), _) => efi::decode_hex(&hex).map_err(ExitError::Usage)?,
                (None, Some(path)) => std::fs::read(&path)
                    .map_err(|e| ExitError::Usage(format!("cannot read --data-file {}: {e}", path.display())))?,
                (None, None) => Vec::new(),
            };
            if data.len() as u64 > DATA_SIZE {
                return Err(ExitError::Usage(format!("the data is {} bytes; at most {DATA_SIZE}", data.len())));
            }
            let mut req = Request::new(Service::SetVariable, 3);
            let name = name_arg(&name)?;
            req.mailbox.args[0] = name.len() as u64;
            [req.mailbox.args[1], req.mailbox.args[2]] = guid_arg(&guid)?.halves();
            req.mailbox.args[3] = u64::from(attrs);
            req.mailbox.args[4] = data.len() as u64;
            req.name = name;
            req.data = data;
            call(fw, &req).1
        }
        RtService::GetNextVariableName { name, guid, size } => {
            let (name, guid) = match (name, guid) {
                (Some(n), Some(g)) => (name_arg(&n)?, guid_arg(&g)?),
                (None, None) => (vec![0, 0], Guid([0; 16])),
                _ => return Err(ExitError::Usage("give both NAME and GUID, or neither to start".into())),
            };
            get_next_name(fw, &name, guid, size.unwrap_or(NAME_SIZE)).1
        }
        RtService::ListVariables => list_variables(fw),
        RtService::QueryVariableInfo { attrs } => {
            let mut req = Request::new(Service::QueryVariableInfo, 3);
            req.mailbox.args[0] = u64::from(attrs);
            let (reply, mut out) = call(fw, &req);
            if reply.status == EFI_SUCCESS {
                out.insert("maximum_variable_storage_size".into(), json!(reply.outs[0]));
                out.insert("remaining_variable_storage_size".into(), json!(reply.outs[1]));
                out.insert("maximum_variable_size".into(), json!(reply.outs[2]));
            }
            out
        }
        RtService::GetTime => {
            let (reply, mut out) = call(fw, &Request::new(Service::GetTime, 2));
            if reply.status == EFI_SUCCESS {
                out.insert("time".into(), time_json(&EfiTime::from_halves(reply.outs[0], reply.outs[1])));
                out.insert(
                    "capabilities".into(),
                    json!({"resolution": reply.outs[2], "accuracy": reply.outs[3], "sets_to_zero": reply.outs[4] != 0}),
                );
            }
            out
        }
        RtService::SetTime { time, timezone, daylight } => {
            let mut t = time_arg(&time)?;
            t.timezone = timezone.unwrap_or(t.timezone);
            t.daylight = daylight.unwrap_or(t.daylight);
            let mut req = Request::new(Service::SetTime, 1);
            [req.mailbox.args[0], req.mailbox.args[1]] = t.halves();
            call(fw, &req).1
        }
        RtService::GetWakeupTime => {
            let (reply, mut out) = call(fw, &Request::new(Service::GetWakeupTime, 3));
            if reply.status == EFI_SUCCESS {
                out.insert("enabled".into(), json!(reply.outs[0] != 0));
                out.insert("pending".into(), json!(reply.outs[1] != 0));
                out.insert("time".into(), time_json(&EfiTime::from_halves(reply.outs[2], reply.outs[3])));
            }
            out
        }
        RtService::SetWakeupTime { time, disable } => {
            let mut req = Request::new(Service::SetWakeupTime, 0);
            req.mailbox.args[0] = u64::from(!disable);
            if let Some(text) = time {
                [req.mailbox.args[1], req.mailbox.args[2]] = time_arg(&text)?.halves();
                req.mailbox.args[FLAGS_ARG] = all_ptrs(1);
            }
            call(fw, &req).1
        }
        RtService::GetNextHighMonotonicCount => {
            let (reply, mut out) = call(fw, &Request::new(Service::GetNextHighMonotonicCount, 1));
            if reply.status == EFI_SUCCESS {
                out.insert("high_count".into(), json!(reply.outs[0]));
            }
            out
        }
        RtService::QueryCapsuleCapabilities { capsule_guid, flags, image_size } => {
            let mut req = Request::new(Service::QueryCapsuleCapabilities, 3);
            req.mailbox.args[0] = 1;
            let mut header = guid_arg(&capsule_guid)?.0.to_vec();
            header.extend_from_slice(&28u32.to_le_bytes());
            header.extend_from_slice(&flags.to_le_bytes());
            header.extend_from_slice(&image_size.to_le_bytes());
            req.data = header;
            let (reply, mut out) = call(fw, &req);
            if reply.status == EFI_SUCCESS {
                out.insert("maximum_capsule_size".into(), json!(reply.outs[0]));
                out.insert("reset_type".into(), json!(reply.outs[1]));
            }
            out
        }
        RtService::ResetSystem { kind } => {
            let reset_type: u64 = match kind.as_str() {
                "cold" => 0,
                "warm" => 1,
                _ => 2,
            };
            let mut req = Request::new(Service::ResetSystem, 0);
            req.mailbox.args[0] = reset_type;
            let (reply, mut out) = call(fw, &req);
            if reply.status == EFI_SUCCESS && reply.outs[0] == 1 {
                let name = ["cold", "warm", "shutdown", "platform-specific"].get(reply.outs[1] as usize);
                out.insert(
                    "reset".into(),
                    json!({"type": name.copied().unwrap_or("unknown"), "status_code": reply.outs[2], "data_size": reply.outs[3]}),
                );
            }
            out
        }
    };
    Ok(Value::Object(out))
}

/// Walks GetNextVariableName from the start and reads each variable.
fn list_variables(fw: &mut Firmware) -> Map<String, Value> {
    let mut variables = Vec::new();
    let mut name = vec![0u8, 0];
    let mut guid = Guid([0; 16]);
    loop {
        let (reply, out) = get_next_name(fw, &name, guid, NAME_SIZE);
        if reply.status == EFI_NOT_FOUND {
            break;
        }
        if reply.status != EFI_SUCCESS {
            // Report the failing step as the result.
            return out;
        }
        name = fw.sandbox().read_output(NAME_ADDR, reply.outs[1]);
        guid = Guid::from_halves(reply.outs[2], reply.outs[3]);
        let (_, var) = get_variable(fw, name.clone(), guid, DATA_SIZE);
        let mut entry = Map::new();
        entry.insert("name".into(), json!(efi::name_from_utf16(&name)));
        entry.insert("guid".into(), json!(guid.to_string()));
        for key in ["status", "attributes", "data_size", "data_hex"] {
            if let Some(v) = var.get(key) {
                entry.insert(key.into(), v.clone());
            }
        }
        variables.push(Value::Object(entry));
        if variables.len() > 100_000 {
            break; // a firmware that never says EFI_NOT_FOUND
        }
    }
    let mut out = Map::new();
    out.insert("status".into(), json!("EFI_SUCCESS"));
    out.insert("status_code".into(), json!(0));
    out.insert("variables".into(), Value::Array(variables));
    out
}
