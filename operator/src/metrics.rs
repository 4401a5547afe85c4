//! The operator's Prometheus metrics (`/metrics`, OpenMetrics text). Telemetry only: the
//! controller reports what happened here and never reads it back. Labels are bounded: a
//! namespace, a policy, or a reason from a fixed list, never a workspace or a Job name.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NamespaceLabel {
    pub namespace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub namespace: String,
    /// One of [`crate::results::FAILURE_REASONS`].
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabel {
    pub policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SkipLabels {
    pub policy: String,
    /// A skip reason of the policy status (`notStopped`, `upToDate`, ...).
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DrillResultLabels {
    pub policy: String,
    /// `passed`/`failed` for drills; a drill status (`ok`, `stale`, ...) for backups.
    pub result: String,
}

/// Every series the operator exports, registered once.
pub struct Metrics {
    registry: Registry,
    pub backups_started: Family<NamespaceLabel, Counter>,
    pub backups_succeeded: Family<NamespaceLabel, Counter>,
    pub backups_failed: Family<FailureLabels, Counter>,
    pub backup_duration: Histogram,
    pub backup_size: Histogram,
    pub backup_uploaded: Histogram,
    pub jobs_running: Family<PolicyLabel, Gauge>,
    pub workspaces_eligible: Family<PolicyLabel, Gauge>,
    pub workspaces_skipped: Family<SkipLabels, Gauge>,
    pub last_success: Family<PolicyLabel, Gauge<f64, AtomicU64>>,
    pub reconcile_errors: Family<PolicyLabel, Counter>,
    pub leader: Gauge,
    pub drills: Family<DrillResultLabels, Counter>,
    pub drill_backups: Family<DrillResultLabels, Gauge>,
    pub drill_passed: Family<PolicyLabel, Gauge>,
    pub drill_last_run: Family<PolicyLabel, Gauge<f64, AtomicU64>>,
    pub drill_oldest_age: Family<PolicyLabel, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("wsr");
        let m = Metrics {
            backups_started: Family::default(),
            backups_succeeded: Family::default(),
            backups_failed: Family::default(),
            // 1 s .. about 9 h.
            backup_duration: Histogram::new(exponential_buckets(1.0, 2.0, 16)),
            // 1 MiB .. 1 TiB.
            backup_size: Histogram::new(exponential_buckets(1_048_576.0, 4.0, 11)),
            backup_uploaded: Histogram::new(exponential_buckets(1_048_576.0, 4.0, 11)),
            jobs_running: Family::default(),
            workspaces_eligible: Family::default(),
            workspaces_skipped: Family::default(),
            last_success: Family::default(),
            reconcile_errors: Family::default(),
            leader: Gauge::default(),
            drills: Family::default(),
            drill_backups: Family::default(),
            drill_passed: Family::default(),
            drill_last_run: Family::default(),
            drill_oldest_age: Family::default(),
            registry: Registry::default(),
        };
        r.register(
            "backups_started",
            "Backup Jobs created, by workspace namespace",
            m.backups_started.clone(),
        );
        r.register(
            "backups_succeeded",
            "Backup Jobs recorded as succeeded, by workspace namespace",
            m.backups_succeeded.clone(),
        );
        r.register(
            "backups_failed",
            "Backup Jobs recorded as failed, by workspace namespace and reason",
            m.backups_failed.clone(),
        );
        r.register_with_unit(
            "backup_duration",
            "Run time of finished backup Jobs (Job start to its terminal condition)",
            Unit::Seconds,
            m.backup_duration.clone(),
        );
        r.register_with_unit(
            "backup_size",
            "File content backed up by successful Jobs (wsr-backup's report)",
            Unit::Bytes,
            m.backup_size.clone(),
        );
        r.register_with_unit(
            "backup_uploaded",
            "Bytes sent to the registry by successful Jobs (unchanged layers are not sent)",
            Unit::Bytes,
            m.backup_uploaded.clone(),
        );
        r.register(
            "backup_jobs_running",
            "Backup Jobs of the policy that have not finished",
            m.jobs_running.clone(),
        );
        r.register(
            "workspaces_eligible",
            "Workspaces of the policy due for a backup at its last run (started or waiting for a slot)",
            m.workspaces_eligible.clone(),
        );
        r.register(
            "workspaces_skipped",
            "Workspaces of the policy not backed up at its last run, by reason",
            m.workspaces_skipped.clone(),
        );
        r.register(
            "last_successful_backup_timestamp_seconds",
            "When the newest successful backup of the policy recorded by this process finished (Unix time)",
            m.last_success.clone(),
        );
        r.register(
            "reconcile_errors",
            "Runs of the policy that failed (retried after 30 s)",
            m.reconcile_errors.clone(),
        );
        r.register(
            "leader",
            "1 while this process holds the leader Lease and reconciles, else 0",
            m.leader.clone(),
        );
        r.register(
            "drills",
            "Drill Jobs of the policy recorded, by result (passed or failed)",
            m.drills.clone(),
        );
        r.register(
            "drill_backups",
            "Backups of the policy's last drill by status (ok, stale, corrupt, missing_blob, unreadable, auth_denied)",
            m.drill_backups.clone(),
        );
        r.register(
            "drill_passed",
            "1 when the policy's last drill passed (every backup restored, checked and within maxAge), else 0",
            m.drill_passed.clone(),
        );
        r.register(
            "drill_last_run_timestamp_seconds",
            "When the policy's last recorded drill finished (Unix time)",
            m.drill_last_run.clone(),
        );
        r.register_with_unit(
            "drill_oldest_backup_age",
            "Age of the oldest backup in the policy's last drill (the worst recovery point)",
            Unit::Seconds,
            m.drill_oldest_age.clone(),
        );
        Metrics { registry: r, ..m }
    }

    /// The OpenMetrics text of every series.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }

    /// The per-run gauges of one policy; `previous_skipped` are the reasons of the last run,
    /// set to 0 when they no longer occur.
    pub fn record_run(
        &self,
        policy: &str,
        running: u32,
        eligible: u32,
        skipped: &BTreeMap<String, u32>,
        previous_skipped: &BTreeMap<String, u32>,
    ) {
        let p = PolicyLabel {
            policy: policy.into(),
        };
        self.jobs_running.get_or_create(&p).set(running.into());
        self.workspaces_eligible
            .get_or_create(&p)
            .set(eligible.into());
        for reason in previous_skipped.keys().chain(skipped.keys()) {
            let labels = SkipLabels {
                policy: policy.into(),
                reason: reason.clone(),
            };
            let n = skipped.get(reason).copied().unwrap_or(0);
            self.workspaces_skipped.get_or_create(&labels).set(n.into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_named_and_labelled_as_documented() {
        let m = Metrics::new();
        m.backups_started
            .get_or_create(&NamespaceLabel {
                namespace: "team-a".into(),
            })
            .inc();
        m.backups_failed
            .get_or_create(&FailureLabels {
                namespace: "team-a".into(),
                reason: "registryUnreachable".into(),
            })
            .inc();
        m.backup_duration.observe(3.0);
        let previous = BTreeMap::from([("jobRunning".to_string(), 1)]);
        m.record_run(
            "nightly",
            2,
            3,
            &BTreeMap::from([("notStopped".into(), 4)]),
            &previous,
        );
        let nightly = PolicyLabel {
            policy: "nightly".into(),
        };
        let drill = |result: &str| DrillResultLabels {
            policy: "nightly".into(),
            result: result.into(),
        };
        m.drills.get_or_create(&drill("failed")).inc();
        m.drill_backups.get_or_create(&drill("missing_blob")).set(2);
        m.drill_passed.get_or_create(&nightly).set(0);
        m.drill_last_run
            .get_or_create(&nightly)
            .set(1_764_064_800.5);
        m.drill_oldest_age.get_or_create(&nightly).set(259_200);
        let text = m.encode();
        for line in [
            "wsr_backups_started_total{namespace=\"team-a\"} 1",
            "wsr_backups_failed_total{namespace=\"team-a\",reason=\"registryUnreachable\"} 1",
            "wsr_backup_duration_seconds_count 1",
            "wsr_backup_duration_seconds_bucket{le=\"4.0\"} 1",
            "wsr_backup_jobs_running{policy=\"nightly\"} 2",
            "wsr_workspaces_eligible{policy=\"nightly\"} 3",
            "wsr_workspaces_skipped{policy=\"nightly\",reason=\"notStopped\"} 4",
            "wsr_workspaces_skipped{policy=\"nightly\",reason=\"jobRunning\"} 0",
            "wsr_leader 0",
            "wsr_drills_total{policy=\"nightly\",result=\"failed\"} 1",
            "wsr_drill_backups{policy=\"nightly\",result=\"missing_blob\"} 2",
            "wsr_drill_passed{policy=\"nightly\"} 0",
            "wsr_drill_last_run_timestamp_seconds{policy=\"nightly\"} 1764064800.5",
            "wsr_drill_oldest_backup_age_seconds{policy=\"nightly\"} 259200",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
    }
}
