//! What `umbra chaos simulate` and `umbra chaos campaign` share: which seeds the flags ask
//! for, and the progress bar over them.

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};

/// The seeds `--seeds N` and `--seed S` ask for: the first and how many (`--seed` alone is
/// that one seed; neither is `default` seeds from 0).
pub fn seed_range(
    seeds: Option<u64>,
    seed: Option<u64>,
    default: u64,
) -> anyhow::Result<(u64, u64)> {
    let count = match (seeds, seed) {
        (Some(n), _) => n,
        (None, Some(_)) => 1,
        (None, None) => default,
    };
    if count == 0 {
        bail!("--seeds must be at least 1");
    }
    Ok((seed.unwrap_or(0), count))
}

/// A progress bar over `count` seeds, hidden under `--json` (stdout is the summary's).
pub fn seeds_bar(count: u64, json: bool) -> anyhow::Result<ProgressBar> {
    let bar = if json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(count)
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} seed {msg} [{bar:30}] {pos}/{len} ({eta})")
            .context("progress template")?,
    );
    Ok(bar)
}
