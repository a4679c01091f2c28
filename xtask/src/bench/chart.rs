//! The bench's PNG chart: each metric relative to iptables (1.0), for veg and nftables.

use std::path::Path;

use plotters::prelude::*;

use super::report::{Record, medians};

/// Metric names short enough to sit under their bars.
fn short(metric: &str) -> &str {
    match metric {
        "kernel_ns_per_packet" => "CPU ns/pkt",
        "kernel_ns_per_offered_packet" => "CPU ns/offered pkt",
        "connections_per_s" => "conn/s",
        "gbit_per_s" => "Gbit/s",
        "p50_us" => "p50 us",
        "p99_us" => "p99 us",
        "kflows_per_s" => "kflows/s",
        "bytes_per_flow" => "bytes/flow",
        other => other,
    }
}

// Long because a chart is many small drawing calls (axes, series, labels) that only make sense together.
/// Text is drawn with the system's sans-serif font, found through fontconfig (Debian's fonts-dejavu-core).
pub fn draw(records: &[Record], path: &Path) -> anyhow::Result<()> {
    let rows: Vec<(String, Option<f64>, Option<f64>)> = medians(records)
        .into_iter()
        // Left out: what only confirms a run (delivered, failed, held) or repeats a charted metric.
        .filter(|((_, metric), _)| {
            !matches!(
                *metric,
                "delivered_pct" | "failed" | "held" | "seconds" | "memory_mib" | "offered_kpps"
            )
        })
        .filter_map(|((scenario, metric), per_mode)| {
            let base = *per_mode.get("iptables").filter(|v| **v > 0.0)?;
            let ratio = |mode: &str| per_mode.get(mode).map(|v| v / base);
            Some((
                format!("{scenario} {}", short(metric)),
                ratio("veg"),
                ratio("nftables"),
            ))
        })
        .collect();
    let top = rows
        .iter()
        .flat_map(|(_, a, b)| [a.unwrap_or(0.0), b.unwrap_or(0.0)])
        .fold(1.5f64, f64::max)
        * 1.3;
    let n = rows.len().max(1);

    let root = BitMapBackend::new(path, (1400, 700)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("veg and nftables relative to iptables MASQUERADE (1.0); CPU, latency, memory: lower is better", ("sans-serif", 22))
        .margin(20)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..n as f64, 0f64..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(2 * n + 1)
        .x_label_style(("sans-serif", 13))
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            // Ticks fall every half unit: label the middle of each group.
            if (x - x.floor() - 0.5).abs() < 0.01 {
                rows.get(i).map(|r| r.0.clone()).unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("ratio to iptables")
        .draw()?;
    let bar = |offset: f64, value: Option<f64>, i: usize, color: RGBColor| {
        value.map(|v| {
            Rectangle::new(
                [(i as f64 + offset, 0.0), (i as f64 + offset + 0.35, v)],
                color.filled(),
            )
        })
    };
    chart
        .draw_series(
            rows.iter()
                .enumerate()
                .filter_map(|(i, r)| bar(0.12, r.1, i, RGBColor(31, 119, 180))),
        )?
        .label("veg")
        .legend(|(x, y)| {
            Rectangle::new(
                [(x, y - 6), (x + 14, y + 6)],
                RGBColor(31, 119, 180).filled(),
            )
        });
    chart
        .draw_series(
            rows.iter()
                .enumerate()
                .filter_map(|(i, r)| bar(0.53, r.2, i, RGBColor(255, 127, 14))),
        )?
        .label("nftables")
        .legend(|(x, y)| {
            Rectangle::new(
                [(x, y - 6), (x + 14, y + 6)],
                RGBColor(255, 127, 14).filled(),
            )
        });
    chart.draw_series(std::iter::once(PathElement::new(
        vec![(0.0, 1.0), (n as f64, 1.0)],
        BLACK,
    )))?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE)
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .draw()?;
    root.present()?;
    Ok(())
}
