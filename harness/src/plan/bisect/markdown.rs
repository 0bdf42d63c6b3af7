//! `bisect.md`: a bisection as Markdown to paste into an upstream bug: the answer, the machine,
//! a table of the steps and the evidence lines of both sides of the boundary. Everything a guest
//! printed (and every name a user wrote) goes through `report::markdown::md`, so it reads
//! literally, cannot break the table and mentions or links nothing.

use super::record::{BisectRecord, Point, Status, StepRecord};
use super::spec::Axis;
use crate::report::md;

/// Longest guest line quoted in the table.
const EVIDENCE_CHARS: usize = 100;

pub fn render(r: &BisectRecord) -> String {
    let mut out = String::new();
    out.push_str(&format!("# bootwatch bisect: {}\n\n", md(&r.name, 120)));
    if !r.description.is_empty() {
        out.push_str(&format!("{}\n\n", md(&r.description, 400)));
    }
    out.push_str(&format!(
        "**{}:** {}\n\n",
        status_word(r.status),
        md(&r.message, 600)
    ));
    out.push_str(&machine_line(r));
    out.push_str("\n\n");

    let axis = match r.axis {
        Axis::Qemu => "QEMU build",
        Axis::Firmware => "firmware build",
        Axis::Packages => "packages",
    };
    out.push_str("## Steps\n\n");
    let header = [
        "step", axis, "result", "verdict", "stage", "time", "evidence", "results",
    ];
    row(&mut out, header.iter().map(|s| s.to_string()));
    row(&mut out, header.iter().map(|_| "---".to_string()));
    for s in &r.steps {
        row(&mut out, step_cells(s));
    }
    out.push_str(&format!(
        "\n{} steps, {} QEMU boots, {} in all.\n",
        r.steps.len(),
        r.boots,
        duration(r.wall_s)
    ));

    if let Some(res) = &r.result {
        let sides: Vec<(&str, &Point)> = [
            ("Last good", &res.last_good),
            ("First bad", &res.first_bad),
            ("Last bad", &res.last_bad),
            ("First good", &res.first_good),
        ]
        .into_iter()
        .filter_map(|(w, p)| p.as_ref().map(|p| (w, p)))
        .collect();
        if !sides.is_empty() {
            out.push_str("\n## Boundary\n\n");
            for (what, p) in sides {
                out.push_str(&format!("- {what}: {}\n", point_line(p)));
            }
        }
        if !res.range.is_empty() {
            out.push_str("\n## Where the change may be\n\n");
            for b in &res.range {
                out.push_str(&format!("- {}\n", md(b, 200)));
            }
        }
    }
    out
}

fn status_word(s: Status) -> &'static str {
    match s {
        Status::Running => "Running",
        Status::Found => "Found",
        Status::Ambiguous => "Ambiguous",
        Status::EndsAgree => "No change to find",
        Status::EndUndetermined => "Undetermined",
        Status::Interrupted => "Interrupted",
        Status::Error => "Error",
    }
}

/// One paragraph naming what every step shared.
fn machine_line(r: &BisectRecord) -> String {
    let f = &r.fixed;
    let m = &f.machine;
    let mut parts = Vec::new();
    if let Some(q) = &f.qemu {
        let v = f
            .qemu_version
            .as_ref()
            .map(|v| format!(" ({})", md(v, 40)))
            .unwrap_or_default();
        parts.push(format!("QEMU {}{v}", md(q, 200)));
    }
    if let Some(fw) = &f.firmware {
        parts.push(format!("firmware {}", md(fw, 200)));
    }
    if let Some(u) = &f.update {
        parts.push(format!("update {}", md(u, 200)));
    }
    parts.push(format!("image {}", md(&m.image, 120)));
    if let Some(u) = &m.upgrade_update {
        parts.push(format!("upgraded with {}", md(u, 200)));
    }
    parts.push(format!(
        "CPU {}, {} vCPU, {} MiB, vars {}",
        md(&m.cpu, 40),
        m.smp,
        m.memory_mib,
        md(&m.vars, 20)
    ));
    parts.push(format!(
        "target {}, timeout {}, silence {}",
        m.target,
        duration(m.timeout_s),
        duration(m.silence_s)
    ));
    let repeat = if m.repeat > 1 {
        format!(
            "; each step booted up to {} times and counted bad if any run failed",
            m.repeat
        )
    } else {
        String::new()
    };
    format!("Every step: {}{repeat}.", parts.join("; "))
}

fn step_cells(s: &StepRecord) -> Vec<String> {
    let d = s.deciding();
    let result = if s.detail.is_empty() {
        s.class.as_str().to_string()
    } else {
        format!("{} ({})", s.class.as_str(), md(&s.detail, 120))
    };
    let (verdict, stage, time, evidence) = match d {
        Some(r) => (
            r.outcome.verdict.as_str().to_string(),
            r.outcome.stage.as_str().to_string(),
            r.outcome
                .time_to_verdict_s
                .map(|t| format!("{t:.1} s"))
                .unwrap_or_default(),
            r.exception
                .as_deref()
                .map(|e| md(e, EVIDENCE_CHARS))
                .unwrap_or_default(),
        ),
        None => (
            "harness-error".to_string(),
            String::new(),
            String::new(),
            s.error
                .as_deref()
                .map(|e| md(e, EVIDENCE_CHARS))
                .unwrap_or_default(),
        ),
    };
    let dirs = if s.runs.is_empty() {
        md(&s.dir, 120)
    } else {
        s.runs
            .iter()
            .map(|r| md(&r.dir, 120))
            .collect::<Vec<_>>()
            .join(", ")
    };
    vec![
        s.n.to_string(),
        md(&s.build, 120),
        result,
        verdict,
        stage,
        time,
        evidence,
        dirs,
    ]
}

/// A side of the boundary with its evidence: the build, the verdict and where, the deciding
/// console line and the run's directory.
fn point_line(p: &Point) -> String {
    let o = &p.run.outcome;
    let after = o
        .time_to_verdict_s
        .map(|t| format!(" after {t:.1} s"))
        .unwrap_or_default();
    let versions: Vec<String> = [
        p.run
            .qemu_version
            .as_ref()
            .map(|v| format!("QEMU {}", md(v, 40))),
        p.run
            .firmware_version
            .as_ref()
            // A source build's `git describe` names edk2 already (`edk2-stable202502-…`).
            .map(|v| {
                if v.starts_with("edk2") {
                    md(v, 40)
                } else {
                    format!("edk2 {}", md(v, 40))
                }
            }),
    ]
    .into_iter()
    .flatten()
    .collect();
    let versions = if versions.is_empty() {
        String::new()
    } else {
        format!(" ({})", versions.join(", "))
    };
    let mut line = format!(
        "**{}**{versions}, step {}: {} at stage {}{after}: {}",
        md(&p.build, 200),
        p.step,
        o.verdict,
        o.stage,
        md(&o.reason, 300)
    );
    if let Some(e) = &p.run.exception {
        let at = p
            .run
            .evidence_line
            .map(|l| format!(" (console.log line {l})"))
            .unwrap_or_default();
        line.push_str(&format!("; evidence{at}: {}", md(e, 200)));
    }
    line.push_str(&format!("; results {}", md(&p.run.dir, 200)));
    line
}

fn row(out: &mut String, cells: impl IntoIterator<Item = String>) {
    out.push('|');
    for c in cells {
        out.push(' ');
        out.push_str(&c);
        out.push_str(" |");
    }
    out.push('\n');
}

fn duration(s: f64) -> String {
    if s >= 120.0 {
        let t = s.round() as u64;
        format!("{} min {:02} s", t / 60, t % 60)
    } else {
        format!("{s:.1} s")
    }
}
