//! A fault-injecting HTTP proxy on loopback, between Lifeboat and the S3 server.
//!
//! It serves one request per client connection (it forwards the request with
//! `Connection: close` and answers with `Connection: close`), so every request gets its own
//! roll of the dice. With probability `rate` a request meets one of the faults, in turn:
//!
//! * **5xx**: a `503 SlowDown` answer, the request never reaches the server;
//! * **reset**: the connection is closed with unread input, so the kernel sends RST;
//! * **stall**: the request is read and nothing is answered for `stall` (past the client's
//!   timeout), then the connection is dropped;
//! * **truncate**: the request is forwarded, and the server's answer is cut off halfway
//!   through its body (the server did the work: a put is stored, a get is cut short).
//!
//! With `deny_deletes` every DELETE is answered 403 AccessDenied, like a bucket policy without
//! `s3:DeleteObject`.
//!
//! [`FaultProxy::stop`] closes the listening socket (the server is "gone": connections are
//! refused) and [`FaultProxy::start_again`] listens on the same port again.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Which faults to inject, and how often.
#[derive(Debug, Clone)]
pub struct FaultConfig {
    /// Probability that a request meets a fault.
    pub rate: f64,
    /// How long a stalled request hangs.
    pub stall: Duration,
    /// Seed of the dice.
    pub seed: u64,
    /// Answer every DELETE with 403 AccessDenied, as a bucket policy without
    /// `s3:DeleteObject` does (append-only credentials).
    pub deny_deletes: bool,
}

/// Counts of what the proxy did.
#[derive(Debug, Default)]
pub struct FaultCounts {
    pub forwarded: AtomicU64,
    pub errors_5xx: AtomicU64,
    pub resets: AtomicU64,
    pub stalls: AtomicU64,
    pub truncations: AtomicU64,
    pub denied: AtomicU64,
}

impl FaultCounts {
    pub fn faults(&self) -> u64 {
        self.errors_5xx.load(Ordering::Relaxed)
            + self.resets.load(Ordering::Relaxed)
            + self.stalls.load(Ordering::Relaxed)
            + self.truncations.load(Ordering::Relaxed)
    }

    pub fn summary(&self) -> String {
        format!(
            "forwarded {}, 5xx {}, resets {}, stalls {}, truncated {}",
            self.forwarded.load(Ordering::Relaxed),
            self.errors_5xx.load(Ordering::Relaxed),
            self.resets.load(Ordering::Relaxed),
            self.stalls.load(Ordering::Relaxed),
            self.truncations.load(Ordering::Relaxed)
        )
    }
}

struct Shared {
    upstream: SocketAddr,
    config: Mutex<FaultConfig>,
    rng: Mutex<StdRng>,
    next_fault: AtomicU64,
    counts: FaultCounts,
}

/// A running proxy.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    running: Mutex<Option<(Arc<AtomicBool>, JoinHandle<()>)>>,
}

impl FaultProxy {
    /// Starts a proxy on a free loopback port in front of `upstream` (`host:port`).
    pub fn start(upstream: &str, config: FaultConfig) -> FaultProxy {
        let upstream: SocketAddr = upstream
            .parse()
            .expect("the S3 test endpoint must be ip:port on loopback");
        assert!(upstream.ip().is_loopback(), "tests only talk to loopback");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            upstream,
            rng: Mutex::new(StdRng::seed_from_u64(config.seed)),
            config: Mutex::new(config),
            next_fault: AtomicU64::new(0),
            counts: FaultCounts::default(),
        });
        let proxy = FaultProxy {
            addr,
            shared,
            running: Mutex::new(None),
        };
        proxy.listen(listener);
        proxy
    }

    /// `http://127.0.0.1:port`, to put in a repository URL.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What happened so far.
    pub fn counts(&self) -> &FaultCounts {
        &self.shared.counts
    }

    /// Changes the fault rate from now on.
    pub fn set_rate(&self, rate: f64) {
        self.shared.config.lock().rate = rate;
    }

    fn listen(&self, listener: TcpListener) {
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, shared) = (stop.clone(), self.shared.clone());
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let shared = shared.clone();
                        std::thread::spawn(move || {
                            let _ = serve(client, &shared);
                        });
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
            // Dropping the listener: new connections are refused.
        });
        *self.running.lock() = Some((stop, thread));
    }

    /// Closes the listening socket: the server is gone, connections are refused.
    pub fn stop(&self) {
        if let Some((stop, thread)) = self.running.lock().take() {
            stop.store(true, Ordering::SeqCst);
            thread.join().unwrap();
        }
    }

    /// Listens again on the same port.
    pub fn start_again(&self) {
        assert!(self.running.lock().is_none());
        let listener = TcpListener::bind(self.addr).unwrap();
        self.listen(listener);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

#[derive(Clone, Copy)]
enum Fault {
    None,
    Error5xx,
    Reset,
    Stall,
    Truncate,
}

fn pick(shared: &Shared) -> (Fault, Duration) {
    let config = shared.config.lock().clone();
    if !shared.rng.lock().random_bool(config.rate.clamp(0.0, 1.0)) {
        return (Fault::None, config.stall);
    }
    // Take the four faults in turn so that every kind occurs even in short runs.
    let fault = match shared.next_fault.fetch_add(1, Ordering::Relaxed) % 4 {
        0 => Fault::Error5xx,
        1 => Fault::Reset,
        2 => Fault::Truncate,
        _ => Fault::Stall,
    };
    (fault, config.stall)
}

/// Reads a request head (up to the blank line) and returns it with any body bytes read past it.
fn read_head(stream: &mut TcpStream) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok((buf, rest));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn header_value(head: &[u8], name: &str) -> Option<String> {
    String::from_utf8_lossy(head).lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// Reads the rest of a request body announced by Content-Length.
fn read_body(stream: &mut TcpStream, head: &[u8], mut body: Vec<u8>) -> std::io::Result<Vec<u8>> {
    let len: usize = header_value(head, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut chunk = vec![0u8; 64 * 1024];
    while body.len() < len {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok(body)
}

/// The request head with `Connection: close` instead of any connection header.
fn close_after(head: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(head);
    let mut out = String::new();
    for line in text.split("\r\n").filter(|l| !l.is_empty()) {
        if line
            .split_once(':')
            .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case("connection"))
        {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    out.into_bytes()
}

fn serve(mut client: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let (fault, stall) = pick(shared);
    let counts = &shared.counts;
    if let Fault::Reset = fault {
        // Wait for the request to arrive, leave it unread and close: the kernel answers RST.
        counts.resets.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(20));
        return Ok(());
    }
    let (head, rest) = read_head(&mut client)?;
    if header_value(&head, "expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
        client.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let body = read_body(&mut client, &head, rest)?;
    if shared.config.lock().deny_deletes && head.starts_with(b"DELETE ") {
        counts.denied.fetch_add(1, Ordering::Relaxed);
        let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AccessDenied</Code>\
                   <Message>Access Denied</Message></Error>";
        let answer = format!(
            "HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{xml}",
            xml.len()
        );
        client.write_all(answer.as_bytes())?;
        client.shutdown(Shutdown::Both)?;
        return Ok(());
    }
    match fault {
        Fault::Error5xx => {
            counts.errors_5xx.fetch_add(1, Ordering::Relaxed);
            let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>\
                       <Message>Please reduce your request rate.</Message></Error>";
            let answer = format!(
                "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{xml}",
                xml.len()
            );
            client.write_all(answer.as_bytes())?;
            client.shutdown(Shutdown::Both)?;
            return Ok(());
        }
        Fault::Stall => {
            counts.stalls.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(stall);
            return Ok(());
        }
        _ => {}
    }
    let mut upstream = TcpStream::connect(shared.upstream)?;
    upstream.write_all(&close_after(&head))?;
    upstream.write_all(&body)?;
    let mut answer = Vec::new();
    upstream.read_to_end(&mut answer)?;
    if let Fault::Truncate = fault {
        let head_end = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(answer.len(), |p| p + 4);
        let body_len = answer.len() - head_end;
        if body_len >= 2 {
            counts.truncations.fetch_add(1, Ordering::Relaxed);
            answer.truncate(head_end + body_len / 2);
            client.write_all(&answer)?;
            client.shutdown(Shutdown::Both)?;
            return Ok(());
        }
        // Nothing to cut (an empty body): cut the head instead.
        counts.truncations.fetch_add(1, Ordering::Relaxed);
        answer.truncate(head_end / 2);
        client.write_all(&answer)?;
        client.shutdown(Shutdown::Both)?;
        return Ok(());
    }
    counts.forwarded.fetch_add(1, Ordering::Relaxed);
    client.write_all(&answer)?;
    client.shutdown(Shutdown::Write)?;
    // Let the client read everything before the socket closes.
    let mut sink = [0u8; 1024];
    let _ = client.set_read_timeout(Some(Duration::from_secs(5)));
    while matches!(client.read(&mut sink), Ok(n) if n > 0) {}
    Ok(())
}
