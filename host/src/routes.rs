//! Shared HTTP addresses (ABI minor 2): stages of any plugins and pipelines serve paths on
//! one address. The host accepts the connections, reads (without taking) the request line
//! of the next request, and passes the connection to the stage serving that path; a stage
//! passes a connection back when a request on it is for another path, or when it stops with
//! the connection idle, and the host routes it again. The newest registration of a path
//! wins, so a new version of a stage takes new connections as soon as it started
//! (make-before-break) while the old one finishes its own.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use weir_plugin::routes::{recv_message, send_bye, send_connection, seqpacket_pair, serves, Message, MAX_READ_BYTES};

/// How long the host waits for the request line of a connection it must route by path (a
/// new one, or an idle one handed back, on an address several stages share) before closing it.
const REQUEST_LINE_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest request line read to find the path.
const MAX_REQUEST_LINE: usize = 8 * 1024;
/// Connections the host routes at once; more are closed.
const MAX_ROUTING: usize = 4096;

struct Registration {
    id: u64,
    pipeline: String,
    stage: String,
    routes: Vec<String>,
    sock: Arc<StageSocket>,
}

/// The host's end of a stage's socket.
struct StageSocket {
    fd: AsyncFd<OwnedFd>,
    /// Held (shared) while a connection is being sent; taken whole before the bye is
    /// answered, so every connection sent before it reaches the stage before the answer.
    sending: tokio::sync::RwLock<()>,
}

/// One shared address and the stages serving on it.
struct Address {
    name: String,
    regs: Mutex<Vec<Registration>>,
    routing: AtomicUsize,
}

fn addresses() -> &'static Mutex<HashMap<String, Arc<Address>>> {
    static A: OnceLock<Mutex<HashMap<String, Arc<Address>>>> = OnceLock::new();
    A.get_or_init(Default::default)
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static R: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    R.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("weir-routes")
            .enable_all()
            .build()
            .expect("the routing runtime starts")
    })
}

/// Whether `address` is shared (some stage serves routes on it).
pub fn is_shared(address: &str) -> bool {
    addresses().lock().unwrap_or_else(|p| p.into_inner()).contains_key(address)
}

/// Registers `routes` of a stage on `address`, whose socket the host owns (`listener` is a
/// duplicate of it). Returns the stage's end of its Unix socket.
pub fn register(
    address: &str,
    listener: std::net::TcpListener,
    pipeline: &str,
    stage: &str,
    routes: Vec<String>,
) -> Result<OwnedFd, String> {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    if routes.is_empty() {
        return Err("no routes given".into());
    }
    if let Some(bad) = routes.iter().find(|r| !r.starts_with('/')) {
        return Err(format!("route {bad:?} must start with `/`"));
    }
    let _enter = runtime().enter();
    let addr = {
        let mut map = addresses().lock().unwrap_or_else(|p| p.into_inner());
        match map.get(address) {
            Some(a) => a.clone(),
            None => {
                listener.set_nonblocking(true).map_err(|e| e.to_string())?;
                let tokio_listener = tokio::net::TcpListener::from_std(listener).map_err(|e| e.to_string())?;
                let a = Arc::new(Address { name: address.to_owned(), regs: Mutex::new(Vec::new()), routing: AtomicUsize::new(0) });
                map.insert(address.to_owned(), a.clone());
                runtime().spawn(accept_loop(a.clone(), tokio_listener));
                a
            }
        }
    };
    let mut regs = addr.regs.lock().unwrap_or_else(|p| p.into_inner());
    for r in regs.iter().filter(|r| r.pipeline != pipeline || r.stage != stage) {
        if let Some(route) = routes.iter().find(|route| r.routes.contains(route)) {
            return Err(format!(
                "{route} on {address} is already served by pipeline {} (stage {}); give one of them another path or address",
                r.pipeline, r.stage
            ));
        }
    }
    let (host_end, stage_end) = seqpacket_pair().map_err(|e| format!("cannot create the stage's socket: {e}"))?;
    let sock = Arc::new(StageSocket { fd: unsafe_register(host_end)?, sending: tokio::sync::RwLock::new(()) });
    let id = NEXT.fetch_add(1, Relaxed);
    regs.push(Registration { id, pipeline: pipeline.to_owned(), stage: stage.to_owned(), routes, sock: sock.clone() });
    drop(regs);
    runtime().spawn(read_loop(addr, id, sock));
    tracing::debug!(pipeline, stage, address, "Stage serves routes on a shared address.");
    Ok(stage_end)
}

#[allow(unsafe_code)]
fn unsafe_register(fd: OwnedFd) -> Result<AsyncFd<OwnedFd>, String> {
    // SAFETY: the OwnedFd stays open and the same for the life of the AsyncFd, which owns it.
    unsafe { AsyncFd::register(fd) }.map_err(|e| format!("cannot watch the stage's socket: {}", e.into_parts().1))
}

async fn accept_loop(addr: Arc<Address>, listener: tokio::net::TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                // One stage here: straight to it, in the order connections came (a stage that
                // is behind holds up accepting, as a full backlog would).
                if let Ok(Some((id, sock))) = pick(&addr, None, None) {
                    if matches!(send(&addr, id, &sock, &stream, &[]).await, Ok(Ok(()))) {
                        continue;
                    }
                }
                spawn_route(&addr, stream, Vec::new(), None);
            }
            // Out of file descriptors, most likely: let some close.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

fn spawn_route(addr: &Arc<Address>, stream: TcpStream, read: Vec<u8>, from: Option<u64>) {
    if addr.routing.fetch_add(1, Relaxed) >= MAX_ROUTING {
        addr.routing.fetch_sub(1, Relaxed);
        runtime().spawn(answer(
            stream,
            "503 Service Unavailable\r\nretry-after: 1",
            "too many connections waiting to be routed; retry later",
        ));
        return;
    }
    let addr = addr.clone();
    runtime().spawn(async move {
        route(&addr, stream, read, from).await;
        addr.routing.fetch_sub(1, Relaxed);
    });
}

/// Reads a stage's messages: connections it gives back, and its bye.
async fn read_loop(addr: Arc<Address>, id: u64, sock: Arc<StageSocket>) {
    let mut scratch = Vec::new();
    loop {
        let message = match sock.fd.readable().await {
            Ok(mut guard) => match guard.try_io(|fd| recv_message(fd.get_ref().as_fd(), &mut scratch)) {
                Ok(m) => m,
                Err(_would_block) => continue,
            },
            Err(_) => Ok(Message::Closed),
        };
        match message {
            Ok(Message::Connection(fd, read)) => {
                let std = std::net::TcpStream::from(fd);
                if std.set_nonblocking(true).is_ok() {
                    if let Ok(stream) = TcpStream::from_std(std) {
                        spawn_route(&addr, stream, read, Some(id));
                    }
                }
            }
            Ok(Message::Bye) => {
                // No more connections go to it; then tell it so (it gives back what came meanwhile).
                addr.regs.lock().unwrap_or_else(|p| p.into_inner()).retain(|r| r.id != id);
                let _sent = sock.sending.write().await;
                let _ = loop {
                    match sock.fd.writable().await {
                        Ok(mut guard) => match guard.try_io(|fd| send_bye(fd.get_ref().as_fd())) {
                            Ok(r) => break r,
                            Err(_would_block) => continue,
                        },
                        Err(e) => break Err(e),
                    }
                };
            }
            Ok(Message::Closed) | Err(_) => {
                addr.regs.lock().unwrap_or_else(|p| p.into_inner()).retain(|r| r.id != id);
                return;
            }
        }
    }
}

/// The path of the request line at the start of `head`, if complete.
fn request_path(head: &[u8]) -> Option<Result<String, ()>> {
    let end = head.iter().position(|&b| b == b'\n')?;
    let line = std::str::from_utf8(&head[..end]).map_err(|_| ());
    let Ok(line) = line else { return Some(Err(())) };
    let mut parts = line.split(' ');
    let (Some(_method), Some(target)) = (parts.next(), parts.next()) else { return Some(Err(())) };
    let target = match target.find("://") {
        Some(i) => target[i + 3..].find('/').map(|j| &target[i + 3 + j..]).unwrap_or("/"),
        None => target,
    };
    Some(Ok(target.split('?').next().unwrap_or("/").to_owned()))
}

/// Waits for the request line of the next request on `stream` (after the bytes in `read`),
/// without taking it from the socket.
async fn next_path(stream: &TcpStream, read: &[u8]) -> Option<Result<String, ()>> {
    let deadline = Instant::now() + REQUEST_LINE_TIMEOUT;
    let mut buf = vec![0u8; MAX_REQUEST_LINE];
    loop {
        if let Some(p) = request_path(read) {
            return Some(p);
        }
        let wait = deadline.saturating_duration_since(Instant::now());
        let n = match tokio::time::timeout(wait, stream.peek(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
            Ok(Ok(n)) => n,
        };
        let head: Vec<u8> = read.iter().chain(&buf[..n]).copied().collect();
        if let Some(p) = request_path(&head) {
            return Some(p);
        }
        if head.len() >= MAX_REQUEST_LINE {
            return Some(Err(()));
        }
        // Part of a request line: wait for the rest to arrive.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn answer(mut stream: TcpStream, status: &str, message: &str) {
    let body = serde_json::json!({ "success": false, "error": message }).to_string();
    let response =
        format!("HTTP/1.1 {status}\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}", body.len());
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

/// Where a connection goes: the newest registration serving `path`, or with no path
/// (nothing read yet) the newest of the only stage on the address. `Err` when the stages on
/// the address are several and the request line must be read first.
fn pick(addr: &Address, path: Option<&str>, from: Option<u64>) -> Result<Option<(u64, Arc<StageSocket>)>, ()> {
    let regs = addr.regs.lock().unwrap_or_else(|p| p.into_inner());
    let others = regs.iter().filter(|r| Some(r.id) != from);
    match path {
        Some(path) => Ok(others
            .filter_map(|r| r.routes.iter().filter(|route| serves(route, path)).map(|route| route.len()).max().map(|len| (len, r)))
            .max_by_key(|(len, r)| (*len, r.id))
            .map(|(_, r)| (r.id, r.sock.clone()))),
        None => {
            let mut stages = others.clone().map(|r| (&r.pipeline, &r.stage)).collect::<Vec<_>>();
            stages.dedup();
            if stages.len() > 1 {
                return Err(());
            }
            Ok(others.max_by_key(|r| r.id).map(|r| (r.id, r.sock.clone())))
        }
    }
}

/// Sends a connection to registration `id`, waiting up to a second for room in its socket.
/// `NotConnected` when the stage said bye meanwhile (pick again); the outer `Err` on timeout.
async fn send(
    addr: &Address,
    id: u64,
    sock: &StageSocket,
    stream: &TcpStream,
    read: &[u8],
) -> Result<std::io::Result<()>, tokio::time::error::Elapsed> {
    tokio::time::timeout(Duration::from_secs(1), async {
        let _sending = sock.sending.read().await;
        if !addr.regs.lock().unwrap_or_else(|p| p.into_inner()).iter().any(|r| r.id == id) {
            return Err(std::io::Error::from(ErrorKind::NotConnected));
        }
        loop {
            let mut guard = sock.fd.writable().await?;
            match guard.try_io(|fd| send_connection(fd.get_ref().as_fd(), stream.as_fd(), read)) {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    })
    .await
}

/// Passes a connection on: to the stage serving its next request's path when several
/// share the address, else straight to the only one.
async fn route(addr: &Address, stream: TcpStream, read: Vec<u8>, from: Option<u64>) {
    let mut path = match request_path(&read) {
        Some(Err(())) => return answer(stream, "400 Bad Request", "the request line is not HTTP").await,
        Some(Ok(p)) => Some(p),
        None => None,
    };
    loop {
        let target = match pick(addr, path.as_deref(), from) {
            Ok(t) => t,
            Err(()) => {
                path = match next_path(&stream, &read).await {
                    None => return,
                    Some(Err(())) => return answer(stream, "400 Bad Request", "the request line is not HTTP").await,
                    Some(Ok(p)) => Some(p),
                };
                continue;
            }
        };
        let Some((id, sock)) = target else {
            return match &path {
                Some(path) => answer(stream, "404 Not Found", &format!("no pipeline serves {path} on {}", addr.name)).await,
                // An idle connection of a stage that stopped, and nobody serves here now.
                None if from.is_some() => {}
                None => answer(stream, "503 Service Unavailable", &format!("no pipeline serves on {} now", addr.name)).await,
            };
        };
        match send(addr, id, &sock, &stream, &read).await {
            Ok(Ok(())) => return,
            _ if read.len() > MAX_READ_BYTES => {
                return answer(stream, "431 Request Header Fields Too Large", "the request is too large to route").await
            }
            // The stage is gone: route to another.
            Ok(Err(e)) if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionRefused | ErrorKind::NotConnected) => {
                addr.regs.lock().unwrap_or_else(|p| p.into_inner()).retain(|r| r.id != id)
            }
            // Behind, or out of descriptors in flight: this connection is told to retry.
            _ => {
                return answer(stream, "503 Service Unavailable\r\nretry-after: 1", "the pipeline is not taking connections; retry later")
                    .await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_comes_from_the_request_line() {
        assert_eq!(request_path(b"GET /health HTTP/1.1\r\nHost: x\r\n"), Some(Ok("/health".into())));
        assert_eq!(request_path(b"POST /produce?x=1 HTTP/1.1\r\n"), Some(Ok("/produce".into())));
        assert_eq!(request_path(b"GET http://h:1/a/b?c HTTP/1.1\r\n"), Some(Ok("/a/b".into())));
        assert_eq!(request_path(b"GET /partial"), None);
        assert_eq!(request_path(b"\xff\xfe\r\n"), Some(Err(())));
    }
}
