//! One value from a node's `/metrics` (Prometheus text over plain HTTP/1.0),
//! for tests that run real `synapse serve` processes.

use std::io::{Read, Write};
use std::time::Duration;

/// The value of the unlabelled series `name` at `http` (host:port); 0 if the
/// node does not export it.
pub fn metric(http: &str, name: &str, timeout: Duration) -> Result<u64, String> {
    let mut s = std::net::TcpStream::connect(http).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout)).ok();
    write!(
        s,
        "GET /metrics HTTP/1.0\r\nHost: {http}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut body = String::new();
    s.read_to_string(&mut body).map_err(|e| e.to_string())?;
    Ok(body
        .lines()
        .find_map(|l| {
            l.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
        .map(|v| v as u64)
        .unwrap_or(0))
}
