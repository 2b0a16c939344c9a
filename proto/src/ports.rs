//! Loopback ports for clusters on one machine (`umbra demo`, the tests): drawn below the
//! kernel's ephemeral range, so no outgoing connection can take one between the choice and
//! the bind. Every port that `umbra demo` and the test kit choose comes from here, never from
//! `bind(:0)`. A process never hands out the same port twice: ports are chosen ahead of the
//! processes that bind them, so two draws of one cluster (a node's DNS and another's admin
//! endpoint) could otherwise land on one port.

use std::collections::BTreeSet;
use std::sync::Mutex;

/// Ports this process has handed out. Never shrinks: a cluster binds its ports later, in
/// other processes, so a port stays promised for this process's life (a few dozen per test
/// or demo, of the ~20,000 below the ephemeral range).
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// Lowest port [`free_loopback_port`] hands out: above the well-known and most registered
/// service ports.
const LOCAL_PORT_FLOOR: u16 = 10_000;

/// A loopback port free for both UDP (QUIC) and TCP (the admin endpoint), for local clusters
/// (`umbra demo`, tests).
///
/// It is drawn at random from BELOW the kernel's ephemeral range
/// (`/proc/sys/net/ipv4/ip_local_port_range`, 32768 on Linux by default). A port the kernel
/// hands out for `bind(:0)` comes from that range, which is also where every outgoing
/// connection takes its source port: under load (a demo sending thousands of requests), a
/// port chosen there can be taken by some connection before the node binds it, and the node
/// fails to start. Below the range only another process choosing the same port can race, and
/// the check below makes that rare. Falls back to the kernel's choice when the range is odd.
pub fn free_loopback_port() -> std::io::Result<u16> {
    let loopback = std::net::Ipv4Addr::LOCALHOST;
    pick_local_port(loopback.into(), |port| {
        std::net::UdpSocket::bind((loopback, port)).is_ok()
            && std::net::TcpListener::bind((loopback, port)).is_ok()
    })
}

/// A TCP port free on every one of `ips` (e.g. the demo's region fronts on 127.0.0.11–13,
/// which share a port because a DNS A record carries none), drawn like
/// [`free_loopback_port`].
pub fn free_tcp_port_on(ips: &[std::net::IpAddr]) -> std::io::Result<u16> {
    assert!(
        !ips.is_empty(),
        "free_tcp_port_on needs at least one address"
    );
    pick_local_port(ips[0], |port| {
        ips.iter()
            .all(|ip| std::net::TcpListener::bind((*ip, port)).is_ok())
    })
}

fn pick_local_port(
    first_ip: std::net::IpAddr,
    bindable: impl Fn(u16) -> bool,
) -> std::io::Result<u16> {
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    let port = draw_port(first_ip, |port| {
        !handed_out.contains(&port) && bindable(port)
    })?;
    handed_out.insert(port);
    Ok(port)
}

fn draw_port(first_ip: std::net::IpAddr, bindable: impl Fn(u16) -> bool) -> std::io::Result<u16> {
    use rand::Rng;
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    if ephemeral_start > LOCAL_PORT_FLOOR + 1_000 {
        let mut rng = rand::rng();
        // Bounded: most of ~20,000 candidate ports are free on any machine.
        for _ in 0..200 {
            let port = rng.random_range(LOCAL_PORT_FLOOR..ephemeral_start);
            if bindable(port) {
                return Ok(port);
            }
        }
    }
    for _ in 0..50 {
        let port = std::net::TcpListener::bind((first_ip, 0))?
            .local_addr()?
            .port();
        if bindable(port) {
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("no local port free on {first_ip} (and its peers) for every protocol needed"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_never_hands_out_a_port_twice() {
        let mut seen = BTreeSet::new();
        for _ in 0..300 {
            let port = free_loopback_port().expect("a free port");
            assert!(seen.insert(port), "port {port} handed out twice");
        }
        let fronts = [std::net::IpAddr::from([127, 0, 0, 1])];
        let front = free_tcp_port_on(&fronts).expect("a free port");
        assert!(!seen.contains(&front), "port {front} handed out twice");
    }
}
