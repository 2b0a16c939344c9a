//! Is the process behind a UDP port still there? QUIC cannot tell a silent peer from a dead
//! one until its idle timeout (seconds), because quinn's unconnected socket never sees the
//! ICMP "port unreachable" the kernel answers for a closed port. A connected UDP socket does:
//! after one datagram to a port nobody listens on, its next receive fails with
//! `ECONNREFUSED`. That answer is proof the process is gone (killed, crashed, or restarting),
//! and it arrives within a round trip; silence proves nothing (the peer may be alive, or the
//! path may drop ICMP), so callers only act on "closed" and otherwise wait as before.
//!
//! The probe datagram is one zero byte: QUIC's fixed bit is 0 in it, so a live QUIC endpoint
//! discards it as not QUIC (RFC 9000 §17.2) without answering.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;

/// How long one probe waits for the kernel's refusal. On loopback or a LAN it arrives in well
/// under a millisecond; waiting longer only delays the next probe, it never makes a live port
/// look closed.
pub const PROBE_WAIT: Duration = Duration::from_millis(50);
/// Pause between probes while watching a port: a dead peer is noticed within this (plus a
/// round trip); 40 one-byte datagrams per second to one peer cost nothing.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(25);

/// What one probe learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortState {
    /// The kernel at `addr` refused the datagram: nothing listens there.
    Closed,
    /// No refusal within the wait: something may listen there, or the path drops ICMP.
    NoRefusal,
}

/// Sends one probe datagram to `addr` and waits up to `wait` for a refusal.
pub async fn probe(addr: SocketAddr, wait: Duration) -> io::Result<PortState> {
    let bind: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(bind).await?;
    socket.connect(addr).await?;
    if let Err(error) = socket.send(&[0]).await {
        return refused_or(error);
    }
    let mut buffer = [0u8; 16];
    match tokio::time::timeout(wait, socket.recv(&mut buffer)).await {
        Err(_elapsed) => Ok(PortState::NoRefusal),
        // Something answered a zero byte: whatever it is, it is alive.
        Ok(Ok(_)) => Ok(PortState::NoRefusal),
        Ok(Err(error)) => refused_or(error),
    }
}

fn refused_or(error: io::Error) -> io::Result<PortState> {
    if error.kind() == io::ErrorKind::ConnectionRefused {
        Ok(PortState::Closed)
    } else {
        Err(error)
    }
}

/// Resolves once a probe finds `addr` closed; pends for ever while the port stays open.
/// Race it against a wait on the peer (`tokio::select!`) to stop waiting on a dead process
/// within a [`WATCH_INTERVAL`] instead of at a timeout. The first probe goes out only after
/// one interval, so a wait that ends sooner (nearly every request to a live peer) costs no
/// probe at all.
pub async fn closed(addr: SocketAddr) {
    loop {
        tokio::time::sleep(WATCH_INTERVAL).await;
        if let Ok(PortState::Closed) = probe(addr, PROBE_WAIT).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_bound_port_is_not_closed_and_a_released_one_is() {
        let listener = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        assert_eq!(probe(addr, PROBE_WAIT).await.unwrap(), PortState::NoRefusal);
        // The listener got the probe, and it was one zero byte.
        let mut buffer = [9u8; 4];
        assert_eq!(listener.recv(&mut buffer).unwrap(), 1);
        assert_eq!(buffer[0], 0);
        drop(listener);
        assert_eq!(probe(addr, PROBE_WAIT).await.unwrap(), PortState::Closed);
        // `closed` resolves for it (it would pend for ever on an open port).
        closed(addr).await;
    }

    #[tokio::test]
    async fn a_live_quic_endpoint_ignores_the_probe_and_keeps_serving() {
        let dir = tempfile::tempdir().unwrap();
        crate::certs::init(&crate::certs::Layout::default(), dir.path()).unwrap();
        let me = crate::Credentials::load(dir.path(), &crate::Identity::orchestrator(1)).unwrap();
        let server = crate::Endpoint::server(
            "127.0.0.1:0".parse().unwrap(),
            &me,
            crate::TransportConfig::default(),
        )
        .unwrap();
        let addr = server.local_addr().unwrap();
        for _ in 0..3 {
            assert_eq!(probe(addr, PROBE_WAIT).await.unwrap(), PortState::NoRefusal);
        }
        // The endpoint's driver releases the socket once every handle is gone.
        drop(server);
        tokio::time::timeout(Duration::from_secs(30), closed(addr))
            .await
            .expect("the port of a dropped endpoint is seen closed");
    }
}
