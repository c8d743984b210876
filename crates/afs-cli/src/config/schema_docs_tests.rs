//! The schema against its documentation: `docs/CONFIGURATION.md` lists exactly the keys the
//! schema has, with their defaults, and `afs.example.toml` parses and names every key. The
//! keys come from the schema itself (the serde types every layer is read into), so adding a
//! key without documenting it fails here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::sections::FileConfig;
use super::{env_key, is_config_var, parse, to_toml, Config};

const DOC: &str = include_str!("../../../../docs/CONFIGURATION.md");
const EXAMPLE: &str = include_str!("../../../../afs.example.toml");

/// The section names the schema still reads but never writes: `[retrain]`, the old name of
/// `[trainer]`.
const OLD_NAMES: &[&str] = &["retrain"];

/// The keys the table at `path` (`""` for the top level, `trigger.page_hinkley`, ...) of the
/// schema accepts, as serde lists them when refusing an unknown one.
fn table_keys(path: &str) -> Vec<String> {
    let mut value = toml::Value::Table(toml::Table::from_iter([(
        "zz_not_a_key".to_string(),
        toml::Value::Integer(0),
    )]));
    for part in path.split('.').filter(|p| !p.is_empty()).rev() {
        value = toml::Value::Table(toml::Table::from_iter([(part.to_string(), value)]));
    }
    let err = value
        .try_into::<FileConfig>()
        .expect_err("an unknown key is refused")
        .message()
        .to_string();
    let expected = err
        .split_once("expected")
        .unwrap_or_else(|| panic!("{path}: {err}"))
        .1;
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .filter(|k| !(path.is_empty() && OLD_NAMES.contains(&k.as_str())))
        .collect()
}

/// Every key of the schema, dotted, with its default as `afs config show` writes it (`None`
/// for a key without a default).
fn schema() -> BTreeMap<String, Option<toml::Value>> {
    let shown: toml::Table = to_toml(&Config::default()).unwrap().parse().unwrap();
    let mut out = BTreeMap::new();
    fn walk(
        path: &str,
        defaults: Option<&toml::Table>,
        out: &mut BTreeMap<String, Option<toml::Value>>,
    ) {
        for key in table_keys(path) {
            let dotted = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            match defaults.and_then(|d| d.get(&key)) {
                Some(toml::Value::Table(table)) => walk(&dotted, Some(table), out),
                None if path.is_empty() => walk(&dotted, None, out),
                value => {
                    out.insert(dotted, value.cloned());
                }
            }
        }
    }
    walk("", Some(&shown), &mut out);
    out
}

/// A default as the docs write it: `168.0`, `"1h"`, `[]`, `false`.
fn written(value: &toml::Value) -> String {
    match value {
        toml::Value::Array(items) => {
            let items: Vec<String> = items.iter().map(written).collect();
            format!("[{}]", items.join(", "))
        }
        other => other.to_string(),
    }
}

/// The rows of the docs' per-section tables: dotted key → its `default` cell.
fn documented_defaults() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut section: Option<String> = None;
    let mut default_column: Option<usize> = None;
    for line in DOC.lines() {
        if let Some(heading) = line
            .strip_prefix("## `[")
            .or_else(|| line.strip_prefix("### `["))
        {
            section = heading.split_once("]`").map(|(s, _)| s.to_string());
            default_column = None;
            continue;
        }
        if line.starts_with('#') {
            section = None;
            continue;
        }
        let Some(section) = &section else { continue };
        if !line.starts_with('|') {
            continue;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.get(1) == Some(&"key") {
            default_column = cells.iter().position(|c| *c == "default");
            continue;
        }
        let (Some(column), Some(name)) = (
            default_column,
            cells
                .get(1)
                .and_then(|c| c.strip_prefix('`'))
                .and_then(|c| c.strip_suffix('`')),
        ) else {
            continue;
        };
        let cell = cells.get(column).copied().unwrap_or_default();
        out.insert(format!("{section}.{name}"), cell.to_string());
    }
    out
}

#[test]
fn the_schema_is_the_whole_file() {
    let keys = schema();
    assert!(keys.len() > 90, "{keys:?}");
    for key in ["store.busy_timeout_ms", "trigger.page_hinkley.alpha"] {
        assert!(keys.contains_key(key), "{key} missing from {keys:?}");
    }
    assert!(!keys.keys().any(|k| k.starts_with("retrain.")));
}

#[test]
fn the_reference_lists_exactly_the_keys_of_the_schema_with_their_variables() {
    let keys = schema();
    let mut listed = BTreeSet::new();
    let in_table = DOC
        .split_once("## Every key and its environment variable")
        .expect("the section of every key")
        .1;
    for line in in_table.lines().take_while(|l| !l.starts_with("## ")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (Some(key), Some(var)) = (cells.get(1), cells.get(2)) else {
            continue;
        };
        let (Some(key), Some(var)) = (
            key.strip_prefix('`').and_then(|k| k.strip_suffix('`')),
            var.strip_prefix('`').and_then(|v| v.strip_suffix('`')),
        ) else {
            continue;
        };
        assert!(is_config_var(var), "{var}");
        assert_eq!(env_key(var), key, "the variable of {key}");
        assert!(listed.insert(key.to_string()), "{key} is listed twice");
    }
    let schema_keys: BTreeSet<String> = keys.keys().cloned().collect();
    assert_eq!(
        listed.difference(&schema_keys).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "docs/CONFIGURATION.md lists keys the schema lacks"
    );
    assert_eq!(
        schema_keys.difference(&listed).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "docs/CONFIGURATION.md does not list these keys of the schema"
    );
}

#[test]
fn the_reference_gives_each_key_its_default() {
    let documented = documented_defaults();
    let mut wrong = Vec::new();
    for (key, default) in schema() {
        let Some(cell) = documented.get(&key) else {
            wrong.push(format!("{key}: no row in its section's table"));
            continue;
        };
        let ok = match &default {
            Some(value) => cell.starts_with(&format!("`{}`", written(value))),
            None => cell.starts_with("unset"),
        };
        if !ok {
            let expected = default.as_ref().map_or("unset".to_string(), written);
            wrong.push(format!("{key}: the docs say {cell}, the schema {expected}"));
        }
    }
    for key in documented.keys() {
        if !schema().contains_key(key) {
            wrong.push(format!("{key}: documented, not in the schema"));
        }
    }
    assert!(
        wrong.is_empty(),
        "docs/CONFIGURATION.md:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_example_file_parses_and_names_every_key() {
    parse(EXAMPLE, Path::new("afs.example.toml")).unwrap_or_else(|e| panic!("{}", e.0));
    // The keys it sets, and those it shows commented out (`# key = value`, no default).
    let mut named = BTreeSet::new();
    let mut section = String::new();
    for line in EXAMPLE.lines() {
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = header.to_string();
            continue;
        }
        let line = line.strip_prefix("# ").unwrap_or(line);
        let Some((key, _)) = line.split_once(" = ") else {
            continue;
        };
        if !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
            named.insert(format!("{section}.{key}"));
        }
    }
    let schema_keys: BTreeSet<String> = schema().into_keys().collect();
    assert_eq!(
        schema_keys.difference(&named).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "afs.example.toml does not name these keys"
    );
    assert_eq!(
        named.difference(&schema_keys).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "afs.example.toml names keys the schema lacks"
    );
}
