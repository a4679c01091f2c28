//! Developer tasks: `cargo xtask setup | build-ebpf | test | demo | bench | image | lab`.

mod bench;
mod cited_paths;
mod demo;
mod image;
mod lab;
mod lab_demo;
mod workspace;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "veg's developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (Debian packages, pinned toolchains, bpf-linker); cached.
    Setup,
    /// Build the eBPF object and copy it to target/bpf/veg-ebpf.o (for bpftool or llvm-objdump).
    BuildEbpf,
    /// Run every test: unit tests, then the datapath and traffic suites serially (needs root).
    Test,
    /// Show the gateway at work in network namespaces: clients, a gateway instance, an external server.
    Demo,
    /// Measure veg against iptables MASQUERADE and nftables masquerade on the same topology.
    Bench(bench::BenchArgs),
    /// Build the image (veg, bpftool and their libraries on an empty base) with podman.
    Image(image::ImageArgs),
    /// The whole gateway on this machine with real OVN: `up`, `down`, `status`, `demo`.
    Lab {
        #[command(subcommand)]
        task: lab::LabTask,
    },
}

fn main() {
    let result = match Cli::parse().task {
        Task::Setup => workspace::setup(),
        Task::BuildEbpf => {
            workspace::build_ebpf().map(|path| println!("eBPF object: {}", path.display()))
        }
        Task::Test => workspace::test(),
        Task::Demo => demo::run(),
        Task::Bench(args) => bench::run(args),
        Task::Image(args) => image::build(&args),
        Task::Lab { task } => lab::run(task),
    };
    if let Err(err) = result {
        eprintln!("xtask: error: {err:#}");
        std::process::exit(1);
    }
}
