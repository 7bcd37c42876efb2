//! Minimal hand-written SVG line charts (no plotting dependency).

use std::fmt::Write as _;

pub const PALETTE: &[&str] = &[
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

pub struct Series {
    pub name: String,
    pub color: String,
    pub dashed: bool,
    pub points: Vec<(f64, f64)>,
}

pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// Logarithmic x axis (client counts); ticks at the data's x values.
    pub log_x: bool,
    pub series: Vec<Series>,
}

pub const WIDTH: f64 = 820.0;
pub const PANEL_HEIGHT: f64 = 380.0;

/// Stacks the charts vertically into one SVG document.
pub fn document(charts: &[Chart]) -> String {
    let height = PANEL_HEIGHT * charts.len().max(1) as f64;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    for (i, c) in charts.iter().enumerate() {
        panel(&mut s, c, i as f64 * PANEL_HEIGHT);
    }
    s.push_str("</svg>\n");
    s
}

fn esc(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// 1, 2, 5 × 10^k step giving about `n` ticks up to `max`.
fn nice_step(max: f64, n: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let raw = max / n;
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let m = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * mag
}

fn fmt_num(v: f64) -> String {
    if v.abs() >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if v.abs() >= 1e4 {
        format!("{}k", trim(v / 1e3))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

fn panel(s: &mut String, c: &Chart, top: f64) {
    let (left, right, ptop, bottom) = (70.0, 190.0, 36.0, 50.0);
    let pw = WIDTH - left - right;
    let ph = PANEL_HEIGHT - ptop - bottom;
    let (ox, oy) = (left, top + ptop + ph);
    let pts = c.series.iter().flat_map(|s| s.points.iter());
    let (mut xmin, mut xmax, mut ymax) = (f64::INFINITY, f64::NEG_INFINITY, 0f64);
    for &(x, y) in pts {
        xmin = xmin.min(x);
        xmax = xmax.max(x);
        ymax = ymax.max(y);
    }
    if !xmin.is_finite() {
        xmin = 0.0;
        xmax = 1.0;
    }
    if c.log_x {
        xmin = xmin.max(1e-9);
    } else {
        xmin = xmin.min(0.0);
    }
    if xmax <= xmin {
        xmax = xmin + 1.0;
    }
    let ystep = nice_step(ymax * 1.05, 5.0);
    let ytop = (ymax * 1.05 / ystep).ceil().max(1.0) * ystep;
    let fx = |x: f64| -> f64 {
        if c.log_x {
            let (a, b) = (xmin.ln(), xmax.ln());
            if b > a {
                ox + (x.max(xmin).ln() - a) / (b - a) * pw
            } else {
                ox + pw / 2.0
            }
        } else {
            ox + (x - xmin) / (xmax - xmin) * pw
        }
    };
    let fy = |y: f64| -> f64 { oy - y / ytop * ph };

    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" font-size="14" font-weight="bold">{}</text>"#,
        left,
        top + 22.0,
        esc(&c.title)
    );
    // Grid and y ticks.
    let mut y = 0.0;
    while y <= ytop + ystep * 0.01 {
        let py = fy(y);
        let _ = writeln!(
            s,
            r##"<line x1="{ox}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            ox + pw,
            ox - 6.0,
            py + 4.0,
            fmt_num(y)
        );
        y += ystep;
    }
    // x ticks.
    let mut xt: Vec<f64> = Vec::new();
    if c.log_x {
        for s in &c.series {
            for &(x, _) in &s.points {
                if !xt.iter().any(|&v| (v - x).abs() < 1e-9) {
                    xt.push(x);
                }
            }
        }
    } else {
        let step = nice_step(xmax - xmin, 8.0);
        let mut x = (xmin / step).ceil() * step;
        while x <= xmax + step * 0.01 {
            xt.push(x);
            x += step;
        }
    }
    for x in xt {
        let px = fx(x);
        let _ = writeln!(
            s,
            r##"<line x1="{px:.1}" y1="{oy}" x2="{px:.1}" y2="{:.1}" stroke="#333"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            oy + 5.0,
            oy + 18.0,
            fmt_num(x)
        );
    }
    let _ = writeln!(
        s,
        r##"<rect x="{ox}" y="{:.1}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##,
        oy - ph
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        ox + pw / 2.0,
        oy + 38.0,
        esc(&c.x_label)
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate({:.1},{:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
        18.0,
        oy - ph / 2.0,
        esc(&c.y_label)
    );
    // Series and legend.
    for (i, se) in c.series.iter().enumerate() {
        let path: Vec<String> = se
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", fx(x), fy(y)))
            .collect();
        let dash = if se.dashed {
            r#" stroke-dasharray="6,4""#
        } else {
            ""
        };
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"{dash}/>"#,
            path.join(" "),
            se.color
        );
        if se.points.len() <= 16 {
            for &(x, y) in &se.points {
                let _ = writeln!(
                    s,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"/>"#,
                    fx(x),
                    fy(y),
                    se.color
                );
            }
        }
        let ly = top + ptop + 10.0 + i as f64 * 18.0;
        let lx = ox + pw + 14.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{:.1}" y2="{ly}" stroke="{}" stroke-width="2"{dash}/><text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 24.0,
            se.color,
            lx + 30.0,
            ly + 4.0,
            esc(&se.name)
        );
    }
}
