//! The control API's requests and errors, independent of the transport.
//!
//! The API is Cloud Hypervisor's REST shape over HTTP/1.1 on a unix socket: endpoints under
//! [`API_PREFIX`] (`/api/v1/vm.pause`, `/api/v1/vm.info`, ...), `PUT` for actions, `GET` for
//! reports, JSON bodies. [`parse_request`] maps a method, a path and a body to a
//! [`Request`]; it is a pure function of its inputs (never panics), so the fuzz crate calls
//! it directly and the server (`super::server`) only adds the HTTP framing, done by `hyper`.
//!
//! Every failure is an [`ApiError`] with an HTTP status ([`ApiError::status`]), a stable
//! machine-readable [`ApiError::kind`] and a JSON body ([`ApiError::to_json`]):
//! `{"kind":"...","message":"...", ...details}`. The document `vmm/src/api/openapi.yaml`
//! describes every endpoint, method and status; a test checks it against [`ROUTES`] and a
//! live server.

use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};
use std::fmt;
use vcpu_sync::PauseTimeout;

/// Where every endpoint lives, as in Cloud Hypervisor.
pub const API_PREFIX: &str = "/api/v1";

/// Largest request body accepted, in bytes.
pub const MAX_BODY_LEN: usize = 64 * 1024;

/// Longest piece of client-supplied text echoed back in an error message.
const ECHO_LIMIT: usize = 64;

/// A well-formed control request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// `GET vmm.ping`: the VMM is up; its version and pid.
    Ping,
    /// `GET vm.info`: vCPU states and counters.
    Info,
    /// `PUT vm.pause`: pause every vCPU (waits until each has acknowledged, or fails naming
    /// the missing).
    Pause,
    /// `PUT vm.resume`: end the pause in force.
    Resume,
    /// `PUT vm.resize` with `{"desired_vcpus": N}`: change the number of present vCPUs.
    Resize {
        /// Target number of vCPUs, at least 1.
        desired_vcpus: usize,
    },
    /// `PUT vm.shutdown`: stop the VM. This VMM runs exactly one VM, so it exits too.
    VmShutdown,
    /// `PUT vmm.shutdown`: stop the VM and exit the VMM.
    VmmShutdown,
}

/// Every endpoint the server answers: (path under [`API_PREFIX`], method, what it is).
pub const ROUTES: &[(&str, &str, Endpoint)] = &[
    ("vmm.ping", "GET", Endpoint::Ping),
    ("vm.info", "GET", Endpoint::Info),
    ("vm.pause", "PUT", Endpoint::Pause),
    ("vm.resume", "PUT", Endpoint::Resume),
    ("vm.resize", "PUT", Endpoint::Resize),
    ("vm.shutdown", "PUT", Endpoint::VmShutdown),
    ("vmm.shutdown", "PUT", Endpoint::VmmShutdown),
];

/// An endpoint, before its body is parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `vmm.ping`
    Ping,
    /// `vm.info`
    Info,
    /// `vm.pause`
    Pause,
    /// `vm.resume`
    Resume,
    /// `vm.resize`
    Resize,
    /// `vm.shutdown`
    VmShutdown,
    /// `vmm.shutdown`
    VmmShutdown,
}

impl Request {
    /// The request's endpoint name (the path under [`API_PREFIX`]).
    pub fn endpoint(&self) -> &'static str {
        match self {
            Request::Ping => "vmm.ping",
            Request::Info => "vm.info",
            Request::Pause => "vm.pause",
            Request::Resume => "vm.resume",
            Request::Resize { .. } => "vm.resize",
            Request::VmShutdown => "vm.shutdown",
            Request::VmmShutdown => "vmm.shutdown",
        }
    }

    /// The full path (`/api/v1/vm.pause`).
    pub fn path(&self) -> String {
        format!("{API_PREFIX}/{}", self.endpoint())
    }

    /// `GET` or `PUT`.
    pub fn method(&self) -> &'static str {
        match self {
            Request::Ping | Request::Info => "GET",
            _ => "PUT",
        }
    }

    /// The JSON body a client sends, if the request has one.
    pub fn body(&self) -> Option<String> {
        match self {
            Request::Resize { desired_vcpus } => {
                Some(serde_json::json!({ "desired_vcpus": desired_vcpus }).to_string())
            }
            _ => None,
        }
    }

    /// Whether this request stops the VM (answered before it is carried out).
    pub fn is_shutdown(&self) -> bool {
        matches!(self, Request::VmShutdown | Request::VmmShutdown)
    }

    /// Whether carrying it out may wait: a pause waits for every vCPU's acknowledgment
    /// (bounded), a resize for threads to be reaped, a shutdown for the VM to stop. The
    /// rest (ping, info, resume) only read or flip state and wake threads, without waiting.
    pub fn may_block(&self) -> bool {
        !matches!(self, Request::Ping | Request::Info | Request::Resume)
    }
}

/// Everything a control request can fail with, from a path we do not serve to a pause that
/// timed out. Each variant has a stable [`ApiError::kind`] for clients to match on and an
/// HTTP status ([`ApiError::status`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// No endpoint at this path.
    #[error("no endpoint at '{0}' (endpoints are under {API_PREFIX}/, e.g. {API_PREFIX}/vm.info)")]
    NotFound(String),
    /// The endpoint exists but not with this method.
    #[error("{endpoint} does not take {method}; use {allowed}")]
    MethodNotAllowed {
        /// The endpoint.
        endpoint: &'static str,
        /// The method used (truncated).
        method: String,
        /// The one method it takes.
        allowed: &'static str,
    },
    /// The body exceeds [`MAX_BODY_LEN`].
    #[error("request body is longer than the limit of {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// Not UTF-8, not JSON, or trailing garbage.
    #[error("malformed JSON body: {0}")]
    Malformed(String),
    /// Valid JSON that is not an object.
    #[error("the body must be a JSON object, got {0}")]
    NotAnObject(&'static str),
    /// The same key twice in the object.
    #[error("field '{0}' appears more than once")]
    DuplicateField(String),
    /// A field the endpoint needs is absent.
    #[error("missing field '{field}' for {endpoint}")]
    MissingField {
        /// The endpoint.
        endpoint: &'static str,
        /// The field.
        field: &'static str,
    },
    /// A field the endpoint does not take.
    #[error("unknown field '{field}' for {endpoint}")]
    UnknownField {
        /// The endpoint.
        endpoint: &'static str,
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
    /// `vm.resize` to zero vCPUs.
    #[error("desired_vcpus must be at least 1")]
    ZeroCpus,
    /// `vm.resize` beyond `max_vcpus`.
    #[error("cannot resize to {requested} vCPUs: the maximum (--cpus max) is {max}")]
    AboveMax {
        /// The count asked for.
        requested: usize,
        /// `max_vcpus`.
        max: usize,
    },
    /// `vm.resize` up while slots are still on their way out (the guest has begun ejecting
    /// them).
    #[error("cannot grow to {requested} vCPUs now: only {free} slot(s) are free; vCPU(s) {busy:?} are still being removed by the guest")]
    SlotsBusy {
        /// The count asked for.
        requested: usize,
        /// Slots free for hot-add.
        free: usize,
        /// Slots being removed.
        busy: Vec<usize>,
    },
    /// `vm.resume` while not paused.
    #[error("the VM is not paused")]
    NotPaused,
    /// A pause whose deadline passed; names every vCPU that did not acknowledge. The
    /// pause was withdrawn (`Vm::pause`'s contract): the VM is running.
    #[error("{0}; the pause was withdrawn: the vCPUs that had acknowledged run again and the VM is running")]
    PauseTimeout(PauseTimeout),
    /// A vCPU failed (the message names it); the VM is going down.
    #[error("the VM failed: {0}")]
    VmFailed(String),
    /// A concurrent `vm.resume` ended the pause before every vCPU acknowledged.
    #[error("the pause was cancelled by a concurrent resume")]
    PauseInterrupted,
    /// The core refused a vCPU operation (start, removal request).
    #[error("vCPU operation failed: {0}")]
    Vcpu(String),
    /// The VM is stopping; nothing more can be changed.
    #[error("the VM is shutting down")]
    ShuttingDown,
    /// The body did not arrive in time.
    #[error("the request body did not arrive within {0:?}")]
    BodyTimeout(std::time::Duration),
    /// Every connection slot is taken by a request in progress.
    #[error("too many requests in progress (limit {0}); try again later")]
    Busy(usize),
}

impl ApiError {
    /// A stable machine-readable name for the error.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::TooLarge { .. } => "too_large",
            ApiError::Malformed(_) => "malformed_json",
            ApiError::NotAnObject(_) => "not_an_object",
            ApiError::DuplicateField(_) => "duplicate_field",
            ApiError::MissingField { .. } => "missing_field",
            ApiError::UnknownField { .. } => "unknown_field",
            ApiError::WrongType { .. } => "wrong_type",
            ApiError::ZeroCpus => "zero",
            ApiError::AboveMax { .. } => "above_max",
            ApiError::SlotsBusy { .. } => "slots_busy",
            ApiError::NotPaused => "not_paused",
            ApiError::PauseTimeout(_) => "pause_timeout",
            ApiError::PauseInterrupted => "pause_interrupted",
            ApiError::VmFailed(_) => "vm_failed",
            ApiError::Vcpu(_) => "vcpu_error",
            ApiError::ShuttingDown => "shutting_down",
            ApiError::BodyTimeout(_) => "timeout",
            ApiError::Busy(_) => "busy",
        }
    }

    /// The HTTP status the error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            ApiError::NotFound(_) => 404,
            ApiError::MethodNotAllowed { .. } => 405,
            ApiError::TooLarge { .. } => 413,
            ApiError::BodyTimeout(_) => 408,
            ApiError::Malformed(_)
            | ApiError::NotAnObject(_)
            | ApiError::DuplicateField(_)
            | ApiError::MissingField { .. }
            | ApiError::UnknownField { .. }
            | ApiError::WrongType { .. }
            | ApiError::ZeroCpus
            | ApiError::AboveMax { .. } => 400,
            ApiError::NotPaused | ApiError::PauseInterrupted => 409,
            // Cloud Hypervisor answers a resize refused for a pending CPU removal with 429.
            ApiError::SlotsBusy { .. } => 429,
            ApiError::PauseTimeout(_) | ApiError::VmFailed(_) | ApiError::Vcpu(_) => 500,
            ApiError::ShuttingDown | ApiError::Busy(_) => 503,
        }
    }

    /// The error body: kind, message and structured details.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("kind".into(), self.kind().into());
        m.insert("message".into(), self.to_string().into());
        match self {
            ApiError::MethodNotAllowed { allowed, .. } => {
                m.insert("allowed".into(), (*allowed).into());
            }
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

/// Finds the endpoint of `method` + `path` (a query string, if any, already split off).
pub fn route(method: &str, path: &str) -> Result<Endpoint, ApiError> {
    let not_found = || ApiError::NotFound(echo(path));
    let name = path
        .strip_prefix(API_PREFIX)
        .and_then(|p| p.strip_prefix('/'))
        .ok_or_else(not_found)?;
    let (endpoint, allowed, e) = ROUTES
        .iter()
        .find(|(p, _, _)| *p == name)
        .ok_or_else(not_found)?;
    if *allowed != method {
        return Err(ApiError::MethodNotAllowed {
            endpoint,
            method: echo(method),
            allowed,
        });
    }
    Ok(*e)
}

/// Parses one request: its method, its path (without a query string) and its body. Never
/// panics; every way of being wrong has its own [`ApiError`] variant.
pub fn parse_request(method: &str, path: &str, body: &[u8]) -> Result<Request, ApiError> {
    let endpoint = route(method, path)?;
    if body.len() > MAX_BODY_LEN {
        return Err(ApiError::TooLarge {
            limit: MAX_BODY_LEN,
        });
    }
    let simple = |r: Request| no_body(r.endpoint(), body).map(|()| r);
    match endpoint {
        Endpoint::Ping => simple(Request::Ping),
        Endpoint::Info => simple(Request::Info),
        Endpoint::Pause => simple(Request::Pause),
        Endpoint::Resume => simple(Request::Resume),
        Endpoint::VmShutdown => simple(Request::VmShutdown),
        Endpoint::VmmShutdown => simple(Request::VmmShutdown),
        Endpoint::Resize => parse_resize(body),
    }
}

/// The fields of a JSON object body, in order, duplicates refused.
fn object_fields(body: &[u8]) -> Result<Vec<(String, Value)>, ApiError> {
    let text =
        std::str::from_utf8(body).map_err(|e| ApiError::Malformed(format!("not UTF-8 ({e})")))?;
    if text.trim().is_empty() {
        return Err(ApiError::Malformed("empty body".into()));
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
    Ok(fields)
}

/// An endpoint without parameters takes no body, or an empty object (`{}`).
fn no_body(endpoint: &'static str, body: &[u8]) -> Result<(), ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    match object_fields(body)?.first() {
        None => Ok(()),
        Some((k, _)) => Err(ApiError::UnknownField {
            endpoint,
            field: echo(k),
        }),
    }
}

/// `{"desired_vcpus": N}` (Cloud Hypervisor's `VmResize`, vCPUs only).
fn parse_resize(body: &[u8]) -> Result<Request, ApiError> {
    const ENDPOINT: &str = "vm.resize";
    let fields = object_fields(body)?;
    if let Some((k, _)) = fields.iter().find(|(k, _)| k != "desired_vcpus") {
        return Err(ApiError::UnknownField {
            endpoint: ENDPOINT,
            field: echo(k),
        });
    }
    let v = fields
        .iter()
        .find(|(k, _)| k == "desired_vcpus")
        .map(|(_, v)| v)
        .ok_or(ApiError::MissingField {
            endpoint: ENDPOINT,
            field: "desired_vcpus",
        })?;
    let n = v.as_u64().ok_or_else(|| ApiError::WrongType {
        field: "desired_vcpus",
        expected: "a non-negative integer",
        found: type_name(v),
    })?;
    // Anything past usize is past any max_vcpus too.
    let desired_vcpus = usize::try_from(n).unwrap_or(usize::MAX);
    if desired_vcpus == 0 {
        return Err(ApiError::ZeroCpus);
    }
    Ok(Request::Resize { desired_vcpus })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn put(endpoint: &str, body: &str) -> Result<Request, ApiError> {
        parse_request("PUT", &format!("/api/v1/{endpoint}"), body.as_bytes())
    }

    fn resize(body: &str) -> Result<Request, ApiError> {
        put("vm.resize", body)
    }

    #[test]
    fn valid_requests() {
        assert_eq!(
            parse_request("GET", "/api/v1/vmm.ping", b""),
            Ok(Request::Ping)
        );
        assert_eq!(
            parse_request("GET", "/api/v1/vm.info", b""),
            Ok(Request::Info)
        );
        assert_eq!(put("vm.pause", ""), Ok(Request::Pause));
        assert_eq!(put("vm.pause", " {} \n"), Ok(Request::Pause));
        assert_eq!(put("vm.resume", ""), Ok(Request::Resume));
        assert_eq!(put("vm.shutdown", ""), Ok(Request::VmShutdown));
        assert_eq!(put("vmm.shutdown", ""), Ok(Request::VmmShutdown));
        assert_eq!(
            resize(r#" {"desired_vcpus": 4} "#),
            Ok(Request::Resize { desired_vcpus: 4 })
        );
        assert_eq!(
            resize(r#"{"desired_vcpus":18446744073709551615}"#),
            Ok(Request::Resize {
                desired_vcpus: usize::MAX
            })
        );
    }

    #[test]
    fn round_trip_and_routes() {
        for r in [
            Request::Ping,
            Request::Info,
            Request::Pause,
            Request::Resume,
            Request::VmShutdown,
            Request::VmmShutdown,
            Request::Resize { desired_vcpus: 1 },
            Request::Resize { desired_vcpus: 254 },
        ] {
            let body = r.body().unwrap_or_default();
            assert_eq!(
                parse_request(r.method(), &r.path(), body.as_bytes()),
                Ok(r.clone())
            );
            assert!(ROUTES
                .iter()
                .any(|(p, m, _)| *p == r.endpoint() && *m == r.method()));
        }
        assert_eq!(ROUTES.len(), 7);
    }

    #[test]
    fn paths_and_methods() {
        for path in [
            "/",
            "",
            "/api/v1",
            "/api/v1/",
            "/api/v1/vm.reboot",
            "/api/v2/vm.info",
            "/api/v1/vm.info/",
            "api/v1/vm.info",
            "/api/v1//vm.info",
        ] {
            let e = parse_request("GET", path, b"").unwrap_err();
            assert!(matches!(e, ApiError::NotFound(_)), "{path}: {e:?}");
            assert_eq!((e.status(), e.kind()), (404, "not_found"));
        }
        let e = parse_request("GET", "/api/v1/vm.pause", b"").unwrap_err();
        assert_eq!(
            e,
            ApiError::MethodNotAllowed {
                endpoint: "vm.pause",
                method: "GET".into(),
                allowed: "PUT"
            }
        );
        assert_eq!((e.status(), e.kind()), (405, "method_not_allowed"));
        assert_eq!(e.to_json()["allowed"], "PUT");
        let e = parse_request("PUT", "/api/v1/vm.info", b"").unwrap_err();
        assert_eq!(e.status(), 405);
        // Method names are case-sensitive in HTTP.
        assert_eq!(
            parse_request("put", "/api/v1/vm.pause", b"")
                .unwrap_err()
                .status(),
            405
        );
        // A path we do not serve is 404 whatever the body.
        let e = parse_request("PUT", "/nope", &vec![b'x'; MAX_BODY_LEN + 1]).unwrap_err();
        assert_eq!(e.status(), 404);
    }

    #[test]
    fn too_large() {
        let mut big = br#"{"desired_vcpus":2}"#.to_vec();
        big.resize(MAX_BODY_LEN + 1, b' ');
        let e = parse_request("PUT", "/api/v1/vm.resize", &big).unwrap_err();
        assert_eq!(
            e,
            ApiError::TooLarge {
                limit: MAX_BODY_LEN
            }
        );
        assert_eq!((e.status(), e.kind()), (413, "too_large"));
        big.truncate(MAX_BODY_LEN);
        assert!(parse_request("PUT", "/api/v1/vm.resize", &big).is_ok());
    }

    #[test]
    fn malformed() {
        for bad in [
            "",
            "   ",
            "{",
            "{\"desired_vcpus\":2",
            "{\"desired_vcpus\":2} trailing",
            "{desired_vcpus:2}",
            "{\"desired_vcpus\":2,}",
            "\u{feff}{\"desired_vcpus\":2}",
            &"[".repeat(1000),
            r#"{"desired_vcpus":1e400}"#,
        ] {
            let e = resize(bad).unwrap_err();
            assert!(matches!(e, ApiError::Malformed(_)), "{bad:?}: {e:?}");
            assert_eq!((e.status(), e.kind()), (400, "malformed_json"));
        }
        let e =
            parse_request("PUT", "/api/v1/vm.resize", b"{\"desired_vcpus\":\xff2}").unwrap_err();
        assert!(
            matches!(e, ApiError::Malformed(ref m) if m.contains("UTF-8")),
            "{e:?}"
        );
        // A body on an endpoint that takes none must still be JSON.
        assert_eq!(
            put("vm.pause", "pause now").unwrap_err().kind(),
            "malformed_json"
        );
    }

    #[test]
    fn not_an_object() {
        for (bad, kind) in [
            ("[]", "an array"),
            ("\"4\"", "a string"),
            ("4", "a number"),
            ("-1", "a number"),
            ("true", "a boolean"),
            ("null", "null"),
        ] {
            let e = resize(bad).unwrap_err();
            assert_eq!(e, ApiError::NotAnObject(kind), "{bad}");
            assert_eq!(e.kind(), "not_an_object");
        }
    }

    #[test]
    fn fields() {
        let e = resize(r#"{"desired_vcpus":1,"desired_vcpus":4}"#).unwrap_err();
        assert_eq!(e, ApiError::DuplicateField("desired_vcpus".into()));
        assert_eq!(e.kind(), "duplicate_field");
        let e = resize("{}").unwrap_err();
        assert_eq!(
            e,
            ApiError::MissingField {
                endpoint: "vm.resize",
                field: "desired_vcpus"
            }
        );
        assert_eq!(e.to_string(), "missing field 'desired_vcpus' for vm.resize");
        // Cloud Hypervisor's other resize fields are not ours.
        let e = resize(r#"{"desired_vcpus":2,"desired_ram":1073741824}"#).unwrap_err();
        assert!(matches!(e, ApiError::UnknownField { ref field, .. } if field == "desired_ram"));
        let e = put("vm.pause", r#"{"desired_vcpus":2}"#).unwrap_err();
        assert_eq!(
            e,
            ApiError::UnknownField {
                endpoint: "vm.pause",
                field: "desired_vcpus".into()
            }
        );
        // Client text is echoed truncated.
        let long = "k".repeat(5000);
        let e = resize(&format!(r#"{{"{long}":1}}"#)).unwrap_err();
        assert!(e.to_string().len() < 200, "{e}");
        let e = parse_request("GET", &format!("/{long}"), b"").unwrap_err();
        assert!(e.to_string().len() < 300, "{e}");
    }

    #[test]
    fn wrong_type() {
        for (bad, found) in [
            (r#"{"desired_vcpus":"4"}"#, "a string"),
            (r#"{"desired_vcpus":-1}"#, "the negative number -1"),
            (r#"{"desired_vcpus":2.5}"#, "the non-integer number 2.5"),
            (r#"{"desired_vcpus":4.0}"#, "the non-integer number 4.0"),
            (r#"{"desired_vcpus":true}"#, "a boolean"),
            (r#"{"desired_vcpus":null}"#, "null"),
            (r#"{"desired_vcpus":[4]}"#, "an array"),
            (
                r#"{"desired_vcpus":99999999999999999999999}"#,
                "the non-integer number",
            ),
        ] {
            match resize(bad) {
                Err(ApiError::WrongType {
                    field: "desired_vcpus",
                    expected: "a non-negative integer",
                    found: f,
                }) => assert!(f.starts_with(found), "{bad}: {f}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn zero_cpus() {
        let e = resize(r#"{"desired_vcpus":0}"#).unwrap_err();
        assert_eq!(e, ApiError::ZeroCpus);
        assert_eq!((e.status(), e.kind()), (400, "zero"));
    }

    #[test]
    fn statuses_and_kinds() {
        assert_eq!(
            (ApiError::NotPaused.status(), ApiError::NotPaused.kind()),
            (409, "not_paused")
        );
        assert_eq!(ApiError::ShuttingDown.kind(), "shutting_down");
        assert_eq!(ApiError::ShuttingDown.status(), 503);
        let busy = ApiError::SlotsBusy {
            requested: 4,
            free: 1,
            busy: vec![3],
        };
        assert_eq!((busy.status(), busy.kind()), (429, "slots_busy"));
        assert_eq!(busy.to_json()["busy"], serde_json::json!([3]));
        let v = ApiError::AboveMax {
            requested: 5,
            max: 4,
        }
        .to_json();
        assert_eq!(
            (v["max"].clone(), v["kind"].clone()),
            (4.into(), "above_max".into())
        );
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
        assert_eq!((e.status(), e.kind()), (500, "pause_timeout"));
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
        assert_eq!(ApiError::PauseInterrupted.kind(), "pause_interrupted");
    }
}
