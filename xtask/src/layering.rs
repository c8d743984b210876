//! The layering rule: afs crates depend only downward, never upward or sideways.
//!
//! ```text
//! afs-cli ──► afs-demo ──► afs-loop ──► afs-trigger ──► afs-datagen ──► afs-store
//!    │                        │                                            ▲
//!    │                        └────────► afs-abtest ───────────────────────┤
//!    └──────► afs-sim ─────────────────► afs-abtest                        │
//!                └───────► afs-store-mem, afs-store-sqlite (backends) ─────┘
//! ```
//!
//! Every edge between afs crates must appear in [`LAYERS`]. Normal, build and dev
//! dependencies are held to the same rule, so that a downstream user can depend on one crate
//! (say only `afs-store` + `afs-abtest`) without pulling the rest, and so that tests of a low
//! crate cannot quietly reach up into the layers above it. The harness crates in
//! [`HARNESSES`] sit above every layer and may depend on anything.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Each layered crate with the complete list of afs crates it may depend on.
///
/// The lists are transitively closed: if `a` may depend on `b` and `b` on `c`, then `a` may
/// also depend on `c` directly. A crate added under `crates/` must be added here too.
pub const LAYERS: &[(&str, &[&str])] = &[
    ("afs-store", &[]),
    ("afs-store-sqlite", &["afs-store"]),
    ("afs-store-mem", &["afs-store"]),
    ("afs-store-postgres", &["afs-store"]),
    ("afs-datagen", &["afs-store"]),
    ("afs-trigger", &["afs-datagen", "afs-store"]),
    ("afs-abtest", &["afs-store"]),
    (
        "afs-loop",
        &["afs-trigger", "afs-abtest", "afs-datagen", "afs-store"],
    ),
    // The experiment simulator: it runs AbTest on the in-memory or the SQLite store.
    (
        "afs-sim",
        &[
            "afs-abtest",
            "afs-store",
            "afs-store-mem",
            "afs-store-sqlite",
        ],
    ),
    // The end-to-end demo: it runs the loop on whichever store its caller opens.
    (
        "afs-demo",
        &[
            "afs-loop",
            "afs-trigger",
            "afs-abtest",
            "afs-datagen",
            "afs-store",
        ],
    ),
    (
        "afs-cli",
        &[
            "afs-demo",
            "afs-sim",
            "afs-loop",
            "afs-trigger",
            "afs-abtest",
            "afs-datagen",
            "afs-store",
            "afs-store-sqlite",
            "afs-store-mem",
            "afs-store-postgres",
        ],
    ),
];

/// The store's backends. Any crate above the core may take them as dev-dependencies (its
/// tests run on a real backend); as a normal dependency only where [`LAYERS`] allows it.
pub const BACKENDS: &[&str] = &["afs-store-sqlite", "afs-store-mem", "afs-store-postgres"];

/// Crates that sit above every layer (automation, end-to-end tests, benchmarks) and may
/// depend on any afs crate. No layered crate may depend on them.
pub const HARNESSES: &[&str] = &["xtask", "afs-tests", "afs-bench"];

/// Which table of a manifest a dependency was declared in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum DepKind {
    /// `[dependencies]` (or a `[target.*.dependencies]` table).
    Normal,
    /// `[build-dependencies]` (or a target-specific one).
    Build,
    /// `[dev-dependencies]` (or a target-specific one).
    Dev,
}

impl DepKind {
    fn table_name(self) -> &'static str {
        match self {
            DepKind::Normal => "[dependencies]",
            DepKind::Build => "[build-dependencies]",
            DepKind::Dev => "[dev-dependencies]",
        }
    }
}

/// One dependency of a manifest, by package name (renames already resolved).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dependency {
    /// The package depended on, e.g. `afs-store`, even if the manifest renames it.
    pub package: String,
    /// The table it was declared in.
    pub kind: DepKind,
}

/// The part of a crate's `Cargo.toml` the layering rule looks at.
#[derive(Clone, Debug)]
pub struct Manifest {
    /// Where the manifest was read from, used to name the file at fault.
    pub path: PathBuf,
    /// `[package].name`.
    pub name: String,
    /// Every dependency, of every kind, in declaration order per table.
    pub dependencies: Vec<Dependency>,
}

impl Manifest {
    /// Parses a crate manifest.
    ///
    /// `workspace_renames` maps a `[workspace.dependencies]` key to its package name when
    /// the workspace renames it with `package = "..."`, so that `foo.workspace = true` is
    /// resolved to the real package. Returns `None` for a virtual manifest (no `[package]`).
    pub fn parse(
        path: &Path,
        text: &str,
        workspace_renames: &BTreeMap<String, String>,
    ) -> Result<Option<Manifest>> {
        let doc: toml::Table = text
            .parse()
            .with_context(|| format!("{}: invalid toml", path.display()))?;
        let Some(package) = doc.get("package") else {
            return Ok(None);
        };
        let Some(name) = package.get("name").and_then(toml::Value::as_str) else {
            bail!("{}: [package] has no name", path.display());
        };

        let mut dependencies = Vec::new();
        collect_tables(&doc, workspace_renames, &mut dependencies);
        if let Some(targets) = doc.get("target").and_then(toml::Value::as_table) {
            for target in targets.values() {
                if let Some(target) = target.as_table() {
                    collect_tables(target, workspace_renames, &mut dependencies);
                }
            }
        }
        Ok(Some(Manifest {
            path: path.to_path_buf(),
            name: name.to_string(),
            dependencies,
        }))
    }
}

/// Collects the dependencies declared in the dependency tables of `table` (the manifest root
/// or one `[target.*]` table).
fn collect_tables(
    table: &toml::Table,
    workspace_renames: &BTreeMap<String, String>,
    out: &mut Vec<Dependency>,
) {
    // Cargo still accepts the old underscore spellings, so a violation must not hide there.
    let tables = [
        ("dependencies", DepKind::Normal),
        ("build-dependencies", DepKind::Build),
        ("build_dependencies", DepKind::Build),
        ("dev-dependencies", DepKind::Dev),
        ("dev_dependencies", DepKind::Dev),
    ];
    for (key, kind) in tables {
        let Some(deps) = table.get(key).and_then(toml::Value::as_table) else {
            continue;
        };
        for (dep_key, spec) in deps {
            out.push(Dependency {
                package: package_name(dep_key, spec, workspace_renames),
                kind,
            });
        }
    }
}

/// The package a dependency entry refers to: its `package` key if renamed, the workspace's
/// rename if inherited, else the key itself.
fn package_name(
    key: &str,
    spec: &toml::Value,
    workspace_renames: &BTreeMap<String, String>,
) -> String {
    if let Some(package) = spec.get("package").and_then(toml::Value::as_str) {
        return package.to_string();
    }
    let inherited = spec
        .get("workspace")
        .and_then(toml::Value::as_bool)
        .unwrap_or(false);
    if inherited {
        if let Some(package) = workspace_renames.get(key) {
            return package.clone();
        }
    }
    key.to_string()
}

/// Reads `[workspace.dependencies]` of the root manifest and returns the renamed entries
/// (key → package name).
pub fn workspace_renames(root_manifest_text: &str) -> Result<BTreeMap<String, String>> {
    let doc: toml::Table = root_manifest_text
        .parse()
        .context("root Cargo.toml: invalid toml")?;
    let mut renames = BTreeMap::new();
    let deps = doc
        .get("workspace")
        .and_then(|w| w.get("dependencies"))
        .and_then(toml::Value::as_table);
    for (key, spec) in deps.into_iter().flatten() {
        if let Some(package) = spec.get("package").and_then(toml::Value::as_str) {
            renames.insert(key.clone(), package.to_string());
        }
    }
    Ok(renames)
}

/// One dependency edge that breaks the layering rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The manifest at fault.
    pub path: PathBuf,
    /// The crate that declares the dependency.
    pub krate: String,
    /// The afs crate it must not depend on.
    pub dependency: String,
    /// The table the dependency is declared in.
    pub kind: DepKind,
    /// Why the edge is forbidden, as a lowercase fragment.
    pub reason: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} must not depend on {} (in {}): {}",
            self.path.display(),
            self.krate,
            self.dependency,
            self.kind.table_name(),
            self.reason
        )
    }
}

fn allowed(krate: &str) -> Option<&'static [&'static str]> {
    LAYERS
        .iter()
        .find(|(name, _)| *name == krate)
        .map(|(_, deps)| *deps)
}

/// Whether `package` is one of ours, i.e. subject to the layering rule as a dependency.
fn is_internal(package: &str) -> bool {
    package.starts_with("afs-") || HARNESSES.contains(&package)
}

/// Checks every manifest against [`LAYERS`] and returns the forbidden edges, in order.
///
/// Dependencies on third-party crates are ignored, and so are a crate's dev-dependency on
/// itself (to enable its own features in its tests) and dev-dependencies on [`BACKENDS`]
/// above the core; manifests of [`HARNESSES`] are exempt.
pub fn check(manifests: &[Manifest]) -> Vec<Violation> {
    let mut violations = Vec::new();
    for manifest in manifests {
        let krate = manifest.name.as_str();
        if HARNESSES.contains(&krate) {
            continue;
        }
        for dep in &manifest.dependencies {
            let target = dep.package.as_str();
            if !is_internal(target) {
                continue;
            }
            // A crate's tests may turn on its own features (afs-store's `testing` suite):
            // that is no edge between crates.
            if target == krate && dep.kind == DepKind::Dev {
                continue;
            }
            if dep.kind == DepKind::Dev && BACKENDS.contains(&target) && krate != "afs-store" {
                continue;
            }
            let Some(reason) = forbidden_reason(krate, target) else {
                continue;
            };
            violations.push(Violation {
                path: manifest.path.clone(),
                krate: krate.to_string(),
                dependency: target.to_string(),
                kind: dep.kind,
                reason,
            });
        }
    }
    violations
}

/// Why the edge `krate → target` is forbidden, or `None` if it is allowed.
fn forbidden_reason(krate: &str, target: &str) -> Option<String> {
    let Some(allowed_deps) = allowed(krate) else {
        return Some(format!(
            "{krate} is not in the layer table; add it to LAYERS in xtask/src/layering.rs \
             with the crates it may depend on"
        ));
    };
    if allowed_deps.contains(&target) {
        return None;
    }
    let may = if allowed_deps.is_empty() {
        format!("{krate} is the bottom layer and may depend on no other afs crate")
    } else {
        format!("{krate} may depend only on {}", allowed_deps.join(", "))
    };
    let why = if HARNESSES.contains(&target) {
        format!("{target} is a harness crate above every layer")
    } else {
        match allowed(target) {
            None => format!("{target} is not in the layer table"),
            Some(target_deps) if target_deps.contains(&krate) => {
                format!("upward edge, {target} sits above {krate}")
            }
            Some(_) => format!("sideways edge, {krate} and {target} are on separate branches"),
        }
    };
    Some(format!("{why}; {may}"))
}

/// Reads the root manifest and every `crates/*/Cargo.toml` under `root`, sorted by path.
///
/// A directory under `crates/` without a `Cargo.toml` is skipped (cargo itself reports it).
pub fn workspace_manifests(root: &Path) -> Result<Vec<Manifest>> {
    let root_manifest = root.join("Cargo.toml");
    let root_text = fs::read_to_string(&root_manifest)
        .with_context(|| format!("cannot read {}", root_manifest.display()))?;
    let renames = workspace_renames(&root_text)?;

    let crates_dir = root.join("crates");
    let mut paths = Vec::new();
    let entries = fs::read_dir(&crates_dir)
        .with_context(|| format!("cannot list {}", crates_dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", crates_dir.display()))?;
        let path = entry.path().join("Cargo.toml");
        if path.is_file() {
            paths.push(path);
        }
    }
    paths.sort();

    let mut manifests = Vec::new();
    for path in paths {
        let text =
            fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        // Name the file relative to the root so that messages are short and stable.
        let shown = path.strip_prefix(root).unwrap_or(&path);
        if let Some(manifest) = Manifest::parse(shown, &text, &renames)? {
            manifests.push(manifest);
        }
    }
    Ok(manifests)
}

/// Checks the workspace at `root`: [`workspace_manifests`] then [`check`].
pub fn check_workspace(root: &Path) -> Result<Vec<Violation>> {
    Ok(check(&workspace_manifests(root)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `(crate name, dependency section)` pairs into manifests, runs the checker and
    /// compares the violations, written as `"crate -> dep (table)"`.
    fn check_cases(manifests: &[(&str, &str)], expected: &[&str]) {
        let renames = BTreeMap::from([("store".to_string(), "afs-store".to_string())]);
        let parsed: Vec<Manifest> = manifests
            .iter()
            .map(|(name, deps)| {
                let text = format!("[package]\nname = \"{name}\"\n\n{deps}\n");
                let path = PathBuf::from(format!("crates/{name}/Cargo.toml"));
                Manifest::parse(&path, &text, &renames)
                    .unwrap()
                    .expect("a manifest with [package]")
            })
            .collect();
        let actual: Vec<String> = check(&parsed)
            .iter()
            .map(|v| format!("{} -> {} {}", v.krate, v.dependency, v.kind.table_name()))
            .collect();
        assert_eq!(actual, expected);
    }

    #[test]
    fn the_designed_graph_passes() {
        check_cases(
            &[
                ("afs-store", "[dependencies]\nrusqlite = \"0.40\""),
                ("afs-datagen", "[dependencies]\nafs-store.workspace = true"),
                (
                    "afs-trigger",
                    "[dependencies]\nafs-store.workspace = true\nafs-datagen.workspace = true",
                ),
                (
                    "afs-abtest",
                    "[dependencies]\nafs-store = { path = \"../afs-store\" }",
                ),
                (
                    "afs-loop",
                    "[dependencies]\nafs-trigger.workspace = true\nafs-abtest.workspace = true\n\
                     afs-datagen.workspace = true\nafs-store.workspace = true",
                ),
                (
                    "afs-cli",
                    "[dependencies]\nafs-loop.workspace = true\nafs-store.workspace = true\n\
                     [dev-dependencies]\nafs-abtest.workspace = true",
                ),
            ],
            &[],
        );
    }

    #[test]
    fn upward_edge_is_rejected() {
        check_cases(
            &[("afs-store", "[dependencies]\nafs-datagen.workspace = true")],
            &["afs-store -> afs-datagen [dependencies]"],
        );
        check_cases(
            &[(
                "afs-loop",
                "[dependencies]\nafs-cli = { path = \"../afs-cli\" }",
            )],
            &["afs-loop -> afs-cli [dependencies]"],
        );
    }

    #[test]
    fn sideways_edge_is_rejected() {
        check_cases(
            &[("afs-abtest", "[dependencies]\nafs-datagen.workspace = true")],
            &["afs-abtest -> afs-datagen [dependencies]"],
        );
        check_cases(
            &[("afs-trigger", "[dependencies]\nafs-abtest.workspace = true")],
            &["afs-trigger -> afs-abtest [dependencies]"],
        );
        check_cases(
            &[("afs-datagen", "[dependencies]\nafs-abtest.workspace = true")],
            &["afs-datagen -> afs-abtest [dependencies]"],
        );
        check_cases(
            &[("afs-abtest", "[dependencies]\nafs-trigger.workspace = true")],
            &["afs-abtest -> afs-trigger [dependencies]"],
        );
    }

    #[test]
    fn backends_are_dev_dependencies_anywhere_above_the_core_only() {
        check_cases(
            &[(
                "afs-trigger",
                "[dev-dependencies]\nafs-store-sqlite.workspace = true\n\
                 afs-store-mem.workspace = true",
            )],
            &[],
        );
        check_cases(
            &[(
                "afs-trigger",
                "[dependencies]\nafs-store-sqlite.workspace = true",
            )],
            &["afs-trigger -> afs-store-sqlite [dependencies]"],
        );
        check_cases(
            &[(
                "afs-store",
                "[dev-dependencies]\nafs-store-mem.workspace = true",
            )],
            &["afs-store -> afs-store-mem [dev-dependencies]"],
        );
    }

    #[test]
    fn a_crate_may_enable_its_own_features_in_its_tests_only() {
        check_cases(
            &[(
                "afs-store",
                "[dev-dependencies]\nafs-store = { path = \".\", features = [\"testing\"] }",
            )],
            &[],
        );
        check_cases(
            &[("afs-store", "[dependencies]\nafs-store.workspace = true")],
            &["afs-store -> afs-store [dependencies]"],
        );
    }

    #[test]
    fn dev_and_build_dependencies_follow_the_same_rule() {
        check_cases(
            &[(
                "afs-abtest",
                "[dev-dependencies]\nafs-datagen.workspace = true\n\
                 [build-dependencies]\nafs-loop.workspace = true",
            )],
            &[
                "afs-abtest -> afs-loop [build-dependencies]",
                "afs-abtest -> afs-datagen [dev-dependencies]",
            ],
        );
        check_cases(
            &[(
                "afs-store",
                "[target.'cfg(unix)'.dev-dependencies]\nafs-trigger.workspace = true",
            )],
            &["afs-store -> afs-trigger [dev-dependencies]"],
        );
    }

    #[test]
    fn renamed_dependencies_are_resolved() {
        check_cases(
            &[(
                "afs-abtest",
                "[dependencies]\ngen = { package = \"afs-datagen\", path = \"../afs-datagen\" }",
            )],
            &["afs-abtest -> afs-datagen [dependencies]"],
        );
        // `store` is renamed to afs-store in [workspace.dependencies] by `check_cases`.
        check_cases(
            &[("afs-datagen", "[dependencies]\nstore.workspace = true")],
            &[],
        );
        check_cases(
            &[(
                "afs-abtest",
                "[dependencies]\nstore.workspace = true\nafs-loop.workspace = true",
            )],
            &["afs-abtest -> afs-loop [dependencies]"],
        );
    }

    #[test]
    fn harnesses_may_depend_on_anything_but_nothing_on_them() {
        check_cases(
            &[
                (
                    "afs-tests",
                    "[dependencies]\nafs-cli.workspace = true\nafs-store.workspace = true",
                ),
                ("xtask", "[dependencies]\nafs-loop.workspace = true"),
            ],
            &[],
        );
        check_cases(
            &[("afs-cli", "[dev-dependencies]\nafs-tests.workspace = true")],
            &["afs-cli -> afs-tests [dev-dependencies]"],
        );
        check_cases(
            &[("afs-loop", "[dev-dependencies]\nxtask.workspace = true")],
            &["afs-loop -> xtask [dev-dependencies]"],
        );
    }

    #[test]
    fn unknown_afs_crates_are_rejected() {
        check_cases(
            &[("afs-server", "[dependencies]\nafs-store.workspace = true")],
            &["afs-server -> afs-store [dependencies]"],
        );
        check_cases(
            &[("afs-store", "[dependencies]\nafs-util.workspace = true")],
            &["afs-store -> afs-util [dependencies]"],
        );
        // A new crate with no internal edges harms nothing yet.
        check_cases(&[("afs-server", "[dependencies]\nserde = \"1\"")], &[]);
    }

    #[test]
    fn messages_name_the_file_the_edge_and_the_reason() {
        let manifest = Manifest {
            path: PathBuf::from("crates/afs-abtest/Cargo.toml"),
            name: "afs-abtest".to_string(),
            dependencies: vec![Dependency {
                package: "afs-datagen".to_string(),
                kind: DepKind::Dev,
            }],
        };
        let messages: Vec<String> = check(&[manifest]).iter().map(|v| v.to_string()).collect();
        assert_eq!(
            messages,
            [
                "crates/afs-abtest/Cargo.toml: afs-abtest must not depend on afs-datagen \
              (in [dev-dependencies]): sideways edge, afs-abtest and afs-datagen are on \
              separate branches; afs-abtest may depend only on afs-store"
            ]
        );

        let manifest = Manifest {
            path: PathBuf::from("crates/afs-store/Cargo.toml"),
            name: "afs-store".to_string(),
            dependencies: vec![Dependency {
                package: "afs-trigger".to_string(),
                kind: DepKind::Normal,
            }],
        };
        let messages: Vec<String> = check(&[manifest]).iter().map(|v| v.to_string()).collect();
        assert_eq!(
            messages,
            [
                "crates/afs-store/Cargo.toml: afs-store must not depend on afs-trigger \
              (in [dependencies]): upward edge, afs-trigger sits above afs-store; afs-store is \
              the bottom layer and may depend on no other afs crate"
            ]
        );
    }

    #[test]
    fn virtual_manifests_and_bad_toml() {
        let renames = BTreeMap::new();
        let path = Path::new("Cargo.toml");
        let parsed = Manifest::parse(path, "[workspace]\nmembers = []\n", &renames).unwrap();
        assert!(parsed.is_none());

        let err = Manifest::parse(path, "[package\n", &renames).unwrap_err();
        assert!(
            err.to_string().contains("Cargo.toml: invalid toml"),
            "{err}"
        );

        let err = Manifest::parse(path, "[package]\nversion = \"1\"\n", &renames).unwrap_err();
        assert_eq!(err.to_string(), "Cargo.toml: [package] has no name");
    }

    #[test]
    fn workspace_renames_are_read_from_the_root_manifest() {
        let renames = workspace_renames(
            "[workspace.dependencies]\nafs-store = { path = \"crates/afs-store\" }\n\
             store = { package = \"afs-store\", path = \"crates/afs-store\" }\nserde = \"1\"\n",
        )
        .unwrap();
        assert_eq!(
            renames,
            BTreeMap::from([("store".to_string(), "afs-store".to_string())])
        );
    }

    #[test]
    fn reads_the_workspace_from_disk() {
        let root = std::env::temp_dir().join(format!("xtask-layering-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let files = [
            (
                "Cargo.toml",
                "[workspace]\nmembers = [\"crates/*\"]\n[workspace.dependencies]\n\
                 gen = { package = \"afs-datagen\", path = \"crates/afs-datagen\" }\n",
            ),
            (
                "crates/afs-datagen/Cargo.toml",
                "[package]\nname = \"afs-datagen\"\n",
            ),
            (
                "crates/afs-abtest/Cargo.toml",
                "[package]\nname = \"afs-abtest\"\n[dependencies]\ngen.workspace = true\n",
            ),
            ("crates/not-a-crate/README.md", "no manifest here\n"),
        ];
        for (path, text) in files {
            let path = root.join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        }
        let manifests = workspace_manifests(&root);
        let violations = check_workspace(&root);
        fs::remove_dir_all(&root).unwrap();

        let names: Vec<String> = manifests.unwrap().into_iter().map(|m| m.name).collect();
        assert_eq!(names, ["afs-abtest", "afs-datagen"]);
        let violations = violations.unwrap();
        assert_eq!(violations.len(), 1);
        assert_eq!(
            violations[0].path,
            Path::new("crates/afs-abtest/Cargo.toml")
        );
        assert_eq!(violations[0].dependency, "afs-datagen");
    }

    #[test]
    fn the_layer_table_is_transitively_closed() {
        // If a may use b and b may use c, a may use c: the reason text ("upward edge")
        // relies on it.
        for (krate, deps) in LAYERS {
            for dep in *deps {
                let dep_deps = allowed(dep).unwrap_or_else(|| panic!("{dep} is not in LAYERS"));
                for transitive in dep_deps {
                    assert!(
                        deps.contains(transitive),
                        "{krate} may use {dep} which may use {transitive}, so {krate} must \
                         list {transitive} too"
                    );
                }
            }
        }
    }
}
