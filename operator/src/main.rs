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

#[derive(clap::Args)]
struct RunArgs {
    /// Namespace holding the policies' authSecrets and the leader Lease (default:
    /// POD_NAMESPACE, then the client's default namespace).
    #[arg(long, env = "POD_NAMESPACE")]
    namespace: Option<String>,
    /// Address of the /healthz, /readyz and /metrics listener.
    #[arg(long, env = "WSR_OPERATOR_LISTEN", default_value = "0.0.0.0:8080")]
    listen: std::net::SocketAddr,
    /// Log lines as JSON objects or as text (both to stderr, filtered by WSR_LOG).
    #[arg(long, env = "WSR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Name of the leader-election Lease in the operator namespace.
    #[arg(long, default_value = "wsr-operator")]
    lease_name: String,
    /// Seconds the leader holds the Lease without renewing it: how long a follower waits
    /// after the leader died before it takes over.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(6..=300))]
    lease_duration: u64,
    /// This replica's identity in the Lease (default: POD_NAME, else host name and pid).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Reconcile without leader election. Only for a single replica: two operators without
    /// it both create Jobs.
    #[arg(long)]
    no_leader_election: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Json,
    Text,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller (in-cluster config, or the current kubeconfig context).
    Run(RunArgs),
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
        Command::Run(args) => run(args),
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

fn run(args: RunArgs) -> anyhow::Result<()> {
    init_logging(args.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = kube::Client::try_default()
            .await
            .context("connecting to the API server (in-cluster or kubeconfig)")?;
        let namespace = args
            .namespace
            .unwrap_or_else(|| client.default_namespace().to_owned());
        let identity = args.identity.unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            format!("{}-{}", host.trim(), std::process::id())
        });
        let lease = (!args.no_leader_election).then(|| wsr_operator::leader::LeaseConfig {
            namespace: namespace.clone(),
            name: args.lease_name,
            identity,
            duration_seconds: args.lease_duration,
        });
        let options = wsr_operator::controller::RunOptions {
            operator_namespace: namespace,
            listen: args.listen,
            lease,
        };
        wsr_operator::controller::run(client, options).await
    })
}

/// stderr, filtered by `WSR_LOG` (default `info`); JSON lines carry the current span's
/// fields (policy, namespace, workspace, Job) and the span list.
fn init_logging(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("WSR_LOG").unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}
