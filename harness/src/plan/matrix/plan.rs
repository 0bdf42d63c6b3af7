//! A matrix file's axes expanded into cells with stable ids, and the deterministic split into
//! shards. Pure: no IO.

use sha2::{Digest, Sha256};

use crate::plan::matrix::model::{Axes, Axis, PLAN_SCHEMA, Plan, PlannedCell};
use crate::plan::matrix::spec::{ImageChoice, MatrixSpec, VarsChoice};

/// `I/N`: this execution runs the I-th of N shards (1-based, as GitLab's `CI_NODE_INDEX`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub total: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Shard, String> {
        let bad =
            |why: &str| format!("shard {s:?}: {why} (expected I/N with 1 <= I <= N, e.g. 1/2)");
        let (i, n) = s.split_once('/').ok_or_else(|| bad("no '/'"))?;
        let index: usize = i.trim().parse().map_err(|_| bad("I is not a number"))?;
        let total: usize = n.trim().parse().map_err(|_| bad("N is not a number"))?;
        if total == 0 {
            return Err(bad("N must be at least 1"));
        }
        if index == 0 || index > total {
            return Err(bad(&format!("I must be between 1 and {total}")));
        }
        Ok(Shard { index, total })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.total)
    }
}

impl Shard {
    /// The shard from a CI engine's variables (GitLab's `CI_NODE_INDEX`/`CI_NODE_TOTAL`, set by
    /// `parallel:`), if both are set.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Option<Result<Shard, String>> {
        let i = get("CI_NODE_INDEX")?;
        let n = get("CI_NODE_TOTAL")?;
        Some(
            format!("{i}/{n}")
                .parse()
                .map_err(|e| format!("from CI_NODE_INDEX/CI_NODE_TOTAL: {e}")),
        )
    }

    /// Round robin over the plan order: cell k belongs to shard (k mod N) + 1. Spreads every
    /// axis over the shards, so shards take similar times.
    pub fn owns(&self, index: usize) -> bool {
        index % self.total == self.index - 1
    }
}

/// A cell's stable id: `c` + the first 12 hex digits of sha256(axes.canonical()).
pub fn cell_id(axes: &Axes) -> String {
    let h = Sha256::digest(axes.canonical().as_bytes());
    format!("c{}", &hex::encode(h)[..12])
}

/// Every cell of the matrix, in axis order (image, qemu, firmware, cpu, vars), filters applied.
/// Combinations that cannot exist are left out too: `vars = "guest"` with an image that was not
/// upgraded (no guest store exists for it).
pub fn expand(spec: &MatrixSpec, repeat: u32) -> Result<Plan, String> {
    let mut cells = Vec::new();
    for (image, choice) in &spec.images {
        for (qemu, _) in &spec.qemus {
            for (firmware, _) in &spec.firmwares {
                for cpu in &spec.cpus {
                    for (vars, v) in &spec.vars {
                        if *v == VarsChoice::Guest && !matches!(choice, ImageChoice::Upgraded(_)) {
                            continue;
                        }
                        let axes = Axes {
                            image: image.clone(),
                            qemu: qemu.clone(),
                            firmware: firmware.clone(),
                            cpu: cpu.clone(),
                            vars: vars.clone(),
                        };
                        let excluded = spec.exclude.iter().any(|f| {
                            f.iter()
                                .all(|(axis, value)| axes.get(axis) == Some(value.as_str()))
                        });
                        if !excluded {
                            cells.push(PlannedCell {
                                id: cell_id(&axes),
                                index: cells.len(),
                                axes,
                            });
                        }
                    }
                }
            }
        }
    }
    if cells.is_empty() {
        return Err(format!("{}: the filters leave no cell to run", spec.source));
    }
    let axes = vec![
        axis("image", spec.images.iter().map(|(s, _)| s)),
        axis("qemu", spec.qemus.iter().map(|(s, _)| s)),
        axis("firmware", spec.firmwares.iter().map(|(s, _)| s)),
        axis("cpu", spec.cpus.iter()),
        axis("vars", spec.vars.iter().map(|(s, _)| s)),
    ];
    let mut h = Sha256::new();
    for c in &cells {
        h.update(c.id.as_bytes());
        h.update(b"\n");
    }
    h.update(
        format!(
            "target={};timeout={};silence={};repeat={repeat};smp={};memory={};upgrade={:?}",
            spec.target_name(),
            spec.timeout.as_secs_f64(),
            spec.silence.as_secs_f64(),
            spec.smp,
            spec.memory_mib,
            spec.upgrade,
        )
        .as_bytes(),
    );
    Ok(Plan {
        schema: PLAN_SCHEMA.into(),
        name: spec.name.clone(),
        description: spec.description.clone(),
        matrix_file: spec.source.clone(),
        plan_id: hex::encode(h.finalize())[..16].to_string(),
        axes,
        target: spec.target_name().into(),
        timeout_s: spec.timeout.as_secs_f64(),
        repeat,
        cells,
    })
}

fn axis<'a>(name: &str, values: impl Iterator<Item = &'a String>) -> Axis {
    Axis {
        name: name.into(),
        values: values.cloned().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: &str = r#"
name = "t"
[axes]
image = ["fixture:crash", "fixture:hello", "img@upgraded"]
qemu = ["host", "debian:trixie"]
firmware = ["debian:2022.11", "debian:2025.02/strictnx"]
vars = ["template", "guest"]

[[exclude]]
qemu = "debian:trixie"
firmware = "debian:2022.11"
"#;

    fn plan() -> Plan {
        expand(&MatrixSpec::parse(M, "m.toml").unwrap(), 1).unwrap()
    }

    #[test]
    fn expands_in_axis_order_with_filters_and_impossible_cells_left_out() {
        let p = plan();
        // images: 2 fixtures x template + 1 upgraded x {template, guest} = 4 image/vars pairs;
        // qemu x firmware: 4 minus the excluded pair = 3.
        assert_eq!(p.cells.len(), 4 * 3);
        assert!(p.cells.iter().enumerate().all(|(i, c)| c.index == i));
        assert!(
            !p.cells
                .iter()
                .any(|c| c.axes.qemu == "debian:trixie" && c.axes.firmware == "debian:2022.11")
        );
        assert!(
            !p.cells
                .iter()
                .any(|c| c.axes.vars == "guest" && !c.axes.image.ends_with("@upgraded"))
        );
        assert_eq!(
            p.cells[0].axes.label(),
            "fixture:crash · host · debian:2022.11 · cortex-a72 · template"
        );
    }

    #[test]
    fn ids_are_stable_and_distinct() {
        let a = plan();
        let b = plan();
        assert_eq!(a, b);
        let mut ids: Vec<_> = a.cells.iter().map(|c| c.id.clone()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), a.cells.len());
        // Pinned: the id is a function of the axis values only (a change breaks resume and
        // baselines for every user).
        let axes = Axes {
            image: "fixture:crash".into(),
            qemu: "host".into(),
            firmware: "debian:2022.11".into(),
            cpu: "cortex-a72".into(),
            vars: "template".into(),
        };
        assert_eq!(cell_id(&axes), format!("c{}", &hex::encode(Sha256::digest(b"image=fixture:crash;qemu=host;firmware=debian:2022.11;cpu=cortex-a72;vars=template"))[..12]));
        // Another repeat count is another plan, with the same cell ids.
        let r = expand(&MatrixSpec::parse(M, "m.toml").unwrap(), 3).unwrap();
        assert_ne!(r.plan_id, a.plan_id);
        assert_eq!(r.cells, a.cells);
    }

    #[test]
    fn shards_partition_the_plan() {
        let p = plan();
        for total in 1..=5 {
            let mut seen = vec![0; p.cells.len()];
            for index in 1..=total {
                let s = Shard { index, total };
                for c in &p.cells {
                    if s.owns(c.index) {
                        seen[c.index] += 1;
                    }
                }
            }
            assert!(seen.iter().all(|&n| n == 1), "{total}: {seen:?}");
        }
    }

    #[test]
    fn shard_spelling() {
        assert_eq!("2/3".parse::<Shard>(), Ok(Shard { index: 2, total: 3 }));
        for bad in ["3/2", "0/2", "1/0", "1", "a/2", "1/b", ""] {
            let e = bad.parse::<Shard>().unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
        assert!(
            "3/2"
                .parse::<Shard>()
                .unwrap_err()
                .contains("between 1 and 2")
        );
        let env = |k: &str| match k {
            "CI_NODE_INDEX" => Some("2".to_string()),
            "CI_NODE_TOTAL" => Some("2".to_string()),
            _ => None,
        };
        assert_eq!(Shard::from_env(env), Some(Ok(Shard { index: 2, total: 2 })));
        assert_eq!(Shard::from_env(|_| None), None);
    }
}
