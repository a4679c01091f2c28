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

    #[test]
    fn every_cited_path_exists() {
        let root = root();
        let mut files = Vec::new();
        sources(&root, &mut files);
        assert!(files.len() > 50, "read only {} files", files.len());
        let mut missing = Vec::new();
        for file in &files {
            let text = std::fs::read_to_string(file).unwrap();
            for path in cited(&text) {
                if !root.join(&path).exists() {
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
    }
}
