//! SVG plot of a simulation or a forecast: demand, the forecast band and mean, and pool
//! capacity over time (plotters, SVG backend). Returns the SVG text; writing it is the
//! caller's job. Long series are thinned to at most [`MAX_POINTS`] points per line so the
//! file stays small enough to open in a browser.

use plotters::prelude::*;

/// Points drawn per line; a 28-day per-minute trace (40,320 steps) is thinned to this.
pub const MAX_POINTS: usize = 2_000;

/// One line or band to draw, with values per step.
pub struct PlotSeries<'a> {
    pub label: &'a str,
    pub values: &'a [f64],
}

/// What to draw.
pub struct PlotInput<'a> {
    pub title: &'a str,
    pub y_label: &'a str,
    /// Hours per step (x axis is in hours from the start).
    pub hours_per_step: f64,
    pub demand: PlotSeries<'a>,
    /// Lower and upper edge of the forecast band.
    pub band: Option<(PlotSeries<'a>, PlotSeries<'a>)>,
    pub forecast_mean: Option<PlotSeries<'a>>,
    /// Pool capacities (instances × capacity), one line each.
    pub pools: Vec<PlotSeries<'a>>,
}

/// Errors while drawing.
#[derive(Debug, thiserror::Error)]
#[error("drawing the plot: {0}")]
pub struct PlotError(String);

fn thin(values: &[f64], hours_per_step: f64) -> Vec<(f64, f64)> {
    let stride = values.len().div_ceil(MAX_POINTS).max(1);
    values
        .iter()
        .enumerate()
        .step_by(stride)
        .filter(|(_, v)| v.is_finite())
        .map(|(i, &v)| (i as f64 * hours_per_step, v))
        .collect()
}

/// Draw `input` as an SVG document of `width` × `height` pixels.
pub fn render_svg(input: &PlotInput<'_>, width: u32, height: u32) -> Result<String, PlotError> {
    let err = |e: &dyn std::fmt::Display| PlotError(e.to_string());
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let steps = input.demand.values.len();
        let x_max = (steps.max(1) as f64) * input.hours_per_step;
        let lines = || {
            std::iter::once(&input.demand)
                .chain(input.pools.iter())
                .chain(input.band.iter().flat_map(|b| [&b.0, &b.1]))
                .flat_map(|s| s.values.iter().copied().filter(|v| v.is_finite()))
        };
        let y_max = lines().fold(0.0, f64::max);
        let y_min = lines().fold(f64::INFINITY, f64::min).min(y_max);
        // Leave the lower third free for the legend.
        let y_low = (y_min - 0.5 * (y_max - y_min)).max(0.0);
        let mut chart = ChartBuilder::on(&root)
            .caption(input.title, ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..x_max, y_low..y_max * 1.02 + 1.0)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc("hours from start")
            .y_desc(input.y_label)
            .draw()
            .map_err(|e| err(&e))?;
        if let Some((lo, hi)) = &input.band {
            let upper = thin(hi.values, input.hours_per_step);
            let lower = thin(lo.values, input.hours_per_step);
            let polygon: Vec<(f64, f64)> = upper
                .iter()
                .copied()
                .chain(lower.iter().rev().copied())
                .collect();
            let label = format!("forecast {}–{}", lo.label, hi.label);
            chart
                .draw_series(std::iter::once(Polygon::new(
                    polygon,
                    BLUE.mix(0.2).filled(),
                )))
                .map_err(|e| err(&e))?
                .label(label)
                .legend(|(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 20, y + 5)], BLUE.mix(0.2).filled())
                });
        }
        let mut line = |s: &PlotSeries<'_>, color: RGBColor| -> Result<(), PlotError> {
            chart
                .draw_series(LineSeries::new(
                    thin(s.values, input.hours_per_step),
                    color.stroke_width(1),
                ))
                .map_err(|e| err(&e))?
                .label(s.label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            Ok(())
        };
        line(&input.demand, BLACK)?;
        if let Some(m) = &input.forecast_mean {
            line(m, BLUE)?;
        }
        let palette = [RED, GREEN, MAGENTA, CYAN, RGBColor(255, 140, 0)];
        for (i, pool) in input.pools.iter().enumerate() {
            line(pool, palette[i % palette.len()])?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerLeft)
            .draw()
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    Ok(svg)
}
