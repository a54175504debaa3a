//! A few stacked line charts sharing one time axis, as a self-contained SVG: the soak's samples (RSS,
//! descriptors, threads, verdicts) over its minutes. Written by hand, as text, so that xtask needs no plotting
//! library and the figure is a small reviewable file in the repository.

use std::fmt::Write;

/// One chart: its title (with the unit) and its points (x in minutes).
pub struct Panel<'a> {
    pub title: &'a str,
    pub points: Vec<(f64, f64)>,
}

const WIDTH: f64 = 760.0;
const PANEL_HEIGHT: f64 = 150.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const GAP: f64 = 40.0;

/// A round step near `range / 4` for axis ticks.
fn step(range: f64) -> f64 {
    let rough = (range / 4.0).max(f64::MIN_POSITIVE);
    let magnitude = 10f64.powf(rough.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|factor| factor * magnitude).find(|step| *step >= rough).unwrap_or(rough)
}

/// The y range shown: the data's, widened so a flat line sits mid-panel and the axis starts at zero when the
/// data is near it (a flat line should look flat, not like noise magnified).
fn y_range(points: &[(f64, f64)]) -> (f64, f64) {
    let low = points.iter().map(|point| point.1).fold(f64::INFINITY, f64::min);
    let high = points.iter().map(|point| point.1).fold(f64::NEG_INFINITY, f64::max);
    if !low.is_finite() {
        return (0.0, 1.0);
    }
    let low = if low > 0.0 && low < 0.5 * high { 0.0 } else { low };
    let margin = ((high - low) * 0.2).max(high.abs() * 0.1).max(1.0);
    ((low - margin).max(0.0), high + margin)
}

pub fn svg(title: &str, x_label: &str, panels: &[Panel]) -> String {
    let height = TOP + panels.len() as f64 * (PANEL_HEIGHT + GAP) + 10.0;
    let x_max = panels
        .iter()
        .flat_map(|panel| panel.points.iter().map(|point| point.0))
        .fold(0.0f64, f64::max)
        .max(f64::MIN_POSITIVE);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"20\" font-size=\"14\" text-anchor=\"middle\">{}</text>",
        WIDTH / 2.0,
        escape(title)
    );
    let plot_width = WIDTH - LEFT - RIGHT;
    for (index, panel) in panels.iter().enumerate() {
        let top = TOP + index as f64 * (PANEL_HEIGHT + GAP);
        let (y_low, y_high) = y_range(&panel.points);
        let x = |value: f64| LEFT + value / x_max * plot_width;
        let y = |value: f64| top + PANEL_HEIGHT - (value - y_low) / (y_high - y_low) * PANEL_HEIGHT;
        let _ = writeln!(
            out,
            "<text x=\"{LEFT}\" y=\"{}\" font-size=\"12\">{}</text>\n\
             <rect x=\"{LEFT}\" y=\"{top}\" width=\"{plot_width}\" height=\"{PANEL_HEIGHT}\" fill=\"none\" \
             stroke=\"#888\"/>",
            top - 6.0,
            escape(panel.title)
        );
        let y_step = step(y_high - y_low);
        let mut tick = (y_low / y_step).ceil() * y_step;
        while tick <= y_high {
            let line = y(tick);
            let _ = writeln!(
                out,
                "<line x1=\"{LEFT}\" x2=\"{right}\" y1=\"{line:.1}\" y2=\"{line:.1}\" stroke=\"#eee\"/>\
                 <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                LEFT - 4.0,
                line + 4.0,
                label(tick, y_step),
                right = LEFT + plot_width,
            );
            tick += y_step;
        }
        let x_step = step(x_max);
        let mut tick = 0.0;
        while tick <= x_max {
            let _ = writeln!(
                out,
                "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                x(tick),
                top + PANEL_HEIGHT + 13.0,
                label(tick, x_step)
            );
            tick += x_step;
        }
        let path: Vec<String> =
            panel.points.iter().map(|&(px, py)| format!("{:.1},{:.1}", x(px), y(py))).collect();
        let _ = writeln!(
            out,
            "<polyline fill=\"none\" stroke=\"#1f5fa8\" stroke-width=\"1.5\" points=\"{}\"/>",
            path.join(" ")
        );
    }
    let _ = writeln!(
        out,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n</svg>",
        LEFT + plot_width / 2.0,
        height - 2.0,
        escape(x_label)
    );
    out
}

/// A tick's value with as many decimals as its step needs.
fn label(value: f64, step: f64) -> String {
    let decimals = if step >= 1.0 { 0 } else { (-step.log10()).ceil() as usize };
    format!("{value:.decimals$}")
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_round_and_cover_the_range() {
        assert_eq!(step(100.0), 50.0);
        assert_eq!(step(7.0), 2.0);
        assert_eq!(step(0.3), 0.1);
    }

    #[test]
    fn every_point_is_drawn_inside_its_panel() {
        let panels = [Panel { title: "RSS (MiB)", points: vec![(0.0, 40.0), (30.0, 41.0), (60.0, 40.5)] }];
        let text = svg("soak", "minutes", &panels);
        let line = text.lines().find(|line| line.starts_with("<polyline")).expect("a polyline");
        let points = line.split("points=\"").nth(1).and_then(|rest| rest.split('"').next()).expect("points");
        let points: Vec<(f64, f64)> = points
            .split(' ')
            .map(|pair| {
                let (x, y) = pair.split_once(',').expect("x,y");
                (x.parse().expect("x"), y.parse().expect("y"))
            })
            .collect();
        assert_eq!(points.len(), 3);
        for (x, y) in points {
            assert!((LEFT..=WIDTH - RIGHT).contains(&x), "x {x}");
            assert!((TOP..=TOP + PANEL_HEIGHT).contains(&y), "y {y}");
        }
    }
}
