//! `umbra forecast`, `umbra backtest` and `umbra simulate` as a user runs them: the real
//! binary on files. Checks the output formats scripts rely on (`--json`, the forecast CSV) and
//! that mistakes (a bad CSV cell, too little history, an unknown policy) get a message that
//! says where and what to do.

use std::process::{Command, Output};

/// The Taylor half-hourly demand series, which umbra-forecast's tests keep.
const TAYLOR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../forecast/tests/data/taylor_halfhourly.csv"
);

fn taylor() -> String {
    TAYLOR.to_string()
}

fn umbra(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_umbra"))
        .args(args)
        .output()
        .expect("run umbra")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `umbra ARGS...`, which must succeed: the JSON it printed.
fn json_of(args: &[&str]) -> serde_json::Value {
    let out = umbra(args);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `umbra ARGS...`, which must fail: its standard error.
fn error_of(args: &[&str]) -> String {
    let out = umbra(args);
    assert!(!out.status.success(), "{args:?} succeeded");
    stderr(&out)
}

/// `umbra forecast --csv CSV ARGS... --json`, which must succeed: what it printed.
fn forecast_json(csv: &str, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["forecast", "--csv", csv];
    all.extend_from_slice(args);
    all.push("--json");
    json_of(&all)
}

/// `umbra forecast --csv CSV ARGS...`, which must fail: its standard error.
fn forecast_error(csv: &str, args: &[&str]) -> String {
    let mut all = vec!["forecast", "--csv", csv];
    all.extend_from_slice(args);
    error_of(&all)
}

#[test]
fn forecast_json_has_quantiles_per_slice() {
    let v = forecast_json(
        &taylor(),
        &[
            "--slice-secs",
            "1800",
            "--horizon",
            "6",
            "--calibration-origins",
            "7",
        ],
    );
    assert_eq!(v["unique_id"], "demand_mw");
    // Judged on seven 6-slice forecasts, MSTL+ETS or its combination with the weekly naive
    // (over the 28 daily origins of the Taylor protocol, MSTL+ETS at every one).
    let model = v["model"].as_str().unwrap();
    assert!(["mstl_ets", "combined"].contains(&model), "{model}");
    assert_eq!(v["calibration"]["kind"], "conformal");
    // The reason of the choice, as the leader records it for each pool.
    let reason = v["choice_reason"].as_str().unwrap();
    assert!(
        reason.starts_with("lowest median MASE over its last 7 scored forecasts (")
            && reason.contains(&format!("{model} ")),
        "{reason}"
    );
    assert_eq!(v["adjusted"]["declared_slices"], 0);
    let slices = v["slices"].as_array().unwrap();
    assert_eq!(slices.len(), 6);
    assert_eq!(slices[0]["start"], "2000-08-28T00:00:00Z");
    for s in slices {
        let (p50, p90, p99) = (
            s["p50"].as_f64().unwrap(),
            s["p90"].as_f64().unwrap(),
            s["p99"].as_f64().unwrap(),
        );
        assert!(p50 <= p90 && p90 <= p99, "{s}");
    }
}

#[test]
fn bad_csv_cell_names_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.csv");
    std::fs::write(
        &path,
        "timestamp,service,region,value\n2026-01-01T00:00:00Z,shop,eu,1\n2026-01-01T00:05:00Z,shop,eu,lots\n",
    )
    .unwrap();
    let err = forecast_error(path.to_str().unwrap(), &[]);
    assert!(err.contains("line 3, column 4 (value)"), "{err}");
    assert!(err.contains("\"lots\" is not a number"), "{err}");
}

#[test]
fn too_little_history_says_how_much_is_needed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("short.csv");
    let mut text = String::from("timestamp,requests\n");
    for i in 0..100 {
        text.push_str(&format!("{},{}\n", 1_767_225_600 + i * 300, 100 + i % 7));
    }
    std::fs::write(&path, text).unwrap();
    let err = forecast_error(path.to_str().unwrap(), &[]);
    assert!(
        err.contains("too little history") && err.contains("100 slices, need at least 289"),
        "{err}"
    );
}

#[test]
fn backtest_emits_the_scorer_csv_and_json() {
    let data = taylor();
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("fc.csv");
    let v = json_of(&[
        "backtest",
        "--csv",
        &data,
        "--slice-secs",
        "1800",
        "--horizon",
        "48",
        "--origins",
        "2",
        "--warmup-origins",
        "0",
        "--json",
        "--emit-forecasts",
        csv.to_str().unwrap(),
    ]);
    let models: Vec<&str> = v["scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["model"].as_str().unwrap())
        .collect();
    for m in [
        "umbra",
        "mstl_ets",
        "combined",
        "snaive_weekly",
        "snaive_daily",
    ] {
        assert!(models.contains(&m), "{models:?}");
    }
    let text = std::fs::read_to_string(&csv).unwrap();
    assert!(text.starts_with("unique_id,origin,step,model,mean,lo-80,hi-80,lo-90,hi-90,seconds\n"));
    // 2 origins × (4 candidates + umbra) × 48 steps.
    assert_eq!(text.lines().count(), 1 + 2 * 5 * 48);
}

#[test]
fn simulate_rejects_unknown_policy_and_prints_a_table() {
    let data = taylor();
    let err = error_of(&[
        "simulate",
        "--trace",
        &data,
        "--slice-secs",
        "1800",
        "--policy",
        "magic",
    ]);
    assert!(err.contains("unknown policy \"magic\""), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("sim.svg");
    let v = json_of(&[
        "simulate",
        "--trace",
        &data,
        "--slice-secs",
        "1800",
        "--days",
        "2",
        "--calibration-origins",
        "7",
        "--policy",
        "reactive,umbra",
        "--json",
        "--plot",
        svg.to_str().unwrap(),
    ]);
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(results[1]["policy"], "umbra");
    assert_eq!(results[1]["steps"], 2 * 1440);
    let drawing = std::fs::read_to_string(&svg).unwrap();
    assert!(drawing.starts_with("<svg"));
    let titles = svg_texts(&drawing);
    assert!(
        titles.iter().any(|t| t.starts_with("umbra: missed")),
        "{titles:?}"
    );
}

/// The text of every `<text>` element of an SVG plotters wrote, trimmed.
fn svg_texts(svg: &str) -> Vec<String> {
    svg.split("<text")
        .skip(1)
        .filter_map(|element| {
            let body = &element[element.find('>')? + 1..];
            Some(body[..body.find("</text>")?].trim().to_string())
        })
        .collect()
}

/// A UTC tick label as the plots print them: `08-27 12:00`.
fn is_date_tick(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 11
        && b.iter().enumerate().all(|(i, c)| match i {
            2 => *c == b'-',
            5 => *c == b' ',
            8 => *c == b':',
            _ => c.is_ascii_digit(),
        })
}

/// `umbra ARGS...`, which must succeed: standard output and standard error.
fn output_of(args: &[&str]) -> (String, String) {
    let out = umbra(args);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr(&out),
    )
}

/// On the half-hourly Taylor file, with no `--slice-secs`, the slice width is the data's
/// 1800 s, printed and in `--json`, with no gap filled; an explicit narrower width is still
/// honoured, and its thousands of interpolated slices are summed up in one line.
#[test]
fn slice_width_is_inferred_from_the_data_and_gaps_are_summed_up() {
    let data = taylor();
    let quick = ["--horizon", "4", "--calibration-origins", "0"];
    let mut args = vec!["forecast", "--csv", &data];
    args.extend(quick);
    let (_, err) = output_of(&args);
    assert!(
        err.contains("slice width 1800 s, inferred from the data"),
        "{err}"
    );
    assert!(err.contains("no gaps"), "{err}");
    assert!(!err.contains("gap:"), "{err}");
    args.push("--json");
    let v = json_of(&args);
    assert_eq!(v["slice"]["secs"], 1800, "{}", v["slice"]);
    assert_eq!(v["slice"]["from"], "data");
    assert_eq!(v["history"]["filled_slices"], 0);
    assert_eq!(v["slices"][1]["start"], "2000-08-28T00:30:00Z");

    // --slice-secs 900 halves every slice: 4,031 gaps of one slice, in one line.
    let mut args = vec!["forecast", "--csv", &data, "--slice-secs", "900"];
    args.extend(quick);
    let (_, err) = output_of(&args);
    assert!(
        err.contains("slice width 900 s from --slice-secs; the data's timestamps are 1800 s apart"),
        "{err}"
    );
    let gap_lines: Vec<&str> = err.lines().filter(|l| l.contains("gap")).collect();
    assert_eq!(gap_lines.len(), 1, "{err}");
    assert!(
        gap_lines[0]
            .contains("4031 gaps filled by interpolation (4031 slices, 41 d 23 h 45 min in all)"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 2, "{err}");
    args.push("--json");
    assert_eq!(json_of(&args)["slice"]["from"], "flag");

    // A spacing that does not divide a day cannot be a slice width: the error says what to do.
    let dir = tempfile::tempdir().unwrap();
    let odd = dir.path().join("odd.csv");
    let rows: String = (0..400)
        .map(|i| format!("{},{}\n", 1_767_225_600 + i * 420, 100 + i % 9))
        .collect();
    std::fs::write(&odd, format!("timestamp,requests\n{rows}")).unwrap();
    let err = forecast_error(odd.to_str().unwrap(), &[]);
    assert!(
        err.contains("420 s apart") && err.contains("give --slice-secs"),
        "{err}"
    );
}

/// `umbra simulate --plot` on Taylor: the plot's path is printed and in `--json`, and the
/// SVG has the demand panel in requests/s, then one panel per policy in instances (each
/// titled with the policy's totals), dates on the time axis, and the misses of the reactive
/// and umbra policies shaded.
#[test]
fn simulate_plot_has_a_panel_per_policy_with_dates_units_and_misses() {
    let data = taylor();
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("sim.svg");
    let svg_arg = svg.to_str().unwrap();
    let args = [
        "simulate",
        "--trace",
        &data,
        "--days",
        "2",
        "--calibration-origins",
        "3",
        "--plot",
        svg_arg,
    ];
    let (out, err) = output_of(&args);
    let written = std::fs::canonicalize(&svg).unwrap();
    assert!(
        out.contains(&format!("plot written to {}", written.display())),
        "{out}"
    );
    assert!(err.contains("slice width 1800 s, inferred"), "{err}");
    std::fs::remove_file(&svg).unwrap();
    let mut json_args = args.to_vec();
    json_args.push("--json");
    let v = json_of(&json_args);
    assert_eq!(v["slice"]["secs"], 1800);
    assert_eq!(v["plot"], written.display().to_string());

    let drawing = std::fs::read_to_string(&written).unwrap();
    let texts = svg_texts(&drawing);
    let panels: Vec<&String> = texts
        .iter()
        .filter(|t| t.contains(": missed ") && t.contains("idle"))
        .collect();
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 6);
    assert_eq!(panels.len(), results.len(), "{panels:?}");
    for r in results {
        let policy = r["policy"].as_str().unwrap();
        assert!(
            panels
                .iter()
                .any(|t| t.starts_with(&format!("{policy}: missed "))),
            "no panel for {policy}: {panels:?}"
        );
    }
    let count = |text: &str| texts.iter().filter(|t| *t == text).count();
    assert_eq!(count("requests/s"), 1, "{texts:?}");
    assert_eq!(count("instances"), results.len(), "{texts:?}");
    assert_eq!(count("time (UTC)"), results.len() + 1, "{texts:?}");
    let ticks: Vec<&String> = texts.iter().filter(|t| is_date_tick(t)).collect();
    assert!(ticks.len() >= 4 * (results.len() + 1), "{ticks:?}");
    assert!(ticks.iter().any(|t| t.starts_with("08-27")), "{ticks:?}");
    assert!(
        texts
            .iter()
            .any(|t| t.starts_with("2000-08-26 00:00 to 2000-08-28 00:00 UTC")),
        "{texts:?}"
    );

    // Misses: the reactive policy misses on Taylor's morning ramps (its JSON says so), and the
    // plot shades them: a legend row per panel with misses, and a shaded span for each.
    let missed = |policy: &str| {
        results
            .iter()
            .find(|r| r["policy"] == policy)
            .and_then(|r| r["missed"].as_f64())
            .unwrap()
    };
    assert!(missed("reactive") > 0.0);
    let miss_legends: Vec<usize> = texts
        .iter()
        .filter_map(|t| {
            t.strip_prefix("missed in ")?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert!(
        !miss_legends.is_empty() && miss_legends.iter().all(|&n| n > 0),
        "{miss_legends:?}"
    );
    let miss_rects = drawing
        .split("<rect")
        .filter(|r| r.contains(r##"fill="#D62728""##))
        .count();
    assert!(miss_rects > miss_legends.len(), "{miss_rects} shaded spans");
}

/// `umbra forecast --plot`: the path is printed and in `--json`; the SVG has the demand
/// panel in requests/s with the forecast band, and the pool panel in instances.
#[test]
fn forecast_plot_shows_demand_and_the_pool_in_instances() {
    let data = taylor();
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("forecast.svg");
    let args = [
        "forecast",
        "--csv",
        &data,
        "--horizon",
        "48",
        "--calibration-origins",
        "0",
        "--capacity-rps",
        "500",
        "--plot",
        svg.to_str().unwrap(),
    ];
    let (out, _) = output_of(&args);
    let written = std::fs::canonicalize(&svg).unwrap();
    assert!(
        out.contains(&format!("plot written to {}", written.display())),
        "{out}"
    );
    let mut json_args = args.to_vec();
    json_args.push("--json");
    assert_eq!(json_of(&json_args)["plot"], written.display().to_string());
    let texts = svg_texts(&std::fs::read_to_string(&written).unwrap());
    for label in [
        "requests/s",
        "instances",
        "actual demand",
        "forecast mean",
        "forecast p10–p90",
        "target: warm (serving)",
        "needed by the actuals",
    ] {
        assert!(
            texts.iter().any(|t| t == label),
            "no {label:?} in {texts:?}"
        );
    }
    assert!(
        texts
            .iter()
            .any(|t| t.starts_with("pool: instances at 500 requests/s each")),
        "{texts:?}"
    );
    let ticks: Vec<&String> = texts.iter().filter(|t| is_date_tick(t)).collect();
    assert!(ticks.iter().any(|t| t.starts_with("08-28")), "{ticks:?}");

    // A capacity that is no number of requests is refused before anything is read.
    let err = forecast_error(&data, &["--capacity-rps", "0"]);
    assert!(
        err.contains("--capacity-rps must be a positive number"),
        "{err}"
    );
}

#[test]
fn simulate_runs_the_products_controller_beside_the_baselines() {
    // Ten days of half-hourly demand with a daily peak: 20,000 at noon, 2,000 at night.
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("daily.csv");
    let mut text = String::from("timestamp,requests\n");
    for i in 0..10 * 48i64 {
        let phase = (i % 48) as f64 / 48.0 * std::f64::consts::TAU;
        let value = 11_000.0 - 9_000.0 * phase.cos();
        text.push_str(&format!("{},{value}\n", 1_767_225_600 + i * 1800));
    }
    std::fs::write(&trace, text).unwrap();
    let v = json_of(&[
        "simulate",
        "--trace",
        trace.to_str().unwrap(),
        "--slice-secs",
        "1800",
        "--days",
        "2",
        "--calibration-origins",
        "3",
        "--json",
    ]);
    let results = v["results"].as_array().unwrap();
    let policies: Vec<&str> = results
        .iter()
        .map(|r| r["policy"].as_str().unwrap())
        .collect();
    assert_eq!(policies.len(), 6, "{policies:?}");
    for (got, want) in policies.iter().zip([
        "reactive",
        "fixed",
        "keepalive",
        "predictive-mean",
        "hybrid-histogram",
        "umbra",
    ]) {
        assert!(got.starts_with(want), "{got} for {want}");
    }
    for r in results {
        for field in [
            "missed",
            "idle_instance_hours",
            "cost_total",
            "served_share",
        ] {
            assert!(r[field].as_f64().is_some(), "{} lacks {field}", r["policy"]);
        }
        assert_eq!(r["steps"], 2 * 1440);
    }
    // The umbra policy is the controller: it asked for pool forecasts and sent the simulated
    // agent commands, round after round, and its instances cost something.
    let core = &v["umbra_core"];
    assert!(core["rounds"].as_u64().unwrap() >= 2 * 1440, "{core}");
    assert!(core["pool_forecasts"].as_u64().unwrap() > 0, "{core}");
    assert!(core["commands"].as_u64().unwrap() > 0, "{core}");
    let umbra = &results[5];
    assert!(umbra["warm_instance_hours"].as_f64().unwrap() > 0.0);
    assert!(
        v["umbra_quantile"]
            .as_f64()
            .is_some_and(|q| q > 0.5 && q < 1.0)
    );
}

/// The product's controller on the public Taylor series (28 days, a 2-minute launch delay,
/// the defaults a user gets): fewer cold-start misses than every reactive baseline and the
/// hybrid-histogram keep-alive, and no more idle instance-hours than hybrid-histogram.
#[test]
fn on_taylor_the_product_misses_least_and_idles_no_more_than_hybrid_histogram() {
    let taylor = taylor();
    let v = json_of(&[
        "simulate",
        "--trace",
        &taylor,
        "--slice-secs",
        "1800",
        "--policy",
        "reactive,keepalive,hybrid-histogram,umbra",
        "--json",
    ]);
    let results = v["results"].as_array().unwrap();
    let of = |policy: &str, field: &str| {
        results
            .iter()
            .find(|r| r["policy"].as_str().unwrap().starts_with(policy))
            .and_then(|r| r[field].as_f64())
            .unwrap_or_else(|| panic!("{policy} has no {field}: {v}"))
    };
    let missed = of("umbra", "missed");
    for baseline in ["reactive", "keepalive", "hybrid-histogram"] {
        assert!(
            missed < of(baseline, "missed"),
            "umbra missed {missed}, {baseline} {}",
            of(baseline, "missed")
        );
    }
    let (idle, hybrid_idle) = (
        of("umbra", "idle_instance_hours"),
        of("hybrid-histogram", "idle_instance_hours"),
    );
    assert!(
        idle <= hybrid_idle,
        "umbra idles {idle} instance-hours, hybrid-histogram {hybrid_idle}"
    );
}

#[test]
fn gaps_and_duplicates_are_repaired_and_reported() {
    // Three days at 5 minutes with a repeated row and two missing slices.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gappy.csv");
    let mut text = String::from("timestamp,service,region,value\n");
    for i in 0..864i64 {
        if i == 100 || i == 101 {
            continue;
        }
        let value = 1000.0 + 300.0 * ((i % 288) as f64 / 288.0 * std::f64::consts::TAU).sin();
        text.push_str(&format!(
            "{},shop,eu-west,{value}\n",
            1_767_225_600 + i * 300
        ));
        if i == 500 {
            text.push_str(&format!(
                "{},shop,eu-west,{value}\n",
                1_767_225_600 + i * 300 + 30
            ));
        }
    }
    std::fs::write(&path, text).unwrap();
    let path = path.to_str().unwrap();
    let v = forecast_json(path, &["--horizon", "12", "--calibration-origins", "0"]);
    assert_eq!(v["unique_id"], "shop/eu-west");
    assert_eq!(v["history"]["duplicates"], 1);
    assert_eq!(v["history"]["filled_slices"], 2);
    assert_eq!(v["history"]["gaps"][0][0], "2026-01-01T08:20:00+00:00");
    assert_eq!(v["history_slices"], 864);
    // Three days: MSTL with the daily season only, and no calibration asked for.
    assert_eq!(v["periods"], serde_json::json!([288]));
    assert_eq!(v["calibration"]["kind"], "parametric");

    // A gap longer than --max-gap-secs is refused with advice.
    let err = forecast_error(path, &["--max-gap-secs", "300"]);
    assert!(err.contains("raise --max-gap-secs"), "{err}");
}

#[test]
fn events_file_scales_and_overrides_the_printed_forecast() {
    let data = taylor();
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.toml");
    std::fs::write(
        &events,
        r#"
        [[event]]
        name = "campaign"
        start = "2000-08-28T00:00:00Z"
        end = "2000-08-28T01:00:00Z"
        scale = 2.0

        [[event]]
        name = "backup"
        start = "2000-08-28T02:00:00Z"
        end = "2000-08-28T02:30:00Z"
        value = 0
        "#,
    )
    .unwrap();
    let run = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec![
            "--slice-secs",
            "1800",
            "--horizon",
            "6",
            "--calibration-origins",
            "0",
        ];
        args.extend_from_slice(extra);
        forecast_json(&data, &args)
    };
    let plain = run(&[]);
    let with_events = run(&["--events", events.to_str().unwrap()]);
    let p90 = |v: &serde_json::Value, i: usize| v["slices"][i]["p90"].as_f64().unwrap();
    for i in 0..2 {
        assert!((p90(&with_events, i) - 2.0 * p90(&plain, i)).abs() < 1e-6);
        assert_eq!(with_events["slices"][i]["event"], "campaign");
    }
    assert_eq!(p90(&with_events, 3), p90(&plain, 3));
    assert_eq!(p90(&with_events, 4), 0.0);
    assert_eq!(with_events["slices"][4]["event"], "backup");

    // A malformed calendar is refused with the file named.
    std::fs::write(&events, "[[event]]\nname = \"x\"\n").unwrap();
    let err = forecast_error(
        &data,
        &["--slice-secs", "1800", "--events", events.to_str().unwrap()],
    );
    assert!(err.contains("events.toml"), "{err}");
}

/// A user's mistake is one line per cause, without a backtrace, whatever `RUST_BACKTRACE`
/// says (many Rust machines set it).
#[test]
fn a_user_error_prints_no_backtrace_even_with_rust_backtrace_set() {
    let out = Command::new(env!("CARGO_BIN_EXE_umbra"))
        .args(["forecast", "--csv", "/nonexistent/demand.csv"])
        .env("RUST_BACKTRACE", "full")
        .env("RUST_LIB_BACKTRACE", "1")
        .output()
        .expect("run umbra");
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with("error: reading /nonexistent/demand.csv\n  because: No such file"),
        "{err}"
    );
    assert!(!err.to_lowercase().contains("backtrace"), "{err}");
    assert_eq!(err.lines().count(), 2, "{err}");
}
