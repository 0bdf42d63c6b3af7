//! `bootwatch explain RUN|CELL|BUNDLE [--json] [--try-workarounds] [--no-probe]`.

use std::fmt::Write as _;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use super::{CliError, CliResult, show, signal_token};
use crate::core::known_bugs::{ConditionResult, FamilyResult};
use crate::plan::explain::{self, Explanation};

#[derive(clap::Args, Debug)]
pub struct ExplainArgs {
    /// A run's case directory, a matrix cell's directory, a bundle (its directory or its
    /// `.tar.gz`), or a directory holding one of them.
    target: PathBuf,
    /// Print one JSON object (schema `bootwatch.explain/1`).
    #[arg(long)]
    json: bool,
    /// Run each automatic workaround of the matched families as a case on the same prepared
    /// disk (the run's disk is not written) and report which boot.
    #[arg(long)]
    try_workarounds: bool,
    /// Where the tries' case directories go.
    #[arg(long, default_value = "results")]
    results: PathBuf,
    /// Boot no firmware probe and fetch nothing: explain from the records, the disk and the
    /// firmware image on this machine only (the probe's facts stay unmeasured).
    #[arg(long)]
    no_probe: bool,
}

pub async fn explain(a: ExplainArgs) -> CliResult {
    if !a.target.exists() {
        return Err(CliError::usage(format!(
            "{}: no such run, cell or bundle",
            a.target.display()
        )));
    }
    let opts = explain::ExplainOptions::new(if a.no_probe {
        explain::ProbePolicy::Off
    } else {
        explain::ProbePolicy::Run
    })
    .map_err(CliError::undetermined)?;
    let cancel = signal_token();
    let sink = show::terminal(a.json);
    // What fails here is the evidence (no records, unreadable ones): the chain's, the firmware
    // image's and the probe's own problems are notes in the explanation.
    let (ev, mut x) = explain::explain(&a.target, &opts, &cancel, &sink)
        .await
        .map_err(|e| CliError::usage(format!("{e:#}")))?;
    if a.try_workarounds {
        x.workarounds_tried =
            explain::workarounds::try_all(&ev, &x, &a.results, &cancel, &sink).await;
    }
    let mut out = std::io::stdout().lock();
    if a.json {
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&x).unwrap_or_default()
        );
    } else {
        let _ = write!(out, "{}", render(&x));
    }
    Ok(ExitCode::SUCCESS)
}

/// `fact test (is value)`.
fn held(c: &ConditionResult) -> String {
    let actual = match &c.actual {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => "not measured".into(),
    };
    format!("{} {} (is {actual})", c.fact, c.test)
}

fn cond(c: &ConditionResult) -> String {
    format!("{}: {}", held(c), c.why)
}

fn family(s: &mut String, f: &FamilyResult) {
    let _ = writeln!(
        s,
        "{}  {}  [confidence {:.2}, {}]",
        f.id, f.title, f.confidence, f.level
    );
    let _ = writeln!(s, "  {}", show::one_line(&f.summary));
    for c in &f.matched {
        let _ = writeln!(s, "  + {}", cond(c));
    }
    for c in &f.unmatched {
        let _ = writeln!(s, "  - {}", cond(c));
    }
    for c in &f.unknown {
        let _ = writeln!(s, "  ? {}", cond(c));
    }
    let _ = writeln!(s, "  fixed: {}", f.fixed);
    if !f.references.is_empty() {
        let _ = writeln!(s, "  references: {}", f.references.join("; "));
    }
    for (i, w) in f.workarounds.iter().enumerate() {
        let _ = writeln!(
            s,
            "  workaround {}: {}{}",
            i + 1,
            w.how,
            w.auto
                .as_deref()
                .map(|a| format!(" [--try-workarounds: {a}]"))
                .unwrap_or_default()
        );
    }
}

/// The explanation as text.
pub fn render(x: &Explanation) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "run {} (session {}): {} at stage {} — {}",
        x.run.display(),
        x.session,
        x.outcome.verdict.as_str(),
        x.outcome.stage.as_str(),
        show::one_line(&x.outcome.reason)
    );
    for r in &x.replaced {
        let _ = writeln!(s, "replaced on the boot path: {} ({})", r.path, r.via);
        let _ = writeln!(s, "  now: {}", r.now);
        if let Some(w) = &r.was {
            let _ = writeln!(s, "  was: {w}");
        }
        if !r.packages.is_empty() {
            let _ = writeln!(
                s,
                "  put there by: {} (by {})",
                r.packages.join(", "),
                r.attributed_by.as_deref().unwrap_or("?")
            );
        }
    }
    s.push('\n');
    if x.no_known_family() {
        let _ = writeln!(s, "no known family matches.");
    } else {
        let _ = writeln!(s, "matched:");
        for f in &x.families {
            family(&mut s, f);
        }
    }
    if !x.undecided.is_empty() {
        let _ = writeln!(s, "\nnot decided (facts not measured):");
        for f in &x.undecided {
            let unknown: Vec<&str> = f.unknown.iter().map(|c| c.fact.as_str()).collect();
            let _ = writeln!(s, "  {}  {} — needs {}", f.id, f.title, unknown.join(", "));
        }
    }
    if !x.ruled_out.is_empty() {
        let _ = writeln!(s, "ruled out:");
        for id in &x.ruled_out {
            let by: Vec<String> = x
                .ruled_out_by
                .get(id)
                .into_iter()
                .flatten()
                .map(held)
                .collect();
            let _ = writeln!(s, "  {id}: {}", by.join("; "));
        }
    }
    if let Some(p) = &x.probe {
        let _ = writeln!(
            s,
            "\nfirmware probe: {} under {} ({}): {}{}, {} (key {}, made {}; {})",
            p.firmware,
            p.qemu,
            p.cpu,
            p.verdict,
            if p.complete { "" } else { ", cut short" },
            if p.reused {
                "from the cache"
            } else {
                "booted now"
            },
            p.key,
            p.made_at,
            p.case_dir.display()
        );
    }
    let _ = writeln!(s, "\nfacts:");
    for (k, v) in x.facts.iter() {
        let v = match v {
            serde_json::Value::String(t) => t.clone(),
            other => other.to_string(),
        };
        let _ = writeln!(s, "  {k} = {v}");
    }
    for n in &x.notes {
        let _ = writeln!(s, "note: {n}");
    }
    if !x.workarounds_tried.is_empty() {
        let _ = writeln!(s, "\nworkarounds tried:");
        for t in &x.workarounds_tried {
            match (&t.verdict, &t.note) {
                (Some(v), _) => {
                    let _ = writeln!(
                        s,
                        "  {} {}: {} at {} (target {}) — {}",
                        if t.booted { "BOOTS " } else { "FAILS " },
                        t.auto.as_deref().unwrap_or("?"),
                        v,
                        t.stage.as_deref().unwrap_or("?"),
                        t.target.as_deref().unwrap_or("?"),
                        t.dir
                            .as_ref()
                            .map(|d| d.display().to_string())
                            .unwrap_or_default()
                    );
                }
                (None, Some(n)) => {
                    let _ = writeln!(s, "  -      {}: {n}", t.how);
                }
                (None, None) => {}
            }
        }
    }
    s
}
