//! The control API's wire format: one JSON object per line each way.
//!
//! Requests: `{"command":"pause"}`, `{"command":"resume"}`, `{"command":"resize","cpus":N}`,
//! `{"command":"info"}`, `{"command":"shutdown"}`. Fields other than the ones a command
//! takes are rejected, as are duplicate keys, so a typo never silently does something else.
//!
//! Responses: `{"ok":true, ...command-specific fields}` or
//! `{"ok":false,"error":{"kind":"...","message":"...", ...details}}`.
//!
//! [`parse_request`] is a pure function of the bytes of one line (without its newline), so
//! the fuzz crate calls it directly.

use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use std::fmt;
use std::time::Duration;
use vcpu_sync::PauseTimeout;

/// Longest request line accepted, in bytes (without the newline).
pub const MAX_REQUEST_LEN: usize = 64 * 1024;

/// Longest piece of client-supplied text echoed back in an error message.
const ECHO_LIMIT: usize = 64;

/// A well-formed control request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "command", rename_all = "lowercase")]
pub enum Request {
    /// Pause every vCPU (waits until each has acknowledged, or fails naming the missing).
    Pause,
    /// End the pause in force.
    Resume,
    /// Change the number of present vCPUs.
    Resize {
        /// Target number of vCPUs, at least 1.
        cpus: usize,
    },
    /// Report vCPU states and counters.
    Info,
    /// Stop the VM and exit the VMM.
    Shutdown,
}

impl Request {
    /// The command's name on the wire.
    pub fn command(&self) -> &'static str {
        match self {
            Request::Pause => "pause",
            Request::Resume => "resume",
            Request::Resize { .. } => "resize",
            Request::Info => "info",
            Request::Shutdown => "shutdown",
        }
    }

    /// The request as one JSON line (without the newline); [`parse_request`] reads it back.
    pub fn to_json(&self) -> String {
        match serde_json::to_string(self) {
            Ok(s) => s,
            // Serializing a tagged enum of plain fields cannot fail; keep a valid request.
            Err(_) => format!("{{\"command\":\"{}\"}}", self.command()),
        }
    }
}

/// Everything a control request can fail with, from a byte that is not JSON to a pause
/// that timed out. Each variant has a stable [`ApiError::kind`] for clients to match on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The line exceeds [`MAX_REQUEST_LEN`].
    #[error("request line is longer than the limit of {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// Not UTF-8, not JSON, or trailing garbage.
    #[error("malformed JSON: {0}")]
    Malformed(String),
    /// Valid JSON that is not an object.
    #[error("a request must be a JSON object, got {0}")]
    NotAnObject(&'static str),
    /// The same key twice in the object.
    #[error("field '{0}' appears more than once")]
    DuplicateField(String),
    /// A field the command needs is absent.
    #[error("missing field '{field}'{}", for_command(*.command))]
    MissingField {
        /// The command, once known.
        command: Option<&'static str>,
        /// The field.
        field: &'static str,
    },
    /// A field the command does not take.
    #[error("unknown field '{field}' for command '{command}'")]
    UnknownField {
        /// The command.
        command: &'static str,
        /// The field as sent (truncated).
        field: String,
    },
    /// A field of the wrong JSON type.
    #[error("field '{field}' must be {expected}, got {found}")]
    WrongType {
        /// The field.
        field: &'static str,
        /// What it must be.
        expected: &'static str,
        /// What it was.
        found: String,
    },
    /// A command name we do not know.
    #[error("unknown command '{0}' (expected pause, resume, resize, info or shutdown)")]
    UnknownCommand(String),
    /// `resize` to zero vCPUs.
    #[error("cpus must be at least 1")]
    ZeroCpus,
    /// `resize` beyond `max_vcpus`.
    #[error("cannot resize to {requested} vCPUs: the maximum (--cpus max) is {max}")]
    AboveMax {
        /// The count asked for.
        requested: usize,
        /// `max_vcpus`.
        max: usize,
    },
    /// `resize` up while slots are still on their way out (the guest has begun ejecting them).
    #[error("cannot grow to {requested} vCPUs now: only {free} slot(s) are free; vCPU(s) {busy:?} are still being removed by the guest")]
    SlotsBusy {
        /// The count asked for.
        requested: usize,
        /// Slots free for hot-add.
        free: usize,
        /// Slots being removed.
        busy: Vec<usize>,
    },
    /// `resume` while not paused.
    #[error("the VM is not paused")]
    NotPaused,
    /// A pause whose deadline passed; names every vCPU that did not acknowledge. The
    /// pause was withdrawn (`Vm::pause`'s contract): the VM is running.
    #[error("{0}; the pause was withdrawn: the vCPUs that had acknowledged run again and the VM is running")]
    PauseTimeout(PauseTimeout),
    /// A vCPU failed (the message names it); the VM is going down.
    #[error("the VM failed: {0}")]
    VmFailed(String),
    /// A concurrent `resume` ended the pause before every vCPU acknowledged.
    #[error("the pause was cancelled by a concurrent resume")]
    PauseInterrupted,
    /// The core refused a vCPU operation (start, removal request).
    #[error("vCPU operation failed: {0}")]
    Vcpu(String),
    /// The VM is stopping; nothing more can be changed.
    #[error("the VM is shutting down")]
    ShuttingDown,
    /// The client did not finish a request line in time.
    #[error("no complete request line within {0:?}")]
    Timeout(Duration),
    /// Too many clients are connected.
    #[error("too many concurrent connections (limit {0}); try again later")]
    Busy(usize),
}

fn for_command(command: Option<&'static str>) -> String {
    match command {
        Some(c) => format!(" for command '{c}'"),
        None => String::new(),
    }
}

impl ApiError {
    /// A stable machine-readable name for the error.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::TooLarge { .. } => "too_large",
            ApiError::Malformed(_) => "malformed_json",
            ApiError::NotAnObject(_) => "not_an_object",
            ApiError::DuplicateField(_) => "duplicate_field",
            ApiError::MissingField { .. } => "missing_field",
            ApiError::UnknownField { .. } => "unknown_field",
            ApiError::WrongType { .. } => "wrong_type",
            ApiError::UnknownCommand(_) => "unknown_command",
            ApiError::ZeroCpus => "invalid_value",
            ApiError::AboveMax { .. } => "above_max",
            ApiError::SlotsBusy { .. } => "slots_busy",
            ApiError::NotPaused => "not_paused",
            ApiError::PauseTimeout(_) => "pause_timeout",
            ApiError::PauseInterrupted => "pause_interrupted",
            ApiError::VmFailed(_) => "vm_failed",
            ApiError::Vcpu(_) => "vcpu_error",
            ApiError::ShuttingDown => "shutting_down",
            ApiError::Timeout(_) => "timeout",
            ApiError::Busy(_) => "busy",
        }
    }

    /// The `error` object of a response: kind, message and structured details.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("kind".into(), self.kind().into());
        m.insert("message".into(), self.to_string().into());
        match self {
            ApiError::AboveMax { requested, max } => {
                m.insert("requested".into(), (*requested).into());
                m.insert("max".into(), (*max).into());
            }
            ApiError::SlotsBusy {
                requested,
                free,
                busy,
            } => {
                m.insert("requested".into(), (*requested).into());
                m.insert("free".into(), (*free).into());
                m.insert("busy".into(), busy.clone().into());
            }
            ApiError::PauseTimeout(t) => {
                let missing = t
                    .missing
                    .iter()
                    .map(|r| {
                        serde_json::json!({
                            "index": r.index,
                            "life": format!("{:?}", r.life).to_lowercase(),
                            "location": r.location.to_string(),
                            "kicks": r.kicks,
                        })
                    })
                    .collect::<Vec<_>>();
                m.insert("missing".into(), missing.into());
            }
            _ => {}
        }
        Value::Object(m)
    }
}

/// A response line.
#[derive(Clone, Debug, PartialEq)]
pub enum Response {
    /// Success with command-specific fields (merged next to `"ok":true`).
    Ok(Map<String, Value>),
    /// Failure.
    Err(ApiError),
}

impl Response {
    /// Success without payload.
    pub fn ok() -> Response {
        Response::Ok(Map::new())
    }

    /// Success whose payload is `value`'s fields (a non-object goes under `"result"`).
    pub fn ok_with<T: Serialize>(value: &T) -> Response {
        match serde_json::to_value(value) {
            Ok(Value::Object(m)) => Response::Ok(m),
            Ok(other) => {
                let mut m = Map::new();
                m.insert("result".into(), other);
                Response::Ok(m)
            }
            Err(e) => Response::Err(ApiError::Vcpu(format!("cannot encode the result: {e}"))),
        }
    }

    /// The response as a JSON value.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        match self {
            Response::Ok(fields) => {
                m.insert("ok".into(), true.into());
                for (k, v) in fields {
                    if k != "ok" {
                        m.insert(k.clone(), v.clone());
                    }
                }
            }
            Response::Err(e) => {
                m.insert("ok".into(), false.into());
                m.insert("error".into(), e.to_json());
            }
        }
        Value::Object(m)
    }

    /// The response as one line of JSON (without the newline; JSON escapes any newline
    /// inside strings, so the line never contains one).
    pub fn to_line(&self) -> String {
        self.to_json().to_string()
    }
}

impl From<Result<Response, ApiError>> for Response {
    fn from(r: Result<Response, ApiError>) -> Self {
        r.unwrap_or_else(Response::Err)
    }
}

/// Top level of a request as parsed: an object's fields in order (duplicates kept, so we
/// can refuse them), or the kind of non-object value found.
enum TopLevel {
    Object(Vec<(String, Value)>),
    Other(&'static str),
}

impl<'de> Deserialize<'de> for TopLevel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TopLevelVisitor)
    }
}

struct TopLevelVisitor;

impl<'de> Visitor<'de> for TopLevelVisitor {
    type Value = TopLevel;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TopLevel, A::Error> {
        let mut fields = Vec::new();
        while let Some((k, v)) = map.next_entry::<String, Value>()? {
            fields.push((k, v));
        }
        Ok(TopLevel::Object(fields))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TopLevel, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(TopLevel::Other("an array"))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<TopLevel, E> {
        Ok(TopLevel::Other("a boolean"))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<TopLevel, E> {
        Ok(TopLevel::Other("a number"))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<TopLevel, E> {
        Ok(TopLevel::Other("a number"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<TopLevel, E> {
        Ok(TopLevel::Other("a number"))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<TopLevel, E> {
        Ok(TopLevel::Other("a string"))
    }

    fn visit_unit<E: de::Error>(self) -> Result<TopLevel, E> {
        Ok(TopLevel::Other("null"))
    }
}

/// A short description of a JSON value's type, for error messages.
fn type_name(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(_) => "a boolean".into(),
        Value::Number(n) if n.is_u64() => format!("the number {n}"),
        Value::Number(n) if n.is_i64() => format!("the negative number {n}"),
        Value::Number(n) => format!("the non-integer number {}", echo(&n.to_string())),
        Value::String(_) => "a string".into(),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// Client text for an error message, truncated on a character boundary.
fn echo(s: &str) -> String {
    match s.char_indices().nth(ECHO_LIMIT) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// The fields a command takes besides `command`.
fn allowed_fields(command: &str) -> &'static [&'static str] {
    match command {
        "resize" => &["cpus"],
        _ => &[],
    }
}

/// Parses one request line (without its newline; surrounding whitespace is allowed).
/// Never panics; every way of being wrong has its own [`ApiError`] variant.
pub fn parse_request(line: &[u8]) -> Result<Request, ApiError> {
    if line.len() > MAX_REQUEST_LEN {
        return Err(ApiError::TooLarge {
            limit: MAX_REQUEST_LEN,
        });
    }
    let text =
        std::str::from_utf8(line).map_err(|e| ApiError::Malformed(format!("not UTF-8 ({e})")))?;
    if text.trim().is_empty() {
        return Err(ApiError::Malformed("empty request".into()));
    }
    let fields = match serde_json::from_str::<TopLevel>(text) {
        Ok(TopLevel::Object(fields)) => fields,
        Ok(TopLevel::Other(kind)) => return Err(ApiError::NotAnObject(kind)),
        Err(e) => return Err(ApiError::Malformed(e.to_string())),
    };
    for (i, (k, _)) in fields.iter().enumerate() {
        if fields[..i].iter().any(|(prev, _)| prev == k) {
            return Err(ApiError::DuplicateField(echo(k)));
        }
    }
    let get = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v);

    let command: &'static str = match get("command") {
        None => {
            return Err(ApiError::MissingField {
                command: None,
                field: "command",
            })
        }
        Some(Value::String(s)) => match s.as_str() {
            "pause" => "pause",
            "resume" => "resume",
            "resize" => "resize",
            "info" => "info",
            "shutdown" => "shutdown",
            other => return Err(ApiError::UnknownCommand(echo(other))),
        },
        Some(v) => {
            return Err(ApiError::WrongType {
                field: "command",
                expected: "a string",
                found: type_name(v),
            })
        }
    };
    let allowed = allowed_fields(command);
    if let Some((k, _)) = fields
        .iter()
        .find(|(k, _)| k != "command" && !allowed.contains(&k.as_str()))
    {
        return Err(ApiError::UnknownField {
            command,
            field: echo(k),
        });
    }
    Ok(match command {
        "pause" => Request::Pause,
        "resume" => Request::Resume,
        "info" => Request::Info,
        "shutdown" => Request::Shutdown,
        _ => {
            let v = get("cpus").ok_or(ApiError::MissingField {
                command: Some("resize"),
                field: "cpus",
            })?;
            let wrong = || ApiError::WrongType {
                field: "cpus",
                expected: "a non-negative integer",
                found: type_name(v),
            };
            let n = v.as_u64().ok_or_else(wrong)?;
            // Anything past usize is past any max_vcpus too.
            let cpus = usize::try_from(n).unwrap_or(usize::MAX);
            if cpus == 0 {
                return Err(ApiError::ZeroCpus);
            }
            Request::Resize { cpus }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Request, ApiError> {
        parse_request(s.as_bytes())
    }

    #[test]
    fn valid_requests() {
        assert_eq!(parse(r#"{"command":"pause"}"#), Ok(Request::Pause));
        assert_eq!(parse(r#" {"command":"resume"} "#), Ok(Request::Resume));
        assert_eq!(parse("{\"command\":\"info\"}\r"), Ok(Request::Info));
        assert_eq!(parse(r#"{"command":"shutdown"}"#), Ok(Request::Shutdown));
        assert_eq!(
            parse(r#"{"cpus":4,"command":"resize"}"#),
            Ok(Request::Resize { cpus: 4 })
        );
        assert_eq!(
            parse(r#"{"command":"resize","cpus":18446744073709551615}"#),
            Ok(Request::Resize { cpus: usize::MAX })
        );
    }

    #[test]
    fn round_trip() {
        for r in [
            Request::Pause,
            Request::Resume,
            Request::Info,
            Request::Shutdown,
            Request::Resize { cpus: 1 },
            Request::Resize { cpus: 254 },
        ] {
            assert_eq!(parse(&r.to_json()), Ok(r.clone()), "{}", r.to_json());
        }
        assert_eq!(
            Request::Resize { cpus: 3 }.to_json(),
            r#"{"command":"resize","cpus":3}"#
        );
    }

    #[test]
    fn too_large() {
        let mut big = br#"{"command":"info","pad":""#.to_vec();
        big.resize(MAX_REQUEST_LEN + 1, b'x');
        assert_eq!(
            parse_request(&big),
            Err(ApiError::TooLarge {
                limit: MAX_REQUEST_LEN
            })
        );
        assert_eq!(parse_request(&big).unwrap_err().kind(), "too_large");
    }

    #[test]
    fn malformed() {
        for bad in [
            "",
            "   ",
            "{",
            "{\"command\":\"pause\"",
            "{\"command\":\"pause\"} trailing",
            "{command:pause}",
            "{\"command\":\"pause\",}",
            "\u{feff}{\"command\":\"pause\"}",
            &"[".repeat(1000),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(matches!(e, ApiError::Malformed(_)), "{bad:?}: {e:?}");
            assert_eq!(e.kind(), "malformed_json");
        }
        let e = parse_request(b"{\"command\":\"pa\xffuse\"}").unwrap_err();
        assert!(
            matches!(e, ApiError::Malformed(ref m) if m.contains("UTF-8")),
            "{e:?}"
        );
    }

    #[test]
    fn not_an_object() {
        for (bad, kind) in [
            ("[]", "an array"),
            ("[1,[2]]", "an array"),
            ("\"pause\"", "a string"),
            ("1", "a number"),
            ("-1", "a number"),
            ("1.5", "a number"),
            ("true", "a boolean"),
            ("null", "null"),
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e, ApiError::NotAnObject(kind), "{bad}");
            assert_eq!(e.kind(), "not_an_object");
        }
    }

    #[test]
    fn duplicate_field() {
        let e = parse(r#"{"command":"resize","cpus":1,"cpus":4}"#).unwrap_err();
        assert_eq!(e, ApiError::DuplicateField("cpus".into()));
        assert_eq!(e.kind(), "duplicate_field");
        let e = parse(r#"{"command":"info","command":"shutdown"}"#).unwrap_err();
        assert_eq!(e, ApiError::DuplicateField("command".into()));
    }

    #[test]
    fn missing_field() {
        let e = parse("{}").unwrap_err();
        assert_eq!(
            e,
            ApiError::MissingField {
                command: None,
                field: "command"
            }
        );
        assert_eq!(e.kind(), "missing_field");
        let e = parse(r#"{"cpus":2}"#).unwrap_err();
        assert!(matches!(
            e,
            ApiError::MissingField {
                field: "command",
                ..
            }
        ));
        let e = parse(r#"{"command":"resize"}"#).unwrap_err();
        assert_eq!(
            e,
            ApiError::MissingField {
                command: Some("resize"),
                field: "cpus"
            }
        );
        assert_eq!(e.to_string(), "missing field 'cpus' for command 'resize'");
    }

    #[test]
    fn unknown_field() {
        let e = parse(r#"{"command":"pause","cpus":2}"#).unwrap_err();
        assert_eq!(
            e,
            ApiError::UnknownField {
                command: "pause",
                field: "cpus".into()
            }
        );
        assert_eq!(e.kind(), "unknown_field");
        let e = parse(r#"{"command":"resize","cpus":2,"force":true}"#).unwrap_err();
        assert!(
            matches!(e, ApiError::UnknownField { command: "resize", ref field } if field == "force")
        );
        // Client text is echoed truncated.
        let long = "k".repeat(5000);
        let e = parse(&format!(r#"{{"command":"info","{long}":1}}"#)).unwrap_err();
        assert!(e.to_string().len() < 200, "{e}");
    }

    #[test]
    fn wrong_type() {
        for (bad, found) in [
            (r#"{"command":1}"#, "the number 1"),
            (r#"{"command":null}"#, "null"),
            (r#"{"command":["pause"]}"#, "an array"),
            (r#"{"command":{"x":1}}"#, "an object"),
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(
                e,
                ApiError::WrongType {
                    field: "command",
                    expected: "a string",
                    found: found.into()
                },
                "{bad}"
            );
            assert_eq!(e.kind(), "wrong_type");
        }
        for (bad, found) in [
            (r#"{"command":"resize","cpus":"4"}"#, "a string"),
            (
                r#"{"command":"resize","cpus":-1}"#,
                "the negative number -1",
            ),
            (
                r#"{"command":"resize","cpus":2.5}"#,
                "the non-integer number 2.5",
            ),
            (
                r#"{"command":"resize","cpus":4.0}"#,
                "the non-integer number 4.0",
            ),
            (r#"{"command":"resize","cpus":true}"#, "a boolean"),
            (r#"{"command":"resize","cpus":null}"#, "null"),
            (
                r#"{"command":"resize","cpus":99999999999999999999999}"#,
                "the non-integer number",
            ),
        ] {
            match parse(bad) {
                Err(ApiError::WrongType {
                    field: "cpus",
                    expected: "a non-negative integer",
                    found: f,
                }) => assert!(f.starts_with(found), "{bad}: {f}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        // A float out of f64's range never reaches the type check: serde_json rejects the
        // number itself, so it is malformed JSON, not a wrong type.
        let e = parse(r#"{"command":"resize","cpus":1e400}"#).unwrap_err();
        assert!(matches!(e, ApiError::Malformed(_)), "1e400: {e:?}");
        assert_eq!(e.kind(), "malformed_json");
    }

    #[test]
    fn unknown_command() {
        let e = parse(r#"{"command":"reboot"}"#).unwrap_err();
        assert_eq!(e, ApiError::UnknownCommand("reboot".into()));
        assert_eq!(e.kind(), "unknown_command");
        let e = parse(r#"{"command":"PAUSE"}"#).unwrap_err();
        assert_eq!(e.kind(), "unknown_command");
        let e = parse(r#"{"command":""}"#).unwrap_err();
        assert_eq!(e.kind(), "unknown_command");
    }

    #[test]
    fn zero_cpus() {
        let e = parse(r#"{"command":"resize","cpus":0}"#).unwrap_err();
        assert_eq!(e, ApiError::ZeroCpus);
        assert_eq!(e.kind(), "invalid_value");
    }

    #[test]
    fn pause_timeout_names_the_missing_vcpus() {
        use vcpu_sync::{Life, Location, SlotReport};
        let e = ApiError::PauseTimeout(PauseTimeout {
            missing: vec![SlotReport {
                index: 2,
                life: Life::Active,
                location: Location::InMmio,
                inserting: false,
                removing: false,
                remove_requested: false,
                paused: false,
                kicks: 7,
            }],
        });
        assert_eq!(e.kind(), "pause_timeout");
        let v = e.to_json();
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .contains("vCPU 2 (Active, in MMIO/PIO handler"),
            "{v}"
        );
        assert_eq!(
            v["missing"],
            serde_json::json!([{"index": 2, "life": "active", "location": "in MMIO/PIO handler", "kicks": 7}])
        );
        assert_eq!(ApiError::NotPaused.kind(), "not_paused");
        assert_eq!(ApiError::PauseInterrupted.kind(), "pause_interrupted");
    }

    #[test]
    fn responses_are_one_line() {
        let ok = Response::ok_with(&serde_json::json!({"added": [1, 2], "ok": "x"})).to_line();
        let v: Value = serde_json::from_str(&ok).unwrap();
        assert_eq!(v, serde_json::json!({"ok": true, "added": [1, 2]}));
        let err = Response::Err(ApiError::UnknownCommand("a\nb".into())).to_line();
        assert!(!err.contains('\n'));
        let v: Value = serde_json::from_str(&err).unwrap();
        assert_eq!(v["ok"], false);
        assert_eq!(v["error"]["kind"], "unknown_command");
        assert!(v["error"]["message"].as_str().unwrap().contains("a\nb"));
        let v = ApiError::AboveMax {
            requested: 5,
            max: 4,
        }
        .to_json();
        assert_eq!(v["max"], 4);
        assert_eq!(v["kind"], "above_max");
    }
}
