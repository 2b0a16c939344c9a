//! `umbra migrate SERVICE --to REGION [--from R] [--at RFC3339|now] [--no-warm]`: ask the
//! cluster to move a service's traffic. The API checks it against the replicated state
//! (known service and regions, nothing in flight) and answers with the migration's id.

use anyhow::Context;
use umbra_orchestrator::api::Written;
use umbra_orchestrator::state::MigrationRequest;

use crate::operator::{ApiArgs, migration_resource, print_json, rfc3339};

/// Arguments of `umbra migrate`.
#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// The service to move.
    service: String,
    /// Target region.
    #[arg(long)]
    to: String,
    /// Expected source region; refused if the service is served from elsewhere.
    #[arg(long)]
    from: Option<String>,
    /// When the traffic should be in the target: RFC 3339 (2026-11-23T06:00:00Z) or `now`.
    #[arg(long, default_value = "now")]
    at: String,
    /// Skip warming the shadow instances (shows the cold baseline).
    #[arg(long)]
    no_warm: bool,
    /// Override the service's lead time (ms before --at that provisioning starts).
    #[arg(long)]
    lead_time_ms: Option<u64>,
    /// Override the service's analysis window per cutover step (ms).
    #[arg(long)]
    analysis_window_ms: Option<u64>,
    /// Override the drain time after the last step (ms).
    #[arg(long)]
    drain_ms: Option<u64>,
    #[command(flatten)]
    api: ApiArgs,
}

/// Parses `--at`: `now` or an RFC 3339 time, as Unix ms.
fn parse_at(at: &str) -> anyhow::Result<u64> {
    if at == "now" {
        return Ok(umbra_now_ms());
    }
    let time = chrono::DateTime::parse_from_rfc3339(at).with_context(|| {
        format!("--at {at:?} is neither `now` nor an RFC 3339 time such as 2026-11-23T06:00:00Z")
    })?;
    u64::try_from(time.timestamp_millis()).with_context(|| format!("--at {at:?} is before 1970"))
}

fn umbra_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn run(args: MigrateArgs) -> anyhow::Result<()> {
    let request = parse_at(&args.at).map(|cutover_at_ms| MigrationRequest {
        from: args.from.clone(),
        warm_up: !args.no_warm,
        lead_time_ms: args.lead_time_ms,
        analysis_window_ms: args.analysis_window_ms,
        drain_ms: args.drain_ms,
        ..MigrationRequest::new(&args.service, &args.to, cutover_at_ms)
    });
    args.api.run(async |client| {
        let request = request?;
        let applied = client.migrate(&request).await?;
        if args.api.json
            && let Written::Migration { id } = &applied
        {
            return print_json(&migration_resource(&client, id).await?);
        }
        match applied {
            Written::Migration { id } => println!(
                "migration {id}: {} → {} at {}; follow it with `umbra status --watch`",
                request.service,
                request.to,
                rfc3339(request.cutover_at_ms)
            ),
            other => println!("{other:?}"),
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_accepts_now_and_rfc3339_and_explains_anything_else() {
        assert!(parse_at("now").unwrap() > 1_700_000_000_000);
        assert_eq!(parse_at("2026-11-23T06:00:00Z").unwrap(), 1_795_413_600_000);
        let error = parse_at("tomorrow").unwrap_err();
        assert!(format!("{error:#}").contains("RFC 3339"), "{error:#}");
    }
}
