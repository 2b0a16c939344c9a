//! Umbra's embedded authoritative DNS server for a service zone, on hickory-server.
//!
//! hickory's in-memory zone answers every record of an RRset and refuses updates, so this
//! module implements hickory-server's public `ZoneHandler` itself: each A or AAAA query is
//! answered with one address chosen by weight (smooth weighted round robin, so over any run
//! of queries the shares match the weights as closely as integers allow — the behaviour of
//! weighted routing at hosted DNS providers, without their randomness). Records are changed
//! in-process: one set through `DnsProvider`, or the whole zone in one step with
//! `WeightedZone::replace_all` (what `replicated` uses); every change bumps the SOA serial. It serves UDP and TCP
//! on one port. It must not accept dynamic updates from the network (use `rfc2136` against a
//! real server for that) and must not answer for names outside its zone.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, NS, SOA};
use hickory_proto::rr::{LowerName, Name, RData, RecordSet, RecordType};
use hickory_server::Server;
use hickory_server::server::{Request, RequestInfo};
use hickory_server::zone_handler::{
    AuthLookup, AxfrPolicy, Catalog, LookupControlFlow, LookupError, LookupOptions, LookupRecords,
    ZoneHandler, ZoneType,
};
use tokio::net::{TcpListener, UdpSocket};

use super::{DnsError, DnsProvider, WeightedAddress, WeightedRecordSet, parse_fqdn};

/// TTL of negative answers (SOA minimum, RFC 2308) unless configured: short, because a name
/// that does not exist yet may be created by the next cutover step.
pub const DEFAULT_NEGATIVE_TTL_SECS: u32 = 30;
/// Idle TCP connections are closed after this long unless configured (hickory's own examples
/// use 5 s); DNS over TCP is for large answers and retries, not long sessions.
pub const DEFAULT_TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Per-connection buffer of outgoing TCP responses.
const TCP_RESPONSE_BUFFER: usize = 32;
/// Attempts to find a port free for both UDP and TCP when asked for port 0.
const BIND_ATTEMPTS: usize = 16;

/// Settings of the embedded server.
#[derive(Clone, Debug)]
pub struct EmbeddedDnsConfig {
    /// The zone served, e.g. `umbra.test.`.
    pub zone: String,
    /// UDP and TCP listen address; port 0 picks one free for both.
    pub listen: SocketAddr,
    pub negative_ttl_secs: u32,
    pub tcp_idle_timeout: Duration,
}

impl EmbeddedDnsConfig {
    pub fn new(zone: impl Into<String>, listen: SocketAddr) -> Self {
        Self {
            zone: zone.into(),
            listen,
            negative_ttl_secs: DEFAULT_NEGATIVE_TTL_SECS,
            tcp_idle_timeout: DEFAULT_TCP_IDLE_TIMEOUT,
        }
    }

    pub fn validate(&self) -> Result<Name, DnsError> {
        let zone = parse_fqdn(&self.zone)?;
        if zone.is_root() {
            return Err(DnsError::Invalid(
                "the embedded server serves a service zone, not the root".into(),
            ));
        }
        if self.negative_ttl_secs == 0 || self.tcp_idle_timeout.is_zero() {
            return Err(DnsError::Invalid(
                "negative_ttl_secs and tcp_idle_timeout must be positive".into(),
            ));
        }
        Ok(zone)
    }
}

/// Smooth weighted round robin over the addresses of one family.
struct Picker {
    entries: Vec<(IpAddr, i64)>,
    current: Mutex<Vec<i64>>,
}

impl Picker {
    fn new(addresses: impl Iterator<Item = WeightedAddress>) -> Self {
        let entries: Vec<(IpAddr, i64)> = addresses
            .filter(|a| a.weight > 0)
            .map(|a| (a.addr, i64::from(a.weight)))
            .collect();
        let current = Mutex::new(vec![0; entries.len()]);
        Self { entries, current }
    }

    fn pick(&self) -> Option<IpAddr> {
        if self.entries.is_empty() {
            return None;
        }
        let total: i64 = self.entries.iter().map(|e| e.1).sum();
        let mut current = self.current.lock().expect("picker lock");
        let mut best = 0;
        for (i, (_, w)) in self.entries.iter().enumerate() {
            current[i] += w;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        Some(self.entries[best].0)
    }
}

struct ServedSet {
    set: WeightedRecordSet,
    v4: Picker,
    v6: Picker,
}

impl ServedSet {
    fn new(set: &WeightedRecordSet) -> Self {
        Self {
            set: set.clone(),
            v4: Picker::new(set.addresses.iter().copied().filter(|a| a.addr.is_ipv4())),
            v6: Picker::new(set.addresses.iter().copied().filter(|a| a.addr.is_ipv6())),
        }
    }
}

struct ZoneState {
    serial: u32,
    soa: Arc<RecordSet>,
    ns: Arc<RecordSet>,
    sets: HashMap<LowerName, ServedSet>,
}

/// The zone: a `ZoneHandler` for hickory's catalog and the record store behind it.
pub struct WeightedZone {
    origin: LowerName,
    origin_name: Name,
    negative_ttl_secs: u32,
    state: RwLock<ZoneState>,
}

impl WeightedZone {
    pub fn new(origin: Name, negative_ttl_secs: u32) -> Self {
        let ns_name = Name::from_ascii("ns1")
            .expect("constant label")
            .append_domain(&origin)
            .expect("short name");
        let mut ns = RecordSet::with_ttl(origin.clone(), RecordType::NS, 3600);
        ns.add_rdata(RData::NS(NS(ns_name)));
        let serial = 1;
        let state = ZoneState {
            serial,
            soa: Arc::new(Self::soa_set(&origin, serial, negative_ttl_secs)),
            ns: Arc::new(ns),
            sets: HashMap::new(),
        };
        Self {
            origin: LowerName::new(&origin),
            origin_name: origin,
            negative_ttl_secs,
            state: RwLock::new(state),
        }
    }

    fn soa_set(origin: &Name, serial: u32, negative_ttl_secs: u32) -> RecordSet {
        let label = |l: &str| {
            Name::from_ascii(l)
                .expect("constant label")
                .append_domain(origin)
                .expect("short name")
        };
        // Refresh/retry/expire only matter to secondaries; the values are RFC 1912 § 2.2's
        // suggestions. The minimum is the negative-caching TTL (RFC 2308).
        let soa = SOA::new(
            label("ns1"),
            label("hostmaster"),
            serial,
            3600,
            600,
            1_209_600,
            negative_ttl_secs,
        );
        let mut set = RecordSet::with_ttl(origin.clone(), RecordType::SOA, negative_ttl_secs);
        set.add_rdata(RData::SOA(soa));
        set
    }

    /// Current SOA serial (bumped on every change).
    pub fn serial(&self) -> u32 {
        self.state.read().expect("zone lock").serial
    }

    /// The zone's origin, e.g. `umbra.test.`.
    pub fn origin_name(&self) -> &Name {
        &self.origin_name
    }

    /// Every record set the zone holds, sorted by name.
    pub fn record_sets(&self) -> Vec<WeightedRecordSet> {
        let state = self.state.read().expect("zone lock");
        let mut sets: Vec<WeightedRecordSet> = state.sets.values().map(|s| s.set.clone()).collect();
        sets.sort_by(|a, b| a.name.cmp(&b.name));
        sets
    }

    /// Makes the zone hold exactly `sets`, in one change that queries see whole or not at all:
    /// every set is validated first (one invalid set, or a name given twice, changes
    /// nothing), names not in `sets` are removed, unchanged sets keep their round-robin
    /// position (so re-applying the same content does not skew the shares), and the serial is
    /// bumped once if anything changed. Returns whether anything changed.
    pub fn replace_all(&self, sets: &[WeightedRecordSet]) -> Result<bool, DnsError> {
        let mut wanted: HashMap<LowerName, &WeightedRecordSet> = HashMap::with_capacity(sets.len());
        for set in sets {
            let name = LowerName::new(&set.validate(&self.origin_name)?);
            if wanted.insert(name, set).is_some() {
                return Err(DnsError::Invalid(format!(
                    "{} is given twice; a name has one record set",
                    set.name
                )));
            }
        }
        let mut state = self.state.write().expect("zone lock");
        let before = state.sets.len();
        state
            .sets
            .retain(|name, served| wanted.get(name).is_some_and(|set| served.set == **set));
        let mut changed = state.sets.len() != before;
        for (name, set) in wanted {
            if let Entry::Vacant(vacant) = state.sets.entry(name) {
                vacant.insert(ServedSet::new(set));
                changed = true;
            }
        }
        if changed {
            self.bump_serial(&mut state);
        }
        Ok(changed)
    }

    fn bump_serial(&self, state: &mut ZoneState) {
        // RFC 1982 serial arithmetic wraps; 0 is skipped because some tools treat it as unset.
        state.serial = state.serial.wrapping_add(1).max(1);
        state.soa = Arc::new(Self::soa_set(
            &self.origin_name,
            state.serial,
            self.negative_ttl_secs,
        ));
    }

    /// Replaces a record set and bumps the serial.
    pub fn set(&self, set: &WeightedRecordSet) -> Result<(), DnsError> {
        let name = set.validate(&self.origin_name)?;
        let served = ServedSet::new(set);
        let mut state = self.state.write().expect("zone lock");
        state.sets.insert(LowerName::new(&name), served);
        self.bump_serial(&mut state);
        Ok(())
    }

    pub fn get(&self, name: &str) -> Result<Option<WeightedRecordSet>, DnsError> {
        let name = LowerName::new(&parse_fqdn(name)?);
        Ok(self
            .state
            .read()
            .expect("zone lock")
            .sets
            .get(&name)
            .map(|s| s.set.clone()))
    }

    fn answer(
        &self,
        name: &LowerName,
        rtype: RecordType,
        options: LookupOptions,
    ) -> Result<AuthLookup, LookupError> {
        if !self.origin.zone_of(name) {
            return Err(LookupError::from(ResponseCode::Refused));
        }
        let state = self.state.read().expect("zone lock");
        let records = |set: &Arc<RecordSet>| {
            Ok(AuthLookup::answers(
                LookupRecords::new(options, set.clone()),
                None,
            ))
        };
        if *name == self.origin {
            return match rtype {
                RecordType::SOA => records(&state.soa),
                RecordType::NS => records(&state.ns),
                _ => Err(LookupError::NameExists),
            };
        }
        let Some(served) = state.sets.get(name) else {
            return Err(LookupError::from(ResponseCode::NXDomain));
        };
        let (picked, rdata): (Option<IpAddr>, fn(IpAddr) -> RData) = match rtype {
            RecordType::A | RecordType::ANY => (served.v4.pick(), rdata_of),
            RecordType::AAAA => (served.v6.pick(), rdata_of),
            _ => (None, rdata_of),
        };
        let Some(addr) = picked else {
            // The name exists but has no record of this type: NODATA, not NXDOMAIN.
            return Err(LookupError::NameExists);
        };
        let rtype = if addr.is_ipv4() {
            RecordType::A
        } else {
            RecordType::AAAA
        };
        let mut set = RecordSet::with_ttl(Name::from(name.clone()), rtype, served.set.ttl_secs);
        set.add_rdata(rdata(addr));
        Ok(AuthLookup::answers(
            LookupRecords::new(options, Arc::new(set)),
            None,
        ))
    }
}

fn rdata_of(addr: IpAddr) -> RData {
    match addr {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    }
}

#[async_trait::async_trait]
impl ZoneHandler for WeightedZone {
    fn zone_type(&self) -> ZoneType {
        ZoneType::Primary
    }

    fn axfr_policy(&self) -> AxfrPolicy {
        AxfrPolicy::Deny
    }

    fn origin(&self) -> &LowerName {
        &self.origin
    }

    async fn lookup(
        &self,
        name: &LowerName,
        rtype: RecordType,
        _request_info: Option<&RequestInfo<'_>>,
        lookup_options: LookupOptions,
    ) -> LookupControlFlow<AuthLookup> {
        LookupControlFlow::Continue(self.answer(name, rtype, lookup_options))
    }

    async fn search(
        &self,
        request: &Request,
        lookup_options: LookupOptions,
    ) -> (
        LookupControlFlow<AuthLookup>,
        Option<hickory_proto::rr::TSigResponseContext>,
    ) {
        let info = match request.request_info() {
            Ok(info) => info,
            Err(e) => return (LookupControlFlow::Break(Err(e)), None),
        };
        if info.query.query_type() == RecordType::AXFR {
            return (
                LookupControlFlow::Break(Err(LookupError::from(ResponseCode::Refused))),
                None,
            );
        }
        let answer = self.answer(info.query.name(), info.query.query_type(), lookup_options);
        (LookupControlFlow::Continue(answer), None)
    }

    async fn nsec_records(
        &self,
        _name: &LowerName,
        _options: LookupOptions,
    ) -> LookupControlFlow<AuthLookup> {
        // The zone is unsigned: there are no NSEC records to prove anything with.
        LookupControlFlow::Continue(Ok(AuthLookup::default()))
    }
}

/// The running embedded server and its zone.
pub struct EmbeddedDns {
    zone: Arc<WeightedZone>,
    local_addr: SocketAddr,
    server: tokio::sync::Mutex<Server<Catalog>>,
}

impl EmbeddedDns {
    /// Binds UDP and TCP on one port and starts answering for the zone.
    pub async fn start(config: EmbeddedDnsConfig) -> Result<Self, DnsError> {
        let origin = config.validate()?;
        let (udp, tcp) = bind_pair(config.listen).await?;
        let local_addr = udp.local_addr().map_err(|source| DnsError::Io {
            what: "DNS UDP socket".into(),
            source,
        })?;
        let zone = Arc::new(WeightedZone::new(origin.clone(), config.negative_ttl_secs));
        let mut catalog = Catalog::new();
        catalog.upsert(
            LowerName::new(&origin),
            vec![zone.clone() as Arc<dyn ZoneHandler>],
        );
        let mut server = Server::new(catalog);
        server.register_socket(udp);
        server.register_listener(tcp, config.tcp_idle_timeout, TCP_RESPONSE_BUFFER);
        tracing::info!(%local_addr, zone = %origin, "embedded DNS serving");
        Ok(Self {
            zone,
            local_addr,
            server: tokio::sync::Mutex::new(server),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn zone(&self) -> &WeightedZone {
        &self.zone
    }

    /// Stops serving (bounded wait for in-progress answers).
    pub async fn shutdown(&self) {
        let mut server = self.server.lock().await;
        let _ = tokio::time::timeout(Duration::from_secs(5), server.shutdown_gracefully()).await;
    }
}

async fn bind_pair(listen: SocketAddr) -> Result<(UdpSocket, TcpListener), DnsError> {
    let io = |what: &str| {
        let what = what.to_string();
        move |source| DnsError::Io { what, source }
    };
    if listen.port() != 0 {
        let udp = UdpSocket::bind(listen)
            .await
            .map_err(io(&format!("DNS UDP bind {listen}")))?;
        let tcp = TcpListener::bind(listen)
            .await
            .map_err(io(&format!("DNS TCP bind {listen}")))?;
        return Ok((udp, tcp));
    }
    // Port 0: take a free UDP port, then the same TCP port; another process may hold it, so
    // try a few times.
    let mut last = None;
    for _ in 0..BIND_ATTEMPTS {
        let udp = UdpSocket::bind(listen).await.map_err(io("DNS UDP bind"))?;
        let addr = udp.local_addr().map_err(io("DNS UDP socket"))?;
        match TcpListener::bind(addr).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last = Some(e),
        }
    }
    Err(DnsError::Io {
        what: format!(
            "finding a port free for both UDP and TCP on {}",
            listen.ip()
        ),
        source: last.unwrap_or_else(|| std::io::Error::other("no attempt made")),
    })
}

impl DnsProvider for EmbeddedDns {
    fn set_record_set<'a>(
        &'a self,
        set: &'a WeightedRecordSet,
    ) -> BoxFuture<'a, Result<(), DnsError>> {
        let result = self.zone.set(set);
        async move { result }.boxed()
    }

    fn record_set<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<WeightedRecordSet>, DnsError>> {
        let result = self.zone.get(name);
        async move { result }.boxed()
    }

    fn authoritative_servers(&self) -> Vec<SocketAddr> {
        vec![self.local_addr]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picker_shares_match_weights_exactly_per_cycle() {
        let addr = |s: &str| s.parse::<IpAddr>().unwrap();
        let p = Picker::new(
            [
                WeightedAddress {
                    addr: addr("10.0.0.1"),
                    weight: 90,
                },
                WeightedAddress {
                    addr: addr("10.0.0.2"),
                    weight: 10,
                },
                WeightedAddress {
                    addr: addr("10.0.0.3"),
                    weight: 0,
                },
            ]
            .into_iter(),
        );
        let picks: Vec<IpAddr> = (0..1000).map(|_| p.pick().unwrap()).collect();
        let count = |a: &str| picks.iter().filter(|&&p| p == addr(a)).count();
        assert_eq!(
            (count("10.0.0.1"), count("10.0.0.2"), count("10.0.0.3")),
            (900, 100, 0)
        );
        assert_eq!(Picker::new(std::iter::empty()).pick(), None);
    }
}
