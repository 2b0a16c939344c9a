//! DNS providers: where a service's weighted address records live, and how a change is
//! confirmed to be served.
//!
//! Two providers implement `DnsProvider`: `embedded` (Umbra's own authoritative server on
//! hickory-server, answering one address per query chosen by weight, the default for the demo)
//! and `rfc2136` (dynamic update signed with TSIG, for BIND and other standard servers).
//! `transfer` lets standard secondaries copy the embedded zone (signed AXFR/IXFR, NOTIFY).
//! `verify` asks every authoritative server with hickory-resolver until the new records are
//! served. `ttl_timeline` is the pure arithmetic of lowering a TTL ahead of a cutover. DNS
//! follows the load balancers in a cutover: clients cache answers for the TTL, so this crate
//! must not decide when to change records or to what (the orchestrator does, through its
//! replicated log; its `zone_sync` keeps each orchestrator's embedded zone equal to the
//! replicated weights, or its `zone_publish` sends them to a standard server with `rfc2136`)
//! and must never report a change as done before it was seen served.
//! Architecture invariant: this crate knows nothing of the orchestrator's replicated state.

pub mod embedded;
pub mod rfc2136;
pub mod transfer;
pub mod ttl_timeline;
pub mod verify;

use std::net::{IpAddr, SocketAddr};

use futures::future::BoxFuture;
use hickory_proto::rr::Name;
use serde::{Deserialize, Serialize};

/// Highest weight of one address; Route 53's weighted records use the same 0..=255 range.
pub const MAX_ADDRESS_WEIGHT: u8 = 255;
/// Addresses in one record set; more would not fit one UDP answer from a standard server.
pub const MAX_ADDRESSES: usize = 32;

/// One address and its relative weight; weight 0 keeps it listed but never served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WeightedAddress {
    pub addr: IpAddr,
    pub weight: u8,
}

/// A service name's complete weighted A/AAAA record set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightedRecordSet {
    /// Fully qualified name, e.g. `shop.umbra.test.`.
    pub name: String,
    pub ttl_secs: u32,
    pub addresses: Vec<WeightedAddress>,
}

impl WeightedRecordSet {
    pub fn new(name: impl Into<String>, ttl_secs: u32, addresses: Vec<WeightedAddress>) -> Self {
        Self {
            name: name.into(),
            ttl_secs,
            addresses,
        }
    }

    /// Parses and checks the name against `zone`, and the addresses and TTL.
    pub fn validate(&self, zone: &Name) -> Result<Name, DnsError> {
        let name = parse_fqdn(&self.name)?;
        if !zone.zone_of(&name) || &name == zone {
            return Err(DnsError::Invalid(format!(
                "{} is not a name inside zone {zone}",
                self.name
            )));
        }
        if self.ttl_secs == 0 || self.ttl_secs > i32::MAX as u32 {
            return Err(DnsError::Invalid(format!(
                "TTL {} s is out of range; use 1..=2147483647 seconds (RFC 2181 § 8)",
                self.ttl_secs
            )));
        }
        if self.addresses.is_empty() || self.addresses.len() > MAX_ADDRESSES {
            return Err(DnsError::Invalid(format!(
                "{} needs 1..={MAX_ADDRESSES} addresses, got {}",
                self.name,
                self.addresses.len()
            )));
        }
        if self.addresses.iter().all(|a| a.weight == 0) {
            return Err(DnsError::Invalid(format!(
                "every address of {} has weight 0; give at least one a positive weight",
                self.name
            )));
        }
        for (i, a) in self.addresses.iter().enumerate() {
            if self.addresses[..i].iter().any(|b| b.addr == a.addr) {
                return Err(DnsError::Invalid(format!(
                    "address {} appears twice in {}",
                    a.addr, self.name
                )));
            }
        }
        Ok(name)
    }

    /// Addresses that are served (weight > 0), sorted.
    pub fn served_addresses(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self
            .addresses
            .iter()
            .filter(|a| a.weight > 0)
            .map(|a| a.addr)
            .collect();
        v.sort();
        v
    }
}

/// Parses a DNS name and makes it fully qualified.
pub fn parse_fqdn(name: &str) -> Result<Name, DnsError> {
    let mut parsed = Name::from_ascii(name)
        .map_err(|e| DnsError::Invalid(format!("{name:?} is not a DNS name: {e}")))?;
    parsed.set_fqdn(true);
    Ok(parsed)
}

/// Failures of DNS operations.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("invalid DNS request: {0}")]
    Invalid(String),
    #[error("the DNS server at {server} answered {rcode} to {what}")]
    Rejected {
        server: SocketAddr,
        what: String,
        rcode: String,
    },
    #[error("DNS exchange with {server} failed: {reason}")]
    Exchange { server: SocketAddr, reason: String },
    #[error(
        "{server} still did not serve the expected records for {name} after {waited_ms} ms (last seen: {last_seen}); \
         check that the update reached this server and that it is authoritative for the zone"
    )]
    NotServed {
        server: SocketAddr,
        name: String,
        waited_ms: u64,
        last_seen: String,
    },
    #[error("I/O error on {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// A place where service records are published. Object-safe.
pub trait DnsProvider: Send + Sync {
    /// Replaces the whole A/AAAA record set of `set.name` (addresses, weights and TTL) in one
    /// change.
    fn set_record_set<'a>(
        &'a self,
        set: &'a WeightedRecordSet,
    ) -> BoxFuture<'a, Result<(), DnsError>>;

    /// Reads the record set back as the provider holds it; `None` if the name has none.
    fn record_set<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<WeightedRecordSet>, DnsError>>;

    /// The servers that answer authoritatively for the zone (what `verify` asks).
    fn authoritative_servers(&self) -> Vec<SocketAddr>;
}
