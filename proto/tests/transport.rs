//! Transport tests on loopback with real QUIC, real TLS and certificates issued by
//! `certs::init`: mutual TLS, refusals (other CA, wrong role), and misbehaving peers sending
//! garbage, truncated, oversized and wrong-version frames on raw streams.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::sync::mpsc;
use umbra_proto::certs::{self, Layout};
use umbra_proto::{
    AcceptError, ConnectError, Connection, Credentials, Endpoint, FrameError, Identity, LinkError,
    RaftMessage, Role, StreamError, StreamKind, TransportConfig, codes,
};

/// Upper bound on any single network wait in these tests; generous because the machine is
/// shared, and a failure shows up as an error well before it.
const DEADLINE: Duration = Duration::from_secs(20);

async fn within<F: std::future::Future>(what: &str, fut: F) -> anyhow::Result<F::Output> {
    tokio::time::timeout(DEADLINE, fut)
        .await
        .with_context(|| format!("{what} did not finish within {DEADLINE:?}"))
}

fn cluster(dir: &Path) -> anyhow::Result<()> {
    certs::init(&Layout::default(), dir)?;
    Ok(())
}

fn creds(dir: &Path, role: Role, id: &str) -> anyhow::Result<Credentials> {
    Ok(Credentials::load(dir, &Identity::new(role, id)?)?)
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("loopback address")
}

/// What the echo server saw, for assertions on the accepting side.
#[derive(Debug)]
enum ServerEvent {
    Connected(Identity),
    HandshakeFailed(ConnectError),
    AcceptFailed(AcceptError),
    StreamFailed(StreamError),
}

/// A server that echoes every `RaftMessage` back on any stream it accepts.
struct EchoServer {
    addr: SocketAddr,
    events: mpsc::Receiver<ServerEvent>,
    endpoint: Endpoint,
}

impl EchoServer {
    fn start(credentials: &Credentials, config: TransportConfig) -> anyhow::Result<EchoServer> {
        let endpoint = Endpoint::server(loopback(), credentials, config)?;
        let addr = endpoint.local_addr()?;
        // Bounded: events beyond the buffer are dropped (try_send), never block the server.
        let (tx, events) = mpsc::channel(256);
        let server = endpoint.clone();
        tokio::spawn(async move {
            while let Some(incoming) = server.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let conn = match incoming.establish().await {
                        Ok(conn) => conn,
                        Err(err) => {
                            let _ = tx.try_send(ServerEvent::HandshakeFailed(err));
                            return;
                        }
                    };
                    let _ = tx.try_send(ServerEvent::Connected(conn.peer().clone()));
                    serve_connection(conn, tx).await;
                });
            }
        });
        Ok(EchoServer {
            addr,
            events,
            endpoint,
        })
    }

    /// Waits for the first event that `pick` accepts, skipping others.
    async fn expect<T>(
        &mut self,
        mut pick: impl FnMut(ServerEvent) -> Option<T>,
    ) -> anyhow::Result<T> {
        within("server event", async {
            while let Some(event) = self.events.recv().await {
                if let Some(found) = pick(event) {
                    return Ok(found);
                }
            }
            bail!("server stopped")
        })
        .await?
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.endpoint.close();
    }
}

async fn serve_connection(conn: Connection, tx: mpsc::Sender<ServerEvent>) {
    loop {
        let mut stream = match conn.accept_stream().await {
            Ok(stream) => stream,
            Err(err) => {
                let _ = tx.try_send(ServerEvent::AcceptFailed(err));
                return;
            }
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            loop {
                match stream.recv::<RaftMessage>().await {
                    Ok(Some(msg)) => {
                        if stream.send(&msg).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => {
                        stream.finish();
                        return;
                    }
                    Err(err) => {
                        let _ = tx.try_send(ServerEvent::StreamFailed(err));
                        return;
                    }
                }
            }
        });
    }
}

/// Opens a Raft stream, sends one message and checks it comes back unchanged.
async fn echo_once(conn: &Connection, from: u64) -> anyhow::Result<()> {
    let mut stream = within("open", conn.open_stream(StreamKind::Raft)).await??;
    let msg = RaftMessage {
        from,
        to: 1,
        message: vec![7; 300],
    };
    within("send", stream.send(&msg)).await??;
    let back = within("echo", stream.recv::<RaftMessage>())
        .await??
        .context("stream ended before the echo")?;
    anyhow::ensure!(back == msg, "echo differs: {back:?}");
    Ok(())
}

/// Reads a raw stream until the peer resets it, and returns the code.
async fn reset_code(recv: &mut quinn::RecvStream) -> anyhow::Result<u64> {
    match within("reset", recv.read_to_end(1 << 20)).await? {
        Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) => Ok(code.into_inner()),
        other => bail!("expected the server to reset the stream, got {other:?}"),
    }
}

#[tokio::test]
async fn mutual_tls_round_trip_between_two_orchestrators() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    cluster(dir.path())?;
    let mut server = EchoServer::start(
        &creds(dir.path(), Role::Orchestrator, "1")?,
        TransportConfig::default(),
    )?;
    let client = Endpoint::server(
        loopback(),
        &creds(dir.path(), Role::Orchestrator, "2")?,
        TransportConfig::default(),
    )?;
    let conn = within(
        "connect",
        client.connect(server.addr, &Identity::orchestrator(1).server_name()),
    )
    .await??;
    assert_eq!(
        conn.peer(),
        &Identity::orchestrator(1),
        "client sees the server's identity"
    );
    echo_once(&conn, 2).await?;
    let seen = server
        .expect(|event| match event {
            ServerEvent::Connected(peer) => Some(peer),
            _ => None,
        })
        .await?;
    assert_eq!(
        seen,
        Identity::orchestrator(2),
        "server sees the client's identity"
    );

    // Several messages on one stream keep their order.
    let mut stream = within("open", conn.open_stream(StreamKind::Raft)).await??;
    for i in 0..50u64 {
        within(
            "send",
            stream.send(&RaftMessage {
                from: 2,
                to: 1,
                message: i.to_be_bytes().to_vec(),
            }),
        )
        .await??;
    }
    for i in 0..50u64 {
        let back = within("recv", stream.recv::<RaftMessage>())
            .await??
            .context("ended")?;
        assert_eq!(back.message, i.to_be_bytes().to_vec());
    }
    Ok(())
}

#[tokio::test]
async fn server_name_must_match_the_certificate() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    cluster(dir.path())?;
    let server = EchoServer::start(
        &creds(dir.path(), Role::Agent, "eu-west")?,
        TransportConfig::default(),
    )?;
    let client = Endpoint::client(
        loopback(),
        &creds(dir.path(), Role::Orchestrator, "1")?,
        TransportConfig::default(),
    )?;
    // An agent cannot pass for an orchestrator: its certificate lacks orchestrator.umbra.
    let err = within(
        "connect",
        client.connect(server.addr, &Role::Orchestrator.server_name()),
    )
    .await?
    .expect_err("an agent certificate must not be accepted as an orchestrator");
    assert!(
        matches!(err.link_error(), Some(LinkError::CertificateRefused { .. })),
        "{err}"
    );
    // The right name works.
    let conn = within(
        "connect",
        client.connect(server.addr, "eu-west.agent.umbra"),
    )
    .await??;
    assert_eq!(conn.peer(), &Identity::new(Role::Agent, "eu-west")?);
    Ok(())
}

#[tokio::test]
async fn client_certificate_from_another_ca_is_refused_at_handshake() -> anyhow::Result<()> {
    let ours = tempfile::tempdir()?;
    let theirs = tempfile::tempdir()?;
    cluster(ours.path())?;
    cluster(theirs.path())?;
    let mut server = EchoServer::start(
        &creds(ours.path(), Role::Orchestrator, "1")?,
        TransportConfig::default(),
    )?;

    // The intruder trusts our CA (so it accepts the server) but holds a certificate from
    // its own CA with the same identity.
    let intruder_cert = std::fs::read_to_string(theirs.path().join("orchestrator-2.pem"))?;
    let intruder_key = std::fs::read_to_string(theirs.path().join("orchestrator-2.key"))?;
    let our_ca = std::fs::read_to_string(ours.path().join("ca.pem"))?;
    let intruder = Credentials::from_pem(&our_ca, &intruder_cert, &intruder_key)?;
    let client = Endpoint::client(loopback(), &intruder, TransportConfig::default())?;

    // TLS 1.3 lets the client finish before the server has checked its certificate, so the
    // refusal surfaces at connect or at the first stream; either way as CertificateRefused.
    let refusal = match within(
        "connect",
        client.connect(server.addr, &Role::Orchestrator.server_name()),
    )
    .await?
    {
        Err(err) => err
            .link_error()
            .cloned()
            .with_context(|| format!("not a link error: {err}"))?,
        Ok(conn) => match within("open", conn.open_stream(StreamKind::Raft)).await? {
            Ok(_) => bail!("a client from another CA opened a stream"),
            Err(err) => err
                .link_error()
                .cloned()
                .with_context(|| format!("not a link error: {err}"))?,
        },
    };
    assert!(
        matches!(refusal, LinkError::CertificateRefused { .. }),
        "{refusal}"
    );

    let server_side = server
        .expect(|event| match event {
            ServerEvent::HandshakeFailed(err) => Some(err),
            ServerEvent::Connected(peer) => panic!("server accepted {peer} from another CA"),
            _ => None,
        })
        .await?;
    assert!(
        matches!(
            server_side.link_error(),
            Some(LinkError::CertificateRefused { .. })
        ),
        "{server_side}"
    );

    // And the reverse: a server from another CA is refused by our client.
    let foreign = EchoServer::start(
        &creds(theirs.path(), Role::Orchestrator, "1")?,
        TransportConfig::default(),
    )?;
    let ours_client = Endpoint::client(
        loopback(),
        &creds(ours.path(), Role::Orchestrator, "2")?,
        TransportConfig::default(),
    )?;
    let err = within(
        "connect",
        ours_client.connect(foreign.addr, &Role::Orchestrator.server_name()),
    )
    .await?
    .expect_err("a server from another CA must be refused");
    assert!(
        matches!(err.link_error(), Some(LinkError::CertificateRefused { .. })),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn agent_opening_a_raft_stream_is_refused_with_the_role_code() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    cluster(dir.path())?;
    let mut server = EchoServer::start(
        &creds(dir.path(), Role::Orchestrator, "1")?,
        TransportConfig::default(),
    )?;
    let agent = Endpoint::client(
        loopback(),
        &creds(dir.path(), Role::Agent, "eu-west")?,
        TransportConfig::default(),
    )?;
    let conn = within(
        "connect",
        agent.connect(server.addr, &Role::Orchestrator.server_name()),
    )
    .await??;
    let err = within("open", conn.open_stream(StreamKind::Raft))
        .await?
        .expect_err("an agent must not open a raft stream");
    match err.link_error() {
        Some(LinkError::RoleRefused { reason }) => {
            assert_eq!(reason, "role agent may not open raft streams");
        }
        _ => bail!("expected a role refusal, got {err}"),
    }
    // The QUIC close itself carries the distinct code.
    match conn.quinn().close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(close)) => {
            assert_eq!(
                close.error_code.into_inner(),
                u64::from(codes::ROLE_REFUSED)
            );
        }
        other => bail!("expected an application close, got {other:?}"),
    }
    let refused = server
        .expect(|event| match event {
            ServerEvent::AcceptFailed(AcceptError::RoleRefused { peer, kind, .. }) => {
                Some((peer, kind))
            }
            _ => None,
        })
        .await?;
    assert_eq!(
        refused,
        (Identity::new(Role::Agent, "eu-west")?, StreamKind::Raft)
    );

    // The same agent may open agent streams, on a new connection.
    let conn = within(
        "connect",
        agent.connect(server.addr, &Role::Orchestrator.server_name()),
    )
    .await??;
    let stream = within("open", conn.open_stream(StreamKind::Agent)).await??;
    assert_eq!(stream.kind(), StreamKind::Agent);

    // An operator may not open raft streams either.
    let operator = Endpoint::client(
        loopback(),
        &creds(dir.path(), Role::Operator, "admin")?,
        TransportConfig::default(),
    )?;
    let conn = within(
        "connect",
        operator.connect(server.addr, &Role::Orchestrator.server_name()),
    )
    .await??;
    let err = within("open", conn.open_stream(StreamKind::Raft))
        .await?
        .expect_err("operator on raft");
    assert!(
        matches!(err.link_error(), Some(LinkError::RoleRefused { .. })),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn bad_frames_stop_only_their_stream_and_the_endpoint_keeps_serving() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    cluster(dir.path())?;
    let config = TransportConfig {
        max_frame_bytes: 4096,
        ..TransportConfig::default()
    };
    let mut server =
        EchoServer::start(&creds(dir.path(), Role::Orchestrator, "1")?, config.clone())?;
    let client = Endpoint::client(
        loopback(),
        &creds(dir.path(), Role::Orchestrator, "2")?,
        config.clone(),
    )?;
    let conn = within(
        "connect",
        client.connect(server.addr, &Role::Orchestrator.server_name()),
    )
    .await??;
    let raw = conn.quinn().clone();

    // Each case: bytes written on a fresh raw stream as its header, then finish, and the
    // code the server must reset the stream with.
    let oversized = (config.max_frame_bytes as u32 + 1).to_be_bytes().to_vec();
    let cases: [(&str, Vec<u8>, u32); 5] = [
        // Version 1, then a stream kind that is no varint at all.
        (
            "garbage",
            vec![0, 0, 0, 5, 1, 0xff, 0xff, 0xff, 0xff],
            codes::MESSAGE_MALFORMED,
        ),
        (
            "truncated",
            [vec![0, 0, 0, 100], vec![1; 10]].concat(),
            codes::FRAME_TRUNCATED,
        ),
        ("oversized", oversized, codes::FRAME_TOO_LARGE),
        (
            "forged length",
            vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3],
            codes::FRAME_TOO_LARGE,
        ),
        // Version 2, then StreamKind::Raft (variant 0).
        (
            "other version",
            vec![0, 0, 0, 2, 2, 0],
            codes::VERSION_MISMATCH,
        ),
    ];
    for (name, bytes, code) in &cases {
        let (mut send, mut recv) = within("open raw", raw.open_bi()).await??;
        within("write", send.write_all(bytes)).await??;
        send.finish()?;
        let got = reset_code(&mut recv)
            .await
            .with_context(|| name.to_string())?;
        assert_eq!(
            got,
            u64::from(*code),
            "{name}: got code {got} ({})",
            codes::describe(got)
        );
        // The same connection still serves well-behaved streams.
        echo_once(&conn, 2)
            .await
            .with_context(|| format!("after {name}"))?;
    }

    // Garbage after a valid header, on an accepted stream: the stream is stopped, the
    // server reports why.
    let (mut send, mut recv) = within("open raw", raw.open_bi()).await??;
    let header = umbra_proto::envelope::encode(&StreamKind::Raft)?;
    let mut framed = (header.len() as u32).to_be_bytes().to_vec();
    framed.extend_from_slice(&header);
    framed.extend_from_slice(&[0, 0, 0, 3, 1, 0xff, 0xff]);
    within("write", send.write_all(&framed)).await??;
    send.finish()?;
    // The reset may overtake the acceptance reply (a reset abandons unacknowledged data),
    // so only the code is checked.
    assert_eq!(
        reset_code(&mut recv).await?,
        u64::from(codes::MESSAGE_MALFORMED)
    );
    let failure = server
        .expect(|event| match event {
            ServerEvent::StreamFailed(err) => Some(err),
            _ => None,
        })
        .await?;
    assert!(
        matches!(failure, StreamError::Envelope(_)),
        "server should name a malformed message, got {failure}"
    );

    // A second, well-behaved client is served normally.
    let other = Endpoint::client(
        loopback(),
        &creds(dir.path(), Role::Orchestrator, "3")?,
        config,
    )?;
    let conn = within(
        "connect",
        other.connect(server.addr, &Role::Orchestrator.server_name()),
    )
    .await??;
    echo_once(&conn, 3).await
}

#[tokio::test]
async fn oversized_message_is_refused_before_sending() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    cluster(dir.path())?;
    let config = TransportConfig {
        max_frame_bytes: 1024,
        ..TransportConfig::default()
    };
    let server = EchoServer::start(&creds(dir.path(), Role::Orchestrator, "1")?, config.clone())?;
    let client = Endpoint::client(
        loopback(),
        &creds(dir.path(), Role::Orchestrator, "2")?,
        config,
    )?;
    let conn = within(
        "connect",
        client.connect(server.addr, &Role::Orchestrator.server_name()),
    )
    .await??;
    let mut stream = within("open", conn.open_stream(StreamKind::Raft)).await??;
    let err = within(
        "send",
        stream.send(&RaftMessage {
            from: 2,
            to: 1,
            message: vec![0; 2048],
        }),
    )
    .await?
    .expect_err("a frame above the maximum must be refused");
    assert!(
        matches!(
            err,
            StreamError::Frame(FrameError::TooLarge {
                max_bytes: 1024,
                ..
            })
        ),
        "{err}"
    );
    // Nothing was written, so the stream is still usable.
    within(
        "send",
        stream.send(&RaftMessage {
            from: 2,
            to: 1,
            message: vec![1; 10],
        }),
    )
    .await??;
    let back = within("recv", stream.recv::<RaftMessage>())
        .await??
        .context("ended")?;
    assert_eq!(back.message, vec![1; 10]);
    Ok(())
}

#[tokio::test]
async fn a_receiver_with_a_smaller_limit_stops_the_stream_with_a_clear_code() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    cluster(dir.path())?;
    let small = TransportConfig {
        max_frame_bytes: 1024,
        ..TransportConfig::default()
    };
    let mut server = EchoServer::start(&creds(dir.path(), Role::Orchestrator, "1")?, small)?;
    let client = Endpoint::client(
        loopback(),
        &creds(dir.path(), Role::Orchestrator, "2")?,
        TransportConfig::default(),
    )?;
    let conn = within(
        "connect",
        client.connect(server.addr, &Role::Orchestrator.server_name()),
    )
    .await??;
    let mut stream = within("open", conn.open_stream(StreamKind::Raft)).await??;
    within(
        "send",
        stream.send(&RaftMessage {
            from: 2,
            to: 1,
            message: vec![0; 8192],
        }),
    )
    .await??;
    let err = within("recv", stream.recv::<RaftMessage>())
        .await?
        .expect_err("the server must refuse the frame");
    assert!(
        matches!(err, StreamError::Reset { code } if code == u64::from(codes::FRAME_TOO_LARGE)),
        "{err}"
    );
    assert!(err.to_string().contains("maximum frame size"), "{err}");
    let failure = server
        .expect(|event| match event {
            ServerEvent::StreamFailed(err) => Some(err),
            _ => None,
        })
        .await?;
    assert!(
        matches!(
            failure,
            StreamError::Frame(FrameError::TooLarge {
                max_bytes: 1024,
                ..
            })
        ),
        "{failure}"
    );
    echo_once(&conn, 2)
        .await
        .context("the connection must survive a refused frame")
}

/// A member that crashes (no CONNECTION_CLOSE sent) and restarts on the same address resets
/// its peers' stale connections as soon as they send to it, because its stateless-reset key
/// is derived from its private key; peers do not wait out the idle timeout.
#[tokio::test]
async fn a_restarted_member_resets_stale_connections_at_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    cluster(dir.path())?;
    // An idle timeout far above the deadline: only a stateless reset can end the
    // connection in time.
    let config = TransportConfig {
        idle_timeout: Duration::from_secs(120),
        ..TransportConfig::default()
    };
    let two = creds(dir.path(), Role::Orchestrator, "2")?;

    // The member that will crash runs on a runtime of its own, so it can be stopped dead:
    // `shutdown_background` drops its tasks without letting them send anything.
    let doomed = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let addr = {
        let _inside = doomed.enter();
        let endpoint = Endpoint::server(loopback(), &two, config.clone())?;
        let addr = endpoint.local_addr()?;
        let (tx, _events) = mpsc::channel(16);
        doomed.spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                if let Ok(conn) = incoming.establish().await {
                    tokio::spawn(serve_connection(conn, tx.clone()));
                }
            }
        });
        addr
    };

    let one = Endpoint::client(
        loopback(),
        &creds(dir.path(), Role::Orchestrator, "1")?,
        config.clone(),
    )?;
    let conn = within(
        "connect",
        one.connect(addr, &Identity::orchestrator(2).server_name()),
    )
    .await??;
    echo_once(&conn, 1).await?;

    doomed.shutdown_background();
    // Same identity, same address, new process state. The port may take a moment to free.
    let restarted = within("rebind", async {
        loop {
            match Endpoint::server(addr, &two, config.clone()) {
                Ok(endpoint) => return endpoint,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await?;
    let (tx, _events) = mpsc::channel(16);
    let serving = restarted.clone();
    tokio::spawn(async move {
        while let Some(incoming) = serving.accept().await {
            if let Ok(conn) = incoming.establish().await {
                tokio::spawn(serve_connection(conn, tx.clone()));
            }
        }
    });

    let crashed_at = std::time::Instant::now();
    // Anything sent on the stale connection reaches the new incarnation, which answers with
    // a stateless reset.
    let mut stale = within("open", conn.open_stream(StreamKind::Raft))
        .await?
        .err();
    if stale.is_none() {
        stale = Some(StreamError::Link(within("closed", conn.closed()).await?));
    }
    let reason = conn
        .close_reason()
        .context("the stale connection must be closed")?;
    assert!(
        matches!(reason, LinkError::Quic(quinn::ConnectionError::Reset)),
        "expected a stateless reset, got {reason} (stream: {stale:?})"
    );
    let detected_after = crashed_at.elapsed();
    assert!(
        detected_after < config.idle_timeout / 4,
        "took {detected_after:?}"
    );
    println!("stale connection reset {detected_after:?} after the member came back");

    let conn = within(
        "reconnect",
        one.connect(addr, &Identity::orchestrator(2).server_name()),
    )
    .await??;
    echo_once(&conn, 1).await
}

/// A peer offering another ALPN id (another major protocol version) is refused during the
/// handshake, and the refusal says so rather than blaming certificates.
#[tokio::test]
async fn another_protocol_major_version_is_refused_at_handshake() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    cluster(dir.path())?;
    let server = EchoServer::start(
        &creds(dir.path(), Role::Orchestrator, "1")?,
        TransportConfig::default(),
    )?;
    let mut tls = creds(dir.path(), Role::Orchestrator, "2")?.client_config()?;
    tls.alpn_protocols = vec![b"umbra/2".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(std::sync::Arc::new(tls))?;
    let mut future = quinn::Endpoint::client(loopback())?;
    future.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(crypto)));
    let err = within(
        "connect",
        future.connect(server.addr, &Role::Orchestrator.server_name())?,
    )
    .await?
    .expect_err("another ALPN must be refused");
    let link = LinkError::from(err);
    assert!(matches!(link, LinkError::ProtocolMismatch { .. }), "{link}");
    assert!(link.to_string().contains("same Umbra version"), "{link}");
    Ok(())
}
