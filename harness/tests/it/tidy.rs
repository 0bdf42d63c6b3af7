//! Tidy: the architecture's absences ("only the supervisor spawns processes", "only the CLI
//! prints", "the core does no IO"), checked by reading the crate's source, as rust-analyzer's
//! `tidy.rs` does. A failure names the file, the line and the rule, and says why the rule exists.
//!
//! Only production code is read: items under `#[cfg(test)]` are skipped (a test module, a test
//! helper), and so are the files of modules declared `#[cfg(test)] mod name;` and files named
//! `*tests.rs`. The source is tokenized (proc-macro2), so comments, doc comments and
//! the insides of string literals never count as code, and `use std::{fs, io}` counts as
//! `std::fs`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use proc_macro2::{Delimiter, TokenStream, TokenTree};

/// One token of a file, flattened: groups become an opening and a closing token.
#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Punct(char),
    /// A literal as written (`"x"`, `r#"x"#`, `1u8`).
    Lit(String),
    Open(Delimiter),
    Close(Delimiter),
}

/// Tokens with the line each starts on.
type Lined = Vec<(Tok, usize)>;

/// Something a rule looks for.
#[derive(Debug, Clone, Copy)]
enum Needle {
    /// `a::b`, also inside a use group (`a::{x, b}`).
    Path(&'static str, &'static str),
    /// A macro call: `name!`.
    Macro(&'static str),
    /// The identifier anywhere (a crate name, a type).
    Ident(&'static str),
    /// A method call without arguments: `.name()`.
    Call0(&'static str),
    /// A function call without arguments, not a method nor a definition: `name()`,
    /// `io::name()`.
    Fn0(&'static str),
}

impl std::fmt::Display for Needle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Needle::Path(a, b) => write!(f, "`{a}::{b}`"),
            Needle::Macro(m) => write!(f, "`{m}!`"),
            Needle::Ident(i) => write!(f, "`{i}`"),
            Needle::Call0(m) => write!(f, "`.{m}()`"),
            Needle::Fn0(m) => write!(f, "`{m}()`"),
        }
    }
}

/// Where a rule looks (paths under `src/`; a trailing `/` means a directory), what it looks for,
/// where that is allowed anyway, and why.
struct Rule {
    name: &'static str,
    why: &'static str,
    applies_to: &'static [&'static str],
    allowed_in: &'static [&'static str],
    needles: &'static [Needle],
}

const EVERYWHERE: &[&str] = &[""];

const PROCESSES: Rule = Rule {
    name: "processes are spawned only by the process helpers",
    why: "one place gives every child process its own group, a parent-death signal, a kill on \
          drop and its stderr in error messages; a process spawned anywhere else can outlive the \
          run or fail without saying why",
    applies_to: EVERYWHERE,
    allowed_in: &["sys/proc.rs", "engine/supervise.rs"],
    needles: &[
        Needle::Path("Command", "new"),
        Needle::Path("process", "Command"),
        Needle::Call0("spawn"),
    ],
};

const PRINTING: Rule = Rule {
    name: "only the CLI prints",
    why: "everything below the CLI reports through core::event::Event into an EventSink, so the \
          same work can be shown on a terminal, as JSON, in a report or in a test; a print or a \
          progress bar elsewhere corrupts --json output and cannot be captured",
    applies_to: EVERYWHERE,
    allowed_in: &["cli/"],
    needles: &[
        Needle::Macro("println"),
        Needle::Macro("print"),
        Needle::Macro("eprintln"),
        Needle::Macro("eprint"),
        Needle::Macro("dbg"),
        // `std::io::stdout()`, `io::stderr()`, tokio's, or either after a `use`: a handle to
        // write to the terminal with.
        Needle::Fn0("stdout"),
        Needle::Fn0("stderr"),
        Needle::Ident("indicatif"),
    ],
};

const PURE_CORE: Rule = Rule {
    name: "the core is pure",
    why: "core/ (verdicts, argv, console normalization, classification) takes its inputs as \
          values and returns values: no files, no runtime, no clock, no environment, no \
          processes, no network, so it is tested on data alone and gives the same answer offline \
          as live",
    applies_to: &["core/"],
    allowed_in: &[],
    needles: &[
        Needle::Path("std", "fs"),
        Needle::Ident("tokio"),
        Needle::Path("Instant", "now"),
        Needle::Ident("SystemTime"),
        // jiff's clock reads (`jiff::Timestamp::now()`, `Zoned::now()`).
        Needle::Path("Timestamp", "now"),
        Needle::Path("Zoned", "now"),
        // Environment variables, the arguments, the working directory, the temp directory.
        Needle::Path("std", "env"),
        Needle::Path("std", "process"),
        Needle::Path("std", "net"),
    ],
};

const CLAP: Rule = Rule {
    name: "command-line parsing stays in the CLI",
    why: "flags are the CLI's vocabulary; the library's types are built from checked values, so \
          scenario files, the matrix and tests reach them without clap, and a flag can change \
          without touching the engine",
    applies_to: EVERYWHERE,
    allowed_in: &["cli/"],
    needles: &[Needle::Ident("clap")],
};

/// The crate's source directory.
fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// A production source file: its path under `src/` ('/'-separated) and its tokens with lines.
struct SourceFile {
    rel: String,
    toks: Vec<(Tok, usize)>,
}

/// What a file holds besides its production tokens: the modules it declares test-only
/// (`#[cfg(test)] mod name;`, with their `#[path]` if any), whose files are test code.
#[derive(Debug, PartialEq)]
struct TestMod {
    name: String,
    path: Option<String>,
}

/// Every production `.rs` file under `src/`: without its `#[cfg(test)]` items, and without the
/// files of test-only modules and files named `*tests.rs`.
fn sources() -> Vec<SourceFile> {
    let root = src();
    let mut read = Vec::new();
    for e in walkdir::WalkDir::new(&root).sort_by_file_name() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy();
        if !e.file_type().is_file() || !name.ends_with(".rs") || name.ends_with("tests.rs") {
            continue;
        }
        let rel = e
            .path()
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        let text = std::fs::read_to_string(e.path()).unwrap();
        let (toks, test_mods) =
            production_tokens(&text).unwrap_or_else(|err| panic!("src/{rel}: {err}"));
        read.push((SourceFile { rel, toks }, test_mods));
    }
    let test_only: Vec<(Vec<String>, String)> = read
        .iter()
        .flat_map(|(f, mods)| mods.iter().map(|m| test_module_files(&f.rel, m)))
        .collect();
    let files: Vec<SourceFile> = read
        .into_iter()
        .map(|(f, _)| f)
        .filter(|f| {
            !test_only
                .iter()
                .any(|(files, dir)| files.contains(&f.rel) || f.rel.starts_with(dir.as_str()))
        })
        .collect();
    assert!(
        files.len() > 30 && files.iter().any(|f| f.rel.starts_with("core/")),
        "tidy read only {} files under {}",
        files.len(),
        root.display()
    );
    files
}

/// The files (and the directory of submodules) of a module `m` declared in `declared_in`.
fn test_module_files(declared_in: &str, m: &TestMod) -> (Vec<String>, String) {
    let parent = declared_in.rsplit_once('/').map_or("", |(d, _)| d);
    let join = |a: &str, b: &str| {
        if a.is_empty() {
            b.to_string()
        } else {
            format!("{a}/{b}")
        }
    };
    if let Some(p) = &m.path {
        // `#[path]` on an out-of-line module is relative to the declaring file's directory.
        let file = join(parent, p);
        let dir = format!("{}/", file.trim_end_matches(".rs"));
        return (vec![file], dir);
    }
    let file_name = declared_in.rsplit('/').next().unwrap_or(declared_in);
    let base = if ["mod.rs", "lib.rs", "main.rs"].contains(&file_name) {
        parent.to_string()
    } else {
        join(parent, file_name.trim_end_matches(".rs"))
    };
    let module = join(&base, &m.name);
    (
        vec![format!("{module}.rs"), format!("{module}/mod.rs")],
        format!("{module}/"),
    )
}

/// The tokens of a file without the items under `#[cfg(test)]` and without doc attributes
/// (`///` and `//!` become `#[doc = "..."]`, which is prose, not code); and the modules the file
/// declares test-only.
fn production_tokens(text: &str) -> Result<(Lined, Vec<TestMod>), String> {
    let stream = TokenStream::from_str(text).map_err(|e| format!("cannot tokenize: {e}"))?;
    let mut all = Vec::new();
    flatten(stream, &mut all);
    let mut out = Vec::new();
    let mut test_mods = Vec::new();
    let mut i = 0;
    while i < all.len() {
        if let Some((inner, end)) = attribute(&all, i) {
            if is_cfg_test(inner) {
                // Skip the other attributes of the item, then the item itself.
                let mut j = end + 1;
                let mut path = None;
                while let Some((inner, end)) = attribute(&all, j) {
                    if let [(Tok::Ident(k), _), (Tok::Punct('='), _), (Tok::Lit(l), _)] = inner
                        && k == "path"
                    {
                        path = string_value(l).map(str::to_string);
                    }
                    j = end + 1;
                }
                let item_end = item_end(&all, j);
                if let Some(name) = out_of_line_module(&all[j..=item_end.max(j).min(all.len() - 1)])
                {
                    test_mods.push(TestMod { name, path });
                }
                i = item_end + 1;
                continue;
            }
            if let [(Tok::Ident(d), _), ..] = inner
                && d == "doc"
            {
                i = end + 1;
                continue;
            }
        }
        out.push(all[i].clone());
        i += 1;
    }
    Ok((out, test_mods))
}

/// `#[...]` or `#![...]` at `i`: its inside and the index of its closing bracket.
fn attribute(all: &[(Tok, usize)], i: usize) -> Option<(&[(Tok, usize)], usize)> {
    if all.get(i)?.0 != Tok::Punct('#') {
        return None;
    }
    let open = if all.get(i + 1)?.0 == Tok::Punct('!') {
        i + 2
    } else {
        i + 1
    };
    if all.get(open)?.0 != Tok::Open(Delimiter::Bracket) {
        return None;
    }
    let end = matching_close(all, open);
    Some((&all[open + 1..end], end))
}

fn is_cfg_test(inner: &[(Tok, usize)]) -> bool {
    let toks: Vec<&Tok> = inner.iter().map(|t| &t.0).collect();
    toks == [
        &Tok::Ident("cfg".into()),
        &Tok::Open(Delimiter::Parenthesis),
        &Tok::Ident("test".into()),
        &Tok::Close(Delimiter::Parenthesis),
    ]
}

/// The last token of the item starting at `j`: its `;`, the end of its body, or the token before
/// the end of the enclosing group (a statement or field).
fn item_end(all: &[(Tok, usize)], j: usize) -> usize {
    let mut k = j;
    while k < all.len() {
        match &all[k].0 {
            Tok::Punct(';') => return k,
            Tok::Open(d) => {
                let close = matching_close(all, k);
                if *d == Delimiter::Brace {
                    return close;
                }
                k = close + 1;
            }
            Tok::Close(_) => return k.saturating_sub(1).max(j),
            _ => k += 1,
        }
    }
    all.len().saturating_sub(1)
}

/// `mod name;` (possibly `pub`, `pub(crate)`): the module's name.
fn out_of_line_module(item: &[(Tok, usize)]) -> Option<String> {
    let mut rest: Vec<&Tok> = item.iter().map(|t| &t.0).collect();
    if rest.first() == Some(&&Tok::Ident("pub".into())) {
        rest.remove(0);
        if rest.first() == Some(&&Tok::Open(Delimiter::Parenthesis)) {
            let close = rest
                .iter()
                .position(|t| **t == Tok::Close(Delimiter::Parenthesis))?;
            rest.drain(..=close);
        }
    }
    match rest.as_slice() {
        [Tok::Ident(m), Tok::Ident(name), Tok::Punct(';')] if m == "mod" => Some(name.clone()),
        _ => None,
    }
}

fn flatten(stream: TokenStream, out: &mut Vec<(Tok, usize)>) {
    for tt in stream {
        let line = tt.span().start().line;
        match tt {
            TokenTree::Ident(i) => out.push((Tok::Ident(i.to_string()), line)),
            TokenTree::Punct(p) => out.push((Tok::Punct(p.as_char()), line)),
            TokenTree::Literal(l) => out.push((Tok::Lit(l.to_string()), line)),
            TokenTree::Group(g) => {
                out.push((Tok::Open(g.delimiter()), line));
                flatten(g.stream(), out);
                out.push((Tok::Close(g.delimiter()), g.span_close().start().line));
            }
        }
    }
}

/// The index of the token closing the group opened at `open`.
fn matching_close(toks: &[(Tok, usize)], open: usize) -> usize {
    let mut depth = 0;
    for (i, (t, _)) in toks.iter().enumerate().skip(open) {
        match t {
            Tok::Open(_) => depth += 1,
            Tok::Close(_) => {
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => {}
        }
    }
    toks.len()
}

fn ident(t: Option<&(Tok, usize)>, name: &str) -> bool {
    matches!(t, Some((Tok::Ident(i), _)) if i == name)
}

fn punct(t: Option<&(Tok, usize)>, c: char) -> bool {
    matches!(t, Some((Tok::Punct(p), _)) if *p == c)
}

/// Lines at which `needle` occurs in `toks`.
fn find(toks: &[(Tok, usize)], needle: Needle) -> Vec<usize> {
    let mut lines = Vec::new();
    for i in 0..toks.len() {
        let at = |k: usize| toks.get(i + k);
        let hit = match needle {
            Needle::Ident(name) => ident(at(0), name),
            Needle::Macro(name) => ident(at(0), name) && punct(at(1), '!'),
            Needle::Call0(name) => {
                punct(at(0), '.')
                    && ident(at(1), name)
                    && matches!(at(2), Some((Tok::Open(Delimiter::Parenthesis), _)))
                    && matches!(at(3), Some((Tok::Close(Delimiter::Parenthesis), _)))
            }
            Needle::Fn0(name) => {
                let before = i.checked_sub(1).map(|k| &toks[k]);
                !punct(before, '.')
                    && !ident(before, "fn")
                    && ident(at(0), name)
                    && matches!(at(1), Some((Tok::Open(Delimiter::Parenthesis), _)))
                    && matches!(at(2), Some((Tok::Close(Delimiter::Parenthesis), _)))
            }
            Needle::Path(a, b) => {
                ident(at(0), a)
                    && punct(at(1), ':')
                    && punct(at(2), ':')
                    && (ident(at(3), b)
                        || (matches!(at(3), Some((Tok::Open(Delimiter::Brace), _)))
                            && use_group_names(toks, i + 3, b)))
            }
        };
        if hit {
            lines.push(toks[i].1);
        }
    }
    lines
}

/// Whether the use group opened at `open` (`{fs, io::Read}`) starts one of its items with `name`.
fn use_group_names(toks: &[(Tok, usize)], open: usize, name: &str) -> bool {
    let close = matching_close(toks, open);
    let mut item_start = true;
    let mut depth = 0;
    for (t, _) in &toks[open + 1..close] {
        match t {
            Tok::Open(_) => depth += 1,
            Tok::Close(_) => depth -= 1,
            Tok::Ident(i) if depth == 0 && item_start && i == name => return true,
            _ => {}
        }
        item_start = depth == 0 && *t == Tok::Punct(',');
    }
    false
}

fn under(rel: &str, places: &[&str]) -> bool {
    places.iter().any(|p| {
        if p.ends_with('/') || p.is_empty() {
            rel.starts_with(p)
        } else {
            rel == *p
        }
    })
}

/// `src/FILE:LINE: what` for every breach of `rule`.
fn breaches(rule: &Rule, files: &[SourceFile]) -> Vec<String> {
    let mut out = Vec::new();
    for f in files {
        if !under(&f.rel, rule.applies_to) || under(&f.rel, rule.allowed_in) {
            continue;
        }
        let mut hits: Vec<(usize, String)> = rule
            .needles
            .iter()
            .flat_map(|&n| {
                find(&f.toks, n)
                    .into_iter()
                    .map(move |l| (l, n.to_string()))
            })
            .collect();
        hits.sort();
        out.extend(
            hits.into_iter()
                .map(|(line, n)| format!("src/{}:{line}: {n}", f.rel)),
        );
    }
    out
}

#[track_caller]
fn check(rule: &Rule) {
    let found = breaches(rule, &sources());
    let allowed = if rule.allowed_in.is_empty() {
        "nowhere".to_string()
    } else {
        rule.allowed_in
            .iter()
            .map(|p| format!("src/{p}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    assert!(
        found.is_empty(),
        "tidy: {} (allowed in: {allowed}).\nWhy: {}.\n{} breach(es):\n  {}\n",
        rule.name,
        rule.why,
        found.len(),
        found.join("\n  ")
    );
}

#[test]
fn processes_are_spawned_only_by_the_process_helpers() {
    check(&PROCESSES);
}

#[test]
fn only_the_cli_prints() {
    check(&PRINTING);
}

#[test]
fn the_core_does_no_io_and_reads_no_clock() {
    check(&PURE_CORE);
}

#[test]
fn clap_stays_in_the_cli() {
    check(&CLAP);
}

/// Patterns are data: code relies on a pattern's fields and roles, never on its name, so the
/// pattern file can rename, reorder and add patterns without touching code. A pattern name that
/// is also a word of the closed vocabulary (a verdict such as `kernel-panic`, a stage, a role, a
/// dump part) is that word where the code spells it, and is not counted.
#[test]
fn code_never_names_a_pattern() {
    use bootwatch::core::classify::{DumpPart, PatternSet, Role};
    use bootwatch::core::verdict::{Stage, Verdict};
    let vocabulary: BTreeSet<&str> = Verdict::ALL
        .iter()
        .map(|v| v.as_str())
        .chain(Stage::ALL.iter().map(|s| s.as_str()))
        .chain(Role::ALL.iter().map(|r| r.as_str()))
        .chain(DumpPart::ALL.iter().map(|d| d.as_str()))
        .collect();
    let names: BTreeSet<&str> = PatternSet::builtin()
        .patterns
        .iter()
        .map(|p| p.name.as_str())
        .filter(|n| !vocabulary.contains(n))
        .collect();
    assert!(
        names.len() > 20,
        "only {} pattern names to look for",
        names.len()
    );
    let found = pattern_names_in(&sources(), &names);
    assert!(
        found.is_empty(),
        "tidy: code never names a pattern.\nWhy: patterns are data (core/classify/patterns.toml); \
         code relies on a pattern's fields and roles, so patterns can be renamed, reordered or \
         added without touching code. Give the pattern a field or a role instead.\n{} breach(es):\n  {}\n",
        found.len(),
        found.join("\n  ")
    );
}

/// `src/FILE:LINE: "name"` for every string literal that is one of `names`.
fn pattern_names_in(files: &[SourceFile], names: &BTreeSet<&str>) -> Vec<String> {
    let mut found = Vec::new();
    for f in files {
        for (t, line) in &f.toks {
            if let Tok::Lit(l) = t
                && let Some(name) = string_value(l)
                && names.contains(name)
            {
                found.push(format!("src/{}:{line}: \"{name}\"", f.rel));
            }
        }
    }
    found
}

/// The contents of a plain or raw string literal without escapes (`"x"`, `r"x"`, `r#"x"#`).
fn string_value(lit: &str) -> Option<&str> {
    let raw = lit.strip_prefix('r').map(|s| s.trim_matches('#'));
    let s = raw.unwrap_or(lit);
    let inner = s.strip_prefix('"')?.strip_suffix('"')?;
    (raw.is_some() || !inner.contains('\\')).then_some(inner)
}

// The checker itself: each needle is found where it should be and nowhere else.

fn lines_of(src: &str, needle: Needle) -> Vec<usize> {
    find(&production_tokens(src).unwrap().0, needle)
}

#[test]
fn the_checker_reads_code_not_prose_and_stops_at_the_tests() {
    let src = r#"
//! Mentions std::fs and println! in a doc comment.
use std::{fs, io::Read};
/// Command::new in a doc comment.
fn f() {
    let s = "Command::new and println! in a string";
    // println!("in a comment");
    let c = tokio::process::Command::new("x").spawn();
    eprintln!("{s}");
    let t = std::time::Instant::now();
    thread::Builder::new().spawn(move || ());
    let now = (jiff::Timestamp::now(), Zoned::now(), std::env::var("HOME"));
    dbg!(now);
    let _ = writeln!(std::io::stdout().lock(), "x");
    let (o, e) = (stderr(), cmd.stderr());
}
fn stdout() -> u8 { 0 }
#[cfg(test)]
mod tests {
    fn g() { println!("a test may print"); let _ = std::fs::read("x"); }
}
"#;
    assert_eq!(lines_of(src, Needle::Path("std", "fs")), [3]);
    assert_eq!(lines_of(src, Needle::Path("process", "Command")), [8]);
    assert_eq!(lines_of(src, Needle::Path("Command", "new")), [8]);
    assert_eq!(lines_of(src, Needle::Call0("spawn")), [8]);
    assert_eq!(lines_of(src, Needle::Macro("println")), Vec::<usize>::new());
    assert_eq!(lines_of(src, Needle::Macro("eprintln")), [9]);
    assert_eq!(lines_of(src, Needle::Path("Instant", "now")), [10]);
    assert_eq!(lines_of(src, Needle::Ident("tokio")), [8]);
    assert_eq!(lines_of(src, Needle::Path("Timestamp", "now")), [12]);
    assert_eq!(lines_of(src, Needle::Path("Zoned", "now")), [12]);
    assert_eq!(lines_of(src, Needle::Path("std", "env")), [12]);
    assert_eq!(lines_of(src, Needle::Macro("dbg")), [13]);
    // A call, not a method call (`cmd.stderr()`) nor a definition (`fn stdout()`).
    assert_eq!(lines_of(src, Needle::Fn0("stdout")), [14]);
    assert_eq!(lines_of(src, Needle::Fn0("stderr")), [15]);
    // `io::Read` inside the group is not `std::Read`.
    assert_eq!(
        lines_of(src, Needle::Path("std", "Read")),
        Vec::<usize>::new()
    );
    assert_eq!(string_value(r##"r#"edk2-banner"#"##), Some("edk2-banner"));
    assert_eq!(string_value(r#""a\"b""#), None);
    assert_eq!(string_value("1u8"), None);
}

#[test]
fn the_checker_applies_rules_by_place() {
    let file = |rel: &str, src: &str| SourceFile {
        rel: rel.to_string(),
        toks: production_tokens(src).unwrap().0,
    };
    let files = [
        file("engine/supervise.rs", "fn a() { Command::new(p).spawn(); }"),
        file("cli/mod.rs", "fn b() { println!(); }"),
        file("inputs/x.rs", "fn c() {\n println!();\n Command::new(p); }"),
        file("core/y.rs", "use std::net::TcpStream;"),
        file("engine/z.rs", "use std::net::TcpStream;"),
        file("core/t.rs", "fn t() {\n let _ = std::env::var(\"X\");\n}"),
        file(
            "report/u.rs",
            "fn u() { dbg!(1); let _ = std::io::stderr(); }",
        ),
        file("cli/v.rs", "fn v() { let _ = std::io::stderr(); }"),
    ];
    assert_eq!(
        breaches(&PROCESSES, &files),
        ["src/inputs/x.rs:3: `Command::new`"]
    );
    assert_eq!(
        breaches(&PRINTING, &files),
        [
            "src/inputs/x.rs:2: `println!`",
            "src/report/u.rs:1: `dbg!`",
            "src/report/u.rs:1: `stderr()`"
        ]
    );
    assert_eq!(
        breaches(&PURE_CORE, &files),
        ["src/core/y.rs:1: `std::net`", "src/core/t.rs:2: `std::env`"]
    );

    let named = [file(
        "engine/w.rs",
        "/// Looks like \"edk2-banner\" in prose.\nfn d(p: &str) -> bool {\n p == \"edk2-banner\" || p == \"edk2-banner-x\" }",
    )];
    let names = BTreeSet::from(["edk2-banner"]);
    assert_eq!(
        pattern_names_in(&named, &names),
        ["src/engine/w.rs:3: \"edk2-banner\""]
    );
}

#[test]
fn the_checker_skips_test_items_and_test_modules_but_reads_what_follows() {
    let src = r#"
#[cfg(test)]
mod testing;
fn after_a_test_module_declaration() { println!("production"); }
#[cfg(test)]
#[path = "helpers_for_tests.rs"]
pub(crate) mod helpers;
#[cfg(test)]
fn test_helper() { println!("test code"); }
#[cfg(test)]
mod tests {
    fn t() { println!("test code"); }
}
fn last() {
    #[cfg(test)]
    println!("test code");
    println!("production");
}
"#;
    assert_eq!(lines_of(src, Needle::Macro("println")), [4, 17]);
    let (_, mods) = production_tokens(src).unwrap();
    assert_eq!(
        mods,
        [
            TestMod {
                name: "testing".into(),
                path: None
            },
            TestMod {
                name: "helpers".into(),
                path: Some("helpers_for_tests.rs".into())
            },
        ]
    );
    assert_eq!(
        test_module_files("inputs/repo/mod.rs", &mods[0]),
        (
            vec![
                "inputs/repo/testing.rs".to_string(),
                "inputs/repo/testing/mod.rs".to_string()
            ],
            "inputs/repo/testing/".to_string()
        )
    );
    assert_eq!(
        test_module_files("engine/session.rs", &mods[0]).0,
        ["engine/session/testing.rs", "engine/session/testing/mod.rs"]
    );
    assert_eq!(
        test_module_files("engine/session.rs", &mods[1]).0,
        ["engine/helpers_for_tests.rs"]
    );
}
