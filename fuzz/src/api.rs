//! The control API's request parser under arbitrary client input.
//!
//! An input is `METHOD PATH` on its first line and the body after the newline (hyper parses
//! the HTTP framing on the socket; this is everything our code does with what it yields).

use vmm::api::request::{parse_request, ApiError, Request, API_PREFIX, MAX_BODY_LEN, ROUTES};

/// Splits an input into method, path and body (lossy UTF-8 for the first two, as hyper
/// only hands over valid tokens).
pub fn split(data: &[u8]) -> (String, String, &[u8]) {
    let (head, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &data[data.len()..]),
    };
    let head = String::from_utf8_lossy(head);
    let (method, path) = head.split_once(' ').unwrap_or((&head, ""));
    (method.to_string(), path.to_string(), body)
}

/// Feeds `data` to `parse_request` and checks what a client must never be able to break:
/// no panic; anything accepted is a served route whose method and path it reports back and
/// whose own body parses to the same request; anything refused has a stable kind, a message,
/// an error status (4xx/5xx) and a JSON body naming that kind; an over-long body is refused
/// as too large, an unknown path as 404.
pub fn api_request(data: &[u8]) {
    let (method, path, body) = split(data);
    match parse_request(&method, &path, body) {
        Ok(req) => {
            assert!(body.len() <= MAX_BODY_LEN);
            assert_eq!(req.method(), method);
            assert_eq!(req.path(), path);
            assert!(ROUTES
                .iter()
                .any(|(p, m, _)| format!("{API_PREFIX}/{p}") == path && *m == method));
            let again = req.body().unwrap_or_default();
            match parse_request(req.method(), &req.path(), again.as_bytes()) {
                Ok(r) => assert_eq!(r, req, "round trip of {again}"),
                Err(e) => panic!("{again} does not parse back: {e}"),
            }
            if let Request::Resize { desired_vcpus } = req {
                assert!(desired_vcpus >= 1);
            }
        }
        Err(e) => {
            let served = ROUTES
                .iter()
                .any(|(p, _, _)| format!("{API_PREFIX}/{p}") == path);
            if !served {
                assert!(matches!(e, ApiError::NotFound(_)), "{path}: {e:?}");
            } else if body.len() > MAX_BODY_LEN {
                assert!(
                    matches!(
                        e,
                        ApiError::TooLarge { .. } | ApiError::MethodNotAllowed { .. }
                    ),
                    "{e:?}"
                );
            }
            assert!(!e.kind().is_empty());
            assert!(!e.to_string().is_empty());
            assert!((400..600).contains(&e.status()), "{e:?}");
            let v = e.to_json();
            assert_eq!(v["kind"], e.kind());
            let text = v.to_string();
            let back: serde_json::Value = match serde_json::from_str(&text) {
                Ok(v) => v,
                Err(err) => panic!("error body is not JSON ({err}): {text}"),
            };
            assert_eq!(back, v);
        }
    }
}
