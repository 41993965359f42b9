//! The crate's modules are layers: the command line on top, then the daemon
//! and `list`, then the dataplane, the Kubernetes translation and the
//! parsers, and the model at the bottom. A module uses only modules below it,
//! so no chain of `crate::` paths leads from a module back to itself. These
//! tests read the source files, build the graph of which top-level module
//! names which, and fail on a cycle, naming it and the files that make it.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// For each top-level module, the top-level modules its files name, each
/// with the files (relative to `src/`) that name it.
type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<PathBuf>>>;

/// The crate's own graph, from the files under `src/`.
fn crate_graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(!files.is_empty(), "no .rs file under {}", src.display());
    let mut graph = Graph::new();
    for path in files {
        let relative = path.strip_prefix(&src).expect("under src/").to_path_buf();
        let Some(module) = top_module(&relative) else {
            continue;
        };
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let uses = graph.entry(module.clone()).or_default();
        for used in crate_paths(&code_only(&text)) {
            if used != module && used != "self" {
                uses.entry(used).or_default().insert(relative.clone());
            }
        }
    }
    graph
}

fn rust_files(dir: &Path, into: &mut Vec<PathBuf>) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, into);
        } else if path.extension().is_some_and(|e| e == "rs") {
            into.push(path);
        }
    }
}

/// The top-level module a file belongs to (`dataplane/apply.rs` →
/// `dataplane`); `None` for the crate root (`lib.rs`, `main.rs`).
fn top_module(relative: &Path) -> Option<String> {
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_string())
}

/// `text` with comments and string and character literals blanked out, so
/// that only code is searched (a doc link to `crate::x` is no import).
fn code_only(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < c.len() {
        let next = c.get(i + 1).copied();
        if c[i] == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if c[i] == '/' && next == Some('*') {
            // Block comments nest.
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if let Some(hashes) = raw_string_start(&c, i) {
            // r"...", r#"..."#, br"...": ends at a quote and as many #.
            i += 2 + hashes;
            let ends = |i: usize| {
                c[i] == '"'
                    && c[i + 1..]
                        .iter()
                        .take(hashes)
                        .filter(|ch| **ch == '#')
                        .count()
                        == hashes
            };
            while i < c.len() && !ends(i) {
                i += 1;
            }
            i += 1 + hashes;
            out.push(' ');
        } else if c[i] == '"' {
            i += 1;
            while i < c.len() && c[i] != '"' {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push(' ');
        } else if c[i] == '\'' && next == Some('\\') {
            // An escaped character: '\n', '\'', '\u{1F600}'.
            i += 2;
            while i < c.len() && c[i] != '\'' {
                i += 1;
            }
            i += 1;
            out.push(' ');
        } else if c[i] == '\'' && c.get(i + 2) == Some(&'\'') {
            i += 3;
            out.push(' ');
        } else {
            // Code, lifetimes included.
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

/// The number of `#` if a raw string starts at `i` (at its `r`).
fn raw_string_start(c: &[char], i: usize) -> Option<usize> {
    let ident = |ch: &char| ch.is_alphanumeric() || *ch == '_';
    let prefix_ok = match i.checked_sub(1).map(|p| c[p]) {
        None => true,
        Some('b') => i < 2 || !ident(&c[i - 2]),
        Some(p) => !ident(&p),
    };
    if c[i] != 'r' || !prefix_ok {
        return None;
    }
    let hashes = c[i + 1..].iter().take_while(|ch| **ch == '#').count();
    (c.get(i + 1 + hashes) == Some(&'"')).then_some(hashes)
}

/// The first segment of every `crate::` path in `code`: `crate::a::b` and
/// `crate::{a::b, c}` give `a` (and `c`).
fn crate_paths(code: &str) -> Vec<String> {
    let c: Vec<char> = code.chars().collect();
    let ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    let skip_space = |mut i: usize| {
        while i < c.len() && c[i].is_whitespace() {
            i += 1;
        }
        i
    };
    let read_ident = |mut i: usize| {
        let start = i;
        while i < c.len() && ident(c[i]) {
            i += 1;
        }
        (c[start..i].iter().collect::<String>(), i)
    };
    let mut found = Vec::new();
    let mut i = 0;
    while i + 5 <= c.len() {
        let is_crate = c[i..i + 5].iter().copied().eq("crate".chars())
            && (i == 0 || !(ident(c[i - 1]) || c[i - 1] == '$'));
        if !is_crate {
            i += 1;
            continue;
        }
        let mut j = skip_space(i + 5);
        if !(c.get(j) == Some(&':') && c.get(j + 1) == Some(&':')) {
            i += 5;
            continue;
        }
        j = skip_space(j + 2);
        if c.get(j) != Some(&'{') {
            let (name, end) = read_ident(j);
            found.push(name);
            i = end;
            continue;
        }
        // A group: the first segment of each of its items.
        let mut depth = 1;
        let mut item_start = true;
        j += 1;
        while j < c.len() && depth > 0 {
            match c[j] {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 1 => item_start = true,
                ch if depth == 1 && item_start && ident(ch) => {
                    let (name, end) = read_ident(j);
                    found.push(name);
                    item_start = false;
                    j = end;
                    continue;
                }
                _ => {}
            }
            j += 1;
        }
        i = j;
    }
    found.retain(|name| !name.is_empty());
    found
}

/// A cycle of `graph`, as the modules along it with the first repeated at
/// the end; `None` if it has none.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        module: &str,
        graph: &Graph,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(module) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let start = path.iter().position(|m| m == module).expect("on the path");
                let mut cycle = path[start..].to_vec();
                cycle.push(module.to_string());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(module.to_string(), Mark::Open);
        path.push(module.to_string());
        for used in graph.get(module).into_iter().flat_map(|uses| uses.keys()) {
            if let Some(cycle) = visit(used, graph, marks, path) {
                return Some(cycle);
            }
        }
        path.pop();
        marks.insert(module.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    graph
        .keys()
        .find_map(|module| visit(module, graph, &mut marks, &mut Vec::new()))
}

/// The cycle with the files that make each of its steps.
fn describe(cycle: &[String], graph: &Graph) -> String {
    let mut out = cycle.join(" -> ");
    for step in cycle.windows(2) {
        let files: Vec<String> = graph[&step[0]][&step[1]]
            .iter()
            .map(|f| f.display().to_string())
            .collect();
        out.push_str(&format!(
            "\n  {} -> {}: in {}",
            step[0],
            step[1],
            files.join(", ")
        ));
    }
    out
}

#[test]
fn no_import_cycle_among_the_modules() {
    let graph = crate_graph();
    // The reading itself works: edges that exist are seen.
    for (from, to) in [
        ("daemon", "dataplane"),
        ("dataplane", "model"),
        ("cli", "daemon"),
    ] {
        assert!(
            graph.get(from).is_some_and(|uses| uses.contains_key(to)),
            "{from} -> {to} not found: the source is not read as it should be"
        );
    }
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "import cycle among portmap-userspace's modules: {}\n\
             A module uses only modules below it: move what both sides need \
             down (types into `model`), or pass it in as an argument.",
            describe(&cycle, &graph)
        );
    }
}

/// The command line is on top: nothing below it names `cli`, and the
/// dataplane, the Kubernetes translation and the model take the types of
/// the `-p` parser from `model`, not from the parser.
#[test]
fn lower_layers_do_not_name_the_command_line() {
    let graph = crate_graph();
    let names = |from: &str, to: &str| graph.get(from).and_then(|uses| uses.get(to));
    for module in graph.keys().filter(|m| *m != "fuzz_checks") {
        assert!(
            names(module, "cli").is_none(),
            "{module} names `cli` (in {:?}): the command line is the top layer",
            names(module, "cli")
        );
    }
    for module in ["dataplane", "k8s", "model", "config", "reload"] {
        assert!(
            names(module, "spec").is_none(),
            "{module} names `spec` (in {:?}): take its types from `model`",
            names(module, "spec")
        );
    }
}

#[test]
fn comments_and_literals_are_not_code() {
    let text = r##"
        use crate::{a, b::{c, d}, e::*};
        // crate::commented
        /// [`crate::doc_link`]
        /* crate::block /* crate::nested */ crate::still_comment */
        let s = "crate::in_a_string \" crate::escaped";
        let r = r#"crate::raw "quoted" "#;
        let q = '"'; let t: &'static str = crate::f::g();
        $crate::macro_path();
        mycrate::not_ours();
        crate :: spaced::x;
    "##;
    assert_eq!(
        crate_paths(&code_only(text)),
        ["a", "b", "e", "f", "spaced"]
    );
}

#[test]
fn a_cycle_is_found_and_named() {
    let edge = |graph: &mut Graph, from: &str, to: &str| {
        let file = PathBuf::from(format!("{from}.rs"));
        graph
            .entry(from.into())
            .or_default()
            .entry(to.into())
            .or_default()
            .insert(file);
    };
    let mut graph = Graph::new();
    edge(&mut graph, "cli", "daemon");
    edge(&mut graph, "daemon", "model");
    edge(&mut graph, "spec", "model");
    edge(&mut graph, "cli", "spec");
    assert_eq!(find_cycle(&graph), None);
    edge(&mut graph, "model", "spec");
    let cycle = find_cycle(&graph).expect("model -> spec -> model");
    assert_eq!(cycle, ["model", "spec", "model"]);
    let message = describe(&cycle, &graph);
    assert!(message.starts_with("model -> spec -> model"), "{message}");
    assert!(message.contains("spec -> model: in spec.rs"), "{message}");
}
