//! httpGet liveness and readiness probes, as the kubelet runs them, for pods on the host
//! network: `GET http://127.0.0.1:<port><path>`, success for a status from 200 to 399.
//! Other probe kinds (exec, tcpSocket, grpc), `startupProbe`, HTTPS, another host and
//! headers are reported unsupported by [`review`].

use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A probe the agent runs, with the kubelet's defaults filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpProbe {
    pub port: u16,
    pub path: String,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

/// What is wrong with a `livenessProbe` / `readinessProbe` value, for the unsupported list.
pub fn review(value: &Value) -> Vec<String> {
    let mut wrong = Vec::new();
    for (key, v) in value.as_object().into_iter().flatten() {
        match key.as_str() {
            "initialDelaySeconds"
            | "periodSeconds"
            | "timeoutSeconds"
            | "successThreshold"
            | "failureThreshold"
            | "terminationGracePeriodSeconds" => {}
            "httpGet" => {
                for (k, x) in v.as_object().into_iter().flatten() {
                    match k.as_str() {
                        "path" | "port" => {}
                        "scheme" if x == "HTTP" => {}
                        "host" if x == "127.0.0.1" || x == "localhost" || x == "" => {}
                        _ => wrong.push(format!("httpGet.{k}")),
                    }
                }
            }
            _ => wrong.push(key.clone()),
        }
    }
    wrong
}

/// The probe of `container` with its port resolved (a name is looked up in the container's
/// ports); `None` when there is none or it is not an httpGet probe.
pub fn http_probe(container: &Container, probe: Option<&Probe>) -> Option<HttpProbe> {
    let probe = probe?;
    let get = probe.http_get.as_ref()?;
    let port = match &get.port {
        IntOrString::Int(n) => u16::try_from(*n).ok()?,
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .and_then(|p| u16::try_from(p.container_port).ok())?,
    };
    let seconds =
        |v: Option<i32>, default: i32| Duration::from_secs(v.unwrap_or(default).max(0) as u64);
    Some(HttpProbe {
        port,
        path: get.path.clone().unwrap_or_else(|| "/".into()),
        initial_delay: seconds(probe.initial_delay_seconds, 0),
        period: seconds(probe.period_seconds, 10).max(Duration::from_secs(1)),
        timeout: seconds(probe.timeout_seconds, 1).max(Duration::from_secs(1)),
        success_threshold: probe.success_threshold.unwrap_or(1).max(1) as u32,
        failure_threshold: probe.failure_threshold.unwrap_or(3).max(1) as u32,
    })
}

/// One probe attempt: whether `GET` answered 200..=399 within the timeout.
pub async fn check(probe: &HttpProbe) -> bool {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", probe.port)).await?;
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nUser-Agent: kube-probe/wsr-node-agent\r\nConnection: close\r\n\r\n",
            probe.path, probe.port
        );
        stream.write_all(request.as_bytes()).await?;
        let mut head = Vec::new();
        let mut buf = [0u8; 512];
        while !head.contains(&b'\n') && head.len() < 4096 {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(status_code(&head))
    };
    matches!(
        tokio::time::timeout(probe.timeout, attempt).await,
        Ok(Ok(Some(200..=399)))
    )
}

/// The status code of an HTTP/1.x response's first line.
fn status_code(head: &[u8]) -> Option<u16> {
    let line = head.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/1."))?;
    parts.next()?.parse().ok()
}

/// Consecutive results turned into a verdict, with the kubelet's thresholds.
#[derive(Debug)]
pub struct Verdict {
    successes: u32,
    failures: u32,
}

impl Verdict {
    pub fn new() -> Verdict {
        Verdict {
            successes: 0,
            failures: 0,
        }
    }

    /// Adds one result; returns `Some(true)` when the probe now passes (success threshold
    /// reached), `Some(false)` when it now fails (failure threshold reached), else `None`.
    pub fn add(&mut self, probe: &HttpProbe, ok: bool) -> Option<bool> {
        if ok {
            self.failures = 0;
            self.successes += 1;
            (self.successes >= probe.success_threshold).then_some(true)
        } else {
            self.successes = 0;
            self.failures += 1;
            (self.failures >= probe.failure_threshold).then_some(false)
        }
    }
}

impl Default for Verdict {
    fn default() -> Self {
        Verdict::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn container(probe: Value) -> Container {
        serde_json::from_value(json!({"name": "c", "image": "i",
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": probe}))
        .unwrap()
    }

    #[test]
    fn named_ports_resolve_and_defaults_are_the_kubelets() {
        let c =
            container(json!({"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 5}));
        let p = http_probe(&c, c.readiness_probe.as_ref()).unwrap();
        assert_eq!(p.port, 8080);
        assert_eq!(p.path, "/readyz");
        assert_eq!(p.period, Duration::from_secs(5));
        assert_eq!(p.timeout, Duration::from_secs(1));
        assert_eq!((p.success_threshold, p.failure_threshold), (1, 3));
        let c = container(json!({"httpGet": {"port": "nope"}}));
        assert_eq!(http_probe(&c, c.readiness_probe.as_ref()), None);
    }

    #[test]
    fn only_plain_http_on_the_host_is_supported() {
        assert!(
            review(
                &json!({"httpGet": {"path": "/", "port": 1, "scheme": "HTTP"}, "periodSeconds": 1})
            )
            .is_empty()
        );
        assert_eq!(
            review(
                &json!({"exec": {"command": ["true"]}, "httpGet": {"port": 1, "scheme": "HTTPS", "httpHeaders": []}})
            ),
            vec!["exec", "httpGet.httpHeaders", "httpGet.scheme"]
        );
    }

    #[test]
    fn thresholds_need_consecutive_results() {
        let c = container(json!({"httpGet": {"port": 1}, "failureThreshold": 2}));
        let p = http_probe(&c, c.readiness_probe.as_ref()).unwrap();
        let mut v = Verdict::new();
        assert_eq!(v.add(&p, false), None);
        assert_eq!(v.add(&p, true), Some(true));
        assert_eq!(v.add(&p, false), None);
        assert_eq!(v.add(&p, false), Some(false));
    }

    #[test]
    fn status_lines_are_parsed() {
        assert_eq!(
            status_code(b"HTTP/1.1 503 Service Unavailable\r\n"),
            Some(503)
        );
        assert_eq!(status_code(b"SSH-2.0\r\n"), None);
    }

    #[tokio::test]
    async fn a_real_listener_passes_and_a_closed_port_fails() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            for code in [200, 503] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await.unwrap();
                let body = format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n");
                s.write_all(body.as_bytes()).await.unwrap();
            }
        });
        let c = container(json!({"httpGet": {"path": "/x", "port": port}}));
        let p = http_probe(&c, c.readiness_probe.as_ref()).unwrap();
        assert!(check(&p).await, "200 passes");
        assert!(!check(&p).await, "503 fails");
        server.await.unwrap();
        assert!(!check(&p).await, "nothing listening fails");
    }
}
