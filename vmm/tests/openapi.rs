//! The OpenAPI document (`vmm/src/api/openapi.yaml`) against the server, both ways: every
//! path, method and status the document lists is answered by the server (each is provoked
//! on a live server over a scripted VM stand-in, and the body is checked against the
//! schema's required fields and the error kinds), and every route the server serves is in
//! the document, with every other method on a documented path answered 405 and any other
//! path 404. Needs no KVM: the server code is the product's, only the VM is a fake.

mod common;

use common::openapi::{check_schema, document, resolve};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use vcpu_sync::{Life, Location, PauseTimeout, SlotReport};
use vmm::api::request::{ApiError, API_PREFIX, ROUTES};
use vmm::api::{ApiServer, Connection, Control, ServerLimits};
use vmm::vm::{ResizeOutcome, StatsInfo, VcpuInfo, VmInfo};

const T: Duration = Duration::from_secs(10);

/// A VM stand-in whose next answer the test sets; `pause` can be held.
#[derive(Default)]
struct Scripted {
    fail: Mutex<Option<ApiError>>,
    hold: Mutex<bool>,
    released: Condvar,
    paused: AtomicBool,
}

impl Scripted {
    fn take(&self) -> Result<(), ApiError> {
        match self.fail.lock().unwrap().take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Control for Scripted {
    fn pause(&self) -> Result<(), ApiError> {
        let g = self.hold.lock().unwrap();
        drop(self.released.wait_timeout_while(g, T, |h| *h).unwrap());
        self.take()?;
        self.paused.store(true, Ordering::SeqCst);
        Ok(())
    }
    fn resume(&self) -> Result<(), ApiError> {
        self.take()?;
        Ok(())
    }
    fn resize(&self, cpus: usize) -> Result<ResizeOutcome, ApiError> {
        self.take()?;
        Ok(ResizeOutcome {
            cpus,
            added: vec![1],
            ..Default::default()
        })
    }
    fn info(&self) -> VmInfo {
        VmInfo {
            boot_vcpus: 1,
            max_vcpus: 2,
            active_vcpus: 1,
            memory_size: 128 << 20,
            paused: self.paused.load(Ordering::SeqCst),
            ged_notifications: 0,
            ged_notification_held: false,
            pending_insertions: vec![],
            pending_removals: vec![],
            stats: StatsInfo {
                pauses: 0,
                pauses_overlapping_mmio: 0,
                pauses_during_hotplug_access: 0,
                pauses_during_eject: 0,
                pauses_during_reap: 0,
                rekicks: 0,
                ejects: 0,
            },
            vcpus: vec![VcpuInfo {
                index: 0,
                state: "running",
                life: "active".into(),
                location: "in guest mode".into(),
                inserting: false,
                removing: false,
                remove_requested: false,
                paused: false,
                kicks: 0,
            }],
        }
    }
    fn shutdown(&self) -> Result<(), ApiError> {
        Ok(())
    }
}

fn timeout_error() -> ApiError {
    ApiError::PauseTimeout(PauseTimeout {
        missing: vec![SlotReport {
            index: 1,
            life: Life::Active,
            location: Location::InMmio,
            inserting: false,
            removing: false,
            remove_requested: false,
            paused: false,
            kicks: 3,
        }],
    })
}

/// How to make the server answer `status` on `method endpoint`: the VM's scripted failure
/// and the body to send. None: the test knows no way, which fails it.
fn provoke(
    endpoint: &str,
    method: &str,
    status: u16,
) -> Option<(Option<ApiError>, Option<String>)> {
    let resize_body = Some(json!({"desired_vcpus": 2}).to_string());
    let body = if endpoint == "vm.resize" {
        resize_body.clone()
    } else {
        None
    };
    Some(match (endpoint, method, status) {
        (_, _, 200 | 204) => (None, body),
        ("vm.resize", _, 400) => (None, Some("{\"desired_vcpus\":0}".into())),
        (_, _, 400) => (None, Some("{\"unexpected\":1}".into())),
        ("vm.pause", _, 409) => (Some(ApiError::PauseInterrupted), None),
        ("vm.pause", _, 500) => (Some(timeout_error()), None),
        ("vm.pause" | "vm.resize", _, 503) => (Some(ApiError::ShuttingDown), body),
        ("vm.resume", _, 409) => (Some(ApiError::NotPaused), None),
        ("vm.resize", _, 413) => (
            None,
            Some(format!(
                "{{\"desired_vcpus\":2,\"p\":\"{}\"}}",
                "x".repeat(70 * 1024)
            )),
        ),
        ("vm.resize", _, 429) => (
            Some(ApiError::SlotsBusy {
                requested: 2,
                free: 0,
                busy: vec![1],
            }),
            body,
        ),
        ("vm.resize", _, 500) => (Some(ApiError::Vcpu("scripted".into())), body),
        _ => return None,
    })
}

fn start(name: &str, limits: ServerLimits) -> (ApiServer, Arc<Scripted>, PathBuf) {
    let path = std::env::temp_dir().join(format!("vmm-openapi-{}-{name}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let vm = Arc::new(Scripted::default());
    let server = ApiServer::start_with(&path, vm.clone(), limits).expect("start the server");
    (server, vm, path)
}

fn raw(path: &Path, bytes: &[u8]) -> String {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn the_document_matches_the_server() {
    let doc = document();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert_eq!(
        doc["servers"][0]["url"],
        serde_yaml::Value::from(format!("http://localhost{API_PREFIX}"))
    );
    let paths = doc["paths"].as_mapping().expect("paths");

    // Every served route is documented, and nothing else is.
    let documented: BTreeSet<(String, String)> = paths
        .iter()
        .flat_map(|(p, item)| {
            let p = p.as_str().unwrap().trim_start_matches('/').to_string();
            item.as_mapping()
                .unwrap()
                .keys()
                .map(move |m| (p.clone(), m.as_str().unwrap().to_uppercase()))
        })
        .collect();
    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(p, m, _)| (p.to_string(), m.to_string()))
        .collect();
    assert_eq!(documented, served, "documented routes vs served routes");

    let (server, vm, path) = start("doc", ServerLimits::default());
    let mut conn = Connection::connect(&path).unwrap();
    let mut checked = BTreeMap::new();
    for (p, item) in paths {
        let endpoint = p.as_str().unwrap().trim_start_matches('/');
        for (m, op) in item.as_mapping().unwrap() {
            let method = m.as_str().unwrap().to_uppercase();
            let responses = op["responses"].as_mapping().expect("responses");
            assert!(!responses.is_empty());
            for (status, resp) in responses {
                let status: u16 = status.as_str().expect("quoted status").parse().unwrap();
                let (fail, body) = provoke(endpoint, &method, status).unwrap_or_else(|| {
                    panic!(
                        "{method} {endpoint} {status}: documented, but the test cannot provoke it"
                    )
                });
                if endpoint.ends_with("shutdown") && status == 204 {
                    // Carried out (by the stand-in) after answering; checked on its own
                    // connection since the server closes it.
                    let mut c = Connection::connect(&path).unwrap();
                    let a = c
                        .raw(&method, &format!("{API_PREFIX}/{endpoint}"), body, T)
                        .unwrap();
                    assert_eq!(a.status, 204, "{method} {endpoint}: {a:?}");
                    checked.insert(format!("{method} {endpoint} {status}"), ());
                    continue;
                }
                *vm.fail.lock().unwrap() = fail;
                let a = conn
                    .raw(&method, &format!("{API_PREFIX}/{endpoint}"), body, T)
                    .unwrap();
                assert_eq!(a.status, status, "{method} {endpoint}: {a:?}");
                let resp = resolve(&doc, resp);
                match resp.get("content") {
                    Some(c) => {
                        let body = a
                            .body
                            .unwrap_or_else(|| panic!("{method} {endpoint} {status}: no body"));
                        check_schema(
                            &doc,
                            &c["application/json"]["schema"],
                            &body,
                            &format!("{method} {endpoint} {status}"),
                        );
                    }
                    None => assert_eq!(
                        a.text, "",
                        "{method} {endpoint} {status}: undocumented body"
                    ),
                }
                checked.insert(format!("{method} {endpoint} {status}"), ());
            }
            // Every other method on the path: 405 with Allow.
            for other in ["GET", "PUT", "POST", "DELETE", "PATCH"] {
                if other == method {
                    continue;
                }
                let a = conn
                    .raw(other, &format!("{API_PREFIX}/{endpoint}"), None, T)
                    .unwrap();
                assert_eq!(a.status, 405, "{other} {endpoint}: {a:?}");
                check_schema(
                    &doc,
                    &doc["components"]["schemas"]["ErrorBody"],
                    &a.body.unwrap(),
                    "405",
                );
            }
        }
    }
    // 7 operations; each status checked once.
    let documented_statuses: usize = paths
        .iter()
        .flat_map(|(_, item)| item.as_mapping().unwrap().values())
        .map(|op| op["responses"].as_mapping().unwrap().len())
        .sum();
    assert_eq!(checked.len(), documented_statuses, "{checked:?}");
    assert!(checked.len() >= 20, "{checked:?}");

    // The answers outside any operation.
    let unrouted = doc["x-unrouted-responses"]
        .as_mapping()
        .expect("x-unrouted-responses");
    let codes: BTreeSet<u16> = unrouted
        .keys()
        .map(|k| k.as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(codes, BTreeSet::from([404, 405, 408, 431, 503]));
    for p in ["/", "/api/v1/vm.reboot", "/vm.info", "/api/v1/vm.info/x"] {
        let a = conn.raw("GET", p, None, T).unwrap();
        assert_eq!(a.status, 404, "{p}");
        check_schema(
            &doc,
            &doc["components"]["schemas"]["ErrorBody"],
            &a.body.unwrap(),
            "404",
        );
    }
    let mut head = b"GET /api/v1/vm.info HTTP/1.1\r\nHost: x\r\nX-Pad: ".to_vec();
    head.extend(std::iter::repeat_n(b'a', 20 * 1024));
    head.extend_from_slice(b"\r\n\r\n");
    assert!(raw(&path, &head).starts_with("HTTP/1.1 431"));
    drop(conn);
    drop(server);

    // 408 and 503 busy need their own server limits.
    let (server, vm, path) = start(
        "limits",
        ServerLimits {
            idle_timeout: Duration::from_millis(300),
            max_connections: 1,
        },
    );
    let out = raw(
        &path,
        b"PUT /api/v1/vm.resize HTTP/1.1\r\nHost: x\r\nContent-Length: 30\r\n\r\n{\"de",
    );
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    *vm.hold.lock().unwrap() = true;
    let p2 = path.clone();
    let pauser = std::thread::spawn(move || {
        Connection::connect(&p2)
            .unwrap()
            .raw("PUT", "/api/v1/vm.pause", None, T)
            .unwrap()
            .status
    });
    let mut busy = None;
    for _ in 0..200 {
        std::thread::sleep(Duration::from_millis(10));
        let a = Connection::connect(&path)
            .unwrap()
            .raw("GET", "/api/v1/vm.info", None, T)
            .unwrap();
        if a.status == 503 {
            busy = a.body;
            break;
        }
    }
    let busy = busy.expect("never answered 503 while the only slot was busy");
    assert_eq!(busy["kind"], "busy");
    *vm.hold.lock().unwrap() = false;
    vm.released.notify_all();
    assert_eq!(pauser.join().unwrap(), 204);
    drop(server);
    let _ = std::fs::remove_file(&path);
}
