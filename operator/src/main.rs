//! `wsr-operator`: today a helper that prints where the operator would back a workspace up;
//! the controller itself is not built yet (see the crate docs and docs/ARCHITECTURE.md).

use clap::{Parser, Subcommand};

/// The wsr operator. The kube-rs controller that schedules backup Jobs is not implemented yet;
/// until then, back workspaces up with DWO's own scheduler and the recovery image (images/).
#[derive(Parser)]
#[command(name = "wsr-operator", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the backup reference of a workspace: <registry>/<namespace>/<workspace>:latest.
    BackupRef {
        #[arg(long)]
        registry: String,
        #[arg(long)]
        namespace: String,
        #[arg(long)]
        workspace: String,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::BackupRef {
            registry,
            namespace,
            workspace,
        } => {
            println!(
                "{}",
                wsr_operator::backup_reference(&registry, &namespace, &workspace)?
            );
        }
    }
    Ok(())
}
