//! RFC 2136 dynamic update, signed with TSIG (RFC 8945), for standard authoritative servers
//! (BIND 9, Knot, PowerDNS) that users already run.
//!
//! A record set change is one UPDATE message: delete the name's A, AAAA and weight-TXT
//! RRsets, then add the new ones, so the server applies it atomically and bumps its serial.
//! Standard servers cannot answer by weight: they serve every address with weight > 0 (in
//! their rotating order), so shares are equal among served addresses and exact weights are
//! applied at the load balancers. The weights are kept beside the addresses in TXT records
//! (`umbra-weight <address> <weight>`) so `record_set` reads back exactly what was set. The
//! TSIG secret is never logged. This module must not retry a refused update: a refusal is a
//! configuration error the operator has to fix.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures::FutureExt;
use futures::StreamExt;
use futures::future::BoxFuture;
use hickory_net::client::Client;
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::udp::UdpClientStream;
use hickory_net::xfer::DnsHandle;
use hickory_proto::op::{DnsRequest, Message, OpCode, Query, ResponseCode, UpdateMessage};
use hickory_proto::rr::rdata::tsig::TsigAlgorithm;
use hickory_proto::rr::rdata::{A, AAAA, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType, TSigner};

use super::{DnsError, DnsProvider, WeightedAddress, WeightedRecordSet, parse_fqdn};

/// Time for one update or query exchange unless configured.
pub const DEFAULT_EXCHANGE_TIMEOUT: Duration = Duration::from_secs(3);
/// Allowed clock difference between us and the server, in seconds; RFC 8945 § 10 recommends
/// 300.
pub const TSIG_FUDGE_SECS: u16 = 300;
/// Shortest secret accepted: 128 bits, out of reach of guessing; `tsig-keygen -a hmac-sha256`
/// makes 256.
pub const MIN_SECRET_BYTES: usize = 16;
const WEIGHT_TXT_PREFIX: &str = "umbra-weight";

/// A TSIG key as the server knows it (`key "name" { algorithm hmac-sha256; secret "..."; }`).
#[derive(Clone)]
pub struct TsigKey {
    pub name: String,
    pub algorithm: TsigAlgorithm,
    pub secret: Vec<u8>,
}

impl TsigKey {
    /// A key from the base64 secret a BIND key file holds (`tsig-keygen` prints one).
    pub fn from_base64(
        name: &str,
        algorithm: TsigAlgorithm,
        secret_base64: &str,
    ) -> Result<Self, DnsError> {
        use base64::Engine as _;
        let secret = base64::engine::general_purpose::STANDARD
            .decode(secret_base64.trim())
            .map_err(|e| {
                DnsError::Invalid(format!("the secret of TSIG key {name} is not base64: {e}"))
            })?;
        Ok(Self {
            name: name.to_string(),
            algorithm,
            secret,
        })
    }

    /// The signer hickory signs and verifies messages with; refuses a secret shorter than
    /// [`MIN_SECRET_BYTES`].
    pub fn signer(&self) -> Result<TSigner, DnsError> {
        if self.secret.len() < MIN_SECRET_BYTES {
            return Err(DnsError::Invalid(format!(
                "TSIG key {} is {} bytes; use at least {MIN_SECRET_BYTES} (e.g. `tsig-keygen -a hmac-sha256`)",
                self.name,
                self.secret.len()
            )));
        }
        TSigner::new(
            self.secret.clone(),
            self.algorithm.clone(),
            parse_fqdn(&self.name)?,
            TSIG_FUDGE_SECS,
        )
        .map_err(|e| DnsError::Invalid(format!("TSIG key {}: {e}", self.name)))
    }

    /// The secret as base64, for writing a server's key file.
    pub fn secret_base64(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(&self.secret)
    }
}

/// The TSIG algorithms updates can be signed with (hickory signs only these three); BIND's
/// names for them, as `tsig-keygen -a` takes them.
const SIGNING_ALGORITHMS: [(&str, TsigAlgorithm); 3] = [
    ("hmac-sha256", TsigAlgorithm::HmacSha256),
    ("hmac-sha384", TsigAlgorithm::HmacSha384),
    ("hmac-sha512", TsigAlgorithm::HmacSha512),
];

impl TsigKey {
    /// The one key a BIND key file declares, as `tsig-keygen -a hmac-sha256 NAME` writes it:
    ///
    /// ```text
    /// key "umbra-update" {
    ///     algorithm hmac-sha256;
    ///     secret "base64...";
    /// };
    /// ```
    ///
    /// Comments (`#`, `//`, `/* */`) are allowed. `what` names the file in errors; no error
    /// ever quotes the secret.
    pub fn from_bind_key_file(text: &str, what: &str) -> Result<Self, DnsError> {
        let expected = "write it as `tsig-keygen -a hmac-sha256 NAME` does: \
                        key \"NAME\" { algorithm hmac-sha256; secret \"BASE64\"; };";
        let bad =
            |why: String| DnsError::Invalid(format!("TSIG key file {what}: {why}; {expected}"));
        let tokens = key_file_tokens(text).map_err(bad)?;
        let mut tokens = tokens.iter().map(String::as_str);
        let mut next = |wanted: &str| {
            tokens
                .next()
                .ok_or_else(|| bad(format!("it ends where {wanted} should come")))
        };
        if next("`key`")? != "key" {
            return Err(bad("it does not start with `key`".into()));
        }
        let name = next("the key's name")?.to_owned();
        if next("`{`")? != "{" {
            return Err(bad(format!("`{{` should follow the name {name:?}")));
        }
        let (mut algorithm, mut secret) = (None, None);
        loop {
            match next("`algorithm`, `secret` or `}`")? {
                "}" => break,
                "algorithm" => algorithm = Some(next("the algorithm")?.to_ascii_lowercase()),
                "secret" => secret = Some(next("the secret")?.to_owned()),
                other => {
                    return Err(bad(format!(
                        "unexpected {other:?} in key {name:?} (only algorithm and secret)"
                    )));
                }
            }
            if next("`;`")? != ";" {
                return Err(bad(format!(
                    "a `;` should end each statement of key {name:?}"
                )));
            }
        }
        if next("`;`")? != ";" {
            return Err(bad("a `;` should follow the key's closing `}`".into()));
        }
        if let Some(extra) = tokens.next() {
            return Err(bad(format!(
                "{extra:?} follows the key; the file must declare exactly one key"
            )));
        }
        let algorithm = algorithm.ok_or_else(|| bad(format!("key {name:?} has no algorithm")))?;
        let secret = secret.ok_or_else(|| bad(format!("key {name:?} has no secret")))?;
        let Some((_, algorithm)) = SIGNING_ALGORITHMS.iter().find(|(n, _)| *n == algorithm) else {
            return Err(bad(format!(
                "algorithm {algorithm:?} cannot sign updates here; use one of hmac-sha256, \
                 hmac-sha384, hmac-sha512"
            )));
        };
        parse_fqdn(&name).map_err(|e| bad(e.to_string()))?;
        let key =
            Self::from_base64(&name, algorithm.clone(), &secret).map_err(|e| bad(e.to_string()))?;
        if key.secret.len() < MIN_SECRET_BYTES {
            return Err(bad(format!(
                "the secret of key {name:?} is {} bytes; use at least {MIN_SECRET_BYTES}",
                key.secret.len()
            )));
        }
        Ok(key)
    }

    /// [`TsigKey::from_bind_key_file`] on the file at `path`.
    pub fn read_bind_key_file(path: &std::path::Path) -> Result<Self, DnsError> {
        let text = std::fs::read_to_string(path).map_err(|source| DnsError::Io {
            what: format!("TSIG key file {}", path.display()),
            source,
        })?;
        Self::from_bind_key_file(&text, &path.display().to_string())
    }
}

/// The tokens of a BIND configuration fragment: quoted strings (unquoted), `{`, `}`, `;` and
/// words, with comments removed.
fn key_file_tokens(text: &str) -> Result<Vec<String>, String> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '#' => while chars.next_if(|&c| c != '\n').is_some() {},
            '/' if chars.peek() == Some(&'/') => while chars.next_if(|&c| c != '\n').is_some() {},
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut last = ' ';
                loop {
                    match chars.next() {
                        None => return Err("a `/*` comment is never closed".into()),
                        Some('/') if last == '*' => break,
                        Some(c) => last = c,
                    }
                }
            }
            '{' | '}' | ';' => tokens.push(c.to_string()),
            '"' => {
                let mut s = String::new();
                loop {
                    match chars.next() {
                        None => return Err("a quoted string is never closed".into()),
                        Some('"') => break,
                        Some(c) => s.push(c),
                    }
                }
                tokens.push(s);
            }
            c => {
                let mut s = c.to_string();
                while let Some(c) = chars.next_if(|&c| !c.is_whitespace() && !"{};\"#".contains(c))
                {
                    s.push(c);
                }
                tokens.push(s);
            }
        }
    }
    Ok(tokens)
}

/// A response code by its RFC mnemonic and hickory's words, e.g. `NOTAUTH (Not authorized)`,
/// so an operator can match what `named` logs and what RFC 2136 § 2.2 calls it.
pub fn rcode_name(rcode: ResponseCode) -> String {
    let mnemonic = match rcode {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::YXDomain => "YXDOMAIN",
        ResponseCode::YXRRSet => "YXRRSET",
        ResponseCode::NXRRSet => "NXRRSET",
        ResponseCode::NotAuth => "NOTAUTH",
        ResponseCode::NotZone => "NOTZONE",
        _ => return rcode.to_string(),
    };
    format!("{mnemonic} ({rcode})")
}

impl fmt::Debug for TsigKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The secret is what authorizes changes to the zone: never print it.
        f.debug_struct("TsigKey")
            .field("name", &self.name)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// Where to send updates, for which zone, signed with which key.
#[derive(Clone, Debug)]
pub struct Rfc2136Config {
    /// The primary server that accepts updates.
    pub server: SocketAddr,
    pub zone: String,
    /// `None` sends unsigned updates (servers should refuse them; useful only to check that).
    pub key: Option<TsigKey>,
    pub timeout: Duration,
    /// Servers to verify against; the primary alone unless secondaries are listed.
    pub authoritative_servers: Vec<SocketAddr>,
}

impl Rfc2136Config {
    pub fn new(server: SocketAddr, zone: impl Into<String>, key: Option<TsigKey>) -> Self {
        Self {
            server,
            zone: zone.into(),
            key,
            timeout: DEFAULT_EXCHANGE_TIMEOUT,
            authoritative_servers: vec![server],
        }
    }
}

/// A DNS provider that is a standard server updated by RFC 2136.
pub struct Rfc2136Provider {
    config: Rfc2136Config,
    zone: Name,
    signer: Option<TSigner>,
}

impl Rfc2136Provider {
    pub fn new(config: Rfc2136Config) -> Result<Self, DnsError> {
        let zone = parse_fqdn(&config.zone)?;
        if config.timeout.is_zero() || config.authoritative_servers.is_empty() {
            return Err(DnsError::Invalid(
                "timeout must be positive and at least one server listed".into(),
            ));
        }
        let signer = config.key.as_ref().map(TsigKey::signer).transpose()?;
        Ok(Self {
            config,
            zone,
            signer,
        })
    }

    /// Sends one unsigned message through hickory's client and returns the response.
    async fn exchange(&self, message: Message) -> Result<(ResponseCode, Message), DnsError> {
        let server = self.config.server;
        let stream = UdpClientStream::builder(server, TokioRuntimeProvider::default())
            .with_timeout(Some(self.config.timeout))
            .build();
        let (client, background) = Client::<TokioRuntimeProvider>::from_sender(stream);
        let background = tokio::spawn(background);
        let result = tokio::time::timeout(
            self.config.timeout,
            client.send(DnsRequest::from(message)).next(),
        )
        .await;
        background.abort();
        let response = match result {
            Err(_) => {
                return Err(DnsError::Exchange {
                    server,
                    reason: format!("no answer within {} ms", self.config.timeout.as_millis()),
                });
            }
            Ok(None) => {
                return Err(DnsError::Exchange {
                    server,
                    reason: "no response".into(),
                });
            }
            Ok(Some(Err(e))) => {
                return Err(DnsError::Exchange {
                    server,
                    reason: e.to_string(),
                });
            }
            Ok(Some(Ok(response))) => response,
        };
        let message: Message = response.into_message();
        Ok((message.metadata.response_code, message))
    }

    /// Builds the UPDATE that replaces `set` at `name` in one transaction.
    fn update_message(&self, name: &Name, set: &WeightedRecordSet) -> Message {
        let mut zone = Query::new();
        zone.set_name(self.zone.clone())
            .set_query_class(DNSClass::IN)
            .set_query_type(RecordType::SOA);
        let mut message = Message::query();
        message.metadata.op_code = OpCode::Update;
        message.metadata.recursion_desired = false;
        message.add_zone(zone);
        // RFC 2136 § 2.5.2: delete an RRset = class ANY, TTL 0, empty RDATA.
        for rtype in [RecordType::A, RecordType::AAAA, RecordType::TXT] {
            let mut delete = Record::update0(name.clone(), 0, rtype);
            delete.dns_class = DNSClass::ANY;
            message.add_update(delete);
        }
        for a in &set.addresses {
            if a.weight > 0 {
                let rdata = match a.addr {
                    IpAddr::V4(v4) => RData::A(A(v4)),
                    IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
                };
                message.add_update(Record::from_rdata(name.clone(), set.ttl_secs, rdata));
            }
            let txt = TXT::new(vec![format!("{WEIGHT_TXT_PREFIX} {} {}", a.addr, a.weight)]);
            message.add_update(Record::from_rdata(
                name.clone(),
                set.ttl_secs,
                RData::TXT(txt),
            ));
        }
        message
    }

    /// Sends the update for `set` signed (if a key is configured) or not, and returns the
    /// server's response code without judging it. Tests use this to check refusals.
    pub async fn send_update(
        &self,
        set: &WeightedRecordSet,
        signed: bool,
    ) -> Result<ResponseCode, DnsError> {
        let name = set.validate(&self.zone)?;
        let message = self.update_message(&name, set);
        match (&self.signer, signed) {
            (Some(signer), true) => {
                signed_exchange(self.config.server, self.config.timeout, message, signer).await
            }
            _ => Ok(self.exchange(message).await?.0),
        }
    }

    async fn query(&self, name: &Name, rtype: RecordType) -> Result<Vec<Record>, DnsError> {
        let mut message = Message::query();
        let mut q = Query::new();
        q.set_name(name.clone())
            .set_query_class(DNSClass::IN)
            .set_query_type(rtype);
        message.add_query(q);
        message.metadata.recursion_desired = false;
        let (rcode, response) = self.exchange(message).await?;
        match rcode {
            ResponseCode::NoError => Ok(response
                .answers
                .into_iter()
                .filter(|r| r.record_type() == rtype)
                .collect()),
            ResponseCode::NXDomain => Ok(vec![]),
            other => Err(DnsError::Rejected {
                server: self.config.server,
                what: format!("query {name} {rtype}"),
                rcode: other.to_string(),
            }),
        }
    }
}

/// Sends a TSIG-signed message over UDP and returns the response code. hickory's client
/// stream rejects any response whose MAC it cannot verify, which hides the server's answer
/// to a wrongly signed request (RFC 8945 § 5.2: BADSIG/BADKEY replies carry an empty MAC).
/// So the exchange is done here: a refusal's code is returned as is (it can only make the
/// caller fail), while a success must carry a MAC that verifies with our key.
pub(crate) async fn signed_exchange(
    server: SocketAddr,
    timeout: Duration,
    mut message: Message,
    signer: &TSigner,
) -> Result<ResponseCode, DnsError> {
    let fail = |reason: String| DnsError::Exchange { server, reason };
    let now_secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| fail(format!("system clock before 1970: {e}")))?
        .as_secs();
    let id = message.metadata.id;
    let verifier = message
        .finalize(signer, now_secs)
        .map_err(|e| fail(format!("signing: {e}")))?;
    let request = message
        .to_vec()
        .map_err(|e| fail(format!("encoding: {e}")))?;
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse()
    } else {
        "[::]:0".parse()
    }
    .expect("constant socket address");
    let socket = tokio::net::UdpSocket::bind(bind)
        .await
        .map_err(|e| fail(format!("binding UDP: {e}")))?;
    socket
        .connect(server)
        .await
        .map_err(|e| fail(format!("connecting UDP: {e}")))?;
    socket
        .send(&request)
        .await
        .map_err(|e| fail(format!("sending: {e}")))?;
    let mut buf = vec![0_u8; 65_535];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let n = match tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
            Err(_) => {
                return Err(fail(format!("no answer within {} ms", timeout.as_millis())));
            }
            Ok(Err(e)) => return Err(fail(format!("receiving: {e}"))),
            Ok(Ok(n)) => n,
        };
        // A datagram that does not parse or answers another id is not our response.
        let Ok(response) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        if response.metadata.id != id {
            continue;
        }
        let rcode = response.metadata.response_code;
        if rcode != ResponseCode::NoError {
            return Ok(rcode);
        }
        let mut verifier =
            verifier.ok_or_else(|| fail("the TSIG signer gave no response verifier".into()))?;
        verifier
            .verify(&buf[..n])
            .map_err(|e| fail(format!("the success reply is not signed with our key: {e}")))?;
        return Ok(rcode);
    }
}

impl DnsProvider for Rfc2136Provider {
    fn set_record_set<'a>(
        &'a self,
        set: &'a WeightedRecordSet,
    ) -> BoxFuture<'a, Result<(), DnsError>> {
        async move {
            let rcode = self.send_update(set, true).await?;
            if rcode != ResponseCode::NoError {
                return Err(DnsError::Rejected {
                    server: self.config.server,
                    what: format!("the update of {}", set.name),
                    rcode: rcode_name(rcode),
                });
            }
            tracing::info!(
                name = set.name,
                ttl_secs = set.ttl_secs,
                addresses = set.addresses.len(),
                "RFC 2136 update applied"
            );
            Ok(())
        }
        .boxed()
    }

    fn record_set<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<WeightedRecordSet>, DnsError>> {
        async move {
            let fqdn = parse_fqdn(name)?;
            let mut records = self.query(&fqdn, RecordType::A).await?;
            records.extend(self.query(&fqdn, RecordType::AAAA).await?);
            let txts = self.query(&fqdn, RecordType::TXT).await?;
            let mut addresses: Vec<WeightedAddress> = Vec::new();
            let mut ttl_secs = records.first().map(|r| r.ttl);
            for r in &txts {
                let RData::TXT(txt) = &r.data else { continue };
                for s in txt.txt_data.iter() {
                    let s = String::from_utf8_lossy(s);
                    let mut parts = s.split_whitespace();
                    if parts.next() != Some(WEIGHT_TXT_PREFIX) {
                        continue;
                    }
                    if let (Some(Ok(addr)), Some(Ok(weight))) = (
                        parts.next().map(str::parse::<IpAddr>),
                        parts.next().map(str::parse::<u8>),
                    ) {
                        addresses.push(WeightedAddress { addr, weight });
                        ttl_secs.get_or_insert(r.ttl);
                    }
                }
            }
            // Addresses served without a weight record (set by someone else) count as weight 1.
            for r in &records {
                let addr = match &r.data {
                    RData::A(a) => IpAddr::V4(a.0),
                    RData::AAAA(a) => IpAddr::V6(a.0),
                    _ => continue,
                };
                if !addresses.iter().any(|a| a.addr == addr) {
                    addresses.push(WeightedAddress { addr, weight: 1 });
                }
            }
            Ok(ttl_secs.map(|ttl_secs| {
                addresses.sort();
                WeightedRecordSet {
                    name: fqdn.to_ascii(),
                    ttl_secs,
                    addresses,
                }
            }))
        }
        .boxed()
    }

    fn authoritative_servers(&self) -> Vec<SocketAddr> {
        self.config.authoritative_servers.clone()
    }
}
