//! Every route of every service, read from the routers' own source, so a test that walks
//! them covers a route added without being edited.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A route as a router declares it: its method and path pattern.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    pub method: String,
    pub path: String,
}

/// Every route of every service, read from the `.route(..)` calls of the services' source:
/// the path (a literal or a `const`), the methods chained in the call, and the prefix of an
/// enclosing `fn` that a router `.nest`s.
pub fn routes() -> Vec<Route> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["src", "producers", "consumers"] {
        collect_rs(&root.join(dir), &mut files);
    }
    // What every process serves beside its services' routes.
    files.push(root.join("infra/platform/src/service.rs"));
    files.push(root.join("infra/platform/src/export.rs"));
    let mut routes = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let text = text.split("#[cfg(test)]").next().unwrap_or_default();
        routes.extend(routes_in(text));
    }
    routes.into_iter().collect()
}

fn collect_rs(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_rs(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The routes one source file declares.
pub fn routes_in(text: &str) -> Vec<Route> {
    let consts: BTreeMap<String, String> = text
        .match_indices("const ")
        .filter_map(|(at, _)| {
            let rest = &text[at + 6..];
            let (name, rest) = rest.split_once(':')?;
            let rest = rest.trim_start().strip_prefix("&str = \"")?;
            Some((name.trim().to_string(), rest.split('"').next()?.to_string()))
        })
        .collect();
    // `.nest("/api/v1", v1())`: the routes of fn v1 are under /api/v1.
    let nests: BTreeMap<String, String> = text
        .match_indices(".nest(\"")
        .filter_map(|(at, _)| {
            let rest = &text[at + 7..];
            let (prefix, rest) = rest.split_once('"')?;
            let function = rest
                .trim_start_matches([',', ' ', '\n'])
                .split('(')
                .next()?;
            Some((function.trim().to_string(), prefix.to_string()))
        })
        .collect();
    let mut found = Vec::new();
    for (at, _) in text.match_indices(".route(") {
        let call = balanced(&text[at + 6..]);
        let inner = call.trim_start_matches('(').trim_start();
        let path = if let Some(literal) = inner.strip_prefix('"') {
            literal.split('"').next().unwrap_or_default().to_string()
        } else {
            let name: String = inner
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            consts.get(&name).cloned().unwrap_or_default()
        };
        if !path.starts_with('/') {
            continue;
        }
        let enclosing = text[..at]
            .rmatch_indices("fn ")
            .next()
            .map(|(f, _)| {
                text[f + 3..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect::<String>()
            })
            .unwrap_or_default();
        let prefix = nests.get(&enclosing).cloned().unwrap_or_default();
        for method in ["get", "post", "put", "patch", "delete"] {
            let called = call.match_indices(&format!("{method}(")).any(|(m, _)| {
                call[..m]
                    .chars()
                    .last()
                    .is_none_or(|c| !(c.is_alphanumeric() || c == '_'))
            });
            if called {
                found.push(Route {
                    method: method.to_ascii_uppercase(),
                    path: format!("{prefix}{path}"),
                });
            }
        }
    }
    found
}

/// The text of a parenthesised call, from its `(` to the matching `)`.
fn balanced(text: &str) -> &str {
    let mut depth = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return &text[..=i];
                }
            }
            _ => {}
        }
    }
    text
}
