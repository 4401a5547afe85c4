//! Network profiles: a shaping TCP proxy on loopback between every benchmarked tool and the
//! registry, adding a fixed delay in each direction and capping the bandwidth.
//!
//! This kernel has no netem, so the shaping happens in user space: for each direction of each
//! connection a reader task takes what arrived, stamps it with the time it would leave a link
//! of the profile's rate (`link_free = max(link_free, now) + len / rate`) plus the one-way
//! delay, and a writer task delivers it no earlier than that. All connections through one proxy
//! share its link, one per direction, as they would share a real one: a tool that opens four
//! connections gets the profile's bandwidth, not four times it. A bounded queue between them
//! (about twice the bandwidth-delay product) stops reading when the far side is slow, so TCP's
//! own flow control still applies end to end. Delivery is never early; tokio's timer may make
//! it up to about a millisecond late.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Largest piece read from one side before it is queued for the other.
const PIECE: usize = 64 << 10;

/// What the proxy adds to every connection.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Network {
    pub name: &'static str,
    /// Added to each direction.
    pub one_way: Duration,
    /// Bytes per second in each direction; `None` for no cap.
    pub rate: Option<u64>,
}

pub const PROFILES: [Network; 4] = [
    Network {
        name: "loopback",
        one_way: Duration::ZERO,
        rate: None,
    },
    Network {
        name: "cluster",
        one_way: Duration::from_millis(1),
        rate: Some(10_000_000_000 / 8),
    },
    Network {
        name: "region",
        one_way: Duration::from_millis(10),
        rate: Some(1_000_000_000 / 8),
    },
    Network {
        name: "remote",
        one_way: Duration::from_millis(40),
        rate: Some(200_000_000 / 8),
    },
];

impl Network {
    /// Plain loopback: no proxy at all, tools talk to the registry directly.
    pub fn is_direct(&self) -> bool {
        self.one_way.is_zero() && self.rate.is_none()
    }

    /// The least time `bytes` sent in one direction can take to arrive completely.
    #[cfg(test)]
    fn min_one_way(&self, bytes: u64) -> Duration {
        let serialise = self.rate.map_or(Duration::ZERO, |rate| {
            Duration::from_secs_f64(bytes as f64 / rate as f64)
        });
        self.one_way + serialise
    }

    /// One line for the report: "10 ms each way, 1 Gbit/s".
    pub fn describe(&self) -> String {
        if self.is_direct() {
            return "no proxy: tools talk to the registry on 127.0.0.1 directly".into();
        }
        let rate = self.rate.map_or("no bandwidth cap".to_string(), |r| {
            let bits = r * 8;
            if bits >= 1_000_000_000 {
                format!("{} Gbit/s", bits / 1_000_000_000)
            } else {
                format!("{} Mbit/s", bits / 1_000_000)
            }
        });
        format!("{} ms each way, {rate}", self.one_way.as_millis())
    }

    /// Queue depth per direction: about twice the bandwidth-delay product, at least 8 pieces.
    fn queue_pieces(&self) -> usize {
        let bdp = self
            .rate
            .map_or(0, |r| (r as f64 * self.one_way.as_secs_f64()) as usize);
        (2 * bdp / PIECE).max(8)
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

impl FromStr for Network {
    type Err = String;
    fn from_str(s: &str) -> Result<Network, String> {
        PROFILES
            .iter()
            .find(|p| p.name == s)
            .copied()
            .ok_or_else(|| {
                let names: Vec<&str> = PROFILES.iter().map(|p| p.name).collect();
                format!(
                    "unknown network profile {s:?}; expected one of {}",
                    names.join(", ")
                )
            })
    }
}

/// A running proxy: listens on 127.0.0.1 and forwards every connection to one upstream
/// address through the profile's shaping. Stops when dropped.
pub struct ShapingProxy {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl ShapingProxy {
    /// Starts a proxy to `upstream` on its own thread with its own runtime (the harness is
    /// synchronous, and the measured tools are other processes).
    pub fn start(upstream: SocketAddr, network: Network) -> Result<ShapingProxy> {
        let std_listener =
            std::net::TcpListener::bind("127.0.0.1:0").context("bind shaping proxy")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let (stop, stopped) = oneshot::channel();
        let thread = thread::Builder::new()
            .name(format!("shaper-{}", network.name))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio runtime for the shaping proxy");
                rt.block_on(async move {
                    let listener =
                        TcpListener::from_std(std_listener).expect("register shaping listener");
                    tokio::select! {
                        _ = accept_loop(listener, upstream, network) => {}
                        _ = stopped => {}
                    }
                });
            })?;
        Ok(ShapingProxy {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// `127.0.0.1:PORT`, for references.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for ShapingProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One direction of the proxy's link: when it is next free to send, shared by every connection.
#[derive(Clone)]
struct Link(Arc<Mutex<Instant>>);

impl Link {
    fn new() -> Link {
        Link(Arc::new(Mutex::new(Instant::now())))
    }

    /// Queues `len` bytes arriving at `now` behind everything already sent; returns when their
    /// last byte has left.
    fn send(&self, now: Instant, len: usize, rate: Option<u64>) -> Instant {
        let mut free = self.0.lock().expect("link lock");
        *free = (*free).max(now);
        if let Some(rate) = rate {
            *free += Duration::from_secs_f64(len as f64 / rate as f64);
        }
        *free
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, network: Network) {
    let (up, down) = (Link::new(), Link::new());
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let (up, down) = (up.clone(), down.clone());
        tokio::spawn(async move {
            // The connection to the registry pays the profile's round trip like any other.
            tokio::time::sleep(2 * network.one_way).await;
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (client_r, client_w) = client.into_split();
            let (server_r, server_w) = server.into_split();
            tokio::join!(
                shape(client_r, server_w, &up, network),
                shape(server_r, client_w, &down, network),
            );
        });
    }
}

/// One direction of one connection: read, stamp with the delivery time on the shared link,
/// deliver then.
async fn shape<R, W>(mut from: R, mut to: W, link: &Link, network: Network)
where
    R: AsyncReadExt + Unpin,
    W: AsyncWriteExt + Unpin,
{
    // `None` marks the end of the stream (the reader saw EOF or an error).
    let (tx, mut rx) = mpsc::channel::<(Instant, Option<Vec<u8>>)>(network.queue_pieces());
    let reader = async move {
        loop {
            let mut buf = vec![0u8; PIECE];
            let n = from.read(&mut buf).await.unwrap_or(0);
            let sent = link.send(Instant::now(), n, network.rate);
            let piece = (n > 0).then(|| {
                buf.truncate(n);
                buf
            });
            let end = piece.is_none();
            if tx.send((sent + network.one_way, piece)).await.is_err() || end {
                return;
            }
        }
    };
    let writer = async move {
        while let Some((due, piece)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            match piece {
                Some(bytes) => {
                    if to.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                None => break,
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream as StdStream;
    use std::time::Instant as StdInstant;

    /// An echo server: returns every byte it reads, until EOF.
    fn echo_server() -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            for conn in listener.incoming() {
                let mut conn = conn.unwrap();
                thread::spawn(move || {
                    let mut buf = vec![0u8; 1 << 16];
                    loop {
                        let n = conn.read(&mut buf).unwrap_or(0);
                        if n == 0 || conn.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    const TEST_NETWORK: Network = Network {
        name: "test",
        one_way: Duration::from_millis(5),
        // 8 MB/s: 1 MB takes at least 125 ms to pass.
        rate: Some(8_000_000),
    };

    /// Sends `payload` through the proxy to the echo server and reads it all back.
    fn echo_through(proxy: &ShapingProxy, payload: &[u8]) -> Vec<u8> {
        let mut conn = StdStream::connect(proxy.addr).unwrap();
        let mut reader = conn.try_clone().unwrap();
        let sent = payload.to_vec();
        let sender = thread::spawn(move || {
            conn.write_all(&sent).unwrap();
            conn.shutdown(std::net::Shutdown::Write).unwrap();
        });
        let mut echoed = Vec::new();
        reader.read_to_end(&mut echoed).unwrap();
        sender.join().unwrap();
        echoed
    }

    fn payload() -> Vec<u8> {
        (0..1_000_000u32).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn a_transfer_takes_at_least_the_profile_delay_and_serialisation() {
        let proxy = ShapingProxy::start(echo_server(), TEST_NETWORK).unwrap();
        let payload = payload();

        let start = StdInstant::now();
        let echoed = echo_through(&proxy, &payload);
        let elapsed = start.elapsed();

        assert_eq!(
            echoed, payload,
            "the proxy must deliver every byte in order"
        );
        // Connecting costs a round trip; then all the bytes cross the capped link out (delay
        // plus serialisation), and the last of them comes back (another delay at least).
        let least = 2 * TEST_NETWORK.one_way
            + TEST_NETWORK.min_one_way(payload.len() as u64)
            + TEST_NETWORK.one_way;
        assert!(
            elapsed >= least,
            "{elapsed:?} through the proxy is less than the profile allows ({least:?})"
        );
    }

    #[test]
    fn connections_share_the_bandwidth() {
        let proxy = ShapingProxy::start(echo_server(), TEST_NETWORK).unwrap();
        let payload = payload();
        let connections = 3;

        let start = StdInstant::now();
        thread::scope(|s| {
            let echoes: Vec<_> = (0..connections)
                .map(|_| s.spawn(|| echo_through(&proxy, &payload)))
                .collect();
            for echo in echoes {
                assert_eq!(echo.join().unwrap(), payload);
            }
        });
        let elapsed = start.elapsed();

        // All the bytes leave through one capped link, however many connections carry them.
        let least = TEST_NETWORK.min_one_way(connections * payload.len() as u64);
        assert!(
            elapsed >= least,
            "{connections} connections moved {connections} MB in {elapsed:?}, faster than one \
             link of the profile's rate allows ({least:?})"
        );
    }

    #[test]
    fn each_request_response_pays_a_round_trip() {
        let proxy = ShapingProxy::start(echo_server(), TEST_NETWORK).unwrap();
        let mut conn = StdStream::connect(proxy.addr).unwrap();
        conn.set_nodelay(true).unwrap();
        let rounds = 10;
        let start = StdInstant::now();
        for i in 0..rounds {
            conn.write_all(&[i as u8]).unwrap();
            let mut byte = [0u8; 1];
            conn.read_exact(&mut byte).unwrap();
            assert_eq!(byte[0], i as u8);
        }
        let elapsed = start.elapsed();
        let least = (rounds + 1) * 2 * TEST_NETWORK.one_way;
        assert!(
            elapsed >= least,
            "{rounds} request/response pairs took {elapsed:?}, less than {least:?}"
        );
    }

    #[test]
    fn loopback_is_direct_and_profiles_parse() {
        let loopback: Network = "loopback".parse().unwrap();
        assert!(loopback.is_direct());
        let region: Network = "region".parse().unwrap();
        assert!(!region.is_direct());
        assert_eq!(region.describe(), "10 ms each way, 1 Gbit/s");
        assert_eq!(
            "remote".parse::<Network>().unwrap().describe(),
            "40 ms each way, 200 Mbit/s"
        );
        // 125 MB at 1 Gbit/s is a second on the wire, plus the delay.
        assert_eq!(region.min_one_way(125_000_000), Duration::from_millis(1010));
        assert!("lan".parse::<Network>().is_err());
    }
}
