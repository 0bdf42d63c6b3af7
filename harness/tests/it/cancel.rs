//! SIGTERM while bootwatch builds an input, with an empty cache so it really builds: the local
//! Debian image (`bootwatch images build debian-12-local`, stopped during mmdebstrap) and a
//! `debian:trixie` QEMU tree (through `bootwatch matrix`, stopped during mmdebstrap).
//!
//! Each is stopped twice. Within 5 s of the signal bootwatch and every process of the build are
//! gone; the cache then holds nothing of the build (no published entry, no build directory, no
//! lock, nothing mounted below it); and the second run starts a fresh build (it runs mmdebstrap
//! again) before it is stopped the same way.
//!
//! These use the network (the Debian mirror of the host's apt configuration, or
//! BOOTWATCH_MIRROR), mmdebstrap, root and qemu-user binfmt, like the image and provider tests.

use crate::common;

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long bootwatch and its tools may take to be gone after SIGTERM.
const LIMIT: Duration = Duration::from_secs(5);

/// `(ppid, session id, state, start time)` of a process, from `/proc/PID/stat`.
fn stat(pid: u32) -> Option<(u32, u32, char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = text.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state ppid pgrp session ... starttime (field 22 of the whole line).
    Some((
        f.get(1)?.parse().ok()?,
        f.get(3)?.parse().ok()?,
        f.first()?.chars().next()?,
        f.get(19)?.parse().ok()?,
    ))
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// Every process bootwatch started, directly or not, as far as they have been seen: children
/// (by parent, also those that left the session) and members of bootwatch's own session.
/// Processes are told apart by pid and start time, so a reused pid is not mistaken for one.
struct Tree {
    root: u32,
    seen: BTreeMap<u32, (u64, String)>,
}

impl Tree {
    fn new(root: u32) -> Tree {
        Tree {
            root,
            seen: BTreeMap::new(),
        }
    }

    fn scan(&mut self) {
        let mut all = BTreeMap::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            if let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>()
                && let Some(s) = stat(pid)
            {
                all.insert(pid, s);
            }
        }
        for (&pid, &(_, sid, state, start)) in &all {
            if pid == self.root || state == 'Z' || self.seen.contains_key(&pid) {
                continue;
            }
            let mut p = pid;
            let mut ours = sid == self.root;
            for _ in 0..64 {
                if ours || p <= 1 {
                    break;
                }
                match all.get(&p) {
                    Some(&(ppid, ..)) => {
                        ours = ppid == self.root || self.seen.contains_key(&ppid);
                        p = ppid;
                    }
                    None => break,
                }
            }
            if ours {
                self.seen.insert(pid, (start, cmdline(pid)));
            }
        }
    }

    /// The seen processes still running (zombies are not).
    fn alive(&self) -> Vec<(u32, String)> {
        self.seen
            .iter()
            .filter(|(pid, (start, _))| {
                stat(**pid).is_some_and(|(_, _, state, s)| s == *start && state != 'Z')
            })
            .map(|(pid, (_, cmd))| (*pid, cmd.chars().take(120).collect()))
            .collect()
    }

    fn running(&self, needle: &str) -> bool {
        self.alive().iter().any(|(_, cmd)| cmd.contains(needle))
    }
}

/// Starts bootwatch in a session of its own, its output in files under `logs`.
fn start(args: &[&str], cache: &Path, logs: &Path, name: &str) -> Child {
    let mut cmd = bin();
    cmd.args(args)
        .env("BOOTWATCH_CACHE", cache)
        .env("BOOTWATCH_LOG", "info")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(logs.join(format!("{name}.out"))).unwrap())
        .stderr(std::fs::File::create(logs.join(format!("{name}.err"))).unwrap());
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()
                .map(drop)
                .map_err(std::io::Error::from)
        });
    }
    cmd.spawn().unwrap()
}

fn stderr_of(logs: &Path, name: &str) -> String {
    std::fs::read_to_string(logs.join(format!("{name}.err"))).unwrap_or_default()
}

/// Waits until `needle` has been running for `after` (bootwatch must still be running).
fn wait_for_tool(child: &mut Child, tree: &mut Tree, needle: &str, after: Duration, what: &str) {
    let t = Instant::now();
    let mut since: Option<Instant> = None;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("bootwatch ended ({status}) before {needle} ran {after:?}: {what}");
        }
        tree.scan();
        if tree.running(needle) {
            let s = *since.get_or_insert_with(Instant::now);
            if s.elapsed() >= after {
                return;
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "{needle} did not run within 300 s: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// SIGTERM to bootwatch; returns how long until bootwatch and every process of its tree were
/// gone, and bootwatch's exit code. Survivors after 60 s are killed and the test fails.
fn terminate(child: &mut Child, tree: &mut Tree) -> (Duration, Option<i32>) {
    tree.scan();
    let t = Instant::now();
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let mut status = None;
    loop {
        if status.is_none() {
            // Children are found by their parent only while it lives: scan before reaping.
            tree.scan();
            status = child.try_wait().unwrap();
        }
        let alive = tree.alive();
        if let Some(s) = status
            && alive.is_empty()
        {
            return (t.elapsed(), s.code());
        }
        if t.elapsed() > Duration::from_secs(60) {
            for (pid, _) in &alive {
                let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
            }
            let _ = child.kill();
            panic!("60 s after SIGTERM: bootwatch {status:?}, still running: {alive:#?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Files and directories below `dir`, relative, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

fn mounts_below(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&dir))
        .map(str::to_owned)
        .collect()
}

#[test]
fn sigterm_during_an_image_build_stops_it_and_keeps_nothing() {
    let _serial = both_cores();
    let cache = tempfile::Builder::new()
        .prefix("bootwatch-cancel-cache-")
        .tempdir()
        .unwrap();
    let logs = tempfile::tempdir().unwrap();
    let local = cache.path().join("images/local");
    for (round, after) in [(1, Duration::from_secs(25)), (2, Duration::from_secs(8))] {
        let name = format!("build{round}");
        let mut child = start(
            &["images", "build", "debian-12-local"],
            cache.path(),
            logs.path(),
            &name,
        );
        let mut tree = Tree::new(child.id());
        wait_for_tool(
            &mut child,
            &mut tree,
            "mmdebstrap",
            after,
            &stderr_of(logs.path(), &name),
        );
        let err = stderr_of(logs.path(), &name);
        // A fresh build: nothing was found in the cache, mmdebstrap runs from the start.
        assert!(
            err.contains("debian-12-local: building") && err.contains("bootstrap-essential"),
            "{err}"
        );
        let build_dirs = listing(&local);
        assert!(
            build_dirs.iter().any(|p| p.starts_with(".build-")),
            "no build directory while mmdebstrap runs: {build_dirs:?}"
        );
        let (took, code) = terminate(&mut child, &mut tree);
        let err = stderr_of(logs.path(), &name);
        eprintln!(
            "round {round}: SIGTERM {after:?} into mmdebstrap; bootwatch and {} processes of the \
             build gone after {took:.2?}",
            tree.seen.len()
        );
        assert!(
            tree.seen
                .values()
                .any(|(_, cmd)| cmd.contains("mmdebstrap")),
            "{:#?}",
            tree.seen
        );
        assert!(took <= LIMIT, "gone only after {took:?}\n{err}");
        assert_eq!(code, Some(125), "{err}");
        assert!(err.contains("nothing of it is kept"), "{err}");
        assert!(err.contains("`mmdebstrap` was stopped: cancelled"), "{err}");
        // Nothing of the build: no image, no build directory, no lock, no temporaries.
        assert_eq!(listing(&local), Vec::<String>::new(), "left in the cache");
        assert_eq!(mounts_below(cache.path()), Vec::<String>::new());
        let status = bin()
            .args(["images", "list", "--json"])
            .env("BOOTWATCH_CACHE", cache.path())
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
        let entry = v
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "debian-12-local")
            .unwrap()
            .clone();
        assert_eq!(entry["state"], "not-built", "{entry}");
    }
}

#[test]
fn sigterm_during_a_qemu_tree_build_stops_it_and_keeps_nothing() {
    let _serial = both_cores();
    let cache = tempfile::Builder::new()
        .prefix("bootwatch-cancel-cache-")
        .tempdir()
        .unwrap();
    let logs = tempfile::tempdir().unwrap();
    let matrix = logs.path().join("trixie.toml");
    std::fs::write(
        &matrix,
        "name = \"trixie-tree\"\ntimeout_s = 60\nsilence_s = 30\nmemory_mib = 256\n\n[axes]\n\
         image = [\"fixture:crash\"]\nqemu = [\"debian:trixie\"]\nfirmware = [\"host\"]\n",
    )
    .unwrap();
    let qemu_dir = cache.path().join("qemu");
    for round in 1..=2 {
        let name = format!("matrix{round}");
        let results = logs.path().join(format!("results{round}"));
        let mut child = start(
            &[
                "matrix",
                matrix.to_str().unwrap(),
                "--results",
                results.to_str().unwrap(),
            ],
            cache.path(),
            logs.path(),
            &name,
        );
        let mut tree = Tree::new(child.id());
        // The tree build takes about 20 s: stop it a few seconds in.
        wait_for_tool(
            &mut child,
            &mut tree,
            "mmdebstrap",
            Duration::from_secs(4),
            &stderr_of(logs.path(), &name),
        );
        assert!(
            listing(&qemu_dir)
                .iter()
                .any(|p| p.starts_with(".build-debian-trixie-")),
            "no staging directory while mmdebstrap runs: {:?}",
            listing(&qemu_dir)
        );
        let (took, code) = terminate(&mut child, &mut tree);
        let err = stderr_of(logs.path(), &name);
        eprintln!(
            "round {round}: SIGTERM 4 s into mmdebstrap; bootwatch and {} processes of the tree \
             build gone after {took:.2?}",
            tree.seen.len()
        );
        assert!(took <= LIMIT, "gone only after {took:?}\n{err}");
        assert_eq!(code, Some(125), "{err}");
        assert!(err.contains("interrupted"), "{err}");
        // Only the remembered index answer is kept (a complete file, not part of a tree).
        let left: Vec<String> = listing(&qemu_dir)
            .into_iter()
            .filter(|p| p != "index-trixie.json")
            .collect();
        assert_eq!(left, Vec::<String>::new(), "left in the cache");
        assert_eq!(mounts_below(cache.path()), Vec::<String>::new());
    }
}
