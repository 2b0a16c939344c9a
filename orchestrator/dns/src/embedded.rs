//! Umbra's embedded authoritative DNS server for a service zone, on hickory-server.
//!
//! hickory's in-memory zone answers every record of an RRset and refuses updates, so this
//! module implements hickory-server's public `ZoneHandler` itself: each A or AAAA query is
//! answered with one address chosen by weight (smooth weighted round robin, so over any run
//! of queries the shares match the weights as closely as integers allow — the behaviour of
//! weighted routing at hosted DNS providers, without their randomness). Records are changed
//! in-process: one set through `DnsProvider`, or the whole zone in one step with
//! `WeightedZone::replace_all` (what `replicated` uses); every change bumps the SOA serial. It serves UDP and TCP
//! on one port. With a transfer key it serves AXFR/IXFR to requests signed with it and, with
//! secondaries listed, sends them NOTIFY on each serial change (`transfer`), so BIND
//! secondaries keep answering when every orchestrator is down. It must not accept dynamic
//! updates from the network (use `rfc2136` against a real server for that), must not serve an
//! unsigned transfer, and must not answer for names outside its zone.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, NS, SOA};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordSet, RecordType};
use hickory_server::Server;
use hickory_server::server::{Request, RequestInfo};
use hickory_server::zone_handler::{
    AuthLookup, AxfrPolicy, Catalog, LookupControlFlow, LookupError, LookupOptions, LookupRecords,
    ZoneHandler, ZoneType,
};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::rfc2136::TsigKey;
use super::transfer::{NoEvents, NotifyPolicy, ZoneEvents, ZoneServer, spawn_notifier};
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
    /// Secondaries (BIND) sent NOTIFY on every serial change; needs `transfer_key`.
    pub secondaries: Vec<SocketAddr>,
    /// The TSIG key AXFR/IXFR requests must be signed with; `None` refuses every transfer.
    pub transfer_key: Option<TsigKey>,
    pub notify: NotifyPolicy,
}

impl EmbeddedDnsConfig {
    pub fn new(zone: impl Into<String>, listen: SocketAddr) -> Self {
        Self {
            zone: zone.into(),
            listen,
            negative_ttl_secs: DEFAULT_NEGATIVE_TTL_SECS,
            tcp_idle_timeout: DEFAULT_TCP_IDLE_TIMEOUT,
            secondaries: Vec::new(),
            transfer_key: None,
            notify: NotifyPolicy::default(),
        }
    }

    /// Notifies `secondaries` of every change and serves them transfers signed with `key`.
    pub fn with_secondaries(mut self, secondaries: Vec<SocketAddr>, key: TsigKey) -> Self {
        self.secondaries = secondaries;
        self.transfer_key = Some(key);
        self
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
        if !self.secondaries.is_empty() && self.transfer_key.is_none() {
            return Err(DnsError::Invalid(
                "secondaries need a transfer key: they fetch the zone with TSIG-signed \
                 transfers, and this server serves no unsigned transfer"
                    .into(),
            ));
        }
        for (i, secondary) in self.secondaries.iter().enumerate() {
            if self.secondaries[..i].contains(secondary) {
                return Err(DnsError::Invalid(format!(
                    "secondary {secondary} is listed twice; list each once"
                )));
            }
            if secondary.port() == 0 || secondary.ip().is_unspecified() {
                return Err(DnsError::Invalid(format!(
                    "secondary {secondary} is not an address NOTIFY can be sent to; give \
                     the secondary's IP and DNS port"
                )));
            }
            if *secondary == self.listen {
                return Err(DnsError::Invalid(format!(
                    "secondary {secondary} is this server's own listen address"
                )));
            }
        }
        if let Some(key) = &self.transfer_key {
            key.signer()?;
        }
        if self.notify.attempts == 0 || self.notify.first_timeout.is_zero() {
            return Err(DnsError::Invalid(
                "NOTIFY needs at least one attempt and a positive timeout".into(),
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
    /// The serial after each change, for the NOTIFY sender (`transfer`).
    serials: watch::Sender<u32>,
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
            serials: watch::Sender::new(serial),
        }
    }

    /// The serial after every change, as it happens (a receiver sees the latest; changes in
    /// between coalesce, which is all a secondary needs).
    pub fn subscribe_serial(&self) -> watch::Receiver<u32> {
        self.serials.subscribe()
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
        self.replace_all_inner(sets, None)
    }

    /// [`WeightedZone::replace_all`] for content that is the replicated state at `version`
    /// (a Raft applied index): if anything changed, the serial becomes `version` (modulo 2³²,
    /// 0 skipped) when that is newer than the current serial in RFC 1982 arithmetic, else the
    /// current serial plus one. So every orchestrator serving the same replicated state
    /// reports a serial from the same index sequence, and a secondary that asks any of them
    /// sees a higher serial only for newer content; a restarted node, whose zone starts at
    /// serial 1, cannot make a secondary go back to older records.
    pub fn replace_all_at(
        &self,
        sets: &[WeightedRecordSet],
        version: u64,
    ) -> Result<bool, DnsError> {
        self.replace_all_inner(sets, Some((version & u64::from(u32::MAX)) as u32))
    }

    fn replace_all_inner(
        &self,
        sets: &[WeightedRecordSet],
        serial_hint: Option<u32>,
    ) -> Result<bool, DnsError> {
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
            self.bump_serial(&mut state, serial_hint);
        }
        Ok(changed)
    }

    fn bump_serial(&self, state: &mut ZoneState, hint: Option<u32>) {
        // RFC 1982 serial arithmetic wraps; 0 is skipped because some tools treat it as unset.
        state.serial = match hint {
            Some(hint) if hint != 0 && serial_newer(hint, state.serial) => hint,
            _ => state.serial.wrapping_add(1).max(1),
        };
        state.soa = Arc::new(Self::soa_set(
            &self.origin_name,
            state.serial,
            self.negative_ttl_secs,
        ));
        self.serials.send_replace(state.serial);
    }

    /// The whole zone as a transfer carries it (RFC 5936 § 2.2): the SOA, the NS, every
    /// address with a non-zero weight (a standard secondary cannot weigh answers, so it serves
    /// the addresses of every region with a share), names sorted, and the SOA again. Taken
    /// under one read lock, so a transfer never mixes two versions of the zone.
    pub fn transfer_records(&self) -> (u32, Vec<Record>) {
        let state = self.state.read().expect("zone lock");
        let mut names: Vec<&LowerName> = state.sets.keys().collect();
        names.sort();
        let soa: Vec<Record> = state.soa.records_without_rrsigs().cloned().collect();
        let mut records = soa.clone();
        records.extend(state.ns.records_without_rrsigs().cloned());
        for name in names {
            let served = &state.sets[name];
            let owner = Name::from(name.clone());
            let mut addresses = served.set.served_addresses();
            addresses.sort_by_key(|a| (a.is_ipv6(), *a));
            for addr in addresses {
                records.push(Record::from_rdata(
                    owner.clone(),
                    served.set.ttl_secs,
                    rdata_of(addr),
                ));
            }
        }
        records.extend(soa);
        (state.serial, records)
    }

    /// The zone's SOA record (what an IXFR over UDP answers, RFC 1995 § 2).
    pub fn soa_records(&self) -> Vec<Record> {
        let state = self.state.read().expect("zone lock");
        state.soa.records_without_rrsigs().cloned().collect()
    }

    /// Replaces a record set and bumps the serial.
    pub fn set(&self, set: &WeightedRecordSet) -> Result<(), DnsError> {
        let name = set.validate(&self.origin_name)?;
        let served = ServedSet::new(set);
        let mut state = self.state.write().expect("zone lock");
        state.sets.insert(LowerName::new(&name), served);
        self.bump_serial(&mut state, None);
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

    pub(crate) fn answer(
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

/// RFC 1982 § 3.2: `a` is newer than `b`.
fn serial_newer(a: u32, b: u32) -> bool {
    a != b && (a.wrapping_sub(b) as i32) > 0
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
    server: tokio::sync::Mutex<Server<ZoneServer>>,
    notifier: Option<JoinHandle<()>>,
}

impl EmbeddedDns {
    /// Binds UDP and TCP on one port and starts answering for the zone.
    pub async fn start(config: EmbeddedDnsConfig) -> Result<Self, DnsError> {
        Self::start_with_events(config, Arc::new(NoEvents)).await
    }

    /// [`EmbeddedDns::start`], reporting NOTIFY and transfer outcomes to `events`. With
    /// secondaries configured, a task notifies them of every serial change.
    pub async fn start_with_events(
        config: EmbeddedDnsConfig,
        events: Arc<dyn ZoneEvents>,
    ) -> Result<Self, DnsError> {
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
        let signer = config
            .transfer_key
            .as_ref()
            .map(TsigKey::signer)
            .transpose()?;
        let notifier = match &signer {
            Some(signer) if !config.secondaries.is_empty() => Some(spawn_notifier(
                zone.clone(),
                config.secondaries.clone(),
                signer.clone(),
                config.notify,
                events.clone(),
            )),
            _ => None,
        };
        let mut server = Server::new(ZoneServer {
            catalog,
            zone: zone.clone(),
            signer,
            events,
        });
        server.register_socket(udp);
        server.register_listener(tcp, config.tcp_idle_timeout, TCP_RESPONSE_BUFFER);
        tracing::info!(
            %local_addr,
            zone = %origin,
            secondaries = ?config.secondaries,
            transfers = config.transfer_key.is_some(),
            "embedded DNS serving"
        );
        Ok(Self {
            zone,
            local_addr,
            server: tokio::sync::Mutex::new(server),
            notifier,
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
        if let Some(notifier) = &self.notifier {
            notifier.abort();
        }
        let mut server = self.server.lock().await;
        let _ = tokio::time::timeout(Duration::from_secs(5), server.shutdown_gracefully()).await;
    }
}

impl Drop for EmbeddedDns {
    fn drop(&mut self) {
        if let Some(notifier) = &self.notifier {
            notifier.abort();
        }
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
    fn the_serial_follows_the_version_only_forward_and_wraps_as_rfc_1982_says() {
        assert!(serial_newer(2, 1) && !serial_newer(1, 2) && !serial_newer(5, 5));
        assert!(serial_newer(1, u32::MAX), "1 follows 2^32 - 1");
        let zone = WeightedZone::new(parse_fqdn("umbra.test.").unwrap(), 30);
        let shop = |addr: &str| {
            vec![WeightedRecordSet::new(
                "shop.umbra.test.",
                60,
                vec![WeightedAddress {
                    addr: addr.parse().unwrap(),
                    weight: 1,
                }],
            )]
        };
        let serials = zone.subscribe_serial();
        assert!(zone.replace_all_at(&shop("10.0.0.1"), 100).unwrap());
        assert_eq!((zone.serial(), *serials.borrow()), (100, 100));
        assert!(!zone.replace_all_at(&shop("10.0.0.1"), 120).unwrap());
        assert_eq!(zone.serial(), 100, "no change, no bump");
        assert!(zone.replace_all_at(&shop("10.0.0.2"), 90).unwrap());
        assert_eq!(zone.serial(), 101, "an older version still moves forward");
        assert!(
            zone.replace_all_at(&shop("10.0.0.3"), (1 << 32) + 5)
                .unwrap()
        );
        assert_eq!(
            zone.serial(),
            102,
            "version 2^32 + 5 is serial 5, older than 101"
        );
    }

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
