//! The house is in order: every relative link of the README and the book resolves (to a file,
//! and to a heading of it when it names one), each crate's `lib.rs` table of contents names
//! every module the crate declares there, and no source files of a crate import each other in a
//! circle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The workspace's root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).expect("a parent")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The pages a reader follows links in.
fn pages() -> Vec<PathBuf> {
    let root = root();
    let mut pages = vec![root.join("README.md"), root.join("python/README.md")];
    let docs = std::fs::read_dir(root.join("docs")).expect("docs/");
    let mut book: Vec<PathBuf> = docs
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    book.sort();
    pages.extend(book);
    pages
}

/// The text outside fenced code blocks.
fn prose(text: &str) -> String {
    let mut out = String::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// GitHub's anchor of a heading: lower case, spaces to dashes, punctuation dropped.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a page's headings.
fn anchors(text: &str) -> BTreeSet<String> {
    prose(text)
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|l| slug(l.trim_start_matches('#')))
        .collect()
}

/// `(target, text)` of each inline link `[text](target)` outside code.
fn links(text: &str) -> Vec<String> {
    let prose = prose(text);
    let mut found = Vec::new();
    let mut rest = prose.as_str();
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        if let Some(end) = rest.find(')') {
            found.push(rest[..end].to_string());
            rest = &rest[end..];
        }
    }
    found
}

#[test]
fn every_relative_link_of_the_readme_and_the_book_resolves() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in pages() {
        let text = read(&page);
        for target in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (file, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let dir = page.parent().expect("a folder");
            let path = if file.is_empty() { page.clone() } else { dir.join(file) };
            if !path.exists() {
                broken.push(format!("{}: {target} (no such file)", page.display()));
                continue;
            }
            let is_page = path.extension().is_some_and(|x| x == "md");
            if !anchor.is_empty() && is_page && !anchors(&read(&path)).contains(anchor) {
                broken.push(format!("{}: {target} (no such heading)", page.display()));
            }
        }
    }
    assert!(checked > 20, "only {checked} links found");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// The workspace's crates with a `src/lib.rs`, from the members of the root manifest.
fn libraries() -> Vec<PathBuf> {
    let manifest = read(&root().join("Cargo.toml"));
    let members = manifest
        .split("members = [")
        .nth(1)
        .and_then(|m| m.split(']').next())
        .expect("a members list");
    members
        .split(',')
        .map(|m| m.trim().trim_matches('"'))
        .filter(|m| !m.is_empty())
        .map(|m| root().join(m))
        .filter(|dir| dir.join("src/lib.rs").exists())
        .collect()
}

/// The modules `source` declares (`mod x;`, `pub mod x;`, `pub(crate) mod x;`), leaving out
/// those under `#[cfg(test)]` and `#[cfg(doctest)]`.
fn declared_modules(source: &str) -> Vec<String> {
    let mut modules = Vec::new();
    let mut test_only = false;
    for line in source.lines().map(str::trim) {
        if line.starts_with("#[cfg(test)]") || line.starts_with("#[cfg(doctest)]") {
            test_only = true;
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let name = match words.as_slice() {
            ["mod", name] | ["pub", "mod", name] | ["pub(crate)", "mod", name] => {
                name.strip_suffix(';')
            }
            _ => None,
        };
        if let Some(name) = name
            && !std::mem::take(&mut test_only)
        {
            modules.push(name.to_string());
        } else if !line.starts_with("#[") {
            test_only = false;
        }
    }
    modules
}

#[test]
fn each_lib_rs_table_of_contents_names_each_of_its_modules() {
    let mut missing = Vec::new();
    let libraries = libraries();
    assert!(libraries.len() >= 6, "{libraries:?}");
    for dir in libraries {
        let source = read(&dir.join("src/lib.rs"));
        let contents: String = (source.lines())
            .filter_map(|l| l.trim_start().strip_prefix("//!"))
            .collect::<Vec<_>>()
            .join("\n");
        for module in declared_modules(&source) {
            if !contents.contains(&format!("`{module}`")) {
                missing.push(format!("{}: `{module}`", dir.display()));
            }
        }
    }
    assert!(missing.is_empty(), "not named in their lib.rs's contents:\n{}", missing.join("\n"));
}

/// Module path → file, for the files under a crate's `src/` (binaries and test files aside).
fn module_files(src: &Path) -> BTreeMap<Vec<String>, PathBuf> {
    fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, files);
            } else if path.extension().is_some_and(|x| x == "rs") {
                files.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(src, &mut files);
    let mut modules = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(src).expect("under src").with_extension("");
        let mut path: Vec<String> =
            relative.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
        if path.first().is_some_and(|p| p == "bin") || path.iter().any(|p| p.starts_with("tests")) {
            continue;
        }
        match path.last().map(String::as_str) {
            Some("lib" | "main") if path.len() == 1 => path.clear(),
            Some("mod") => {
                path.pop();
            }
            _ => {}
        }
        modules.insert(path, file);
    }
    modules
}

/// The code of a file before its `#[cfg(test)]` tail, without line comments.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    text.lines().map(|l| l.split("//").next().unwrap_or_default()).collect::<Vec<_>>().join("\n")
}

/// The module paths a file's code names: `crate::a::b`, `super::c`, `self::d`, and the items
/// of `use crate::a::{b, c}`, as absolute paths.
fn named_paths(code: &str, here: &[String]) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut expanded = code.to_string();
    // `use head::base::{a, b::c}` → `head::base::a`, `head::base::b::c`, one level deep.
    for (i, _) in code.match_indices("::{") {
        let start = code[..i].rfind(|c: char| !(is_ident(c) || c == ':')).map_or(0, |s| s + 1);
        let Some(end) = code[i..].find('}') else { continue };
        let base = &code[start..i];
        for item in code[i + 3..i + end].split(',') {
            let item = item.split(" as ").next().unwrap_or_default().trim();
            if !item.is_empty() && !item.contains('{') {
                expanded.push_str(&format!("\n{base}::{item};"));
            }
        }
    }
    for head in ["crate::", "super::", "self::"] {
        for (i, _) in expanded.match_indices(head) {
            if i > 0 && expanded[..i].ends_with(|c: char| is_ident(c) || c == ':') {
                continue;
            }
            let tail = &expanded[i + head.len()..];
            let end = tail.find(|c: char| !(is_ident(c) || c == ':')).unwrap_or(tail.len());
            let mut rest: Vec<&str> = tail[..end].split("::").filter(|s| !s.is_empty()).collect();
            let mut base: Vec<String> = match head {
                "crate::" => Vec::new(),
                "self::" => here.to_vec(),
                _ => here[..here.len().saturating_sub(1)].to_vec(),
            };
            while rest.first() == Some(&"super") {
                base.pop();
                rest.remove(0);
            }
            base.extend(rest.iter().map(|s| s.to_string()));
            paths.push(base);
        }
    }
    paths
}

/// Strongly connected sets of more than one file (Tarjan's algorithm).
fn circles(edges: &BTreeMap<PathBuf, BTreeSet<PathBuf>>) -> Vec<Vec<PathBuf>> {
    struct State<'a> {
        edges: &'a BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        index: BTreeMap<&'a PathBuf, usize>,
        low: BTreeMap<&'a PathBuf, usize>,
        stack: Vec<&'a PathBuf>,
        on_stack: BTreeSet<&'a PathBuf>,
        found: Vec<Vec<PathBuf>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a PathBuf) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        let edges = s.edges;
        for w in edges.get(v).into_iter().flatten() {
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut set = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                set.push(w.clone());
                if w == v {
                    break;
                }
            }
            if set.len() > 1 {
                s.found.push(set);
            }
        }
    }
    let mut state = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in edges.keys() {
        if !state.index.contains_key(v) {
            visit(&mut state, v);
        }
    }
    state.found
}

#[test]
fn no_source_files_of_a_crate_import_each_other_in_a_circle() {
    let mut found = Vec::new();
    let mut crates = 0;
    for dir in libraries().into_iter().chain([root().join("bench")]) {
        let modules = module_files(&dir.join("src"));
        crates += 1;
        let mut edges: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
        for (here, file) in &modules {
            let targets = edges.entry(file.clone()).or_default();
            for mut path in named_paths(&code(&read(file)), here) {
                // The longest module the path names.
                while !path.is_empty() && !modules.contains_key(&path) {
                    path.pop();
                }
                if let Some(target) = modules.get(&path)
                    && target != file
                    && !path.is_empty()
                {
                    targets.insert(target.clone());
                }
            }
        }
        found.extend(circles(&edges));
    }
    assert!(crates >= 7);
    let shown: Vec<String> = found
        .iter()
        .map(|set| set.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))
        .collect();
    assert!(found.is_empty(), "import circles:\n{}", shown.join("\n"));
}

#[test]
fn the_circle_check_finds_a_circle() {
    let a = PathBuf::from("a.rs");
    let b = PathBuf::from("b.rs");
    let c = PathBuf::from("c.rs");
    let edges = BTreeMap::from([
        (a.clone(), BTreeSet::from([b.clone()])),
        (b.clone(), BTreeSet::from([a.clone(), c.clone()])),
        (c.clone(), BTreeSet::new()),
    ]);
    let found = circles(&edges);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].iter().collect::<BTreeSet<_>>(), BTreeSet::from([&a, &b]));
    let here = vec!["core".to_string(), "agents".to_string()];
    let paths =
        named_paths("use super::{stats::Outcomes, Core};\nlet x = crate::store::Change;", &here);
    assert!(paths.contains(&vec!["core".to_string(), "stats".to_string(), "Outcomes".to_string()]));
    assert!(paths.contains(&vec!["store".to_string(), "Change".to_string()]));
}
