//! The control API's request parser under arbitrary client bytes.

use vmm::api::protocol::{parse_request, ApiError, Response, MAX_REQUEST_LEN};

/// Feeds `data` to `parse_request` as one request line and checks what a client must never
/// be able to break: no panic; anything accepted serializes back to a request that parses
/// to the same value (and is one line); anything refused has a stable kind and a message,
/// and its error response is one line of JSON with `ok:false`; over-long input is refused
/// as too large.
pub fn api_request(data: &[u8]) {
    match parse_request(data) {
        Ok(req) => {
            assert!(data.len() <= MAX_REQUEST_LEN);
            let line = req.to_json();
            assert!(
                !line.contains('\n'),
                "serialized request spans lines: {line:?}"
            );
            match parse_request(line.as_bytes()) {
                Ok(again) => assert_eq!(again, req, "round trip of {line}"),
                Err(e) => panic!("{line} does not parse back: {e}"),
            }
        }
        Err(e) => {
            if data.len() > MAX_REQUEST_LEN {
                assert!(matches!(e, ApiError::TooLarge { .. }), "{e:?}");
            }
            assert!(!e.kind().is_empty());
            assert!(!e.to_string().is_empty());
            let line = Response::Err(e.clone()).to_line();
            assert!(!line.contains('\n'), "error response spans lines: {line:?}");
            let v: serde_json::Value = match serde_json::from_str(&line) {
                Ok(v) => v,
                Err(err) => panic!("error response is not JSON ({err}): {line}"),
            };
            assert_eq!(v["ok"], false);
            assert_eq!(v["error"]["kind"], e.kind());
        }
    }
}
