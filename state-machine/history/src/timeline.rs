//! The timeline picture of a report (`timeline.svg`): per execution, every state as a bar
//! on one time axis (colour by outcome, attempts when retried), the pause window as a
//! band across the switchover, the emulated AWS delays (a name not yet following a rename)
//! as a purple strip above its bars, and replication lag as a line under the bars.
//!
//! Plain SVG 1.1 text, no scripts or external references, so it opens anywhere (a
//! browser, an image viewer, a ticket).

use std::fmt::Write as _;

use crate::report::{unix_ms, LagSample, Report, Step, PREPARE_LABEL, SWITCHOVER_LABEL};

const WIDTH: f64 = 1200.0;
const LABEL: f64 = 290.0;
const RIGHT: f64 = 130.0;
const ROW: f64 = 18.0;
const LAG_HEIGHT: f64 = 70.0;

/// The SVG document of `report`'s timeline.
pub fn svg(report: &Report) -> String {
    let mut body = String::new();
    let mut y = 40.0;
    for label in [PREPARE_LABEL, SWITCHOVER_LABEL] {
        let steps: Vec<&Step> = report
            .steps
            .iter()
            .filter(|s| s.execution == label)
            .collect();
        if steps.is_empty() {
            continue;
        }
        let lag: Vec<&LagSample> = report.lag.iter().filter(|l| l.execution == label).collect();
        y = panel(&mut body, report, label, &steps, &lag, y) + 30.0;
    }
    if report.steps.is_empty() {
        text(&mut body, 20.0, y, "no state ran", "note");
        y += 30.0;
    }
    let title = format!(
        "switchyard run: {} — PostgreSQL {} → {}, pause window {}",
        report.outcome.as_str(),
        report.blue_version.as_deref().unwrap_or("?"),
        report.green_version.as_deref().unwrap_or("?"),
        report
            .pause_window_ms
            .map_or("n/a".to_owned(), |ms| format!("{ms} ms")),
    );
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{h}" viewBox="0 0 {WIDTH} {h}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="11">
<style>
.title {{ font-size: 15px; font-weight: bold; }}
.panel {{ font-size: 13px; font-weight: bold; }}
.axis {{ fill: #555; font-size: 10px; }}
.inbar {{ fill: white; font-size: 10px; }}
.note {{ fill: #333; }}
.name {{ fill: #222; }}
.grid {{ stroke: #e3e3e3; stroke-width: 1; }}
.aws {{ fill: #7a5cc7; }}
.succeeded {{ fill: #3f8f55; }}
.caught {{ fill: #d9822b; }}
.failed {{ fill: #c0392b; }}
.running {{ fill: #9a9a9a; }}
.pause {{ fill: #4a78d6; fill-opacity: 0.16; stroke: #4a78d6; stroke-dasharray: 4 3; }}
.pauselabel {{ fill: #2f57a8; font-weight: bold; }}
.lag {{ fill: none; stroke: #7b3fb3; stroke-width: 1.5; }}
.lagdot {{ fill: #7b3fb3; }}
.lagbad {{ fill: #c0392b; }}
</style>
<rect x="0" y="0" width="{WIDTH}" height="{h}" fill="white"/>
"#,
        h = y + 10.0
    );
    text(&mut out, 20.0, 24.0, &title, "title");
    out.push_str(&body);
    out.push_str("</svg>\n");
    out
}

/// One execution's panel from `top`; returns its bottom.
fn panel(
    out: &mut String,
    report: &Report,
    label: &str,
    steps: &[&Step],
    lag: &[&LagSample],
    top: f64,
) -> f64 {
    let starts = steps.iter().filter_map(|s| unix_ms(&s.started_at));
    let ends = steps
        .iter()
        .filter_map(|s| s.ended_at.as_deref().and_then(unix_ms));
    let t0 = starts.clone().min().unwrap_or(0);
    let t1 = ends.chain(starts).max().unwrap_or(t0).max(t0 + 1);
    let plot = WIDTH - LABEL - RIGHT;
    let x = |ms: i64| LABEL + (ms - t0) as f64 / (t1 - t0) as f64 * plot;
    let summary = match label {
        PREPARE_LABEL => report.prepare.as_ref(),
        _ => report.switchover.as_ref(),
    };
    let heading = match summary {
        Some(s) => format!(
            "{label}: {} — {:?} in {:.1} s{}",
            s.name,
            s.status,
            (t1 - t0) as f64 / 1000.0,
            s.failed_in
                .as_deref()
                .map_or(String::new(), |f| format!(" (ended in `{f}`)"))
        ),
        None => label.to_owned(),
    };
    text(out, 20.0, top, &heading, "panel");
    let rows_top = top + 26.0;
    let rows_bottom = rows_top + ROW * steps.len() as f64;
    let lag_top = rows_bottom + 16.0;
    let bottom = lag_top + LAG_HEIGHT + 18.0;

    // Time grid and axis (seconds from the execution's start).
    let step_ms = tick_ms(t1 - t0);
    let mut t = 0;
    while t <= t1 - t0 {
        let gx = x(t0 + t);
        let _ = writeln!(
            out,
            r#"<line class="grid" x1="{gx:.1}" y1="{:.1}" x2="{gx:.1}" y2="{:.1}"/>"#,
            rows_top - 4.0,
            lag_top + LAG_HEIGHT
        );
        text(out, gx - 8.0, rows_top - 8.0, &seconds(t, step_ms), "axis");
        t += step_ms;
    }

    // The pause window, behind the bars.
    if label == SWITCHOVER_LABEL {
        if let Some(opened) = report.pause_window_started_at.as_deref().and_then(unix_ms) {
            let closed = report
                .pause_window_ended_at
                .as_deref()
                .and_then(unix_ms)
                .unwrap_or(t1);
            let (a, b) = (x(opened), x(closed).max(x(opened) + 1.0));
            let _ = writeln!(
                out,
                r#"<rect class="pause" x="{a:.1}" y="{:.1}" width="{:.1}" height="{:.1}"/>"#,
                rows_top - 2.0,
                b - a,
                lag_top + LAG_HEIGHT - rows_top + 2.0
            );
            let what = match report.pause_window_ms {
                Some(ms) => format!("pause window {ms} ms"),
                None => "pause window — never closed".to_owned(),
            };
            text(
                out,
                a + 3.0,
                lag_top + LAG_HEIGHT + 13.0,
                &what,
                "pauselabel",
            );
        }
    }

    // Emulated AWS (a name not yet following a rename the API made): marked apart from
    // our own work, as a strip above the bars.
    if label == SWITCHOVER_LABEL {
        if let Some(load) = &report.load {
            for d in &load.emulated_aws_delays {
                let (Some(a), Some(b)) = (unix_ms(&d.api_changed_at), unix_ms(&d.name_followed_at))
                else {
                    continue;
                };
                if b < t0 || a > t1 {
                    continue;
                }
                let (xa, xb) = (x(a.max(t0)), x(b.min(t1)).max(x(a.max(t0)) + 1.0));
                let _ = writeln!(
                    out,
                    r#"<rect class="aws" x="{xa:.1}" y="{:.1}" width="{:.1}" height="4"><title>emulated AWS ({}): name {} follows the rename {} ms later, to {}{}</title></rect>"#,
                    rows_top - 7.0,
                    xb - xa,
                    load.aws_timings,
                    escape(&d.name),
                    b - a,
                    escape(d.leads_to.as_deref().unwrap_or("nowhere")),
                    if d.superseded {
                        " (never: a later rename took effect first)"
                    } else {
                        ""
                    },
                );
            }
        }
    }

    for (i, step) in steps.iter().enumerate() {
        let row_y = rows_top + ROW * i as f64;
        text(out, 20.0, row_y + 12.0, &step.name, "name");
        let Some(start) = unix_ms(&step.started_at) else {
            continue;
        };
        let end = step.ended_at.as_deref().and_then(unix_ms).unwrap_or(start);
        let (a, b) = (x(start), x(end));
        let class = outcome_class(&step.outcome);
        let _ = writeln!(
            out,
            r#"<rect class="{class}" x="{a:.1}" y="{:.1}" width="{:.1}" height="{:.1}"><title>{}</title></rect>"#,
            row_y + 3.0,
            (b - a).max(1.5),
            ROW - 6.0,
            escape(&format!(
                "{}: {} ms, {} attempt(s), {}",
                step.name,
                step.duration_ms.unwrap_or(0),
                step.attempts,
                step.outcome
            ))
        );
        let mut note = format!("{} ms", step.duration_ms.unwrap_or(0));
        if step.attempts > 1 {
            let _ = write!(note, " ×{}", step.attempts);
        }
        if step.outcome != "succeeded" {
            let _ = write!(note, " {}", step.outcome);
        }
        // After the bar; where that would run off the picture, before it, or else inside it.
        let width = note.chars().count() as f64 * 6.0;
        let after = b.max(a + 1.5) + 4.0;
        if after + width <= WIDTH - 4.0 {
            text(out, after, row_y + 12.0, &note, "axis");
        } else if a - 4.0 - width >= LABEL {
            text_end(out, a - 4.0, row_y + 12.0, &note, "axis");
        } else {
            text_end(out, b - 4.0, row_y + 12.0, &note, "inbar");
        }
    }

    // Replication lag, a step line on its own scale.
    text(out, 20.0, lag_top + 12.0, "replication lag (bytes)", "name");
    let max = lag.iter().map(|l| l.bytes).max().unwrap_or(0);
    let base = lag_top + LAG_HEIGHT;
    let _ = writeln!(
        out,
        r#"<line class="grid" x1="{LABEL}" y1="{base:.1}" x2="{:.1}" y2="{base:.1}"/>"#,
        WIDTH - RIGHT
    );
    if lag.is_empty() {
        text(
            out,
            LABEL + 4.0,
            base - 6.0,
            "no lag readings in this execution",
            "axis",
        );
    } else {
        let ly = |bytes: u64| base - 4.0 - (bytes as f64 / max.max(1) as f64) * (LAG_HEIGHT - 14.0);
        text(out, 20.0, lag_top + 26.0, &format!("max {max}"), "axis");
        let mut points = String::new();
        let mut previous: Option<f64> = None;
        for sample in lag {
            let Some(at) = unix_ms(&sample.at) else {
                continue;
            };
            let (px, py) = (x(at), ly(sample.bytes));
            if let Some(prev_y) = previous {
                let _ = write!(points, "{px:.1},{prev_y:.1} ");
            }
            let _ = write!(points, "{px:.1},{py:.1} ");
            previous = Some(py);
        }
        let _ = writeln!(
            out,
            r#"<polyline class="lag" points="{}"/>"#,
            points.trim_end()
        );
        for sample in lag {
            let Some(at) = unix_ms(&sample.at) else {
                continue;
            };
            let class = if sample.state == "check-slot-lag" && sample.bytes > 0 {
                "lagbad"
            } else {
                "lagdot"
            };
            let _ = writeln!(
                out,
                r#"<circle class="{class}" cx="{:.1}" cy="{:.1}" r="3"><title>{}</title></circle>"#,
                x(at),
                ly(sample.bytes),
                escape(&format!(
                    "{}: {} bytes at {}",
                    sample.state, sample.bytes, sample.at
                ))
            );
            if lag.len() <= 12 {
                text(
                    out,
                    x(at) + 5.0,
                    ly(sample.bytes) - 4.0,
                    &format!("{} B", sample.bytes),
                    "axis",
                );
            }
        }
    }
    bottom
}

fn outcome_class(outcome: &str) -> &'static str {
    if outcome == "succeeded" {
        "succeeded"
    } else if outcome.starts_with("caught") {
        "caught"
    } else if outcome.starts_with("failed") {
        "failed"
    } else {
        "running"
    }
}

/// A grid step that gives 5–12 lines over `span_ms`.
fn tick_ms(span_ms: i64) -> i64 {
    const NICE: [i64; 16] = [
        10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 15_000, 30_000, 60_000, 120_000,
        300_000, 600_000,
    ];
    NICE.into_iter()
        .find(|step| span_ms / step <= 12)
        .unwrap_or(1_800_000)
}

/// A grid label: whole seconds when the grid is, else as many decimals as the grid needs.
fn seconds(ms: i64, step_ms: i64) -> String {
    match step_ms {
        s if s % 1000 == 0 => format!("{} s", ms / 1000),
        s if s % 100 == 0 => format!("{:.1} s", ms as f64 / 1000.0),
        _ => format!("{:.2} s", ms as f64 / 1000.0),
    }
}

fn text(out: &mut String, x: f64, y: f64, content: &str, class: &str) {
    let _ = writeln!(
        out,
        r#"<text class="{class}" x="{x:.1}" y="{y:.1}">{}</text>"#,
        escape(content)
    );
}

/// Text that ends at `x`.
fn text_end(out: &mut String, x: f64, y: f64, content: &str, class: &str) {
    let _ = writeln!(
        out,
        r#"<text class="{class}" x="{x:.1}" y="{y:.1}" text-anchor="end">{}</text>"#,
        escape(content)
    );
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_few() {
        assert_eq!(tick_ms(900), 100);
        assert_eq!(tick_ms(6_000), 500);
        assert_eq!(tick_ms(95_000), 10_000);
        assert_eq!(seconds(1500, 500), "1.5 s");
        assert_eq!(seconds(2000, 200), "2.0 s");
        assert_eq!(seconds(30_000, 5_000), "30 s");
        assert_eq!(seconds(40, 20), "0.04 s");
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(escape(r#"a<b & "c">"#), "a&lt;b &amp; &quot;c&quot;&gt;");
    }
}
