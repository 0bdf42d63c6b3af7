//! `matrix.md`: tables ready to paste into an upstream issue (GitHub-flavoured Markdown).

use std::fmt::Write;

use super::grid::Grid;
use super::{crash_ratio, evidence, one_line, verdict_text};
use crate::plan::matrix::model::{AXES, Category, CellRecord, Change, MatrixReport};

/// Longest evidence text in a table cell.
const EVIDENCE_MAX: usize = 200;

pub fn render(report: &MatrixReport) -> String {
    let grid = Grid::of(report);
    let mut out = String::new();
    let _ = writeln!(out, "### bootwatch matrix: {}", md(&report.name, 200));
    out.push('\n');
    if !report.description.trim().is_empty() {
        let _ = writeln!(out, "{}\n", md(&report.description, 1000));
    }
    let mut facts = vec![
        format!("target {}", md(&report.target, 40)),
        format!("repeat {}", report.repeat),
        format!("{} cells", report.cells.len()),
        format!("status {}", report.status),
    ];
    for (axis, value) in &grid.fixed {
        facts.push(format!("{axis} {}", md(value, 100)));
    }
    let _ = writeln!(out, "{}.\n", facts.join(", "));

    // The full table: the varying axes, then versions and the outcome.
    let axes: Vec<&str> = AXES
        .iter()
        .copied()
        .filter(|a| !grid.fixed.iter().any(|(f, _)| f == a))
        .collect();
    let mut header: Vec<String> = axes.iter().map(|a| a.to_string()).collect();
    header.extend(
        [
            "QEMU version",
            "firmware version",
            "verdict",
            "stage",
            "evidence",
        ]
        .map(String::from),
    );
    table_header(&mut out, &header);
    for c in &report.cells {
        let mut row: Vec<String> = axes
            .iter()
            .map(|a| md(c.axes.get(a).unwrap_or_default(), 100))
            .collect();
        row.push(md(c.qemu_version.as_deref().unwrap_or("?"), 60));
        row.push(md(c.firmware_version.as_deref().unwrap_or("?"), 60));
        row.push(format!(
            "{} {}",
            symbol(c.category()),
            md(&verdict_text(c), 100)
        ));
        row.push(c.outcome.stage.as_str().to_string());
        row.push(md(&evidence(c), EVIDENCE_MAX));
        table_row(&mut out, &row);
    }
    out.push('\n');
    let _ = writeln!(out, "{}\n", summary_line(report));
    explanations(&mut out, report);

    // The compact grid, when there is more than one column or row to lay out.
    if grid.cols.len() > 1 || grid.rows.len() > 1 {
        let _ = writeln!(
            out,
            "Grid (rows: {}; columns: qemu / firmware):\n",
            grid.row_axes.join(" · ")
        );
        let mut header = vec![grid.row_axes.join(" · ")];
        header.extend(
            grid.cols
                .iter()
                .map(|[q, f]| format!("{} / {}", md(q, 60), md(f, 60))),
        );
        table_header(&mut out, &header);
        for (r, key) in grid.rows.iter().enumerate() {
            let mut row = vec![
                key.iter()
                    .map(|v| md(v, 80))
                    .collect::<Vec<_>>()
                    .join(" · "),
            ];
            for slot in &grid.cells[r] {
                row.push(match slot {
                    Some(i) => grid_text(&report.cells[*i]),
                    None => "—".to_string(),
                });
            }
            table_row(&mut out, &row);
        }
        out.push('\n');
        let _ = writeln!(
            out,
            "✅ reached · ❌ synchronous exception · 💥 kernel panic · ⏳ hang/timeout · ⚠️ other failure · ❔ harness error · ⬜ not run\n"
        );
    }

    if let Some(cmp) = &report.comparison {
        let _ = writeln!(out, "Compared with {}:\n", md(&cmp.baseline, 300));
        changes(
            &mut out,
            "Regressions (was reached, now fails)",
            &cmp.regressions,
        );
        changes(&mut out, "Fixes (was failing, now reached)", &cmp.fixes);
        changes(&mut out, "Other changes", &cmp.changed);
        if !cmp.new_cells.is_empty() {
            let _ = writeln!(out, "New cells: {}\n", ids(&cmp.new_cells));
        }
        if !cmp.missing_cells.is_empty() {
            let _ = writeln!(out, "Missing cells: {}\n", ids(&cmp.missing_cells));
        }
    }
    out
}

/// The known bug `bootwatch explain` names for each failing cell (or none), one line a cell.
fn explanations(out: &mut String, report: &MatrixReport) {
    let explained: Vec<&CellRecord> = report
        .cells
        .iter()
        .filter(|c| c.explanation.is_some())
        .collect();
    if explained.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "Known bugs (`bootwatch explain` on each failing cell):\n"
    );
    for c in explained {
        let x = c.explanation.as_ref().expect("filtered");
        let _ = writeln!(
            out,
            "- {}: {}",
            md(&c.axes.label(), 300),
            md(&x.text(), 300)
        );
    }
    out.push('\n');
}

/// "12 planned: 10 done (7 reached, 3 sync-exception), 1 error, 1 not run, 1 flaky."
pub fn summary_line(report: &MatrixReport) -> String {
    let s = &report.summary;
    let verdicts = s
        .by_verdict
        .iter()
        .map(|(v, n)| format!("{n} {v}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut parts = vec![if verdicts.is_empty() {
        format!("{} done", s.done)
    } else {
        format!("{} done ({verdicts})", s.done)
    }];
    if s.errors > 0 {
        parts.push(format!("{} error", s.errors));
    }
    if s.not_run > 0 {
        parts.push(format!("{} not run", s.not_run));
    }
    if s.flaky > 0 {
        parts.push(format!("{} flaky", s.flaky));
    }
    format!("**Summary:** {} planned: {}.", s.planned, parts.join(", "))
}

fn changes(out: &mut String, title: &str, list: &[Change]) {
    if list.is_empty() {
        return;
    }
    let _ = writeln!(out, "**{title}:**\n");
    for c in list {
        let _ = writeln!(
            out,
            "- {}: {} → {}",
            md(&c.axes.label(), 300),
            c.was.as_str(),
            c.now.as_str()
        );
    }
    out.push('\n');
}

fn ids(list: &[String]) -> String {
    list.iter()
        .map(|i| md(i, 80))
        .collect::<Vec<_>>()
        .join(", ")
}

fn grid_text(c: &CellRecord) -> String {
    let mut s = format!(
        "{} {}",
        symbol(c.category()),
        md(&super::verdict_text_short(c), 60)
    );
    if let Some(k) = crash_ratio(c).filter(|_| c.flaky) {
        s.push_str(&format!(" ({k})"));
    }
    s
}

pub(crate) fn symbol(c: Category) -> &'static str {
    match c {
        Category::Reached => "✅",
        Category::SyncException => "❌",
        Category::Panic => "💥",
        Category::Hang => "⏳",
        Category::Failure => "⚠️",
        Category::Error => "❔",
        Category::NotRun => "⬜",
    }
}

fn table_header(out: &mut String, header: &[String]) {
    table_row(out, header);
    table_row(out, &vec!["---".to_string(); header.len()]);
}

fn table_row(out: &mut String, cells: &[String]) {
    out.push('|');
    for c in cells {
        out.push(' ');
        out.push_str(c);
        out.push_str(" |");
    }
    out.push('\n');
}

/// Text for a table cell: one line, cut to `max` characters, Markdown punctuation (including
/// `|`, backticks and `<`) backslash-escaped so it renders literally and cannot end the cell,
/// and tracker references broken (see [`BREAK`]).
pub fn md(s: &str, max: usize) -> String {
    let line = one_line(s, max);
    let chars: Vec<char> = line.chars().collect();
    let mut out = String::with_capacity(line.len());
    for (i, &c) in chars.iter().enumerate() {
        if "\\`*_[]<>|~&#!$".contains(c) {
            out.push('\\');
        }
        out.push(c);
        if breaks_after(&chars, i) {
            out.push_str(BREAK);
        }
    }
    out
}

/// What goes between the characters of a would-be reference: a zero-width space, written as
/// a character reference. matrix.md is pasted into GitHub and GitLab issues, where guest text
/// such as `@user`, `#123`, `GH-1`, `!12`, `~label` or `https://...` would otherwise notify
/// people, link (and back-link) unrelated issues, or make links out of whatever a guest
/// printed. Both sites find those patterns in the rendered text, after character references
/// are decoded, so an invisible character after the sigil breaks them while the text reads
/// the same. Backslash escapes alone are not enough (GitHub still links `\#123`, and neither
/// site lets a backslash stop a URL autolink); backticks or HTML would change how the text
/// looks. The reference rather than a raw U+200B keeps the break visible in the Markdown
/// source (and safe from editors that strip invisible characters); Renovate's pull requests do
/// the same on both sites.
pub const BREAK: &str = "&#8203;";

/// Whether `word` follows `chars[i]`.
fn followed_by(chars: &[char], i: usize, word: &str) -> bool {
    let mut rest = chars[i + 1..].iter();
    word.chars().all(|w| rest.next() == Some(&w))
}

/// Whether a reference could start at `chars[i]`, so [`BREAK`] goes after it.
fn breaks_after(chars: &[char], i: usize) -> bool {
    let at = |j: usize| chars.get(j).copied();
    let next = at(i + 1);
    let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    // The character before position `j` does not continue a word (`j` starts one).
    let starts_word = |j: usize| j == 0 || !word(at(j - 1));
    match chars[i] {
        // Mentions (@user, @org/team), e-mail autolinks (a@b.c), commits (owner/repo@sha).
        '@' => word(next),
        // Issues and merge requests on both sites (#123, owner/repo#123).
        '#' => next.is_some_and(|c| c.is_ascii_digit()),
        // GitLab's references: !MR, ~label, %milestone, $snippet, &epic (a quoted name after
        // ~ and %) ...
        '!' | '~' | '%' | '$' | '&' => word(next) || next == Some('"'),
        // ... ^alert#N, *iteration:N and [vulnerability:N]-style ones, which need their word.
        '^' => followed_by(chars, i, "alert#"),
        '*' => followed_by(chars, i, "iteration:"),
        '[' => {
            let name: String = chars[i + 1..]
                .iter()
                .take_while(|c| c.is_ascii_alphabetic() || **c == '_')
                .collect();
            !name.is_empty() && at(i + 1 + name.chars().count()) == Some(':')
        }
        // GitHub's GH-123.
        '-' => {
            i >= 2
                && at(i - 2).is_some_and(|c| c.eq_ignore_ascii_case(&'g'))
                && at(i - 1).is_some_and(|c| c.eq_ignore_ascii_case(&'h'))
                && starts_word(i - 2)
                && next.is_some_and(|c| c.is_ascii_digit())
        }
        // URL autolinks: any scheme:// (GitLab links every scheme) ...
        ':' => at(i + 1) == Some('/') && at(i + 2) == Some('/'),
        // ... and GitHub's www. links.
        'w' | 'W' => {
            i >= 2
                && (i - 2..=i).all(|j| at(j).is_some_and(|c| c.eq_ignore_ascii_case(&'w')))
                && starts_word(i - 2)
                && next == Some('.')
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md_escapes_table_breakers() {
        assert_eq!(md("a|b\nc`d", 80), "a\\|b c\\`d");
        assert_eq!(md("<script>", 80), "\\<script\\>");
        assert_eq!(md("x\x1by", 80), "x\\\\x1by");
    }

    #[test]
    fn md_breaks_tracker_references() {
        let z = BREAK;
        for (input, want) in [
            ("ping @octocat", format!("ping @{z}octocat")),
            (
                "@_bot and a@b.example",
                format!("@{z}\\_bot and a@{z}b.example"),
            ),
            ("see #123", format!("see \\#{z}123")),
            ("org/repo#9", format!("org/repo\\#{z}9")),
            ("GH-7 and gh-8", format!("GH-{z}7 and gh-{z}8")),
            (
                "https://evil.example/x",
                format!("https:{z}//evil.example/x"),
            ),
            ("ftp://x", format!("ftp:{z}//x")),
            ("www.evil.example", format!("www{z}.evil.example")),
            ("(WWW.evil.example)", format!("(WWW{z}.evil.example)")),
            (
                "!12 ~bug ~\"two words\" %1.0 $3 &4 ^alert#5 *iteration:1 [vulnerability:2]",
                format!(
                    "\\!{z}12 \\~{z}bug \\~{z}\"two words\" %{z}1.0 \\${z}3 \\&{z}4 ^{z}alert\\#{z}5 \\*{z}iteration:1 \\[{z}vulnerability:2\\]"
                ),
            ),
        ] {
            assert_eq!(md(input, 200), want, "{input}");
        }
        // Ordinary text keeps its look: no sigil followed by a name, number or scheme.
        for plain in [
            "Synchronous Exception at 0x000000007C743000",
            "50 % done, 3 # of runs, a - b, @ end, x: //, bugh-1, awww.x, CVE-2024-1234",
            "grub-efi-arm64-signed 1+2.06+13+deb12u2",
            "\\x1b[31m red, [    1.234] kernel, 2^10, 2*3, [abc]",
        ] {
            assert!(
                !md(plain, 200).contains(BREAK),
                "{plain}: {}",
                md(plain, 200)
            );
        }
    }
}
