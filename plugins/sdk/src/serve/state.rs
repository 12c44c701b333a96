//! What a connection is doing, and the watchdog's decision from it.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context as TaskContext, Poll};
use std::time::Duration;

use axum::body::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::{Clock, Limits, DRAIN_QUIET};

/// What one connection is doing, updated by its IO and its requests, read by its watchdog.
pub(super) struct ConnState {
    pub(super) clock: Clock,
    /// Last byte read or written.
    pub(super) activity: AtomicU64,
    /// When the first byte of a request whose headers are not complete arrived; 0 if none.
    pub(super) head_since: AtomicU64,
    /// Requests handed to the service and not yet answered.
    pub(super) in_flight: AtomicUsize,
    /// Set when the server drains: responses carry `Connection: close`.
    pub(super) closing: AtomicBool,
    /// A response said `Connection: close`: the client closes after it.
    pub(super) told_close: AtomicBool,
    /// On a shared address: what was read since the last answer (the next request as it
    /// came), to give back with the connection when that request is another stage's.
    pub(super) recording: Option<Mutex<Vec<u8>>>,
    /// Set while a request of this source's own is in flight: nothing to record.
    pub(super) own_request: AtomicBool,
    /// A request arrived for a path another stage serves.
    pub(super) foreign: tokio::sync::Notify,
    /// A response switched protocols: the connection is the upgrade's (nothing recorded).
    pub(super) upgraded: AtomicBool,
    /// Set when the connection is handed on: hyper's closing shuts nothing down.
    pub(super) keep_open: AtomicBool,
}

impl ConnState {
    pub(super) fn new(clock: Clock, shared: bool) -> Self {
        ConnState {
            recording: shared.then(|| Mutex::new(Vec::new())),
            own_request: AtomicBool::new(false),
            foreign: tokio::sync::Notify::new(),
            upgraded: AtomicBool::new(false),
            keep_open: AtomicBool::new(false),
            clock,
            activity: AtomicU64::new(clock.now()),
            head_since: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            told_close: AtomicBool::new(false),
        }
    }

    pub(super) fn read(&self, n: usize) {
        let now = self.clock.now();
        self.activity.store(now, Relaxed);
        if n > 0 && self.in_flight.load(Relaxed) == 0 && self.head_since.load(Relaxed) == 0 {
            self.head_since.store(now.max(1), Relaxed);
        }
    }

    pub(super) fn wrote(&self) {
        self.activity.store(self.clock.now(), Relaxed);
    }

    pub(super) fn request_started(&self) {
        self.in_flight.fetch_add(1, Relaxed);
        self.head_since.store(0, Relaxed);
    }

    pub(super) fn request_answered(&self) {
        self.activity.store(self.clock.now(), Relaxed);
        self.in_flight.fetch_sub(1, Relaxed);
        if let Some(r) = &self.recording {
            r.lock().unwrap_or_else(|p| p.into_inner()).clear();
            self.own_request.store(false, Relaxed);
        }
    }

    /// Records bytes read on a shared address, outside this source's own requests.
    pub(super) fn record(&self, bytes: &[u8]) {
        if let Some(r) = &self.recording {
            if !self.own_request.load(Relaxed) && !self.upgraded.load(Relaxed) {
                r.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(bytes);
            }
        }
    }

    /// A request of this source's own began: what was recorded is its, not to give back.
    pub(super) fn own(&self) {
        if let Some(r) = &self.recording {
            self.own_request.store(true, Relaxed);
            r.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
    }

    pub(super) fn recorded(&self) -> Vec<u8> {
        self.recording.as_ref().map(|r| std::mem::take(&mut *r.lock().unwrap_or_else(|p| p.into_inner()))).unwrap_or_default()
    }
}

/// What the watchdog decides for a connection.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Look again after this long.
    Wait(Duration),
    /// Idle with nothing on its way: close it.
    CloseIdle,
    /// Headers too slow: cut it.
    Cut,
}

/// Decides from a connection's state. `unread` says whether bytes wait in its socket.
pub(super) fn verdict(now: u64, state: &ConnState, closing: bool, limits: &Limits, unread: impl FnOnce() -> bool) -> Verdict {
    let quiet = if closing { DRAIN_QUIET } else { limits.idle_timeout };
    if state.in_flight.load(Relaxed) > 0 {
        // Its response ends it when closing; afterwards it is idle and looked at again.
        return Verdict::Wait(quiet);
    }
    let head_since = state.head_since.load(Relaxed);
    if head_since != 0 {
        let limit = limits.header_timeout.as_millis() as u64;
        let elapsed = now.saturating_sub(head_since);
        return if elapsed >= limit { Verdict::Cut } else { Verdict::Wait(Duration::from_millis(limit - elapsed)) };
    }
    let silent = now.saturating_sub(state.activity.load(Relaxed));
    let quiet_ms = quiet.as_millis() as u64;
    if silent < quiet_ms {
        return Verdict::Wait(Duration::from_millis(quiet_ms - silent));
    }
    if unread() {
        // A request is arriving that hyper has not read yet: it will be answered.
        return Verdict::Wait(Duration::from_millis(5));
    }
    Verdict::CloseIdle
}

/// A TCP stream shared by hyper (reads and writes) and the connection's watchdog (peek and
/// shutdown), recording activity as it goes.
pub(super) struct Io {
    pub(super) stream: Arc<TcpStream>,
    pub(super) state: Arc<ConnState>,
    /// Bytes read from the socket by a previous server and not yet used; read first.
    pub(super) read: Bytes,
}

impl AsyncRead for Io {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(buf.remaining());
            let chunk = self.read.split_to(n);
            buf.put_slice(&chunk);
            self.state.read(n);
            self.state.record(&chunk);
            return Poll::Ready(Ok(()));
        }
        loop {
            ready!(self.stream.poll_read_ready(cx))?;
            match self.stream.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    self.state.record(&buf.initialize_unfilled()[..n]);
                    buf.advance(n);
                    self.state.read(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl Io {
    /// Writes with `write` once the socket takes bytes, recording the activity.
    pub(super) fn write_with(
        &self,
        cx: &mut TaskContext<'_>,
        mut write: impl FnMut(&TcpStream) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.stream.poll_write_ready(cx))?;
            match write(&self.stream) {
                Ok(n) => {
                    self.state.wrote();
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.write_with(cx, |s| s.try_write(buf))
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut TaskContext<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        self.write_with(cx, |s| s.try_write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        if self.state.keep_open.load(Relaxed) {
            return Poll::Ready(Ok(()));
        }
        Poll::Ready(socket2::SockRef::from(&*self.stream).shutdown(std::net::Shutdown::Write))
    }
}

/// Whether bytes wait unread in the socket (a request on its way).
pub(super) fn has_unread(stream: &TcpStream) -> bool {
    let mut byte = [std::mem::MaybeUninit::<u8>::uninit()];
    matches!(socket2::SockRef::from(stream).peek(&mut byte), Ok(n) if n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn limits() -> Limits {
        Limits {
            max_connections: 10,
            header_timeout: Duration::from_millis(1000),
            idle_timeout: Duration::from_millis(5000),
            retry_after_secs: 1,
        }
    }

    fn state_at(activity: u64) -> ConnState {
        let s = ConnState::new(Clock(Instant::now()), false);
        s.activity.store(activity, Relaxed);
        s
    }

    #[test]
    fn idle_connections_close_after_the_idle_timeout_or_the_drain_quiet() {
        let s = state_at(1000);
        assert_eq!(verdict(2000, &s, false, &limits(), || false), Verdict::Wait(Duration::from_millis(4000)));
        assert_eq!(verdict(6000, &s, false, &limits(), || false), Verdict::CloseIdle);
        assert_eq!(verdict(1100, &s, true, &limits(), || false), Verdict::Wait(Duration::from_millis(150)));
        assert_eq!(verdict(1250, &s, true, &limits(), || false), Verdict::CloseIdle);
    }

    #[test]
    fn a_request_on_its_way_or_in_flight_is_never_closed_under() {
        let s = state_at(1000);
        assert!(matches!(verdict(9000, &s, true, &limits(), || true), Verdict::Wait(_)), "unread bytes wait");
        s.request_started();
        assert!(matches!(verdict(60_000, &s, true, &limits(), || false), Verdict::Wait(_)), "in flight");
        s.request_answered();
        assert!(matches!(verdict(s.activity.load(Relaxed) + 1, &s, true, &limits(), || false), Verdict::Wait(_)));
    }

    #[test]
    fn slow_headers_are_cut_after_the_header_timeout() {
        let s = state_at(0);
        s.head_since.store(500, Relaxed);
        assert_eq!(verdict(1000, &s, false, &limits(), || false), Verdict::Wait(Duration::from_millis(500)));
        assert_eq!(verdict(1500, &s, false, &limits(), || false), Verdict::Cut);
        s.request_started();
        assert_eq!(s.head_since.load(Relaxed), 0, "complete headers stop the clock");
    }
}
