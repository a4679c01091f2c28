//! Rebuild the programs when bpf-linker changes (a new linker may emit different code for the same source).
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
