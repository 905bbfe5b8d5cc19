//! A blocking HTTP/1.1 client for the API socket (`hyper`'s client connection on a
//! single-threaded `tokio` runtime): `vmm remote` uses it for one request, tests keep one
//! [`Connection`] alive for thousands.

use super::request::Request;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper_util::rt::TokioIo;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a request got no HTTP answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting failed.
    #[error("cannot connect to {}: {source}", path.display())]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The HTTP exchange failed (the server hung up, or sent something that is not HTTP).
    #[error("talking to {}: {reason}", path.display())]
    Http {
        /// The socket path.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// No answer within the timeout.
    #[error("no answer from {} within {timeout:?}", path.display())]
    Timeout {
        /// The socket path.
        path: PathBuf,
        /// The timeout.
        timeout: Duration,
    },
    /// The answer's body is not JSON.
    #[error("invalid answer from {}: {reason}", path.display())]
    BadResponse {
        /// The socket path.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// An answer as the client sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body as text (empty for 204).
    pub text: String,
    /// The body parsed as JSON (None when empty).
    pub body: Option<serde_json::Value>,
}

impl Answer {
    /// A 2xx status.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// For an error answer: `message (kind)` from its body.
    pub fn error(&self) -> Option<String> {
        if self.is_success() {
            return None;
        }
        let b = self.body.as_ref();
        let msg = b
            .and_then(|e| e.get("message"))
            .and_then(serde_json::Value::as_str)
            .unwrap_or("unknown error");
        let kind = b
            .and_then(|e| e.get("kind"))
            .and_then(serde_json::Value::as_str)
            .unwrap_or("unknown");
        Some(format!("{msg} ({kind}, HTTP {})", self.status))
    }
}

/// A keep-alive connection to an API socket.
pub struct Connection {
    path: PathBuf,
    runtime: tokio::runtime::Runtime,
    sender: SendRequest<Full<Bytes>>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Connects to the socket at `path`.
    pub fn connect(path: &Path) -> Result<Connection, ClientError> {
        let connect_err = |source| ClientError::Connect {
            path: path.to_path_buf(),
            source,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(connect_err)?;
        let sender = runtime.block_on(handshake(path))?;
        Ok(Connection {
            path: path.to_path_buf(),
            runtime,
            sender,
        })
    }

    /// Sends `req` and waits at most `timeout` for the answer.
    pub fn send(&mut self, req: &Request, timeout: Duration) -> Result<Answer, ClientError> {
        self.raw(req.method(), &req.path(), req.body(), timeout)
    }

    /// Sends any method, path and body (tests use it for requests [`Request`] cannot
    /// express). A connection the server has closed since the last answer (it closes idle
    /// ones) is re-opened first.
    pub fn raw(
        &mut self,
        method: &str,
        path: &str,
        body: Option<String>,
        timeout: Duration,
    ) -> Result<Answer, ClientError> {
        let sock = self.path.clone();
        let http_err = |reason: String| ClientError::Http {
            path: sock.clone(),
            reason,
        };
        let make = || {
            let mut builder = hyper::Request::builder()
                .method(method)
                .uri(path)
                .header(HOST, "localhost");
            if body.is_some() {
                builder = builder.header(CONTENT_TYPE, "application/json");
            }
            builder
                .body(Full::new(Bytes::from(body.clone().unwrap_or_default())))
                .map_err(|e| http_err(format!("cannot build the request: {e}")))
        };
        let sender = &mut self.sender;
        let fut = async {
            // Let the connection task notice a hang-up before we send on it.
            tokio::task::yield_now().await;
            if sender.ready().await.is_err() {
                *sender = handshake(&sock).await?;
            }
            let resp = match sender.try_send_request(make()?).await {
                Ok(r) => r,
                // The server closes only connections without a request in progress (idle
                // ones), so a request that met such a close was never run: send it again
                // on a new connection, once.
                Err(e)
                    if e.message().is_some()
                        || e.error().is_canceled()
                        || e.error().is_incomplete_message() =>
                {
                    log::debug!(
                        "API connection closed under a request ({}); reconnecting",
                        e.error()
                    );
                    *sender = handshake(&sock).await?;
                    sender
                        .send_request(make()?)
                        .await
                        .map_err(|e| http_err(e.to_string()))?
                }
                Err(e) => return Err(http_err(e.into_error().to_string())),
            };
            let status = resp.status().as_u16();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| http_err(e.to_string()))?
                .to_bytes();
            Ok::<_, ClientError>((status, bytes))
        };
        let (status, bytes) = self
            .runtime
            .block_on(async { tokio::time::timeout(timeout, fut).await })
            .map_err(|_| ClientError::Timeout {
                path: self.path.clone(),
                timeout,
            })??;
        let bad = |reason: String| ClientError::BadResponse {
            path: self.path.clone(),
            reason,
        };
        let text = String::from_utf8(bytes.to_vec()).map_err(|_| bad("not UTF-8".into()))?;
        let body = if text.trim().is_empty() {
            None
        } else {
            Some(serde_json::from_str(&text).map_err(|e| bad(format!("not JSON ({e})")))?)
        };
        Ok(Answer { status, text, body })
    }
}

async fn handshake(path: &Path) -> Result<SendRequest<Full<Bytes>>, ClientError> {
    let stream = tokio::net::UnixStream::connect(path)
        .await
        .map_err(|source| ClientError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ClientError::Http {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            log::debug!("API client connection ended: {e}");
        }
    });
    Ok(sender)
}

/// One request on a fresh connection (what `vmm remote` does).
pub fn request(path: &Path, req: &Request, timeout: Duration) -> Result<Answer, ClientError> {
    Connection::connect(path)?.send(req, timeout)
}
