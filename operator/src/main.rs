//! `wsr-operator`: the controller (`run`), its CRD (`crd`), migration from DWO's backup
//! configuration (`import-dwoc`), the planning benchmark and a reference helper.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use std::io::Read as _;

/// The wsr operator: backs up stopped DevWorkspaces with Jobs that run the recovery image,
/// as configured by cluster-scoped BackupPolicy objects (wsr.dev/v1alpha1). See docs/OPERATOR.md.
#[derive(Parser)]
#[command(name = "wsr-operator", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller (in-cluster config, or the current kubeconfig context).
    Run {
        /// Namespace holding the policies' authSecrets (default: POD_NAMESPACE, then the
        /// client's default namespace).
        #[arg(long, env = "POD_NAMESPACE")]
        namespace: Option<String>,
    },
    /// Print the BackupPolicy CustomResourceDefinition (YAML).
    Crd,
    /// Convert a DevWorkspaceOperatorConfig's backupCronJob into a BackupPolicy (YAML on stdout).
    ImportDwoc {
        /// The DWOC YAML file, or - for stdin.
        file: String,
        /// Name of the policy.
        #[arg(long, default_value = "imported-from-dwoc")]
        name: String,
    },
    /// Time the planning step of one run over N synthetic workspaces.
    BenchPlan {
        #[arg(long, default_value_t = 10_000)]
        workspaces: usize,
        #[arg(long, default_value_t = 21)]
        rounds: usize,
    },
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
        Command::Run { namespace } => run(namespace),
        Command::Crd => {
            print!("{}", wsr_operator::policy::crd_yaml());
            Ok(())
        }
        Command::ImportDwoc { file, name } => {
            let mut text = String::new();
            if file == "-" {
                std::io::stdin().read_to_string(&mut text)?;
            } else {
                text = std::fs::read_to_string(&file).with_context(|| format!("reading {file}"))?;
            }
            let (policy, warnings) = wsr_operator::dwoc::import(&text, &name)?;
            for w in warnings {
                eprintln!("wsr-operator: warning: {w}");
            }
            print!("{}", serde_saphyr::to_string(&policy)?);
            Ok(())
        }
        Command::BenchPlan { workspaces, rounds } => {
            wsr_operator::bench::bench_plan(workspaces, rounds);
            Ok(())
        }
        Command::BackupRef {
            registry,
            namespace,
            workspace,
        } => {
            println!(
                "{}",
                wsr_operator::backup_reference(&registry, &namespace, &workspace)?
            );
            Ok(())
        }
    }
}

fn run(namespace: Option<String>) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WSR_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = kube::Client::try_default()
            .await
            .context("connecting to the API server (in-cluster or kubeconfig)")?;
        let namespace = namespace.unwrap_or_else(|| client.default_namespace().to_owned());
        wsr_operator::controller::run(client, namespace).await
    })
}
