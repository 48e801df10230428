//! The boundaries between services, read from the source so a change that crosses one fails
//! the build:
//! - no crate under consumers/ depends on one under producers/, nor on another consumer
//!   (consumers talk through events);
//! - no service's SQL names a table another service's migrations create (each owns its
//!   data, and purges it itself).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every service crate: (folder group, crate folder).
fn crates() -> Vec<(&'static str, PathBuf)> {
    let mut found = Vec::new();
    for group in ["producers", "consumers"] {
        for entry in std::fs::read_dir(root().join(group)).unwrap().flatten() {
            if entry.path().join("Cargo.toml").exists() {
                found.push((group, entry.path()));
            }
        }
    }
    found.sort();
    found
}

fn package_name(dir: &Path) -> String {
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
    manifest
        .lines()
        .find_map(|line| line.strip_prefix("name = \""))
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_string()
}

/// The crates a manifest depends on, in `[dependencies]` and `[dev-dependencies]`.
fn dependencies(dir: &Path) -> Vec<String> {
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
    let mut section = "";
    let mut found = Vec::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
        } else if section.ends_with("dependencies]")
            && let Some((name, _)) = line.split_once(['=', '.'])
            && !name.trim().is_empty()
            && !line.starts_with('#')
        {
            found.push(name.trim().to_string());
        }
    }
    found
}

#[test]
fn no_consumer_depends_on_a_producer_or_on_another_consumer() {
    let names: Vec<(&str, String)> = crates()
        .into_iter()
        .map(|(group, dir)| (group, package_name(&dir)))
        .collect();
    let mut crossings = Vec::new();
    for (group, dir) in crates() {
        if group != "consumers" {
            continue;
        }
        let me = package_name(&dir);
        for dependency in dependencies(&dir) {
            if names
                .iter()
                .any(|(_, name)| *name == dependency && *name != me)
            {
                crossings.push(format!("{me} depends on {dependency}"));
            }
        }
    }
    assert!(crossings.is_empty(), "{crossings:#?}");
    // The check sees dependencies: every crate has some.
    assert!(dependencies(&root().join("consumers/reports")).contains(&"platform".to_string()));
}

/// One type for an instant across the workspace, `jiff::Timestamp` (see
/// `infra/platform/src/clock.rs`): no crate of ours names another date and time library.
#[test]
fn one_library_for_time() {
    let mut dirs: Vec<PathBuf> = crates().into_iter().map(|(_, dir)| dir).collect();
    dirs.extend(["", "infra/platform", "schemas"].map(|d| root().join(d)));
    let mut others = Vec::new();
    for dir in dirs {
        let dependencies = dependencies(&dir);
        assert!(!dependencies.is_empty(), "{} was not read", dir.display());
        for other in ["time", "chrono"] {
            if dependencies.iter().any(|d| d == other) {
                others.push(format!("{} depends on {other}", dir.display()));
            }
        }
    }
    assert!(others.is_empty(), "{others:#?}");
}

/// The tables each service's migrations create, by the service's package name.
fn owners() -> BTreeMap<String, String> {
    let mut owners = BTreeMap::new();
    for (_, dir) in crates() {
        let me = package_name(&dir);
        let mut files = Vec::new();
        collect(&dir.join("migrations"), "sql", &mut files);
        for file in files {
            let text = std::fs::read_to_string(file).unwrap().to_lowercase();
            for (at, _) in text.match_indices("create table") {
                let rest = text[at + 12..].trim_start();
                let rest = rest.strip_prefix("if not exists").unwrap_or(rest);
                let table: String = rest
                    .trim_start()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                owners.insert(table, me.clone());
            }
        }
    }
    owners
}

fn collect(dir: &Path, extension: &str, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, extension, out);
        } else if path.extension().is_some_and(|e| e == extension) {
            out.push(path);
        }
    }
}

/// The tables a service's source names after FROM, INTO, UPDATE, JOIN or TABLE (its tests
/// left out).
fn tables_named(dir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    collect(&dir.join("src"), "rs", &mut files);
    let mut named = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).unwrap();
        let text = text.split("#[cfg(test)]").next().unwrap_or_default();
        let words: Vec<&str> = text
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .filter(|w| !w.is_empty())
            .collect();
        for pair in words.windows(2) {
            if ["FROM", "INTO", "UPDATE", "JOIN", "TABLE"].contains(&pair[0]) {
                named.push(pair[1].to_lowercase());
            }
        }
    }
    named
}

#[test]
fn no_service_names_a_table_of_another() {
    let owners = owners();
    assert!(
        owners.len() > 20,
        "the migrations were not read: {owners:?}"
    );
    let mut crossings = Vec::new();
    for (_, dir) in crates() {
        let me = package_name(&dir);
        let mut named = tables_named(&dir);
        named.sort();
        named.dedup();
        for table in named {
            if let Some(owner) = owners.get(&table)
                && *owner != me
            {
                crossings.push((me.clone(), table));
            }
        }
    }
    assert_eq!(
        crossings,
        Vec::<(String, String)>::new(),
        "SQL of one service naming another's table: (service, table)"
    );
}
