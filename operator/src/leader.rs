//! Leader election on a `coordination.k8s.io` Lease (kube-lease-manager): only the holder
//! reconciles and creates Jobs; the other replicas keep their caches warm and take over when
//! the holder stops renewing for the lease duration.

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// How this process takes part in the election.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This process's identity in the Lease (the pod name in a Deployment).
    pub identity: String,
    /// Seconds a holder keeps the Lease without renewing it.
    pub duration_seconds: u64,
}

/// A running election: `is_leader` follows this process's hold on the Lease.
pub struct Election {
    pub is_leader: watch::Receiver<bool>,
    task: JoinHandle<Result<kube_lease_manager::LeaseManager, LeaseManagerError>>,
}

/// Joins the election (creating the Lease if needed).
pub async fn join(client: Client, config: &LeaseConfig) -> Result<Election, LeaseManagerError> {
    // Renew a third of the duration before it ends (the crate's grace), at least 2 s.
    let grace = (config.duration_seconds / 3).max(2);
    let manager = LeaseManagerBuilder::new(client, &config.name)
        .with_namespace(&config.namespace)
        .with_identity(&config.identity)
        .with_duration(config.duration_seconds)
        .with_grace(grace)
        .with_field_manager(format!("{}-{}", crate::names::MANAGER, config.identity))
        .build()
        .await?;
    let (is_leader, task) = manager.watch().await;
    info!(lease = %config.name, namespace = %config.namespace, identity = %config.identity,
          duration_s = config.duration_seconds, "joined the leader election");
    Ok(Election { is_leader, task })
}

impl Election {
    /// Leaves the election: the Lease is released if this process holds it, so a follower
    /// takes over at once instead of after the lease duration.
    pub async fn release(self) {
        let Election { is_leader, task } = self;
        drop(is_leader); // closing the channel makes the manager release and return
        match tokio::time::timeout(Duration::from_secs(5), task).await {
            Ok(Ok(Ok(_))) => info!("leader Lease released"),
            Ok(Ok(Err(e))) => warn!(error = %e, "releasing the leader Lease failed"),
            Ok(Err(e)) => warn!(error = %e, "the leader election task failed"),
            Err(_) => warn!("releasing the leader Lease timed out"),
        }
    }
}
