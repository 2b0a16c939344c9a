//! SVG figures of simulations and forecasts (plotters, SVG backend): panels stacked
//! vertically over one shared time axis with UTC dates on its ticks, each panel with its unit
//! on the y axis, its legend beside the plot (so it never covers data) and, where a pool held
//! fewer instances than were needed, shaded miss spans. Returns the SVG text; writing it is
//! the caller's job. Long series are thinned to at most [`MAX_POINTS`] points per line so the
//! file stays small enough to open in a browser; miss spans are found on every step by the
//! caller, never on the thinned line, so a short miss is still drawn.

use std::ops::Range;

use chrono::{DateTime, Duration, Utc};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Points drawn per line; a 7-day per-minute trace (10,080 steps) is thinned to this.
pub const MAX_POINTS: usize = 2_000;

/// Misses: shaded spans where a pool held fewer instances than were needed.
pub const MISS_COLOR: RGBColor = RGBColor(214, 39, 40);
/// Demand, or what it needed: near-black, so it reads first.
pub const INK: RGBColor = RGBColor(33, 33, 33);
/// A forecast (its mean and its band).
pub const FORECAST_COLOR: RGBColor = RGBColor(31, 119, 180);
/// One colour per policy (Tableau 10 without its red, which marks misses and nothing else).
pub const PALETTE: [RGBColor; 7] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

/// Tick labels: month-day hour:minute, in UTC (the date range is in the figure's subtitle).
const TICK_FORMAT: &str = "%m-%d %H:%M";
/// Pixels of the figure's title and subtitle.
const HEADER_PX: u32 = 56;
/// Pixels of the legend column to the right of every panel.
const LEGEND_PX: u32 = 300;
const FONT: &str = "sans-serif";

/// Where step `i` of every series in a figure lies in time.
#[derive(Debug, Clone, Copy)]
pub struct TimeAxis {
    pub start: DateTime<Utc>,
    pub step_secs: u32,
    pub steps: usize,
}

impl TimeAxis {
    /// Start of step `index`.
    pub fn at(&self, index: usize) -> DateTime<Utc> {
        self.start + Duration::seconds(index as i64 * i64::from(self.step_secs))
    }

    /// End of the last step.
    pub fn end(&self) -> DateTime<Utc> {
        self.at(self.steps.max(1))
    }
}

/// A line: one value per step of the figure's axis (NaN where it has none).
pub struct Line {
    pub label: String,
    pub values: Vec<f64>,
    pub color: RGBColor,
    pub stroke_px: u32,
}

/// A shaded band between two lines, e.g. a forecast interval.
pub struct Band {
    pub label: String,
    pub lower: Vec<f64>,
    pub upper: Vec<f64>,
    pub color: RGBColor,
}

/// One panel of a figure.
pub struct Panel {
    pub title: String,
    /// The y axis's unit, e.g. "requests/s" or "instances".
    pub unit: &'static str,
    pub band: Option<Band>,
    pub lines: Vec<Line>,
    /// Step ranges to shade as misses.
    pub misses: Vec<Range<usize>>,
}

/// Panels over one time axis.
pub struct Figure {
    pub title: String,
    pub axis: TimeAxis,
    pub panels: Vec<Panel>,
}

/// Errors while drawing.
#[derive(Debug, thiserror::Error)]
#[error("drawing the plot: {0}")]
pub struct PlotError(String);

/// The step ranges where `flags` is true, in order.
pub fn spans_where(flags: impl IntoIterator<Item = bool>) -> Vec<Range<usize>> {
    let mut spans: Vec<Range<usize>> = Vec::new();
    for (i, flag) in flags.into_iter().enumerate() {
        match spans.last_mut() {
            Some(last) if flag && last.end == i => last.end = i + 1,
            _ if flag => spans.push(i..i + 1),
            _ => {}
        }
    }
    spans
}

/// The finite `values`, at most [`MAX_POINTS`] of them, placed in time. NaN marks a step
/// without a value (a line sampled more coarsely than the axis), so thinning counts only
/// the others.
fn thin(axis: &TimeAxis, values: &[f64]) -> Vec<(DateTime<Utc>, f64)> {
    let points: Vec<(DateTime<Utc>, f64)> = values
        .iter()
        .enumerate()
        .filter(|(_, v)| v.is_finite())
        .map(|(i, &v)| (axis.at(i), v))
        .collect();
    let stride = points.len().div_ceil(MAX_POINTS).max(1);
    points.into_iter().step_by(stride).collect()
}

/// Miss spans widened to at least `min_steps` and merged where they then touch, so a
/// one-minute miss on a week-long axis is still a visible stroke.
fn visible_spans(spans: &[Range<usize>], min_steps: usize, steps: usize) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = Vec::new();
    for span in spans {
        let end = (span.start + min_steps.max(span.len())).min(steps.max(span.end));
        match out.last_mut() {
            Some(last) if span.start <= last.end => last.end = last.end.max(end),
            _ => out.push(span.start..end),
        }
    }
    out
}

/// A y tick label: whole numbers past 10, one decimal below, thousands as `k`.
fn y_label(v: f64, y_max: f64) -> String {
    if v == 0.0 {
        "0".to_string()
    } else if y_max >= 10_000.0 {
        format!("{:.0}k", v / 1_000.0)
    } else if y_max >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Draw `figure` as an SVG document `width` pixels wide, each panel `panel_height` high.
pub fn render_svg(figure: &Figure, width: u32, panel_height: u32) -> Result<String, PlotError> {
    let err = |e: &dyn std::fmt::Display| PlotError(e.to_string());
    let axis = figure.axis;
    let (start, end) = (axis.at(0), axis.end());
    let height = HEADER_PX + panel_height * figure.panels.len().max(1) as u32;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let (header, body) = root.split_vertically(HEADER_PX);
        let centre = (width / 2) as i32;
        let title_style = TextStyle::from((FONT, 22).into_font())
            .pos(Pos::new(HPos::Center, VPos::Top))
            .color(&INK);
        header
            .draw(&Text::new(figure.title.as_str(), (centre, 6), title_style))
            .map_err(|e| err(&e))?;
        let subtitle = format!(
            "{} to {} UTC, {} s steps; ticks are month-day hour:minute (UTC)",
            start.format("%Y-%m-%d %H:%M"),
            end.format("%Y-%m-%d %H:%M"),
            axis.step_secs
        );
        let subtitle_style = TextStyle::from((FONT, 15).into_font())
            .pos(Pos::new(HPos::Center, VPos::Top))
            .color(&RGBColor(90, 90, 90));
        header
            .draw(&Text::new(subtitle, (centre, 32), subtitle_style))
            .map_err(|e| err(&e))?;
        let areas = body.split_evenly((figure.panels.len().max(1), 1));
        for (panel, area) in figure.panels.iter().zip(&areas) {
            let (plot_area, legend_area) =
                area.split_horizontally(width.saturating_sub(LEGEND_PX).max(200));
            draw_panel(panel, &axis, start..end, &plot_area)?;
            draw_legend(panel, &legend_area)?;
        }
        root.present().map_err(|e| err(&e))?;
    }
    Ok(svg)
}

fn draw_panel<DB: DrawingBackend>(
    panel: &Panel,
    axis: &TimeAxis,
    time: Range<DateTime<Utc>>,
    area: &DrawingArea<DB, plotters::coord::Shift>,
) -> Result<(), PlotError>
where
    DB::ErrorType: 'static,
{
    let err = |e: &dyn std::fmt::Display| PlotError(e.to_string());
    let values = panel
        .lines
        .iter()
        .map(|l| &l.values)
        .chain(panel.band.iter().flat_map(|b| [&b.lower, &b.upper]))
        .flat_map(|v| v.iter().copied().filter(|v| v.is_finite()));
    let (low, high) = values.fold((f64::INFINITY, 0.0_f64), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    // The axis starts a little below the lowest value rather than at zero, so a difference of
    // one instance in thirty, which is what a miss is, can be seen.
    let high = high.max(1.0);
    let margin = 0.08 * (high - low.min(high));
    let y_min = (low.min(high) - 2.0 * margin).max(0.0);
    let y_max = high + margin.max(0.05 * high);
    let mut chart = ChartBuilder::on(area)
        .caption(panel.title.as_str(), (FONT, 16).into_font().color(&INK))
        .margin_left(10)
        .margin_right(10)
        .margin_top(4)
        .x_label_area_size(38)
        .y_label_area_size(64)
        .build_cartesian_2d(time, y_min..y_max)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_labels(8)
        .y_labels(5)
        .x_label_formatter(&|t: &DateTime<Utc>| t.format(TICK_FORMAT).to_string())
        .y_label_formatter(&|v: &f64| y_label(*v, y_max))
        .x_desc("time (UTC)")
        .y_desc(panel.unit)
        .axis_desc_style((FONT, 14))
        .label_style((FONT, 13))
        .light_line_style(WHITE.mix(0.0))
        .bold_line_style(RGBColor(225, 225, 225))
        .draw()
        .map_err(|e| err(&e))?;
    // About two pixels of the plot, in steps.
    let plot_px = area.dim_in_pixel().0.saturating_sub(84).max(1) as usize;
    let min_steps = (2 * axis.steps).div_ceil(plot_px).max(1);
    let spans = visible_spans(&panel.misses, min_steps, axis.steps);
    chart
        .draw_series(spans.iter().map(|s| {
            Rectangle::new(
                [(axis.at(s.start), y_min), (axis.at(s.end), y_max)],
                MISS_COLOR.mix(0.28).filled(),
            )
        }))
        .map_err(|e| err(&e))?;
    if let Some(band) = &panel.band {
        let upper = thin(axis, &band.upper);
        let lower = thin(axis, &band.lower);
        let polygon: Vec<(DateTime<Utc>, f64)> =
            upper.into_iter().chain(lower.into_iter().rev()).collect();
        chart
            .draw_series(std::iter::once(Polygon::new(
                polygon,
                band.color.mix(0.22).filled(),
            )))
            .map_err(|e| err(&e))?;
    }
    for line in &panel.lines {
        chart
            .draw_series(LineSeries::new(
                thin(axis, &line.values),
                line.color.stroke_width(line.stroke_px),
            ))
            .map_err(|e| err(&e))?;
    }
    Ok(())
}

/// The panel's legend, in the column beside its plot: one row per line, the band, and the
/// misses if there are any.
fn draw_legend<DB: DrawingBackend>(
    panel: &Panel,
    area: &DrawingArea<DB, plotters::coord::Shift>,
) -> Result<(), PlotError>
where
    DB::ErrorType: 'static,
{
    let err = |e: &dyn std::fmt::Display| PlotError(e.to_string());
    let text = TextStyle::from((FONT, 14).into_font())
        .pos(Pos::new(HPos::Left, VPos::Center))
        .color(&INK);
    let row = |i: usize| 40 + 22 * i as i32;
    let mut i = 0;
    for line in &panel.lines {
        let y = row(i);
        area.draw(&PathElement::new(
            vec![(6, y), (34, y)],
            line.color.stroke_width(line.stroke_px.max(2)),
        ))
        .map_err(|e| err(&e))?;
        area.draw(&Text::new(line.label.as_str(), (42, y), text.clone()))
            .map_err(|e| err(&e))?;
        i += 1;
    }
    if let Some(band) = &panel.band {
        let y = row(i);
        area.draw(&Rectangle::new(
            [(6, y - 6), (34, y + 6)],
            band.color.mix(0.22).filled(),
        ))
        .map_err(|e| err(&e))?;
        area.draw(&Text::new(band.label.as_str(), (42, y), text.clone()))
            .map_err(|e| err(&e))?;
        i += 1;
    }
    if !panel.misses.is_empty() {
        let y = row(i);
        area.draw(&Rectangle::new(
            [(6, y - 6), (34, y + 6)],
            MISS_COLOR.mix(0.28).filled(),
        ))
        .map_err(|e| err(&e))?;
        let label = format!("missed in {} spans (held < needed)", panel.misses.len());
        area.draw(&Text::new(label, (42, y), text.clone()))
            .map_err(|e| err(&e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_cover_each_run_of_true() {
        let flags = [false, true, true, false, true, false, false, true];
        assert_eq!(spans_where(flags), vec![1..3, 4..5, 7..8]);
        assert!(spans_where([false; 4]).is_empty());
    }

    #[test]
    fn short_spans_are_widened_and_merged() {
        assert_eq!(
            visible_spans(&[1..2, 3..4, 20..30], 4, 100),
            vec![1..7, 20..30]
        );
        // Never past the axis's end.
        let last = visible_spans(&[90..91, 98..99], 4, 100);
        assert_eq!(last, vec![90..94, 98..100]);
    }
}
