//! A tiny HTTP/1.1 server that answers every request with 200 and its own name (in the body
//! and in the `x-umbra-backend` header), so a client can tell which backend served it. Used
//! by the load balancer tests, the proxy benchmark and `umbra-load serve`, where shares and
//! overhead are measured; it is not a service to put real traffic on. `GET /slow/<ms>` waits
//! that long (at most `MAX_SLOW_MS`) before answering, to hold a request in flight on purpose.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Response header carrying the backend's name.
pub const BACKEND_HEADER: &str = "x-umbra-backend";
/// Longest wait `/slow/<ms>` honours, so a typo cannot park a connection for hours.
pub const MAX_SLOW_MS: u64 = 10_000;

/// A running named backend; stops when dropped or on `shutdown`.
pub struct NamedBackend {
    name: String,
    local_addr: SocketAddr,
    requests: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl NamedBackend {
    /// Binds `addr` (port 0 for any free port) and serves until shut down.
    pub async fn start(name: &str, addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let requests = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let body = Bytes::from(format!("{name}\n"));
        let header = hyper::header::HeaderValue::from_str(name).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "backend name is not a header value",
            )
        })?;
        tokio::spawn(serve(
            listener,
            body,
            header,
            requests.clone(),
            stop.clone(),
        ));
        Ok(Self {
            name: name.to_string(),
            local_addr,
            requests,
            stop,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Requests answered (or being answered) so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Stops accepting and closes idle connections; requests being served finish.
    pub fn shutdown(&self) {
        self.stop.cancel();
    }
}

impl Drop for NamedBackend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn serve(
    listener: TcpListener,
    body: Bytes,
    header: hyper::header::HeaderValue,
    requests: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors or similar: back off instead of spinning.
                    tracing::warn!(error = %e, "named backend accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (body, header, requests, stop) =
            (body.clone(), header.clone(), requests.clone(), stop.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let (body, header) = (body.clone(), header.clone());
                requests.fetch_add(1, Ordering::Relaxed);
                async move {
                    if let Some(ms) = req
                        .uri()
                        .path()
                        .strip_prefix("/slow/")
                        .and_then(|s| s.parse::<u64>().ok())
                    {
                        tokio::time::sleep(Duration::from_millis(ms.min(MAX_SLOW_MS))).await;
                    }
                    let mut response = Response::new(Full::new(body));
                    response.headers_mut().insert(BACKEND_HEADER, header);
                    Ok::<_, Infallible>(response)
                }
            });
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}
