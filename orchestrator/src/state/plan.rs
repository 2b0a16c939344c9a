//! The desired configuration an operator applies with `umbra apply -f FILE.toml`: regions,
//! services, schedules and game days. serde lives here, at the file edge; `validate` checks what can be
//! checked without the replicated state (names, ranges, references within the plan), and
//! [`super::OrchestratorState`] checks the rest when the plan is applied.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use umbra_proto::agent::WarmupSpec;

use super::drills::DRILL_KINDS;
use super::game_days::GameDaySpec;
use crate::migration::Slo;
use umbra_forecast::sizing::Tier;

/// Default DNS TTL of a service record outside migrations: 300 s, a common managed-DNS
/// default (Route 53's console default).
pub const DEFAULT_DNS_TTL_SECS: u32 = 300;
/// Largest `dns_margin_secs` accepted: an hour.
pub const MAX_DNS_MARGIN_SECS: u32 = 3_600;
/// Default TTL during a cutover: 5 s, short enough that clients follow a step within one
/// analysis window.
pub const DEFAULT_CUTOVER_TTL_SECS: u32 = 5;
/// Default analysis window per cutover step: 60 s, one Prometheus scrape interval of 15 s
/// four times over.
pub const DEFAULT_ANALYSIS_WINDOW_SECS: u64 = 60;
/// Default lead time: provisioning starts 15 minutes before the slice, room for dormant
/// instances to start, warm and catch up.
pub const DEFAULT_LEAD_TIME_SECS: u64 = 900;

/// A whole plan file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Regions, by name.
    #[serde(default, rename = "region")]
    pub regions: Vec<RegionSpec>,
    /// Services, by name.
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceSpec>,
    /// Schedules that create migrations.
    #[serde(default, rename = "schedule")]
    pub schedules: Vec<ScheduleSpec>,
    /// Drills the leader runs at a set time (see [`super::game_days`]).
    #[serde(default, rename = "game_day")]
    pub game_days: Vec<GameDaySpec>,
}

/// One region.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegionSpec {
    /// Region name, e.g. `eu-west`; the agent's certificate names it.
    pub name: String,
    /// The region's load-balancer front (`ip:port`): where clients and other regions'
    /// load balancers send this region's share.
    pub front: String,
    /// Cost of one warm instance-hour (serving or ready to).
    #[serde(default = "default_warm_cost")]
    pub warm_instance_hour: f64,
    /// Cost of one dormant instance-hour (created, not started).
    #[serde(default = "default_dormant_cost")]
    pub dormant_instance_hour: f64,
    /// Most instances the region holds for capacity claims of all services together (its
    /// quota); a claim past it is refused. Unset: no region limit, only each service's
    /// `max_instances`.
    #[serde(default)]
    pub max_instances: Option<u32>,
}

fn default_warm_cost() -> f64 {
    1.0
}

fn default_dormant_cost() -> f64 {
    0.1
}

/// How a service's data follows it between regions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ReplicationKind {
    /// Stateless: nothing to replicate.
    None,
    /// The sample service's write-ahead-log shipping.
    SampleLogShipping,
}

/// One service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Service name, e.g. `shop`.
    pub name: String,
    /// Fully qualified DNS name clients resolve, e.g. `shop.umbra.test.`.
    pub hostname: String,
    /// The region that serves the service when it is first applied. Afterwards only
    /// migrations move it.
    pub primary_region: String,
    /// Requests per second one instance serves within the SLO.
    pub capacity_rps_per_instance: f64,
    /// Smallest shadow pool.
    #[serde(default = "one")]
    pub min_instances: u32,
    /// Largest shadow pool.
    pub max_instances: u32,
    /// How much capacity is guaranteed.
    #[schema(value_type = Object)]
    pub tier: Tier,
    /// DNS TTL outside migrations.
    #[serde(default = "default_dns_ttl")]
    pub dns_ttl_secs: u32,
    /// DNS TTL during a cutover (lowered one old TTL plus the margin ahead).
    #[serde(default = "default_cutover_ttl")]
    pub cutover_ttl_secs: u32,
    /// Slack after each TTL wait: the TTL is lowered this long before it must have reached
    /// every cache, and the source drains this much longer than the TTL on the answers it
    /// replaced (resolvers round TTLs up, forwarders add a cache hop, clocks drift).
    #[serde(default = "default_dns_margin")]
    pub dns_margin_secs: u32,
    /// Cutover schedule in percent, ending at 100.
    #[serde(default = "default_steps")]
    pub steps_percent: Vec<u8>,
    /// How long each step holds while the SLO is judged.
    #[serde(default = "default_window")]
    pub analysis_window_secs: u64,
    /// How long before a slice provisioning starts.
    #[serde(default = "default_lead")]
    pub lead_time_secs: u64,
    /// The SLO judged at each step.
    pub slo: Slo,
    /// Synthetic warm-up traffic and its readiness gate.
    #[schema(value_type = Object)]
    pub warmup: WarmupSpec,
    /// How data follows the service.
    pub replication: ReplicationKind,
    /// Highest replication lag (entries) at which the target counts as caught up.
    #[serde(default)]
    pub max_replication_lag: u64,
    /// How the serving pool is sized: `predictive` (the default: from the demand forecast,
    /// ahead of demand) or `reactive` (opted out of prediction: from the load the region's
    /// front measures, after it arrives).
    #[serde(default)]
    pub pools: PoolMode,
    /// Adaptive CPU and memory limits per instance, where the region's provider enforces
    /// limits (Docker): each serving instance's limits follow the load the forecast predicts
    /// for it, from `min` at no load to `max` at `capacity_rps_per_instance`, grown one
    /// activation lead before the load. Unset: limits are left as the agent created them.
    #[serde(default)]
    pub instance_limits: Option<LimitsSpec>,
}

/// The range an instance's adaptive limits move in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
    /// CPU at no load, thousandths of a core.
    pub min_cpu_millis: u32,
    /// CPU at full load.
    pub max_cpu_millis: u32,
    /// Memory at no load, MiB.
    pub min_memory_mib: u32,
    /// Memory at full load, MiB.
    pub max_memory_mib: u32,
}

/// How a service's serving pool is sized.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PoolMode {
    /// From the demand forecast, one measured lead time ahead; capacity claims on top.
    #[default]
    Predictive,
    /// From the requests per second the region's front measured; capacity claims on top.
    Reactive,
}

fn one() -> u32 {
    1
}
fn default_dns_ttl() -> u32 {
    DEFAULT_DNS_TTL_SECS
}
fn default_dns_margin() -> u32 {
    umbra_dns::ttl_timeline::DEFAULT_MARGIN_SECS
}
fn default_cutover_ttl() -> u32 {
    DEFAULT_CUTOVER_TTL_SECS
}
fn default_steps() -> Vec<u8> {
    crate::migration::DEFAULT_STEPS_PERCENT.to_vec()
}
fn default_window() -> u64 {
    DEFAULT_ANALYSIS_WINDOW_SECS
}
fn default_lead() -> u64 {
    DEFAULT_LEAD_TIME_SECS
}

/// A schedule that creates migrations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// Schedule name, unique.
    pub name: String,
    /// The service it moves.
    pub service: String,
    /// Follow the sun: each leg makes `region` primary from `at_hour_utc` on, every day.
    pub legs: Vec<ScheduleLeg>,
}

/// One leg of a follow-the-sun schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleLeg {
    /// Hour of the day (UTC, 0–23) the region becomes primary.
    pub at_hour_utc: u8,
    /// The region.
    pub region: String,
}

/// Why a plan is unusable; each message says what to change.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    /// The file is not a valid plan (syntax, unknown field, wrong type).
    #[error("{0}")]
    Syntax(String),
    /// Two entries share a name.
    #[error("{kind} {name:?} is declared twice; names must be unique")]
    Duplicate { kind: &'static str, name: String },
    /// A reference to a region nobody declared.
    #[error(
        "{what} names region {region:?}, which is not declared; declared regions: {known}. Add a [[region]] or fix the name"
    )]
    UnknownRegion {
        what: String,
        region: String,
        known: String,
    },
    /// A reference to a service nobody declared.
    #[error("{what} names service {service:?}, which is not declared")]
    UnknownService { what: String, service: String },
    /// A value out of range.
    #[error("{what}: {problem}")]
    Invalid { what: String, problem: String },
}

/// The example plan shipped as `examples/plan.toml`: two regions (`us-east`, `eu-west`), the
/// `shop` service on the sample service's log shipping, and a follow-the-sun schedule.
/// `umbra example-plan` prints it, and tests start from it ([`Plan::example`]).
pub const EXAMPLE_PLAN_TOML: &str = include_str!("../../../examples/plan.toml");

impl Plan {
    /// The parsed [`EXAMPLE_PLAN_TOML`]. Tests change its plain fields for their variants
    /// rather than pasting plan text.
    pub fn example() -> Plan {
        Plan::from_toml(EXAMPLE_PLAN_TOML).expect("examples/plan.toml is a valid plan")
    }

    /// Parses a plan file. Errors carry the line and column (the toml crate's spans).
    pub fn from_toml(text: &str) -> Result<Plan, PlanError> {
        toml::from_str(text)
            .map_err(|e| PlanError::Syntax(umbra_proto::exit::plain_words(&e.to_string())))
    }

    /// Checks the plan on its own. `known_regions` are regions already in the replicated
    /// state, which the plan may name without redeclaring.
    pub fn validate<'a>(
        &self,
        known_regions: impl IntoIterator<Item = &'a str>,
        known_services: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), PlanError> {
        let mut regions: BTreeSet<&str> = known_regions.into_iter().collect();
        let mut declared = BTreeSet::new();
        for region in &self.regions {
            if !declared.insert(region.name.as_str()) {
                return Err(PlanError::Duplicate {
                    kind: "region",
                    name: region.name.clone(),
                });
            }
            regions.insert(region.name.as_str());
            region.validate()?;
        }
        let known = || regions.iter().copied().collect::<Vec<_>>().join(", ");
        let region_exists = |what: String, region: &str| {
            if regions.contains(region) {
                Ok(())
            } else {
                Err(PlanError::UnknownRegion {
                    what,
                    region: region.to_owned(),
                    known: known(),
                })
            }
        };
        let mut services: BTreeSet<&str> = known_services.into_iter().collect();
        let mut declared = BTreeSet::new();
        for service in &self.services {
            if !declared.insert(service.name.as_str()) {
                return Err(PlanError::Duplicate {
                    kind: "service",
                    name: service.name.clone(),
                });
            }
            services.insert(service.name.as_str());
            region_exists(
                format!("service {:?} primary_region", service.name),
                &service.primary_region,
            )?;
            service.validate()?;
        }
        let mut declared = BTreeSet::new();
        for schedule in &self.schedules {
            if !declared.insert(schedule.name.as_str()) {
                return Err(PlanError::Duplicate {
                    kind: "schedule",
                    name: schedule.name.clone(),
                });
            }
            if !services.contains(schedule.service.as_str()) {
                return Err(PlanError::UnknownService {
                    what: format!("schedule {:?}", schedule.name),
                    service: schedule.service.clone(),
                });
            }
            if schedule.legs.len() < 2 {
                return Err(invalid(
                    format!("schedule {:?}", schedule.name),
                    "needs at least two legs to move anything",
                ));
            }
            let mut hours = BTreeSet::new();
            for leg in &schedule.legs {
                region_exists(format!("schedule {:?} leg", schedule.name), &leg.region)?;
                if leg.at_hour_utc > 23 || !hours.insert(leg.at_hour_utc) {
                    return Err(invalid(
                        format!("schedule {:?}", schedule.name),
                        format!("leg hour {} must be 0–23 and unique", leg.at_hour_utc),
                    ));
                }
            }
        }
        let mut declared = BTreeSet::new();
        for day in &self.game_days {
            check_name("game_day", &day.name)?;
            if !declared.insert(day.name.as_str()) {
                return Err(PlanError::Duplicate {
                    kind: "game_day",
                    name: day.name.clone(),
                });
            }
            let what = || format!("game_day {:?}", day.name);
            if !DRILL_KINDS.contains(&day.drill.as_str()) {
                return Err(invalid(
                    what(),
                    format!(
                        "drill {:?} is not one Umbra runs; drills: {}",
                        day.drill,
                        DRILL_KINDS.join(", ")
                    ),
                ));
            }
            region_exists(what(), &day.region)?;
            if let Some(to) = &day.to {
                region_exists(format!("game_day {:?} to", day.name), to)?;
                if *to == day.region {
                    return Err(invalid(what(), "to must be another region than region"));
                }
            }
        }
        Ok(())
    }
}

fn invalid(what: impl Into<String>, problem: impl Into<String>) -> PlanError {
    PlanError::Invalid {
        what: what.into(),
        problem: problem.into(),
    }
}

fn check_name(kind: &str, name: &str) -> Result<(), PlanError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            format!("{kind} name {name:?}"),
            "use 1–63 lower-case letters, digits and '-'",
        ))
    }
}

impl RegionSpec {
    fn validate(&self) -> Result<(), PlanError> {
        check_name("region", &self.name)?;
        let what = || format!("region {:?}", self.name);
        self.front.parse::<std::net::SocketAddr>().map_err(|e| {
            invalid(
                what(),
                format!("front {:?} is not ip:port: {e}", self.front),
            )
        })?;
        for (field, cost) in [
            ("warm_instance_hour", self.warm_instance_hour),
            ("dormant_instance_hour", self.dormant_instance_hour),
        ] {
            if !(cost.is_finite() && cost >= 0.0) {
                return Err(invalid(what(), format!("{field} {cost} must be ≥ 0")));
            }
        }
        if self.max_instances == Some(0) {
            return Err(invalid(
                what(),
                "max_instances must be ≥ 1 (leave it out for no region limit)",
            ));
        }
        Ok(())
    }

    /// The front's socket address (validated when the plan was applied).
    pub fn front_addr(&self) -> std::net::SocketAddr {
        self.front
            .parse()
            .expect("region fronts are validated before they are applied")
    }
}

impl ServiceSpec {
    fn validate(&self) -> Result<(), PlanError> {
        check_name("service", &self.name)?;
        let what = || format!("service {:?}", self.name);
        umbra_dns::parse_fqdn(&self.hostname)
            .map_err(|e| invalid(what(), format!("hostname: {e}")))?;
        if !(self.capacity_rps_per_instance.is_finite() && self.capacity_rps_per_instance > 0.0) {
            return Err(invalid(what(), "capacity_rps_per_instance must be > 0"));
        }
        if self.min_instances == 0 || self.min_instances > self.max_instances {
            return Err(invalid(
                what(),
                format!(
                    "need 1 ≤ min_instances ({}) ≤ max_instances ({})",
                    self.min_instances, self.max_instances
                ),
            ));
        }
        self.tier
            .validate()
            .map_err(|e| invalid(what(), e.to_string()))?;
        if self.cutover_ttl_secs == 0 || self.cutover_ttl_secs > self.dns_ttl_secs {
            return Err(invalid(what(), "need 0 < cutover_ttl_secs ≤ dns_ttl_secs"));
        }
        if self.dns_margin_secs > MAX_DNS_MARGIN_SECS {
            return Err(invalid(
                what(),
                format!(
                    "dns_margin_secs {} is above {MAX_DNS_MARGIN_SECS} (an hour); a minute covers resolvers, forwarders and clocks",
                    self.dns_margin_secs
                ),
            ));
        }
        // The TTL goes down one old TTL plus the margin before the cutover: a migration the
        // service's own lead time starts later would reach its first step while caches still
        // hold the long-TTL answer.
        let lowering_secs = u64::from(self.dns_ttl_secs) + u64::from(self.dns_margin_secs);
        if self.cutover_ttl_secs < self.dns_ttl_secs && self.lead_time_secs < lowering_secs {
            return Err(invalid(
                what(),
                format!(
                    "lead_time_secs {} is shorter than one old TTL plus the margin (dns_ttl_secs {} + dns_margin_secs {} = {lowering_secs}): at the first cutover step caches would still hold the {} s answer. Set lead_time_secs to at least {lowering_secs}, or lower dns_ttl_secs",
                    self.lead_time_secs, self.dns_ttl_secs, self.dns_margin_secs, self.dns_ttl_secs
                ),
            ));
        }
        if self.warmup.mix.rate_per_sec.is_nan() || self.warmup.mix.rate_per_sec <= 0.0 {
            return Err(invalid(what(), "warmup.mix.rate_per_sec must be > 0"));
        }
        self.warmup.feasible().map_err(|e| invalid(what(), e))?;
        if self.analysis_window_secs == 0 {
            return Err(invalid(what(), "analysis_window_secs must be > 0"));
        }
        if let Some(l) = self.instance_limits
            && (l.min_cpu_millis == 0
                || l.min_cpu_millis > l.max_cpu_millis
                || l.min_memory_mib < 16
                || l.min_memory_mib > l.max_memory_mib)
        {
            return Err(invalid(
                what(),
                "instance_limits need 0 < min_cpu_millis ≤ max_cpu_millis and 16 ≤ min_memory_mib ≤ max_memory_mib",
            ));
        }
        crate::migration::validate_steps(&self.steps_percent)
            .and_then(|()| self.slo.validate())
            .map_err(|e| invalid(what(), e.to_string()))
    }
}
