//! The listener against slow and flooding clients: half-open connections
//! are closed at the header timeout, idle ones at the idle timeout, event
//! streams stay open, and a flood neither locks out `/healthz` nor starves
//! the farm's own refresh grants of descriptors.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::{secs, wait_for, Bed, Settings};

/// A request head cut off before its end.
const HALF_HEAD: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: farm\r\n";

fn farm_addr(bed: &Bed) -> SocketAddr {
    let url = bed.url();
    url.strip_prefix("http://")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("not an http://ADDR URL: {url}"))
}

/// Half-open connections from some loopback addresses, each re-opened a
/// moment after the farm closes it, until dropped.
struct Flood {
    stop: Arc<AtomicBool>,
    opened: Arc<AtomicU64>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Flood {
    fn start(farm: SocketAddr, from: &[Ipv4Addr], per_address: usize) -> Flood {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime for the flood");
        let stop = Arc::new(AtomicBool::new(false));
        let opened = Arc::new(AtomicU64::new(0));
        for &ip in from {
            for _ in 0..per_address {
                let (stop, opened) = (stop.clone(), opened.clone());
                runtime.spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        hold_one(farm, ip, &opened, &stop).await;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                });
            }
        }
        Flood {
            stop,
            opened,
            runtime: Some(runtime),
        }
    }

    fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }
}

/// Opens one connection from `ip`, sends half a head, and waits until the
/// farm closes it (or the flood stops).
async fn hold_one(farm: SocketAddr, ip: Ipv4Addr, opened: &AtomicU64, stop: &AtomicBool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(socket) = tokio::net::TcpSocket::new_v4() else {
        return;
    };
    if socket.bind(SocketAddr::from((ip, 0))).is_err() {
        return;
    }
    let connecting = tokio::time::timeout(secs(5), socket.connect(farm)).await;
    let Ok(Ok(mut stream)) = connecting else {
        return;
    };
    opened.fetch_add(1, Ordering::Relaxed);
    let _ = stream.write_all(HALF_HEAD).await;
    let mut buf = [0u8; 512];
    while !stop.load(Ordering::Relaxed) {
        let read = tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buf)).await;
        if let Ok(Ok(0) | Err(_)) = read {
            return; // closed by the farm
        }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(secs(5));
        }
    }
}

fn loopback(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

fn refresh_grants(bed: &Bed) -> u64 {
    bed.provider.stats()["refresh_grants"]["alice"]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn a_flood_of_half_open_connections_starves_neither_refreshes_nor_healthz() {
    // This test's own 600 sockets, beside the other tests'.
    relogin_farm::listener::raise_nofile_limit().expect("raise the test's open-file limit");
    // 512 descriptors: without the cap, the flood below takes them all.
    let settings = Settings {
        nofile: Some(512),
        ..Settings::short_tokens()
    }
    .with_server("max_connections = 64\nmax_connections_per_ip = 32\nheader_read_timeout = \"1s\"");
    let bed = Bed::start(settings);
    bed.logged_in(&["alice"]);
    let farm = farm_addr(&bed);
    let monitor = reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(secs(30))
        .build()
        .unwrap();
    let healthz = || {
        let started = Instant::now();
        let resp = monitor
            .get(format!("{}/healthz", bed.url()))
            .send()
            .unwrap_or_else(|e| panic!("/healthz during the flood: {e}"));
        (resp.status().as_u16(), started.elapsed())
    };

    // One host floods: its cap leaves every other host its slots.
    let one = Flood::start(farm, &[loopback(2)], 150);
    wait_for(
        "the flood from one host to open 150 connections",
        secs(20),
        || {
            (one.opened() >= 150)
                .then_some(())
                .ok_or(one.opened().to_string())
        },
    );
    let (status, took) = healthz();
    assert_eq!(status, 200);
    assert!(
        took < secs(2),
        "/healthz took {took:?} beside a one-host flood"
    );

    // Four hosts flood, more than max_connections and than the farm's file
    // limit: new connections wait in the kernel's queue, and the header
    // timeout frees the slots of the half-open ones, so /healthz gets in.
    let many = Flood::start(farm, &[loopback(3), loopback(4), loopback(5)], 150);
    wait_for(
        "the flood from four hosts to open 600 connections",
        secs(30),
        || {
            let n = one.opened() + many.opened();
            (n >= 600).then_some(()).ok_or(n.to_string())
        },
    );
    let grants = refresh_grants(&bed);
    let (status, took) = healthz();
    assert_eq!(status, 200);
    assert!(took < secs(15), "/healthz took {took:?} during the flood");
    // The farm's own outgoing connections still get descriptors: refresh
    // grants go on (4 s tokens, refreshed every 2 s or so).
    wait_for("two refresh grants during the flood", secs(20), || {
        let now = refresh_grants(&bed);
        (now >= grants + 2).then_some(()).ok_or(now.to_string())
    });
    let stats = bed.provider.stats();
    assert_eq!(stats["refresh_failures"], serde_json::json!({}), "{stats}");
    drop(many);
    drop(one);

    let lease = bed.admin().lease(crate::support::PROVIDER, None);
    bed.provider
        .assert_active(crate::support::str_of(&lease, "access_token"), "alice");
    assert!(bed.metric("relogin_farm_connections_closed_total{reason=\"header_timeout\"}") >= 64.0);
    assert!(bed.metric("relogin_farm_connections_closed_total{reason=\"per_ip_limit\"}") >= 1.0);
    let log = bed.farm_log();
    assert!(!log.contains("Too many open files"), "{log}");
    assert!(log.contains("nofile=512"), "the limits are logged: {log}");
}

/// How long until the farm closes `stream` (reading and dropping what it
/// sends); panics if it is still open after 10 s.
fn closed_within(stream: &mut TcpStream, since: Instant) -> Duration {
    stream.set_read_timeout(Some(secs(10))).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return since.elapsed(),
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!(
                    "the farm kept the connection open for {:?}",
                    since.elapsed()
                )
            }
            Err(_) => return since.elapsed(), // reset: closed too
        }
    }
}

fn assert_between(what: &str, took: Duration, low: f64, high: f64) {
    let s = took.as_secs_f64();
    assert!(
        (low..high).contains(&s),
        "{what}: closed after {took:?}, expected between {low} s and {high} s"
    );
}

#[test]
fn silent_half_sent_and_idle_connections_are_closed_and_event_streams_are_not() {
    let bed = Bed::start(
        Settings::default().with_server("header_read_timeout = \"1s\"\nidle_timeout = \"2s\""),
    );
    let farm = farm_addr(&bed);

    let started = Instant::now();
    let mut silent = TcpStream::connect(farm).unwrap();
    assert_between(
        "a silent connection",
        closed_within(&mut silent, started),
        0.8,
        3.0,
    );

    // Half a head, then a header line now and then: the timeout runs from
    // the accept, however slowly the bytes trickle.
    let started = Instant::now();
    let mut slow = TcpStream::connect(farm).unwrap();
    slow.write_all(HALF_HEAD).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let _ = slow.write_all(b"X-Slow: 1\r\n");
    assert_between(
        "a half-sent head",
        closed_within(&mut slow, started),
        0.8,
        3.0,
    );

    // A keep-alive connection after its answer waits for the next request
    // for idle_timeout (2 s), not header_read_timeout (1 s).
    let mut idle = TcpStream::connect(farm).unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: farm\r\n\r\n")
        .unwrap();
    let mut answer = [0u8; 4096];
    let n = idle.read(&mut answer).unwrap();
    let answered = Instant::now();
    let head = String::from_utf8_lossy(&answer[..n]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_between(
        "an idle keep-alive connection",
        closed_within(&mut idle, answered),
        1.7,
        5.0,
    );

    // An event stream with no event for longer than idle_timeout stays open
    // (its keep-alive comments are the traffic), and delivers the next one.
    let stream = bed
        .admin()
        .event_stream("/api/events", None)
        .unwrap_or_else(|r| panic!("{r:?}"));
    std::thread::sleep(secs(5));
    bed.new_client("after-a-quiet-while");
    let frame = stream
        .next(secs(5))
        .expect("the event stream was closed while quiet");
    assert_eq!(frame.event.as_deref(), Some("client_created"), "{frame:?}");

    assert!(bed.metric("relogin_farm_connections_closed_total{reason=\"header_timeout\"}") >= 2.0);
    assert!(bed.metric("relogin_farm_connections_closed_total{reason=\"idle_timeout\"}") >= 1.0);
    assert!(bed.metric("relogin_farm_connections_open") >= 1.0);
}

/// A graceful stop closes idle keep-alive connections at once: the drain
/// reaches every connection, and none holds the stop for its idle timeout.
#[test]
fn a_graceful_stop_closes_idle_keep_alive_connections_at_once() {
    let mut bed = Bed::start(Settings::default().with_server("idle_timeout = \"60s\""));
    let farm = farm_addr(&bed);
    let mut idle: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut c = TcpStream::connect(farm).unwrap();
            c.write_all(b"GET /healthz HTTP/1.1\r\nHost: farm\r\n\r\n")
                .unwrap();
            let mut answer = [0u8; 4096];
            assert!(c.read(&mut answer).unwrap() > 0, "no answer to /healthz");
            c
        })
        .collect();
    let stopping = Instant::now();
    let status = bed.stop();
    let took = stopping.elapsed();
    assert!(status.success(), "the farm did not exit cleanly: {status}");
    assert!(
        took < secs(10),
        "the stop took {took:?}: idle keep-alive connections held it"
    );
    for c in &mut idle {
        assert!(
            closed_within(c, stopping) < secs(10),
            "a keep-alive connection outlived the farm"
        );
    }
}
