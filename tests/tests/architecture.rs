//! ARCHITECTURE.md's layout invariants, checked by reading the code, so they stay true when
//! code moves:
//! - no two top-level modules of one crate import each other, directly or through others
//!   (`crate::x` paths, including `use crate::{x, y}` lists);
//! - the product library `umbra-orchestrator` depends (through workspace crates, transitively)
//!   on neither the region agent nor the demo, nor on bollard (Docker) or plotters (plots are
//!   the CLI's);
//! - `umbra-forecast` depends on neither Raft nor QUIC nor any other Umbra crate;
//! - `umbra-dns` knows nothing of the orchestrator.
//!
//! Module imports are read as text (no macro expansion), which is what a reader sees too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace root")
        .to_path_buf()
}

/// Every `.rs` file below `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out
}

/// The text of a Rust file without `//` comments (doc comments name modules freely).
fn code_of(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Identifiers at the start of each path in a `use crate::{...}` list.
fn list_heads(list: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0usize;
    let mut current = String::new();
    let mut at_head = true;
    for c in list.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                if !current.is_empty() {
                    heads.push(std::mem::take(&mut current));
                }
                at_head = true;
                continue;
            }
            _ => {}
        }
        if depth == 0 && at_head {
            if c.is_ascii_alphanumeric() || c == '_' {
                current.push(c);
            } else if !current.is_empty() {
                at_head = false;
            }
        }
    }
    if !current.is_empty() {
        heads.push(current);
    }
    heads
}

/// The top-level modules of the crate whose sources are in `src`, and which other top-level
/// modules each one names through `crate::`. Binaries (`src/bin`) and the crate root are not
/// modules of their own.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in rust_files(src) {
        let relative = file.strip_prefix(src).expect("below src");
        let mut parts = relative
            .components()
            .map(|c| c.as_os_str().to_string_lossy());
        let first = parts.next().expect("a file name").to_string();
        let module = if relative.components().count() == 1 {
            first.trim_end_matches(".rs").to_owned()
        } else {
            first
        };
        if module == "lib" || module == "main" || module == "bin" {
            continue;
        }
        let code = code_of(&file);
        let uses = graph.entry(module.clone()).or_default();
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            if let Some(list) = rest.strip_prefix('{') {
                let end = list.find("};").unwrap_or(list.len());
                uses.extend(list_heads(&list[..end]));
            } else {
                let head: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                uses.insert(head);
            }
        }
        uses.remove(&module);
    }
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for uses in graph.values_mut() {
        uses.retain(|m| modules.contains(m));
    }
    graph
}

/// One cycle in `graph`, if any, as the modules along it.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, bool>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(node.to_owned(), false);
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            match state.get(next) {
                Some(false) => {
                    let start = path.iter().position(|m| m == next).expect("on the path");
                    let mut cycle = path[start..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Some(true) => {}
                None => {
                    if let Some(cycle) = visit(next, graph, state, path) {
                        return Some(cycle);
                    }
                }
            }
        }
        path.pop();
        state.insert(node.to_owned(), true);
        None
    }
    let mut state = BTreeMap::new();
    for node in graph.keys() {
        if !state.contains_key(node)
            && let Some(cycle) = visit(node, graph, &mut state, &mut Vec::new())
        {
            return Some(cycle);
        }
    }
    None
}

/// `[dependencies]` of every workspace crate, by package name, and each crate's directory.
fn manifests() -> BTreeMap<String, (PathBuf, BTreeSet<String>)> {
    let root = workspace_root();
    let workspace: toml::Table = toml::from_str(
        &std::fs::read_to_string(root.join("Cargo.toml")).expect("the workspace manifest"),
    )
    .expect("the workspace manifest parses");
    let members = workspace["workspace"]["members"]
        .as_array()
        .expect("workspace.members");
    let mut out = BTreeMap::new();
    for member in members {
        let dir = root.join(member.as_str().expect("a member path"));
        let manifest: toml::Table =
            toml::from_str(&std::fs::read_to_string(dir.join("Cargo.toml")).expect("a manifest"))
                .expect("a member manifest parses");
        let name = manifest["package"]["name"]
            .as_str()
            .expect("package.name")
            .to_owned();
        let deps = manifest
            .get("dependencies")
            .and_then(|d| d.as_table())
            .map(|d| d.keys().cloned().collect())
            .unwrap_or_default();
        out.insert(name, (dir, deps));
    }
    out
}

/// Every crate `package` depends on through normal dependencies: workspace crates
/// transitively, and the direct external dependencies of each of them.
fn normal_closure(package: &str) -> BTreeSet<String> {
    let manifests = manifests();
    let mut seen = BTreeSet::new();
    let mut queue = vec![package.to_owned()];
    while let Some(name) = queue.pop() {
        let Some((_, deps)) = manifests.get(&name) else {
            continue;
        };
        for dep in deps {
            if seen.insert(dep.clone()) && manifests.contains_key(dep) {
                queue.push(dep.clone());
            }
        }
    }
    seen
}

#[test]
fn no_crate_has_a_module_cycle() {
    let manifests = manifests();
    let mut checked = Vec::new();
    for (name, (dir, _)) in &manifests {
        let src = dir.join("src");
        if !src.is_dir() {
            continue;
        }
        let graph = module_graph(&src);
        if let Some(cycle) = find_cycle(&graph) {
            panic!("{name}: modules import each other: {}", cycle.join(" -> "));
        }
        checked.push(format!("{name} ({} modules)", graph.len()));
    }
    assert!(
        checked.len() >= 8,
        "every workspace crate with sources is checked: {checked:?}"
    );
    println!("no module cycle in {}", checked.join(", "));
}

#[test]
fn the_cycle_finder_sees_a_planted_cycle() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("api", vec!["store", "node"]),
        ("node", vec!["api"]),
        ("store", vec![]),
    ]
    .into_iter()
    .map(|(m, uses)| (m.to_owned(), uses.into_iter().map(str::to_owned).collect()))
    .collect();
    let cycle = find_cycle(&graph).expect("api <-> node is a cycle");
    assert!(cycle.contains(&"api".to_owned()) && cycle.contains(&"node".to_owned()));
    assert_eq!(
        list_heads(" api::{self, X}, store::Replicated,\n migration "),
        vec!["api", "store", "migration"]
    );
}

#[test]
fn the_product_library_depends_on_neither_the_agent_nor_the_demo_nor_plots() {
    let closure = normal_closure("umbra-orchestrator");
    for banned in [
        "umbra-agent",
        "umbra-demo",
        "umbra-cli",
        "umbra-chaos",
        "bollard",
        "plotters",
    ] {
        assert!(
            !closure.contains(banned),
            "umbra-orchestrator depends on {banned}: {closure:?}"
        );
    }
    assert!(closure.contains("umbra-forecast") && closure.contains("umbra-dns"));
    // The simulator and the history checker are for the CLI and the tests, never a process.
    assert!(
        !normal_closure("umbra-agent").contains("umbra-chaos"),
        "umbra-agent depends on umbra-chaos"
    );
}

#[test]
fn forecasting_and_dns_need_no_cluster() {
    let forecast = normal_closure("umbra-forecast");
    for banned in [
        "raft",
        "raft-engine",
        "quinn",
        "umbra-consensus",
        "umbra-proto",
        "umbra-agent",
        "umbra-orchestrator",
    ] {
        assert!(
            !forecast.contains(banned),
            "umbra-forecast depends on {banned}"
        );
    }
    let dns = normal_closure("umbra-dns");
    for banned in [
        "umbra-orchestrator",
        "umbra-consensus",
        "raft",
        "umbra-agent",
    ] {
        assert!(!dns.contains(banned), "umbra-dns depends on {banned}");
    }
}
