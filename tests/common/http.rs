//! Test support for HTTP against a local daemon: a free port, GET and POST (with an optional
//! bearer token), and polling an endpoint until it answers as wanted.
#![allow(dead_code)]

use std::time::{Duration, Instant};

/// A free localhost port (bound, then released) for a daemon's admin server.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Sends one HTTP/1.1 request (closing the connection) to localhost; returns (status, body).
fn http(port: u16, request: &str, timeout: Duration) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.write_all(request.as_bytes()).ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Some((code, body))
}

/// Plain HTTP GET against localhost; returns (status code, body).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http_get_with(port, path, None)
}

/// HTTP GET against localhost with an optional bearer token; returns (status code, body).
pub fn http_get_with(port: u16, path: &str, token: Option<&str>) -> Option<(u16, String)> {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{auth}\r\n");
    http(port, &req, Duration::from_secs(5))
}

/// Plain HTTP POST of a JSON body against localhost, with an optional bearer token; returns
/// (status code, body). Waits up to 120 s: a swap answers once the candidate is validated.
pub fn http_post(port: u16, path: &str, body: &str, token: Option<&str>) -> Option<(u16, String)> {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    http(port, &req, Duration::from_secs(120))
}

/// Polls `GET path` until `ok(status, body)` holds; panics after `timeout`.
pub fn wait_http(
    port: u16,
    path: &str,
    timeout: Duration,
    ok: impl Fn(u16, &str) -> bool,
) -> String {
    let end = Instant::now() + timeout;
    loop {
        if let Some((code, body)) = http_get(port, path) {
            if ok(code, &body) {
                return body;
            }
        }
        assert!(
            Instant::now() < end,
            "timed out waiting on http://127.0.0.1:{port}{path}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The value of an unlabelled Prometheus counter or gauge in a /metrics page.
pub fn metric(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}
