//! Repository invariants, checked as ordinary tests so that `cargo test` enforces them; among them the
//! library's layering (ARCHITECTURE.md, "Layers"), read from the code's own `use crate::` paths.

/// The library's layering and its dependency edges, as the tidy tests check them. Kept apart from the tests
/// so that the checks themselves are tested on synthetic inputs (a check that cannot fail proves nothing).
#[cfg(test)]
mod layers {
    use std::collections::{BTreeMap, BTreeSet};

    /// The layers ARCHITECTURE.md states, lowest first: the rows of the table under `## Layers` whose first
    /// cell starts with the layer's number, each row's modules written in backticks in its second cell.
    pub fn parse_layers(architecture: &str) -> Vec<Vec<String>> {
        let section = architecture.split("\n## Layers").nth(1).unwrap_or("");
        let section = section.split("\n## ").next().unwrap_or("");
        let mut layers = Vec::new();
        for line in section.lines() {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            // "| 3 decision | `decide` | ... |" splits into ["", "3 decision", "`decide`", ..., ""].
            if cells.len() < 4 || !cells[1].starts_with(|c: char| c.is_ascii_digit()) {
                continue;
            }
            let modules = cells[2].split('`').skip(1).step_by(2).map(str::to_string).collect();
            layers.push(modules);
        }
        layers
    }

    /// A source file's text without comments and without items gated on `cfg(test)` (test modules, test-only
    /// imports): what the runtime itself depends on.
    pub fn runtime_text(text: &str) -> String {
        let mut kept = String::new();
        let mut lines = text.lines().map(|line| match line.find("//") {
            // A `//` inside a string literal ("http://") is rare in this code and only shortens what is read.
            Some(at) => &line[..at],
            None => line,
        });
        while let Some(line) = lines.next() {
            let trimmed = line.trim();
            if trimmed.starts_with("#[cfg(") && trimmed.contains("test") && !trimmed.contains("not(test") {
                // Skip the gated item: up to its `;`, or to the brace that closes its body.
                let mut depth = 0i64;
                let mut opened = false;
                for line in lines.by_ref() {
                    let trimmed = line.trim();
                    if !opened && trimmed.starts_with("#[") {
                        continue;
                    }
                    depth += line.matches('{').count() as i64 - line.matches('}').count() as i64;
                    opened |= line.contains('{');
                    if (opened && depth <= 0) || (!opened && trimmed.ends_with(';')) {
                        break;
                    }
                }
                continue;
            }
            kept.push_str(line);
            kept.push('\n');
        }
        kept
    }

    /// The top-level modules a runtime text names through `crate::` (`crate::gate::Gate`, `use crate::{a,
    /// b::c}`).
    pub fn crate_references(text: &str) -> BTreeSet<String> {
        let mut found = BTreeSet::new();
        for (at, _) in text.match_indices("crate::") {
            if text[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
                continue; // `deepgate_crate::`, not ours.
            }
            let rest = &text[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let mut depth = 0;
                let mut item = String::new();
                for character in group.chars() {
                    match character {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            found.insert(first_segment(&item));
                            item.clear();
                            continue;
                        }
                        _ => {}
                    }
                    if depth == 0 {
                        item.push(character);
                    }
                }
                found.insert(first_segment(&item));
            } else {
                found.insert(first_segment(rest));
            }
        }
        found.remove("");
        found
    }

    fn first_segment(path: &str) -> String {
        path.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
    }

    /// Every edge that goes against the layers: to a module in a higher layer, or from or to a module no
    /// layer lists. Edges inside one layer are allowed (peers may use each other); `cycle` rejects loops.
    pub fn violations(layers: &[Vec<String>], edges: &BTreeSet<(String, String)>) -> Vec<String> {
        let layer_of: BTreeMap<&str, usize> = layers
            .iter()
            .enumerate()
            .flat_map(|(index, modules)| modules.iter().map(move |module| (module.as_str(), index)))
            .collect();
        let mut found = Vec::new();
        for (from, to) in edges {
            match (layer_of.get(from.as_str()), layer_of.get(to.as_str())) {
                (Some(&low), Some(&high)) if high > low => found.push(format!(
                    "`{from}` (layer {low}) uses `{to}` (layer {high}): a lower layer may not know a higher one"
                )),
                (Some(_), Some(_)) => {}
                (None, _) => found.push(format!("`{from}` is in no layer of ARCHITECTURE.md")),
                (_, None) => found.push(format!("`{to}` (used by `{from}`) is in no layer of ARCHITECTURE.md")),
            }
        }
        found
    }

    /// A dependency cycle among the edges, as the modules around it (first repeated last), if there is one.
    pub fn cycle(edges: &BTreeSet<(String, String)>) -> Option<Vec<String>> {
        let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (from, to) in edges {
            next.entry(from).or_default().push(to);
        }
        // Depth-first search; `path` is the current chain, a node met again on it closes a cycle.
        fn visit<'a>(
            node: &'a str,
            next: &BTreeMap<&'a str, Vec<&'a str>>,
            path: &mut Vec<&'a str>,
            done: &mut BTreeSet<&'a str>,
        ) -> Option<Vec<String>> {
            if let Some(start) = path.iter().position(|&seen| seen == node) {
                let mut cycle: Vec<String> = path[start..].iter().map(|name| name.to_string()).collect();
                cycle.push(node.to_string());
                return Some(cycle);
            }
            if !done.insert(node) {
                return None;
            }
            path.push(node);
            for &to in next.get(node).into_iter().flatten() {
                if let Some(cycle) = visit(to, next, path, done) {
                    return Some(cycle);
                }
            }
            path.pop();
            None
        }
        let mut done = BTreeSet::new();
        let nodes: Vec<&str> = next.keys().copied().collect();
        nodes.into_iter().find_map(|node| visit(node, &next, &mut Vec::new(), &mut done))
    }

    fn edges(list: &[(&str, &str)]) -> BTreeSet<(String, String)> {
        list.iter().map(|(from, to)| (from.to_string(), to.to_string())).collect()
    }

    #[test]
    fn layers_are_read_from_the_table_rows() {
        let text = "# x\n## Layers\n\n| layer | modules | may not know |\n|---|---|---|\n\
                    | 0 base | `frame`, `health` | anything |\n| 1 top | `gate` | the `cli` |\n\n## Next\n| 2 | `no` | |\n";
        assert_eq!(parse_layers(text), [vec!["frame".to_string(), "health".into()], vec!["gate".into()]]);
    }

    #[test]
    fn an_edge_to_a_higher_layer_is_refused_and_one_down_or_across_is_not() {
        let layers = vec![vec!["frame".to_string(), "health".into()], vec!["gate".into()]];
        assert!(violations(&layers, &edges(&[("gate", "health"), ("gate", "frame"), ("health", "frame")]))
            .is_empty());
        let found = violations(&layers, &edges(&[("health", "gate")]));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("`health` (layer 0) uses `gate` (layer 1)"), "{found:?}");
        let found = violations(&layers, &edges(&[("gate", "session")]));
        assert!(found[0].contains("`session` (used by `gate`) is in no layer"), "{found:?}");
    }

    #[test]
    fn a_cycle_is_found_and_named_and_a_tree_has_none() {
        assert_eq!(cycle(&edges(&[("a", "b"), ("b", "c"), ("a", "c")])), None);
        assert_eq!(
            cycle(&edges(&[("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")])),
            Some(vec!["a".to_string(), "b".into(), "c".into(), "a".into()])
        );
    }

    #[test]
    fn test_items_and_comments_are_not_dependencies_and_groups_are() {
        let text = "use crate::frame::Frame;\n/// See [`crate::gate`].\nuse crate::{health::Health, \
                    manifest::{a, b}};\nfn f() { crate::panics::contain(); }\n#[cfg(test)]\nuse crate::testing;\n\
                    #[cfg(all(test, feature = \"x\"))]\nmod tests {\n    use crate::config::BoardConfig;\n    \
                    fn g() {\n    }\n}\nuse crate::timing::Stage; // crate::eval\n";
        let found: Vec<String> = crate_references(&runtime_text(text)).into_iter().collect();
        assert_eq!(found, ["frame", "health", "manifest", "panics", "timing"]);
    }
}

#[cfg(test)]
mod tests {
    use super::layers::{crate_references, cycle, parse_layers, runtime_text, violations};
    use crate::ci::root;
    use std::collections::BTreeSet;
    use std::path::Path;

    fn rust_files(directory: &Path, found: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(directory).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                rust_files(&path, found);
            } else if path.extension().is_some_and(|e| e == "rs") {
                found.push(path);
            }
        }
    }

    #[test]
    fn every_source_file_says_what_it_owns() {
        let mut files = Vec::new();
        rust_files(&root().join("src"), &mut files);
        rust_files(&root().join("xtask/src"), &mut files);
        assert!(files.len() > 10);
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            assert!(
                text.starts_with("//!"),
                "{} must open with a `//!` line saying what it owns",
                file.display()
            );
        }
    }

    /// The library's modules as `src/lib.rs` declares them.
    fn library_modules() -> Vec<String> {
        let lib = std::fs::read_to_string(root().join("src/lib.rs")).unwrap();
        lib.lines()
            .filter_map(|line| line.trim().strip_prefix("pub mod "))
            .map(|rest| rest.trim_end_matches(';').to_string())
            .collect()
    }

    /// Every `use crate::` edge between the library's top-level modules, test code left out.
    fn library_edges() -> BTreeSet<(String, String)> {
        let mut files = Vec::new();
        rust_files(&root().join("src"), &mut files);
        let mut edges = BTreeSet::new();
        for file in files {
            let relative = file.strip_prefix(root().join("src")).unwrap();
            let first = relative.components().next().unwrap().as_os_str().to_string_lossy().into_owned();
            let module = first.trim_end_matches(".rs").to_string();
            // The binary (main.rs, cli/) sits above the library and may use all of it; lib.rs only lists.
            if ["main", "cli", "lib"].contains(&module.as_str()) {
                continue;
            }
            let text = std::fs::read_to_string(&file).unwrap();
            for used in crate_references(&runtime_text(&text)) {
                if used != module {
                    edges.insert((module.clone(), used));
                }
            }
        }
        edges
    }

    #[test]
    fn every_library_module_is_in_exactly_one_layer() {
        let architecture = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
        let layers = parse_layers(&architecture);
        assert!(layers.len() > 3, "ARCHITECTURE.md states no layers (a table under `## Layers`)");
        let listed: Vec<&String> = layers.iter().flatten().collect();
        for module in library_modules() {
            let count = listed.iter().filter(|listed| ***listed == module).count();
            assert_eq!(
                count, 1,
                "module `{module}` is in {count} layers of ARCHITECTURE.md; it must be in one"
            );
        }
        for module in listed {
            assert!(
                library_modules().contains(module),
                "ARCHITECTURE.md layers `{module}`, which src/lib.rs lacks"
            );
        }
    }

    #[test]
    fn no_use_crate_edge_goes_against_the_layers_or_closes_a_cycle() {
        let architecture = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
        let layers = parse_layers(&architecture);
        let edges = library_edges();
        assert!(edges.len() > 20, "the edges were not read ({} found)", edges.len());
        let found = violations(&layers, &edges);
        assert!(found.is_empty(), "layering (ARCHITECTURE.md, \"Layers\"):\n{}", found.join("\n"));
        assert_eq!(cycle(&edges), None, "the library's modules form a cycle");
    }

    /// Files are split by responsibility before they grow long (issue 16: the runtime had five over 700 lines).
    #[test]
    fn no_source_file_is_longer_than_700_lines() {
        let mut files = Vec::new();
        rust_files(&root().join("src"), &mut files);
        rust_files(&root().join("xtask/src"), &mut files);
        for file in files {
            let lines = std::fs::read_to_string(&file).unwrap().lines().count();
            assert!(lines <= 700, "{} has {lines} lines; split it by responsibility", file.display());
        }
    }

    #[test]
    fn architecture_lists_every_module() {
        let architecture = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
        let mut files = Vec::new();
        rust_files(&root().join("src"), &mut files);
        for file in files {
            let relative = file.strip_prefix(root()).unwrap().display().to_string();
            assert!(architecture.contains(&relative), "ARCHITECTURE.md does not mention {relative}");
        }
    }

    #[test]
    fn every_shipped_model_is_in_the_manifest_with_its_licence() {
        let manifest = std::fs::read_to_string(root().join("models/manifest.toml")).unwrap();
        for entry in std::fs::read_dir(root().join("models")).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".onnx") {
                assert!(
                    manifest.contains(&format!("file = \"{name}\"")),
                    "models/{name} is not in the manifest"
                );
            }
        }
        for line in manifest.lines().filter(|line| line.starts_with("licence_file")) {
            let file = line.split('"').nth(1).unwrap();
            assert!(root().join("models").join(file).exists(), "licence file models/{file} is missing");
        }
    }

    /// The model card describes the classifier that ships: it quotes the manifest's checksum, so a re-trained
    /// model cannot ship under an old card.
    #[test]
    fn the_model_card_names_the_shipped_classifier_checksum() {
        let manifest = std::fs::read_to_string(root().join("models/manifest.toml")).unwrap();
        let card = std::fs::read_to_string(root().join("models/CARD.md")).unwrap();
        let block =
            manifest.split("[[model]]").find(|block| block.contains("role = \"classifier\"")).unwrap();
        let sha = block.lines().find(|line| line.starts_with("sha256")).unwrap().split('"').nth(1).unwrap();
        assert!(card.contains(sha), "models/CARD.md does not quote the shipped classifier's sha256 {sha}");
    }
}
