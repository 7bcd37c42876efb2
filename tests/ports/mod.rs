//! Free loopback ports for the processes and servers a test starts.

use std::net::TcpListener;

/// `n` distinct free ports on 127.0.0.1. Every listener is held until all
/// are bound, so the kernel cannot hand the same ephemeral port out twice
/// (binding and dropping one at a time did, and two nodes then fought over
/// one port). The ports are free again when this returns; a process
/// started elsewhere can still take one before the test binds it.
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
}
