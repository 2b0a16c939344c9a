//! Zone transfers and NOTIFY for the embedded server, so standard secondaries (BIND) hold a
//! copy of the zone and keep answering while no orchestrator is up.
//!
//! [`ZoneServer`] sits in front of hickory's catalog: AXFR (RFC 5936) and IXFR (answered with
//! the full zone, RFC 1995 § 4) are served over TCP only to requests signed with the
//! configured TSIG key (RFC 8945), and the answer is signed with it; an unsigned request is
//! REFUSED, a wrong key or signature gets NOTAUTH with the TSIG error, and neither carries a
//! record of the zone. Any other TSIG-signed query (a secondary's SOA check before a transfer)
//! is answered here too, signed, because a secondary configured with a key for its primary
//! rejects an unsigned answer; unsigned queries go to the catalog unchanged.
//!
//! [`spawn_notifier`] sends NOTIFY (RFC 1996), signed, to every secondary on every serial
//! change, retrying with a doubling timeout until answered or attempts run out; a newer serial
//! replaces a round still retrying. Outcomes go to [`ZoneEvents`] (the orchestrator counts
//! them in Prometheus). This module never logs a secret and never answers a transfer it could
//! not authenticate.

use std::iter;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_net::runtime::Time;
use hickory_net::xfer::Protocol;
use hickory_proto::op::{
    Edns, Header, HeaderCounts, Message, MessageType, Metadata, OpCode, Query, ResponseCode,
};
use hickory_proto::rr::rdata::tsig::TsigError;
use hickory_proto::rr::{DNSClass, Name, Record, RecordType, TSigResponseContext, TSigner};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{
    Catalog, LookupError, LookupOptions, MessageResponseBuilder, UpdateRequest,
};
use tokio::task::JoinHandle;

use super::embedded::WeightedZone;
use super::rfc2136::{rcode_name, signed_exchange};

/// How NOTIFY is retried (RFC 1996 § 3.6 leaves the numbers to configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotifyPolicy {
    /// Sends per secondary and serial before giving up (the secondary still refreshes on its
    /// SOA refresh timer).
    pub attempts: u32,
    /// Wait for the first answer; doubled after each unanswered send, up to `max_timeout`.
    pub first_timeout: Duration,
    pub max_timeout: Duration,
}

impl Default for NotifyPolicy {
    /// 5 sends waiting 1, 2, 4, 8, 8 s: a secondary restarting within about 20 s still hears
    /// of the change.
    fn default() -> Self {
        Self {
            attempts: 5,
            first_timeout: Duration::from_secs(1),
            max_timeout: Duration::from_secs(8),
        }
    }
}

/// What became of the NOTIFY of one serial to one secondary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotifyOutcome {
    /// The secondary answered NOERROR (signed with our key).
    Answered,
    /// It answered with an error code (e.g. NOTAUTH: it does not know the key, or does not
    /// list this server among its primaries); not retried.
    Rejected,
    /// No answer after every attempt (nothing listening, or no reply in time).
    Unanswered,
    /// It could not be built or signed here, or the answer's signature did not verify.
    Failed,
}

impl NotifyOutcome {
    /// The Prometheus label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Answered => "answered",
            Self::Rejected => "rejected",
            Self::Unanswered => "unanswered",
            Self::Failed => "failed",
        }
    }

    pub const ALL: [Self; 4] = [
        Self::Answered,
        Self::Rejected,
        Self::Unanswered,
        Self::Failed,
    ];
}

/// What became of one AXFR or IXFR request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransferOutcome {
    /// A full transfer answered an AXFR.
    Axfr,
    /// A full transfer answered an IXFR (RFC 1995 § 4).
    IxfrFull,
    /// An IXFR over UDP got the SOA alone (the client then asks over TCP, RFC 1995 § 2).
    IxfrSoaOnly,
    /// Not signed: REFUSED.
    RefusedUnsigned,
    /// Signed with an unknown key, a bad MAC or a time outside the fudge: NOTAUTH.
    RefusedBadTsig,
    /// No transfer key is configured: REFUSED.
    RefusedDisabled,
    /// AXFR over UDP (RFC 5936 § 4.2 allows TCP only): REFUSED.
    RefusedUdp,
}

impl TransferOutcome {
    /// The Prometheus label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Axfr => "axfr",
            Self::IxfrFull => "ixfr_full",
            Self::IxfrSoaOnly => "ixfr_soa_only",
            Self::RefusedUnsigned => "refused_unsigned",
            Self::RefusedBadTsig => "refused_bad_tsig",
            Self::RefusedDisabled => "refused_disabled",
            Self::RefusedUdp => "refused_udp",
        }
    }

    pub const ALL: [Self; 7] = [
        Self::Axfr,
        Self::IxfrFull,
        Self::IxfrSoaOnly,
        Self::RefusedUnsigned,
        Self::RefusedBadTsig,
        Self::RefusedDisabled,
        Self::RefusedUdp,
    ];
}

/// Where transfer and NOTIFY outcomes are reported (the orchestrator's metrics).
pub trait ZoneEvents: Send + Sync + 'static {
    fn notify(&self, secondary: SocketAddr, outcome: NotifyOutcome);
    fn transfer(&self, client: SocketAddr, outcome: TransferOutcome);
}

/// Reports nothing.
pub struct NoEvents;

impl ZoneEvents for NoEvents {
    fn notify(&self, _: SocketAddr, _: NotifyOutcome) {}
    fn transfer(&self, _: SocketAddr, _: TransferOutcome) {}
}

/// The embedded server's request handler: transfers and signed queries here, the rest to
/// hickory's catalog.
pub(crate) struct ZoneServer {
    pub(crate) catalog: Catalog,
    pub(crate) zone: Arc<WeightedZone>,
    pub(crate) signer: Option<TSigner>,
    pub(crate) events: Arc<dyn ZoneEvents>,
}

/// The answer to a request this handler takes: code, answer records, TSIG context.
struct Answer {
    rcode: ResponseCode,
    records: Vec<Record>,
    tsig: Option<TSigResponseContext>,
}

impl ZoneServer {
    /// Checks the request's TSIG against our key. `Ok` carries the context to sign the answer
    /// with; `Err` is the refusal to send (its TSIG error record, unsigned or signed as RFC
    /// 8945 § 5.2 says).
    fn authenticate(
        &self,
        request: &Request,
        now: u64,
    ) -> Result<TSigResponseContext, Box<Answer>> {
        let refuse = |rcode, tsig| {
            Box::new(Answer {
                rcode,
                records: Vec::new(),
                tsig,
            })
        };
        let id = request.metadata.id;
        let Some(tsig) = request.signature() else {
            return Err(refuse(ResponseCode::Refused, None));
        };
        let Some(signer) = self
            .signer
            .as_ref()
            .filter(|s| s.signer_name() == &tsig.name)
        else {
            return Err(refuse(
                ResponseCode::NotAuth,
                Some(TSigResponseContext::unknown_key(id, now, tsig.name.clone())),
            ));
        };
        let Ok((_, _, window)) = signer.verify_message_byte(request.as_slice(), None, true) else {
            return Err(refuse(
                ResponseCode::NotAuth,
                Some(TSigResponseContext::bad_signature(id, now, signer.clone())),
            ));
        };
        let mac = tsig.data.mac.clone();
        if !window.contains(&now) {
            return Err(refuse(
                ResponseCode::NotAuth,
                Some(TSigResponseContext::new(
                    id,
                    now,
                    signer.clone(),
                    mac,
                    Some(TsigError::BadTime),
                )),
            ));
        }
        Ok(TSigResponseContext::new(id, now, signer.clone(), mac, None))
    }

    fn transfer(&self, request: &Request, qtype: RecordType, now: u64) -> Answer {
        let client = request.src();
        let report = |outcome: TransferOutcome| {
            self.events.transfer(client, outcome);
            match outcome {
                TransferOutcome::Axfr
                | TransferOutcome::IxfrFull
                | TransferOutcome::IxfrSoaOnly => {
                    tracing::debug!(%client, outcome = outcome.as_str(), "zone transfer")
                }
                _ => tracing::warn!(
                    %client,
                    outcome = outcome.as_str(),
                    "zone transfer refused; a secondary must sign its requests with [dns] \
                     transfer_key_file's key (BIND: `primaries {{ IP port PORT key NAME; }}`)"
                ),
            }
        };
        if self.signer.is_none() {
            report(TransferOutcome::RefusedDisabled);
            return Answer {
                rcode: ResponseCode::Refused,
                records: Vec::new(),
                tsig: None,
            };
        }
        let tsig = match self.authenticate(request, now) {
            Ok(tsig) => tsig,
            Err(refusal) => {
                report(if request.signature().is_none() {
                    TransferOutcome::RefusedUnsigned
                } else {
                    TransferOutcome::RefusedBadTsig
                });
                return *refusal;
            }
        };
        let udp = request.protocol() == Protocol::Udp;
        let (outcome, rcode, records) = match (qtype, udp) {
            (RecordType::AXFR, true) => (
                TransferOutcome::RefusedUdp,
                ResponseCode::Refused,
                Vec::new(),
            ),
            (RecordType::AXFR, false) => (
                TransferOutcome::Axfr,
                ResponseCode::NoError,
                self.zone.transfer_records().1,
            ),
            (_, true) => (
                TransferOutcome::IxfrSoaOnly,
                ResponseCode::NoError,
                self.zone.soa_records(),
            ),
            (_, false) => (
                TransferOutcome::IxfrFull,
                ResponseCode::NoError,
                self.zone.transfer_records().1,
            ),
        };
        report(outcome);
        Answer {
            rcode,
            records,
            tsig: Some(tsig),
        }
    }

    /// A signed ordinary query: the same answer the zone gives unsigned, signed.
    fn signed_query(&self, request: &Request, now: u64) -> Answer {
        let tsig = match self.authenticate(request, now) {
            Ok(tsig) => tsig,
            Err(refusal) => return *refusal,
        };
        let Some(query) = request.queries.queries().first() else {
            return Answer {
                rcode: ResponseCode::FormErr,
                records: Vec::new(),
                tsig: Some(tsig),
            };
        };
        let (rcode, records) =
            match self
                .zone
                .answer(query.name(), query.query_type(), LookupOptions::default())
            {
                Ok(lookup) => (ResponseCode::NoError, lookup.iter().cloned().collect()),
                Err(LookupError::NameExists) => (ResponseCode::NoError, Vec::new()),
                Err(LookupError::ResponseCode(rcode)) => (rcode, Vec::new()),
                Err(_) => (ResponseCode::ServFail, Vec::new()),
            };
        Answer {
            rcode,
            records,
            tsig: Some(tsig),
        }
    }

    async fn respond<R: ResponseHandler>(
        request: &Request,
        answer: Answer,
        mut response_handle: R,
    ) -> ResponseInfo {
        // RFC 6891 § 6.1.1: an OPT in the request gets one in the response.
        let edns = request.edns.as_ref().map(|theirs| {
            let mut ours = Edns::new();
            ours.set_max_payload(theirs.max_payload().max(512));
            ours.set_version(0);
            ours
        });
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = answer.rcode == ResponseCode::NoError;
        metadata.response_code = answer.rcode;
        let build = || {
            MessageResponseBuilder::new(&request.queries, edns.as_ref()).build(
                metadata,
                answer.records.iter(),
                iter::empty(),
                iter::empty(),
                iter::empty(),
            )
        };
        let mut response = build();
        if let Some(tsig) = answer.tsig {
            // The MAC covers the response as sent without its TSIG record (RFC 8945 § 4.3).
            let mut unsigned = Vec::with_capacity(512);
            let mut encoder = hickory_proto::serialize::binary::BinEncoder::new(&mut unsigned);
            let signed = build()
                .destructive_emit(&mut encoder)
                .map_err(|e| e.to_string())
                .and_then(|_| tsig.sign(&unsigned).map_err(|e| e.to_string()));
            match signed {
                Ok(record) => response.set_signature(record),
                Err(error) => {
                    tracing::error!(%error, "signing a DNS response failed");
                    metadata.response_code = ResponseCode::ServFail;
                    metadata.authoritative = false;
                    let failed = MessageResponseBuilder::new(&request.queries, edns.as_ref())
                        .build_no_records(metadata);
                    let sent = response_handle.send_response(failed).await;
                    return sent_or_failed(request, sent);
                }
            }
        }
        let sent = response_handle.send_response(response).await;
        sent_or_failed(request, sent)
    }
}

fn sent_or_failed(
    request: &Request,
    sent: Result<ResponseInfo, hickory_net::NetError>,
) -> ResponseInfo {
    sent.unwrap_or_else(|error| {
        tracing::warn!(%error, client = %request.src(), "sending a DNS response failed");
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.response_code = ResponseCode::ServFail;
        ResponseInfo::from(Header {
            metadata,
            counts: HeaderCounts::default(),
        })
    })
}

#[async_trait::async_trait]
impl RequestHandler for ZoneServer {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        let is_query = request.metadata.message_type == MessageType::Query
            && request.metadata.op_code == OpCode::Query;
        let qtype = request.queries.queries().first().map(|q| q.query_type());
        let transfer = matches!(qtype, Some(RecordType::AXFR | RecordType::IXFR));
        if !is_query || (!transfer && request.signature().is_none()) {
            return self
                .catalog
                .handle_request::<R, T>(request, response_handle)
                .await;
        }
        let now = T::current_time();
        let answer = match qtype {
            Some(qtype) if transfer => self.transfer(request, qtype, now),
            _ => self.signed_query(request, now),
        };
        Self::respond(request, answer, response_handle).await
    }
}

/// Sends one signed NOTIFY for `zone` to `secondary`, with the zone's current `soa` as the
/// hint RFC 1996 § 3.7 allows (BIND skips the refresh when it already holds that serial), and
/// returns the answer's code (a NOERROR answer must carry a MAC that verifies with our key).
pub async fn send_notify(
    secondary: SocketAddr,
    zone: &Name,
    soa: &[Record],
    signer: &TSigner,
    timeout: Duration,
) -> Result<ResponseCode, super::DnsError> {
    let mut message = Message::query();
    message.metadata.op_code = OpCode::Notify;
    message.metadata.authoritative = true;
    message.metadata.recursion_desired = false;
    let mut query = Query::new();
    query
        .set_name(zone.clone())
        .set_query_class(DNSClass::IN)
        .set_query_type(RecordType::SOA);
    message.add_query(query);
    for record in soa {
        message.add_answer(record.clone());
    }
    signed_exchange(secondary, timeout, message, signer).await
}

/// NOTIFY of one serial to one secondary, retried with a doubling timeout.
async fn notify_with_retries(
    secondary: SocketAddr,
    zone: &Name,
    soa: &[Record],
    serial: u32,
    signer: &TSigner,
    policy: NotifyPolicy,
) -> NotifyOutcome {
    let mut timeout = policy.first_timeout;
    let mut last = String::new();
    for attempt in 1..=policy.attempts.max(1) {
        let started = tokio::time::Instant::now();
        match send_notify(secondary, zone, soa, signer, timeout).await {
            Ok(ResponseCode::NoError) => {
                tracing::debug!(%secondary, serial, attempt, "NOTIFY answered");
                return NotifyOutcome::Answered;
            }
            Ok(rcode) => {
                tracing::warn!(
                    %secondary,
                    serial,
                    rcode = %rcode_name(rcode),
                    "the secondary refused our NOTIFY; it must list this server among its \
                     primaries with the key of [dns] transfer_key_file"
                );
                return NotifyOutcome::Rejected;
            }
            // Nothing listening yet (ICMP unreachable surfaces as a receive error), or no
            // answer in time: the secondary may be starting; try again.
            Err(super::DnsError::Exchange { reason, .. })
                if ["no answer within", "receiving", "sending", "connecting"]
                    .iter()
                    .any(|p| reason.starts_with(p)) =>
            {
                last = reason;
                // A refusal by ICMP comes at once: still space the attempts by the timeout.
                tokio::time::sleep_until(started + timeout).await;
            }
            Err(error) => {
                tracing::warn!(%secondary, serial, %error, "NOTIFY failed");
                return NotifyOutcome::Failed;
            }
        }
        timeout = (timeout * 2).min(policy.max_timeout);
    }
    tracing::warn!(
        %secondary,
        serial,
        attempts = policy.attempts,
        last = %last,
        "no answer to NOTIFY; the secondary will refresh on its SOA timer"
    );
    NotifyOutcome::Unanswered
}

/// Notifies every secondary of each new serial of `zone` until `serials` closes or the task
/// is aborted. A serial that changes while a round still retries replaces that round.
pub fn spawn_notifier(
    zone: Arc<WeightedZone>,
    secondaries: Vec<SocketAddr>,
    signer: TSigner,
    policy: NotifyPolicy,
    events: Arc<dyn ZoneEvents>,
) -> JoinHandle<()> {
    let mut serials = zone.subscribe_serial();
    tokio::spawn(async move {
        let name = zone.origin_name().clone();
        if serials.changed().await.is_err() {
            return;
        }
        loop {
            let serial = *serials.borrow_and_update();
            let soa = zone.soa_records();
            let round = futures::future::join_all(secondaries.iter().map(|&secondary| {
                let (name, soa, signer, events) = (&name, &soa, &signer, &events);
                async move {
                    let outcome =
                        notify_with_retries(secondary, name, soa, serial, signer, policy).await;
                    events.notify(secondary, outcome);
                }
            }));
            tokio::select! {
                _ = round => {
                    if serials.changed().await.is_err() {
                        return;
                    }
                }
                changed = serials.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
        }
    })
}
