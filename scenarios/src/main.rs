//! `scenarios`: tools that exercise wsr from the outside.
//!
//! `scenarios demo` runs the main job end to end on the sample workspace (see
//! `scenarios::demo`); `scenarios cluster-demo` the operator's story on the local cluster (see
//! `scenarios::cluster_demo`); `scenarios corpus` writes a deterministic synthetic workspace (see
//! [`corpus`]); `scenarios bench` runs wsr and its peers (upstream DWO pipeline, `tar | zstd`, restic and
//! the machine's floors) on the same corpus and regenerates `docs/BENCHMARKS.md` (see
//! [`bench`]). This file only parses arguments and dispatches: one [`Command`] variant per
//! subcommand, each with its own argument struct, so adding one is a local change.

mod bench;
mod corpus;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use corpus::{Profile, Scale};

#[derive(Parser)]
#[command(
    name = "scenarios",
    about = "Synthetic workspaces and benchmarks for wsr"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Back up a sample workspace into an OCI layout, restore it and compare (no server needed).
    Demo {
        /// Work in this directory and keep it (default: a temporary directory, removed).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Write a deterministic synthetic workspace.
    Corpus(CorpusArgs),
    /// Benchmark wsr against upstream, tar|zstd, restic and the machine's floors.
    Bench(bench::BenchArgs),
    /// Forward to a registry through a network profile's shaping (the benchmark's proxy, for
    /// measuring by hand), until stopped.
    Shape(bench::ShapeArgs),
    /// The operator's whole story on the local cluster: back up two workspaces, lose their
    /// claim, restore one with DWO's init container and one with `wsr-restore --in-cluster`.
    ClusterDemo(scenarios::cluster_demo::Args),
    /// Start or stop a real Kubernetes control plane (see `scenarios::cluster`).
    #[command(subcommand)]
    Cluster(scenarios::cluster::ClusterCommand),
    /// Run the node agent (the kubelet stand-in; see `scenarios::cluster::node_agent`).
    NodeAgent {
        #[arg(long)]
        kubeconfig: PathBuf,
        /// Where pods' files and claim volumes live.
        #[arg(long)]
        dir: PathBuf,
    },
}

#[derive(Args)]
struct CorpusArgs {
    /// workspace | many-files
    #[arg(long, default_value = "workspace")]
    profile: Profile,
    /// tiny (4 MB) | small (100 MB) | large (1 GB) | huge (4 GB) | huge:N (N GB) | NNNm | NNg
    #[arg(long, default_value = "small")]
    size: Scale,
    /// Directory to create (must not exist or be empty).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = corpus::DEFAULT_SEED)]
    seed: u64,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Demo { dir } => scenarios::demo::run(dir),
        Command::Corpus(a) => {
            let stats = corpus::generate_seeded(&a.out, a.profile, &a.size, a.seed)?;
            println!("{}", serde_json::to_string_pretty(&stats)?);
            Ok(())
        }
        Command::Bench(a) => bench::run(a),
        Command::Shape(a) => bench::shape(a),
        Command::ClusterDemo(a) => scenarios::cluster_demo::main(a),
        Command::Cluster(c) => scenarios::cluster::run(c),
        Command::NodeAgent { kubeconfig, dir } => {
            scenarios::cluster::node_agent::main(&kubeconfig, &dir)
        }
    }
}
