//! What the forecast benches share: the public Taylor series they all run the protocol on.

use std::path::PathBuf;

use umbra_forecast::history::{DemandSeries, HistoryConfig, SeriesKey, csv_source};

/// The Taylor half-hourly electricity series from the crate's test data.
pub fn taylor() -> DemandSeries {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/taylor_halfhourly.csv");
    let config = HistoryConfig {
        slice_secs: 1800,
        ..HistoryConfig::default()
    };
    csv_source::read_series(&path, &SeriesKey::new("taylor", "uk"), &config)
        .expect("the Taylor CSV reads")
        .0
}
