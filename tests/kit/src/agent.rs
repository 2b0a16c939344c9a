//! An agent's first exchange with an orchestrator, as the tests that check the gateway's
//! answers (leader, follower hint, refusals) need it without running a whole `umbra-agent`.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use umbra_proto::agent::{AgentHello, HelloReply};
use umbra_proto::{Connection, Credentials, Endpoint, FramedStream, StreamKind, TransportConfig};

/// An open agent stream and the orchestrator's answer to its hello. Keep it alive while the
/// test needs the stream; dropping it closes the connection.
pub struct AgentGreeting {
    /// The client endpoint (closed on drop of the connection's last user).
    pub endpoint: Endpoint,
    /// The QUIC connection to the orchestrator.
    pub connection: Connection,
    /// The agent stream, after the hello.
    pub stream: FramedStream,
    /// The orchestrator's reply; `None` when it closed the stream or did not answer within
    /// the timeout.
    pub reply: Option<HelloReply>,
}

/// Connects to the orchestrator at `address` as `credentials` (an agent certificate), opens
/// an agent stream and says hello for `region` with no term seen yet; waits up to `timeout`
/// for the reply.
pub async fn agent_hello(
    address: SocketAddr,
    credentials: &Credentials,
    region: &str,
    timeout: Duration,
) -> anyhow::Result<AgentGreeting> {
    let endpoint = Endpoint::client(
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        credentials,
        TransportConfig::default(),
    )?;
    let connection = endpoint
        .connect(address, &umbra_proto::Role::Orchestrator.server_name())
        .await?;
    let mut stream = connection.open_stream(StreamKind::Agent).await?;
    stream
        .send(&AgentHello {
            region: region.into(),
            newest_term: 0,
        })
        .await?;
    let reply = tokio::time::timeout(timeout, stream.recv::<HelloReply>())
        .await
        .ok()
        .and_then(Result::ok)
        .flatten();
    Ok(AgentGreeting {
        endpoint,
        connection,
        stream,
        reply,
    })
}
