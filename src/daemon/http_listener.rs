//! Accepts the admin server's HTTP connections with the limits `axum::serve` lacks: a deadline
//! for a request's headers (axum::serve sets no timer, so hyper's header timeout is off and a
//! client that never finishes its headers holds a connection for ever), a deadline for a
//! handler's answer, an idle timeout between keep-alive requests, and a cap on open connections
//! (past it, new connections are closed at once and counted, so file descriptors stay for
//! librdkafka's reconnects).

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// `[admin]` limits of the HTTP server.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HttpLimits {
    /// A request's headers must arrive within this (from the connection's first byte or the
    /// end of the previous response).
    pub(crate) header_read_timeout: Duration,
    /// A handler must produce its response head within this (a streaming body may go on).
    pub(crate) request_timeout: Duration,
    /// A keep-alive connection with no request for this long is closed.
    pub(crate) idle_timeout: Duration,
    pub(crate) max_connections: usize,
}

impl HttpLimits {
    pub(crate) fn from_settings(a: &crate::daemon::config::AdminSettings) -> HttpLimits {
        HttpLimits {
            header_read_timeout: Duration::from_millis(a.header_read_timeout_ms),
            request_timeout: Duration::from_millis(a.request_timeout_ms),
            idle_timeout: Duration::from_millis(a.idle_timeout_ms),
            max_connections: a.max_connections,
        }
    }
}

/// Pending connections the kernel queues for `accept`. std's 128 overflowed under a burst of
/// connections (measured: a client opening connections in a loop stalled 1 s, a SYN
/// retransmission, every ~130 of them), and a probe arriving in such a burst waited with them.
const ACCEPT_BACKLOG: u32 = 4096;

/// A listening socket on `addr` (an address:port, validated with the config).
pub(crate) fn bind(addr: &str) -> std::io::Result<TcpListener> {
    let addr: std::net::SocketAddr = addr
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)
}

/// Serves `app` on `listener` until the task is dropped.
pub(crate) async fn serve(listener: TcpListener, app: Router, limits: HttpLimits) {
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let app = app.layer(axum::middleware::from_fn_with_state(
        limits.request_timeout,
        request_deadline,
    ));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: the process is out of descriptors for a moment; a pause
                // lets connections close instead of spinning on accept.
                tracing::warn!(error = %e, "admin HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            metrics::counter!("emostream_http_connections_refused_total").increment(1);
            drop(stream);
            continue;
        };
        metrics::gauge!("emostream_http_connections").increment(1.0);
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let io = IdleTimeout::new(TokioIo::new(stream), limits.idle_timeout);
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .keep_alive(true)
                .serve_connection(io, service)
                .with_upgrades();
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin HTTP connection ended");
            }
            metrics::gauge!("emostream_http_connections").decrement(1.0);
            drop(permit);
        });
    }
}

/// A handler that has not answered within `d` is answered 503 (the work it started is dropped).
async fn request_deadline(
    axum::extract::State(d): axum::extract::State<Duration>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    match tokio::time::timeout(d, next.run(req)).await {
        Ok(r) => r,
        Err(_) => {
            metrics::counter!("emostream_http_request_timeouts_total").increment(1);
            crate::daemon::api::error(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                &format!(
                    "no answer within admin.request_timeout_ms ({} ms)",
                    d.as_millis()
                ),
            )
        }
    }
}

/// Closes a connection on which nothing was read or written for `limit`: hyper's header
/// timeout covers a request that has begun, not a keep-alive connection left silent.
struct IdleTimeout<T> {
    inner: T,
    limit: Duration,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl<T> IdleTimeout<T> {
    fn new(inner: T, limit: Duration) -> Self {
        IdleTimeout {
            inner,
            limit,
            deadline: Box::pin(tokio::time::sleep(limit)),
        }
    }

    fn touch(&mut self) {
        let at = tokio::time::Instant::now() + self.limit;
        self.deadline.as_mut().reset(at);
    }

    fn expired(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }
}

fn idle_error() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "idle connection closed")
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for IdleTimeout<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                this.touch();
                Poll::Ready(r)
            }
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for IdleTimeout<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(r) => {
                this.touch();
                Poll::Ready(r)
            }
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
