//! `mesh-bench`'s picture: latency percentiles per case, one panel per protocol and rate, one
//! line per target, drawn to a PNG with plotters. The x axis counts nines (p90, p99, p99.9),
//! the y axis is logarithmic, so the tail and the median both stay readable.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;

/// One line: a target's latency at each percentile, (percentile, milliseconds).
pub struct Series {
    /// The target (`haproxy`).
    pub label: String,
    /// Points, ascending percentile.
    pub points: Vec<(f64, f64)>,
}

/// One panel: a case (protocol and rate).
pub struct Panel {
    /// What the panel shows (`HTTP/1.1 at 1000 rps`).
    pub title: String,
    /// Its lines.
    pub series: Vec<Series>,
}

/// Where a percentile sits on the x axis: the number of nines (p90 → 1, p99 → 2).
fn nines(percentile: f64) -> f64 {
    -(1.0 - percentile / 100.0).max(1e-6).log10()
}

fn percentile_label(x: f64) -> String {
    let p = 100.0 * (1.0 - 10f64.powf(-x));
    let text = format!("{p:.3}");
    format!("p{}", text.trim_end_matches('0').trim_end_matches('.'))
}

fn register_font(font: &Path) -> anyhow::Result<()> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let bytes = std::fs::read(font).map_err(|e| format!("{}: {e}", font.display()))?;
            plotters::style::register_font(
                "sans-serif",
                FontStyle::Normal,
                Box::leak(bytes.into_boxed_slice()),
            )
            .map_err(|_| format!("{}: not a TrueType font", font.display()))
        })
        .clone()
        .map_err(|e| anyhow::anyhow!("the plot's font: {e}"))
}

const COLOURS: [RGBColor; 6] = [
    RGBColor(0x44, 0x44, 0x44),
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0xff, 0x7f, 0x0e),
];

/// Draws `panels` (two per row) to `out`, labels in `font`.
pub fn latency_png(out: &Path, font: &Path, title: &str, panels: &[Panel]) -> anyhow::Result<()> {
    register_font(font)?;
    let rows = panels.len().div_ceil(2).max(1);
    let height = u32::try_from(rows * 380 + 50).unwrap_or(1200);
    let root = BitMapBackend::new(out, (1280, height)).into_drawing_area();
    let draw = |e: &dyn std::fmt::Display| anyhow::anyhow!("drawing {}: {e}", out.display());
    root.fill(&WHITE).map_err(|e| draw(&e))?;
    let root = root
        .titled(title, ("sans-serif", 22))
        .map_err(|e| draw(&e))?;
    let areas = root.split_evenly((rows, 2));
    for (panel, area) in panels.iter().zip(areas.iter()) {
        let all: Vec<f64> = panel
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .filter(|ms| *ms > 0.0)
            .collect();
        let lo = all.iter().copied().fold(f64::INFINITY, f64::min).min(1.0) * 0.8;
        let hi = all.iter().copied().fold(0.0, f64::max).max(lo * 10.0) * 1.25;
        let x_max = panel
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| nines(p.0)))
            .fold(1.0, f64::max)
            .ceil();
        let mut chart = ChartBuilder::on(area)
            .caption(&panel.title, ("sans-serif", 17))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..x_max, (lo..hi).log_scale())
            .map_err(|e| draw(&e))?;
        chart
            .configure_mesh()
            .x_labels(usize::try_from(x_max as i64).unwrap_or(4) + 1)
            .x_label_formatter(&|x| percentile_label(*x))
            .y_label_formatter(&|y| format!("{y:.2}"))
            .y_desc("latency, ms")
            .max_light_lines(2)
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(|e| draw(&e))?;
        for (i, s) in panel.series.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let points: Vec<(f64, f64)> = s
                .points
                .iter()
                .filter(|p| p.1 > 0.0)
                .map(|(p, ms)| (nines(*p), *ms))
                .collect();
            chart
                .draw_series(LineSeries::new(points, colour.stroke_width(2)))
                .map_err(|e| draw(&e))?
                .label(&s.label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font(("sans-serif", 13))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| draw(&e))?;
    }
    root.present().map_err(|e| draw(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_sit_on_nines() {
        assert!((nines(90.0) - 1.0).abs() < 1e-9);
        assert!((nines(99.9) - 3.0).abs() < 1e-9);
        assert_eq!(percentile_label(2.0), "p99");
        assert_eq!(percentile_label(3.0), "p99.9");
        assert_eq!(percentile_label(1.0), "p90");
        assert_eq!(percentile_label(0.0), "p0");
    }

    #[test]
    #[ignore = "needs fonts-dejavu-core (scripts/test.sh installs it)"]
    fn draws_a_png() {
        let font = Path::new(crate::bench::PLOT_FONT);
        assert!(
            font.is_file(),
            "{} is missing (apt-get install -y fonts-dejavu-core)",
            font.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("latency.png");
        let series = |label: &str, k: f64| Series {
            label: label.into(),
            points: vec![
                (50.0, 0.2 * k),
                (90.0, 0.3 * k),
                (99.0, 0.8 * k),
                (99.9, 2.0 * k),
            ],
        };
        let panels = vec![Panel {
            title: "HTTP/1.1 at 1000 rps".into(),
            series: vec![series("direct", 1.0), series("mesh", 1.5)],
        }];
        latency_png(&out, font, "test", &panels).unwrap();
        let bytes = std::fs::read(&out).unwrap();
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
        assert!(
            bytes.len() > 5000,
            "suspiciously small: {} bytes",
            bytes.len()
        );
    }
}
