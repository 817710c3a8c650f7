//! The gateway's module graph, read from its sources: arrows between the top-level modules
//! point one way (downstream → pipeline → upstream; config, clock, metrics and analytics
//! below them all), so the layout ARCHITECTURE.md draws stays true.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

/// The top-level module a source file belongs to (`lib` for lib.rs and main.rs).
fn top_module(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src");
    let first = rel
        .components()
        .next()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .unwrap_or_default();
    match first.strip_suffix(".rs") {
        Some("lib" | "main") => "lib".into(),
        Some(name) => name.into(),
        None => first,
    }
}

/// The top-level modules `text` names through `crate::`, in paths and in `use crate::{…}`
/// groups. Comments and test modules are left out.
fn crate_references(text: &str) -> BTreeSet<String> {
    let code: String = text
        .split("#[cfg(test)]")
        .next()
        .unwrap_or("")
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut found = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level items of the group, split at depth-0 commas.
            let mut depth = 0usize;
            let mut start = 0;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        found.insert(ident(&group[start..i]));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.insert(ident(&group[start..i]));
                        start = i + 1;
                    }
                    _ => {}
                }
            }
        } else {
            found.insert(ident(rest));
        }
    }
    found.retain(|m| !m.is_empty() && m.chars().next().is_some_and(|c| c.is_ascii_lowercase()));
    found
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![src.clone()];
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    while let Some(dir) = files.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                files.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let from = top_module(&src, &path);
                let text = std::fs::read_to_string(&path).expect("read file");
                let to = crate_references(&text);
                let edges = graph.entry(from.clone()).or_default();
                edges.extend(to.into_iter().filter(|t| *t != from));
            }
        }
    }
    graph
}

#[test]
fn top_level_modules_form_no_cycle() {
    let graph = graph();
    // Depth-first search for a back edge.
    fn visit<'a>(
        node: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) {
        if done.contains(node) {
            return;
        }
        if let Some(at) = path.iter().position(|n| *n == node) {
            panic!("import cycle: {} → {node}", path[at..].join(" → "));
        }
        path.push(node);
        for next in graph.get(node).into_iter().flatten() {
            visit(next, graph, path, done);
        }
        path.pop();
        done.insert(node);
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        visit(node, &graph, &mut Vec::new(), &mut done);
    }
}

#[test]
fn arrows_follow_the_request() {
    let graph = graph();
    let forbidden = [
        ("pipeline", "downstream"),
        ("upstream", "pipeline"),
        ("upstream", "downstream"),
        ("config", "pipeline"),
        ("config", "downstream"),
        ("config", "upstream"),
        ("metrics", "pipeline"),
    ];
    for (from, to) in forbidden {
        assert!(
            !graph.get(from).is_some_and(|e| e.contains(to)),
            "{from} must not use {to}: {:?}",
            graph.get(from)
        );
    }
    // The test reads what it thinks it reads.
    assert!(graph["downstream"].contains("pipeline"), "{graph:?}");
    assert!(graph["pipeline"].contains("upstream"), "{graph:?}");
    assert!(
        crate_references("use crate::{a::b, c, d::{e, f}};\n// crate::g\n")
            .into_iter()
            .eq(["a", "c", "d"].map(String::from))
    );
}
