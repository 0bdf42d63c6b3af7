//! Choosing the packages of an update: given a base suite (what a guest runs) and an update
//! suite, the newest versions of some root packages plus everything they need that a guest of
//! the base suite cannot be assumed to have. Relationship fields and versions are
//! `debian-control`'s and `debversion`'s types.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use anyhow::{Result, anyhow, bail, ensure};
use debian_control::fields::Priority;
use debian_control::lossy::Relation;
use debian_control::relations::VersionConstraint;
use debversion::Version;

use super::packages::Package;

/// One suite's index for one architecture (its own packages and `all`).
pub struct Index {
    suite: String,
    entries: Vec<Package>,
    by_name: HashMap<String, Vec<usize>>,
    /// Virtual package name → the entries providing it.
    providers: HashMap<String, Vec<usize>>,
}

/// A package chosen for the update and the suite it comes from.
#[derive(Debug, Clone)]
pub struct Planned {
    pub entry: Package,
    pub suite: String,
}

impl Index {
    pub fn new(suite: &str, entries: Vec<Package>) -> Index {
        let mut by_name: HashMap<String, Vec<usize>> = HashMap::new();
        let mut providers: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            by_name.entry(e.name.clone()).or_default().push(i);
            for r in relations(&e.provides) {
                providers.entry(r.name.clone()).or_default().push(i);
            }
        }
        Index {
            suite: suite.to_owned(),
            entries,
            by_name,
            providers,
        }
    }

    pub fn suite(&self) -> &str {
        &self.suite
    }

    fn versions(&self, name: &str) -> impl Iterator<Item = &Package> {
        self.by_name
            .get(name)
            .into_iter()
            .flatten()
            .map(|&i| &self.entries[i])
    }

    /// The newest version of the real package `name`.
    pub fn newest(&self, name: &str) -> Option<&Package> {
        self.versions(name).max_by(|a, b| a.version.cmp(&b.version))
    }

    /// The best package of this index satisfying `rel`: the newest real package of that name
    /// whose version fits, else the newest provider.
    fn candidate(&self, rel: &Relation) -> Option<&Package> {
        self.versions(&rel.name)
            .filter(|e| satisfies(e, rel))
            .max_by(|a, b| a.version.cmp(&b.version))
            .or_else(|| {
                self.providers
                    .get(&rel.name)?
                    .iter()
                    .map(|&i| &self.entries[i])
                    .filter(|e| satisfies(e, rel))
                    .max_by(|a, b| a.version.cmp(&b.version))
            })
    }
}

/// The single relations of an optional relationship field (alternatives flattened).
fn relations(field: &Option<debian_control::lossy::Relations>) -> impl Iterator<Item = &Relation> {
    field.iter().flat_map(|r| r.0.iter().flatten())
}

/// The `Pre-Depends` then `Depends` clauses (each a list of alternatives).
fn dependencies(p: &Package) -> impl Iterator<Item = &Vec<Relation>> {
    p.pre_depends
        .iter()
        .chain(p.depends.iter())
        .flat_map(|r| r.0.iter())
}

/// `Breaks` and `Conflicts`, alternatives flattened.
fn negative(p: &Package) -> impl Iterator<Item = &Relation> {
    relations(&p.breaks).chain(relations(&p.conflicts))
}

/// Whether `version` fits the version constraint of `rel` (none: any version).
fn allows(rel: &Relation, version: &Version) -> bool {
    rel.version.as_ref().is_none_or(|(op, want)| match op {
        VersionConstraint::LessThan => version < want,
        VersionConstraint::LessThanEqual => version <= want,
        VersionConstraint::Equal => version == want,
        VersionConstraint::GreaterThanEqual => version >= want,
        VersionConstraint::GreaterThan => version > want,
    })
}

/// Whether `p` satisfies `rel`, as itself or through a `Provides` (a versioned relation needs
/// a versioned `Provides`).
fn satisfies(p: &Package, rel: &Relation) -> bool {
    if p.name == rel.name && allows(rel, &p.version) {
        return true;
    }
    relations(&p.provides).any(|prov| {
        prov.name == rel.name
            && match (&rel.version, &prov.version) {
                (None, _) => true,
                (Some(_), Some((_, v))) => allows(rel, v),
                (Some(_), None) => false,
            }
    })
}

fn essential_or_required(p: &Package) -> bool {
    p.essential == Some(true) || p.priority == Some(Priority::Required)
}

/// Choose the packages of an update: `roots` at their newest version in `update` (each must be
/// newer than `base`'s), plus what they need:
///
/// 1. the guest is assumed to have `base`'s `Essential` and `Priority: required` packages and
///    `base`'s versions of `roots`, each with its dependency closure in `base`
///    ([`assumed_installed`]);
/// 2. every `Depends`/`Pre-Depends` clause of a chosen package that the chosen packages and the
///    assumed ones cannot satisfy adds a package: from `base` when it can satisfy it, else from
///    `update`;
/// 3. assumed packages whose dependencies or `Breaks`/`Conflicts` the new versions violate are
///    upgraded from `update` too, or it is an error.
///
/// The result lists the roots first, then the rest by name.
pub fn plan_update(base: &Index, update: &Index, roots: &[&str]) -> Result<Vec<Planned>> {
    let assumed = assumed_installed(base, roots);

    let mut chosen: BTreeMap<String, Planned> = BTreeMap::new();
    for root in roots {
        let new = update
            .newest(root)
            .ok_or_else(|| anyhow!("{} has no {root}", update.suite))?;
        if let Some(old) = base.newest(root) {
            ensure!(
                new.version > old.version,
                "{} has {root} {}, not newer than {}'s {}",
                update.suite,
                new.version,
                base.suite,
                old.version
            );
        }
        chosen.insert(
            root.to_string(),
            Planned {
                entry: new.clone(),
                suite: update.suite.clone(),
            },
        );
    }

    // Grow the set until every relationship holds.
    for _round in 0..100 {
        let additions = plan_round(base, update, &assumed, &chosen)?;
        if additions.is_empty() {
            let mut out: Vec<Planned> = roots.iter().filter_map(|r| chosen.remove(*r)).collect();
            out.extend(chosen.into_values());
            return Ok(out);
        }
        for p in additions {
            chosen.entry(p.entry.name.clone()).or_insert(p);
        }
    }
    bail!("the update's dependencies did not settle after 100 rounds")
}

/// What a guest of `base` with `roots` installed is assumed to have: `base`'s `Essential` and
/// `Priority: required` packages (what `debootstrap --variant=minbase` installs) and its
/// versions of `roots`, with their dependency closure in `base` (first satisfiable
/// alternative of each clause).
pub fn assumed_installed(base: &Index, roots: &[&str]) -> BTreeMap<String, Package> {
    let mut assumed: BTreeMap<String, Package> = BTreeMap::new();
    let mut seeds: BTreeSet<&str> = roots.iter().copied().collect();
    seeds.extend(
        base.entries
            .iter()
            .filter(|e| essential_or_required(e))
            .map(|e| e.name.as_str()),
    );
    let mut queue: Vec<Package> = seeds
        .iter()
        .filter_map(|n| base.newest(n))
        .cloned()
        .collect();
    while let Some(e) = queue.pop() {
        if assumed.contains_key(&e.name) {
            continue;
        }
        for clause in dependencies(&e) {
            let satisfied = clause.iter().any(|r| {
                assumed.values().any(|a| satisfies(a, r)) || queue.iter().any(|q| satisfies(q, r))
            });
            if satisfied {
                continue;
            }
            if let Some(c) = clause.iter().find_map(|r| base.candidate(r)) {
                queue.push(c.clone());
            }
        }
        assumed.insert(e.name.clone(), e);
    }
    assumed
}

/// The packages to add to `chosen` so that every relationship holds in the world "`assumed`,
/// with the `chosen` packages installed over it" (none when it already does).
fn plan_round(
    base: &Index,
    update: &Index,
    assumed: &BTreeMap<String, Package>,
    chosen: &BTreeMap<String, Planned>,
) -> Result<Vec<Planned>> {
    let world: Vec<&Package> = assumed
        .values()
        .filter(|a| !chosen.contains_key(&a.name))
        .chain(chosen.values().map(|p| &p.entry))
        .collect();
    let holds = |rel: &Relation| world.iter().any(|w| satisfies(w, rel));
    let mut additions: Vec<Planned> = Vec::new();

    // Dependencies of the chosen packages.
    for p in chosen.values() {
        for clause in dependencies(&p.entry) {
            if clause.iter().any(holds) {
                continue;
            }
            let pick = clause
                .iter()
                .find_map(|r| base.candidate(r).map(|c| (c, base)))
                .or_else(|| {
                    clause
                        .iter()
                        .find_map(|r| update.candidate(r).map(|c| (c, update)))
                });
            let Some((c, from)) = pick else {
                bail!(
                    "{} {} depends on {}, which neither {} nor {} can satisfy",
                    p.entry.name,
                    p.entry.version,
                    clause
                        .iter()
                        .map(Relation::to_string)
                        .collect::<Vec<_>>()
                        .join(" | "),
                    base.suite,
                    update.suite
                );
            };
            additions.push(Planned {
                entry: c.clone(),
                suite: from.suite.clone(),
            });
        }
    }

    // Assumed packages the new versions break: their dependencies no longer hold, or a
    // chosen package's Breaks/Conflicts name them (or theirs name a chosen one).
    for a in assumed.values().filter(|a| !chosen.contains_key(&a.name)) {
        let mut broken = dependencies(a)
            .find(|clause| !clause.iter().any(holds))
            .map(|clause| format!("it depends on {}", clause[0]));
        for p in chosen.values() {
            if broken.is_some() {
                break;
            }
            if negative(&p.entry).any(|r| satisfies(a, r))
                || negative(a).any(|r| satisfies(&p.entry, r))
            {
                broken = Some(format!(
                    "{} {} breaks or conflicts with it",
                    p.entry.name, p.entry.version
                ));
            }
        }
        let Some(why) = broken else { continue };
        match update.newest(&a.name) {
            Some(n) if n.version > a.version => {
                additions.push(Planned {
                    entry: n.clone(),
                    suite: update.suite.clone(),
                });
            }
            _ => bail!(
                "the update breaks {} {} ({why}) and {} has no newer version of it",
                a.name,
                a.version,
                update.suite
            ),
        }
    }

    Ok(additions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inputs::debian::packages::parse_index;

    /// An index from `(name, version, depends, extra fields)` rows.
    fn index(suite: &str, rows: &[(&str, &str, &str, &str)]) -> Index {
        let text: String = rows
            .iter()
            .map(|(name, version, depends, extra)| {
                let depends = if depends.is_empty() {
                    String::new()
                } else {
                    format!("Depends: {depends}\n")
                };
                format!(
                    "Package: {name}\nVersion: {version}\nArchitecture: arm64\n{depends}{extra}\n"
                )
            })
            .collect();
        Index::new(suite, parse_index(&text, "arm64").unwrap())
    }

    #[test]
    fn plan_adds_what_the_guest_lacks_from_the_base_suite_first() {
        let base = index(
            "base",
            &[
                ("libc6", "2.36", "", "Priority: required\n"),
                ("tool", "1.0", "libold (>= 1), libc6 (>= 2.30)", ""),
                ("tool-helper", "1.0", "tool (= 1.0)", ""),
                ("libold", "1", "", ""),
                ("libnew", "3", "libc6", ""),
                ("libbp", "1", "", ""),
            ],
        );
        let update = index(
            "update",
            &[
                (
                    "tool",
                    "2.0",
                    "libnew (>= 2), libbp (>= 2), libc6 (>= 2.34)",
                    "",
                ),
                ("tool-helper", "2.0", "tool (= 2.0)", ""),
                ("libbp", "2", "", ""),
                ("libbp", "2.1", "", ""),
            ],
        );
        let plan = plan_update(&base, &update, &["tool"]).unwrap();
        let got: Vec<(String, String, &str)> = plan
            .iter()
            .map(|p| {
                (
                    p.entry.name.clone(),
                    p.entry.version.to_string(),
                    p.suite.as_str(),
                )
            })
            .collect();
        let want = [
            ("tool", "2.0", "update"),
            ("libbp", "2.1", "update"),
            ("libnew", "3", "base"),
        ]
        .map(|(n, v, s)| (n.to_owned(), v.to_owned(), s));
        assert_eq!(got, want);
        // A package the guest is assumed to have that needs the old version exactly.
        let plan = plan_update(&base, &update, &["tool", "tool-helper"]).unwrap();
        assert_eq!(plan[1].entry.name, "tool-helper");

        // Nothing newer, or unsatisfiable: errors that say why.
        let err = plan_update(&base, &base, &["tool"]).unwrap_err();
        assert!(format!("{err:#}").contains("not newer"), "{err:#}");
        let broken = index("update", &[("tool", "3", "libmissing", "")]);
        let err = plan_update(&base, &broken, &["tool"]).unwrap_err();
        assert!(format!("{err:#}").contains("libmissing"), "{err:#}");
    }

    #[test]
    fn provides_and_breaks_are_honoured() {
        let base = index(
            "base",
            &[
                ("init", "1", "", "Essential: yes\n"),
                ("mta", "1", "", "Provides: mail-transport-agent (= 1)\n"),
                ("plugin", "1", "app (<< 2)", "Priority: required\n"),
                ("app", "1", "", ""),
            ],
        );
        let update = index(
            "update",
            &[
                ("app", "2", "mail-transport-agent", "Breaks: old-thing\n"),
                ("plugin", "2", "app (>= 2)", ""),
            ],
        );
        let assumed = assumed_installed(&base, &["app"]);
        assert!(assumed.contains_key("init") && assumed.contains_key("plugin"));
        // app 2 needs an MTA (base's provides it) and breaks plugin 1 (its dependency on
        // app << 2), so plugin 2 comes along.
        let plan = plan_update(&base, &update, &["app"]).unwrap();
        let names: Vec<&str> = plan.iter().map(|p| p.entry.name.as_str()).collect();
        assert_eq!(names, ["app", "mta", "plugin"]);
        assert_eq!(plan[1].suite, "base");
        assert_eq!(plan[2].entry.version.to_string(), "2");
    }
}
