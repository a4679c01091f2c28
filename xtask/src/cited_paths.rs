//! Every path the docs and the code cite exists: README.md, ARCHITECTURE.md, docs/ and every source file name
//! files of the repository by their path from its root; a test reads them all and checks each one.

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use crate::workspace::root;

    /// The top-level directories and files a cited path starts with.
    const ROOTS: &[&str] = &[
        "docs/",
        "deploy/",
        "scripts/",
        "tests/",
        "bench/",
        "xtask/",
        "veg-common/",
        "veg-ebpf/",
        "veg-bfd/",
        "veg-ovsdb/",
        "veg-userspace/",
        "veg-lab/",
    ];
    const EXTENSIONS: &[&str] = &[".md", ".rs", ".yaml", ".toml", ".env"];

    /// The files to read: the top-level Markdown, docs/, and every Rust source of the repository.
    fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || name == "target" {
                continue;
            }
            if path.is_dir() {
                sources(&path, out);
            } else if name.ends_with(".rs") || name.ends_with(".md") {
                out.push(path);
            }
        }
    }

    /// The repository paths a text cites: a word starting with a top-level directory and ending in a known
    /// extension (a trailing ':' or '.' of the sentence aside).
    fn cited(text: &str) -> Vec<String> {
        text.split(|c: char| !(c.is_ascii_alphanumeric() || "/._-".contains(c)))
            .map(|word| word.trim_end_matches(['.', ':']))
            .filter(|word| ROOTS.iter().any(|r| word.starts_with(r)))
            .filter(|word| EXTENSIONS.iter().any(|e| word.ends_with(e)))
            .map(str::to_owned)
            .collect()
    }

    /// In Markdown, also every code span that names a file by a path with a directory in it: from the repository's
    /// root, or from the document's own directory (as a Markdown link would be), never from a crate's.
    fn cited_in_markdown(text: &str) -> Vec<String> {
        text.split('`')
            .skip(1)
            .step_by(2)
            .filter(|span| span.contains('/') && !span.contains(' ') && !span.contains('<'))
            .filter(|span| EXTENSIONS.iter().any(|e| span.ends_with(e)))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn every_cited_path_exists() {
        let root = root();
        let mut files = Vec::new();
        sources(&root, &mut files);
        assert!(files.len() > 50, "read only {} files", files.len());
        let mut missing = Vec::new();
        for file in &files {
            let text = std::fs::read_to_string(file).unwrap();
            let beside = file.parent().unwrap();
            let mut paths: Vec<(String, bool)> =
                cited(&text).into_iter().map(|p| (p, false)).collect();
            if file.extension().is_some_and(|e| e == "md") {
                paths.extend(cited_in_markdown(&text).into_iter().map(|p| (p, true)));
            }
            for (path, may_be_relative) in paths {
                let found =
                    root.join(&path).exists() || (may_be_relative && beside.join(&path).exists());
                if !found {
                    missing.push(format!(
                        "{} cites {path}",
                        file.strip_prefix(&root).unwrap().display()
                    ));
                }
            }
        }
        assert!(
            missing.is_empty(),
            "cited paths that do not exist:\n{}",
            missing.join("\n")
        );
    }

    #[test]
    fn a_citation_is_found_in_prose() {
        assert_eq!(
            cited("see docs/datapath.md. And (veg-ebpf/src/icmp.rs), not veg-ebpf or src/x.rs"),
            ["docs/datapath.md", "veg-ebpf/src/icmp.rs"]
        );
        assert_eq!(
            cited_in_markdown(
                "(`ovn/apply.rs`, over `veg-ovsdb`; see `veg flows` and `src/<x>.rs`)"
            ),
            ["ovn/apply.rs"]
        );
    }
}
