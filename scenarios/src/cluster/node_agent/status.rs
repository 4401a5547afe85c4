//! Pod status as the kubelet writes it: container states, the pod phase derived from them
//! (the kubelet's rules), conditions with stable transition times, and the JSON sent to the
//! status subresource. Pure: the caller supplies the clock.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::spec::NOTES_CONDITION;

/// The address every pod reports: pods share the host's network namespace.
pub const POD_IP: &str = "127.0.0.1";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: String,
    },
    Terminated {
        exit_code: i32,
        reason: String,
        message: Option<String>,
        started_at: Option<String>,
        finished_at: String,
        container_id: Option<String>,
    },
}

impl State {
    pub fn waiting(reason: &str, message: Option<String>) -> State {
        State::Waiting {
            reason: reason.into(),
            message,
        }
    }

    fn to_json(&self) -> Value {
        match self {
            State::Waiting { reason, message } => {
                json!({"waiting": {"reason": reason, "message": message}})
            }
            State::Running { started_at } => json!({"running": {"startedAt": started_at}}),
            State::Terminated {
                exit_code,
                reason,
                message,
                started_at,
                finished_at,
                container_id,
            } => json!({"terminated": {
                "exitCode": exit_code, "reason": reason, "message": message,
                "startedAt": started_at, "finishedAt": finished_at, "containerID": container_id,
            }}),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ContainerStatus {
    pub name: String,
    pub image: String,
    pub image_id: String,
    pub container_id: Option<String>,
    pub state: State,
    pub last_state: Option<State>,
    pub restart_count: i32,
    /// The readiness probe's verdict while running; `None` without a readiness probe (then a
    /// running container is ready).
    pub probed_ready: Option<bool>,
}

impl ContainerStatus {
    pub fn new(name: &str, image: &str, state: State) -> ContainerStatus {
        ContainerStatus {
            name: name.into(),
            image: image.into(),
            image_id: String::new(),
            container_id: None,
            state,
            last_state: None,
            restart_count: 0,
            probed_ready: None,
        }
    }

    fn running(&self) -> bool {
        matches!(self.state, State::Running { .. })
    }

    fn ready(&self) -> bool {
        self.running() && self.probed_ready.unwrap_or(true)
    }

    fn succeeded(&self) -> bool {
        matches!(self.state, State::Terminated { exit_code: 0, .. })
    }

    fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "image": self.image,
            "imageID": self.image_id,
            "containerID": self.container_id,
            "ready": self.ready(),
            "started": self.running(),
            "restartCount": self.restart_count,
            "state": self.state.to_json(),
            "lastState": self.last_state.as_ref().map(State::to_json).unwrap_or(json!({})),
        })
    }
}

/// Everything the agent knows about one pod's progress.
#[derive(Clone, Debug)]
pub struct PodState {
    pub init: Vec<ContainerStatus>,
    pub main: Vec<ContainerStatus>,
    /// `Always`, `OnFailure` or `Never`.
    pub restart_policy: String,
    pub start_time: String,
    /// A pod-level failure (unsupported spec, deadline): reason and message.
    pub failure: Option<(String, String)>,
    /// What is honoured only in part (the notes condition).
    pub notes: Vec<String>,
    /// Condition type -> (status, lastTransitionTime), kept so times move only on change.
    transitions: BTreeMap<String, (bool, String)>,
}

impl PodState {
    pub fn new(
        init: Vec<ContainerStatus>,
        main: Vec<ContainerStatus>,
        restart_policy: &str,
        start_time: &str,
    ) -> PodState {
        PodState {
            init,
            main,
            restart_policy: restart_policy.into(),
            start_time: start_time.into(),
            failure: None,
            notes: Vec::new(),
            transitions: BTreeMap::new(),
        }
    }

    fn initialized(&self) -> bool {
        self.init.iter().all(ContainerStatus::succeeded)
    }

    /// The kubelet's `getPhase`, for pods without sidecars.
    pub fn phase(&self) -> &'static str {
        if self.failure.is_some() {
            return "Failed";
        }
        if !self.initialized() {
            let init_failed = self
                .init
                .iter()
                .any(|c| matches!(c.state, State::Terminated { exit_code, .. } if exit_code != 0));
            return if init_failed && self.restart_policy == "Never" {
                "Failed"
            } else {
                "Pending"
            };
        }
        let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
        for c in &self.main {
            match &c.state {
                State::Running { .. } => running += 1,
                State::Terminated { exit_code, .. } => {
                    stopped += 1;
                    if *exit_code == 0 {
                        succeeded += 1;
                    }
                }
                State::Waiting { .. } if c.last_state.is_some() => stopped += 1,
                State::Waiting { .. } => waiting += 1,
            }
        }
        if waiting > 0 {
            "Pending"
        } else if running > 0 {
            "Running"
        } else if stopped > 0 {
            match self.restart_policy.as_str() {
                "Always" => "Running",
                _ if stopped == succeeded => "Succeeded",
                "Never" => "Failed",
                _ => "Running",
            }
        } else {
            "Pending"
        }
    }

    pub fn is_terminal(&self) -> bool {
        matches!(self.phase(), "Succeeded" | "Failed")
    }

    fn condition(
        &mut self,
        kind: &str,
        status: bool,
        now: &str,
        reason: Option<&str>,
        message: Option<String>,
    ) -> Value {
        let entry = self
            .transitions
            .entry(kind.to_owned())
            .or_insert((status, now.to_owned()));
        if entry.0 != status {
            *entry = (status, now.to_owned());
        }
        json!({
            "type": kind,
            "status": if status { "True" } else { "False" },
            "lastProbeTime": null,
            "lastTransitionTime": entry.1,
            "reason": reason,
            "message": message,
        })
    }

    /// The body of a strategic-merge patch to `pods/status` (conditions merge by type, so the
    /// scheduler's `PodScheduled` stays).
    pub fn to_patch(&mut self, now: &str) -> Value {
        let phase = self.phase();
        let terminal = self.is_terminal();
        let incomplete: Vec<String> = self
            .init
            .iter()
            .filter(|c| !c.succeeded())
            .map(|c| c.name.clone())
            .collect();
        let unready: Vec<String> = self
            .main
            .iter()
            .filter(|c| !c.ready())
            .map(|c| c.name.clone())
            .collect();
        let mut conditions = vec![
            self.condition("PodReadyToStartContainers", !terminal, now, None, None),
            if incomplete.is_empty() {
                self.condition("Initialized", true, now, None, None)
            } else {
                self.condition(
                    "Initialized",
                    false,
                    now,
                    Some("ContainersNotInitialized"),
                    Some(format!(
                        "containers with incomplete status: [{}]",
                        incomplete.join(" ")
                    )),
                )
            },
        ];
        for kind in ["ContainersReady", "Ready"] {
            conditions.push(if terminal {
                self.condition(kind, false, now, Some("PodCompleted"), None)
            } else if unready.is_empty() {
                self.condition(kind, true, now, None, None)
            } else {
                self.condition(
                    kind,
                    false,
                    now,
                    Some("ContainersNotReady"),
                    Some(format!(
                        "containers with unready status: [{}]",
                        unready.join(" ")
                    )),
                )
            });
        }
        if !self.notes.is_empty() {
            let message = self.notes.join("; ");
            conditions.push(self.condition(
                NOTES_CONDITION,
                true,
                now,
                Some("PartiallyEmulated"),
                Some(message),
            ));
        }
        let (reason, message) = match &self.failure {
            Some((r, m)) => (Some(r.clone()), Some(m.clone())),
            None => (None, None),
        };
        json!({"status": {
            "phase": phase,
            "reason": reason,
            "message": message,
            "hostIP": POD_IP,
            "hostIPs": [{"ip": POD_IP}],
            "podIP": POD_IP,
            "podIPs": [{"ip": POD_IP}],
            "startTime": self.start_time,
            "conditions": conditions,
            "initContainerStatuses": self.init.iter().map(ContainerStatus::to_json).collect::<Vec<_>>(),
            "containerStatuses": self.main.iter().map(ContainerStatus::to_json).collect::<Vec<_>>(),
        }})
    }
}

/// The message a terminated container leaves: its termination message file (the kubelet
/// keeps at most 4096 bytes), else with `FallbackToLogsOnError` and a failure, the log tail
/// (at most 80 lines and 2048 bytes).
pub fn termination_message(
    file: &[u8],
    policy: Option<&str>,
    exit_code: i32,
    log: &[u8],
) -> Option<String> {
    let cut = |bytes: &[u8], max: usize| {
        let start = bytes.len().saturating_sub(max);
        String::from_utf8_lossy(&bytes[start..]).into_owned()
    };
    if !file.is_empty() {
        let end = file.len().min(4096);
        return Some(String::from_utf8_lossy(&file[..end]).into_owned());
    }
    if policy == Some("FallbackToLogsOnError") && exit_code != 0 && !log.is_empty() {
        let text = cut(log, 2048);
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(80)..].join("\n");
        return Some(tail);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(code: i32) -> State {
        State::Terminated {
            exit_code: code,
            reason: if code == 0 { "Completed" } else { "Error" }.into(),
            message: None,
            started_at: None,
            finished_at: "t".into(),
            container_id: None,
        }
    }

    fn running() -> State {
        State::Running {
            started_at: "t".into(),
        }
    }

    fn pod(init: &[State], main: &[State], policy: &str) -> PodState {
        let c = |(i, s): (usize, &State)| ContainerStatus::new(&format!("c{i}"), "img", s.clone());
        PodState::new(
            init.iter().enumerate().map(c).collect(),
            main.iter().enumerate().map(c).collect(),
            policy,
            "t0",
        )
    }

    #[test]
    fn phases_follow_the_kubelet() {
        let waiting = || State::waiting("ContainerCreating", None);
        assert_eq!(pod(&[], &[waiting()], "Never").phase(), "Pending");
        assert_eq!(pod(&[running()], &[waiting()], "Never").phase(), "Pending");
        assert_eq!(pod(&[done(1)], &[waiting()], "Never").phase(), "Failed");
        assert_eq!(
            pod(&[done(1)], &[waiting()], "OnFailure").phase(),
            "Pending"
        );
        assert_eq!(pod(&[done(0)], &[running()], "Never").phase(), "Running");
        assert_eq!(pod(&[], &[running(), done(0)], "Never").phase(), "Running");
        assert_eq!(pod(&[], &[done(0), done(0)], "Never").phase(), "Succeeded");
        assert_eq!(pod(&[], &[done(0), done(2)], "Never").phase(), "Failed");
        assert_eq!(
            pod(&[], &[done(0), done(2)], "OnFailure").phase(),
            "Running"
        );
        assert_eq!(pod(&[], &[done(0)], "OnFailure").phase(), "Succeeded");
        assert_eq!(pod(&[], &[done(0)], "Always").phase(), "Running");
        let mut restarting = pod(&[], &[waiting()], "OnFailure");
        restarting.main[0].last_state = Some(done(1));
        assert_eq!(restarting.phase(), "Running");
        let mut rejected = pod(&[], &[running()], "Never");
        rejected.failure = Some(("NodeAgentUnsupported".into(), "spec.hostPID".into()));
        assert_eq!(rejected.phase(), "Failed");
    }

    #[test]
    fn a_running_container_is_ready_only_once_its_readiness_probe_passes() {
        let mut p = pod(&[], &[running()], "Always");
        p.main[0].probed_ready = Some(false);
        let v = p.to_patch("t1");
        assert_eq!(v["status"]["containerStatuses"][0]["ready"], false);
        assert_eq!(v["status"]["phase"], "Running");
        let ready = |v: &Value| {
            v["status"]["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["type"] == "Ready")
                .unwrap()["status"]
                .clone()
        };
        assert_eq!(ready(&v), "False");
        p.main[0].probed_ready = Some(true);
        let v = p.to_patch("t2");
        assert_eq!(v["status"]["containerStatuses"][0]["ready"], true);
        assert_eq!(ready(&v), "True");
    }

    #[test]
    fn patch_carries_states_conditions_and_stable_times() {
        let mut p = pod(&[done(0)], &[running()], "Never");
        p.notes = vec!["no pod network".into()];
        let v = p.to_patch("t1");
        let s = &v["status"];
        assert_eq!(s["phase"], "Running");
        assert_eq!(s["podIP"], POD_IP);
        assert_eq!(
            s["initContainerStatuses"][0]["state"]["terminated"]["reason"],
            "Completed"
        );
        assert_eq!(s["containerStatuses"][0]["ready"], true);
        let cond = |v: &Value, t: &str| {
            v["status"]["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["type"] == t)
                .cloned()
                .unwrap()
        };
        assert_eq!(cond(&v, "Ready")["status"], "True");
        assert_eq!(cond(&v, NOTES_CONDITION)["message"], "no pod network");
        assert!(
            v["status"]["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .all(|c| c["type"] != "PodScheduled")
        );

        p.main[0].state = done(3);
        let v2 = p.to_patch("t2");
        assert_eq!(v2["status"]["phase"], "Failed");
        assert_eq!(cond(&v2, "Ready")["status"], "False");
        assert_eq!(cond(&v2, "Ready")["lastTransitionTime"], "t2");
        assert_eq!(cond(&v2, "Ready")["reason"], "PodCompleted");
        assert_eq!(cond(&v2, "Initialized")["lastTransitionTime"], "t1");
        assert_eq!(
            v2["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"],
            3
        );
    }

    #[test]
    fn termination_message_prefers_the_file() {
        assert_eq!(
            termination_message(b"bad auth", None, 1, b"log"),
            Some("bad auth".into())
        );
        assert_eq!(termination_message(b"", Some("File"), 1, b"log"), None);
        assert_eq!(
            termination_message(b"", Some("FallbackToLogsOnError"), 1, b"a\nb\n"),
            Some("a\nb".into())
        );
        assert_eq!(
            termination_message(b"", Some("FallbackToLogsOnError"), 0, b"a"),
            None
        );
        let long = vec![b'x'; 5000];
        assert_eq!(
            termination_message(&long, None, 1, b"").unwrap().len(),
            4096
        );
        let many: String = (0..200).map(|i| format!("{i}\n")).collect();
        let tail =
            termination_message(b"", Some("FallbackToLogsOnError"), 1, many.as_bytes()).unwrap();
        assert_eq!(tail.lines().count(), 80);
        assert!(tail.ends_with("199"));
    }
}
