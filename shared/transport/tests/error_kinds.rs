//! How a failed request is classified, against a server that misbehaves on purpose. In its own
//! test binary: it installs a short retry policy for the whole process.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;
use wsr_format::digest::Digest;
use wsr_format::reference::Repository;
use wsr_transport::retry::RetryPolicy;
use wsr_transport::{Access, ConnectOptions, Store, TransportError};

/// Answers the `/v2/` ping, then closes every other connection without a response.
fn closing_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let host = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut head = [0u8; 4096];
            let n = stream.read(&mut head).unwrap_or(0);
            if head[..n].starts_with(b"GET /v2/ ") {
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}");
            }
        }
    });
    host
}

/// A connection closed before the response is a connection failure, even when the request's
/// URL happens to contain "tls" (an upload's random state token can: CI saw it).
#[tokio::test(flavor = "multi_thread")]
async fn a_closed_connection_is_not_a_tls_failure_whatever_the_url_says() {
    RetryPolicy {
        budget: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(5),
    }
    .install()
    .unwrap();
    let repo = Repository::Registry {
        host: closing_server(),
        path: "ns/tls-in-the-url".into(),
    };
    let options = ConnectOptions {
        plain_http: true,
        ..Default::default()
    };
    let store = Store::open(&repo, &options, Access::Pull).await.unwrap();
    let err = store.blob_exists(&Digest::of(b"x")).await.unwrap_err();
    assert!(matches!(err, TransportError::Connect { .. }), "{err:?}");
    assert!(err.to_string().contains("tls-in-the-url"), "{err}");
}
