//! One HTTP address shared by stages of any plugins and pipelines (ABI minor 2): the host
//! accepts connections on it and hands each one, by the path of its next request, to the
//! stage that serves that path, as a file descriptor passed over a Unix socket (with any
//! bytes the host already read of it). A stage gives a connection back when a request on it
//! is for a path it does not serve (a browser reuses one connection for several), or when it
//! stops with the connection idle; the host then hands it to whoever serves the next request.
//! The wire format is specified in ABI.md ("Shared HTTP addresses").
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use tokio::io::unix::AsyncFd;

/// The first byte of a message carrying a connection (followed by the bytes read of it).
pub const MESSAGE_CONNECTION: u8 = 1;
/// The first byte of a message saying "no more connections": sent by a stage that stops,
/// and answered by the host once it will send none.
pub const MESSAGE_BYE: u8 = 2;
/// The most bytes read of a connection that can travel with it.
pub const MAX_READ_BYTES: usize = 60 * 1024;

/// A message over a shared address's socket.
#[derive(Debug)]
pub enum Message {
    /// A connection and the bytes read of it.
    Connection(OwnedFd, Vec<u8>),
    /// No more connections (see [`MESSAGE_BYE`]).
    Bye,
    /// The other end closed.
    Closed,
}

/// Whether `route` serves `path` (without its query): a route ending in `/` serves that
/// path and everything under it, others exactly their path.
pub fn serves(route: &str, path: &str) -> bool {
    if route.ends_with('/') {
        path.starts_with(route) || path == route.trim_end_matches('/')
    } else {
        path == route
    }
}

/// A connected pair of Unix `SOCK_SEQPACKET` sockets (close-on-exec, non-blocking).
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` has room for the two descriptors socketpair writes.
    let r =
        unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, 0, fds.as_mut_ptr()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socketpair succeeded, so both are new descriptors owned by no one else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Room for the ancillary data of one descriptor.
fn control_buffer() -> Vec<u8> {
    // SAFETY: CMSG_SPACE is a pure computation.
    vec![0u8; unsafe { libc::CMSG_SPACE(std::mem::size_of::<i32>() as u32) } as usize]
}

/// A message header over one buffer and room for one descriptor; valid while both live.
fn header(iov: &mut libc::iovec, control: &mut [u8]) -> libc::msghdr {
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len() as _;
    msg
}

/// Sends one message: a connection's descriptor and the bytes read of it. Non-blocking:
/// `WouldBlock` when the receiver is behind.
pub fn send_connection(sock: BorrowedFd<'_>, conn: BorrowedFd<'_>, read: &[u8]) -> io::Result<()> {
    if read.len() > MAX_READ_BYTES {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "too many bytes read of the connection to pass it on"));
    }
    let mut data = Vec::with_capacity(1 + read.len());
    data.push(MESSAGE_CONNECTION);
    data.extend_from_slice(read);
    let mut iov = libc::iovec { iov_base: data.as_mut_ptr().cast(), iov_len: data.len() };
    let mut control = control_buffer();
    let msg = header(&mut iov, &mut control);
    // SAFETY: `control` holds CMSG_SPACE(int) bytes, so the first header and its data fit.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<i32>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<i32>(), conn.as_raw_fd());
    }
    // SAFETY: `msg` points at live buffers for the duration of the call.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends a message without a connection (`MESSAGE_BYE`). Non-blocking.
pub fn send_bye(sock: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: a one-byte buffer that lives for the call.
    let n = unsafe { libc::send(sock.as_raw_fd(), [MESSAGE_BYE].as_ptr().cast(), 1, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receives one message, using `scratch` as the receive buffer (kept between calls, so
/// receiving allocates only what a message carries). Non-blocking: `WouldBlock` when
/// nothing waits.
pub fn recv_message(sock: BorrowedFd<'_>, scratch: &mut Vec<u8>) -> io::Result<Message> {
    scratch.resize(1 + MAX_READ_BYTES, 0);
    let data = scratch;
    let mut iov = libc::iovec { iov_base: data.as_mut_ptr().cast(), iov_len: data.len() };
    let mut control = control_buffer();
    let mut msg = header(&mut iov, &mut control);
    // SAFETY: `msg` points at live buffers; descriptors received are close-on-exec.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n == 0 {
        return Ok(Message::Closed);
    }
    // SAFETY: the kernel filled `control` up to msg_controllen; the macros walk it in bounds.
    let fd = unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null() || (*cmsg).cmsg_level != libc::SOL_SOCKET || (*cmsg).cmsg_type != libc::SCM_RIGHTS {
            None
        } else {
            Some(OwnedFd::from_raw_fd(std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<i32>())))
        }
    };
    let truncated = msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0;
    match (fd, data[0]) {
        (Some(fd), MESSAGE_CONNECTION) if !truncated => Ok(Message::Connection(fd, data[1..n as usize].to_vec())),
        (None, MESSAGE_BYE) => Ok(Message::Bye),
        _ => Err(io::Error::new(io::ErrorKind::InvalidData, "a message that is neither a connection nor a bye, or cut short")),
    }
}

/// Waits until `f` stops answering `WouldBlock` on `fd`.
async fn retry<T>(fd: &AsyncFd<OwnedFd>, write: bool, mut f: impl FnMut(BorrowedFd<'_>) -> io::Result<T>) -> io::Result<T> {
    loop {
        let mut guard = if write { fd.writable().await? } else { fd.readable().await? };
        match guard.try_io(|inner| f(inner.get_ref().as_fd())) {
            Ok(result) => return result,
            Err(_would_block) => continue,
        }
    }
}

/// A stage's end of a shared address: connections for its paths arrive here.
pub struct RoutedListener {
    sock: AsyncFd<OwnedFd>,
    scratch: std::sync::Mutex<Vec<u8>>,
}

impl RoutedListener {
    /// Wraps the descriptor the host handed over. Must be called inside a tokio runtime.
    pub fn new(sock: OwnedFd) -> io::Result<Self> {
        // SAFETY: the OwnedFd stays open and the same for the life of the AsyncFd, which owns it.
        let sock = unsafe { AsyncFd::register(sock) }.map_err(|e| e.into_parts().1)?;
        Ok(RoutedListener { sock, scratch: std::sync::Mutex::new(Vec::new()) })
    }

    /// The next connection and the bytes the host (or another stage) read of it, which come
    /// before anything read from the socket. `None` once the host will send no more (after
    /// [`RoutedListener::close`], or when the host closed).
    pub async fn accept(&self) -> io::Result<Option<(tokio::net::TcpStream, Vec<u8>)>> {
        let received = retry(&self.sock, false, |fd| recv_message(fd, &mut self.scratch.lock().unwrap_or_else(|p| p.into_inner()))).await?;
        match received {
            Message::Connection(fd, read) => {
                let std = std::net::TcpStream::from(fd);
                std.set_nonblocking(true)?;
                Ok(Some((tokio::net::TcpStream::from_std(std)?, read)))
            }
            Message::Bye | Message::Closed => Ok(None),
        }
    }

    /// Hands a connection back to the host with the bytes read of it and not used (a
    /// request for another stage's path, or an idle connection of a stopping stage).
    pub async fn give_back(&self, stream: &tokio::net::TcpStream, read: &[u8]) -> io::Result<()> {
        retry(&self.sock, true, |sock| send_connection(sock, stream.as_fd(), read)).await
    }

    /// Stops taking connections: tells the host, gives back every connection it sent
    /// meanwhile, and returns once the host will send no more. Connections already
    /// accepted stay this stage's (give them back with [`RoutedListener::give_back`] when
    /// idle).
    pub async fn close(&self) -> io::Result<()> {
        retry(&self.sock, true, send_bye).await?;
        while let Some((stream, read)) = self.accept().await? {
            self.give_back(&stream, &read).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_exact_paths_and_prefixes() {
        assert!(serves("/produce", "/produce") && !serves("/produce", "/produce/x") && !serves("/produce", "/produc"));
        assert!(serves("/socket.io/", "/socket.io/"));
        assert!(serves("/socket.io/", "/socket.io") && serves("/socket.io/", "/socket.io/x"));
    }

    #[test]
    fn a_connection_and_its_bytes_cross_a_seqpacket_pair() {
        let (a, b) = seqpacket_pair().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        send_connection(a.as_fd(), server.as_fd(), b"GET /x HTTP/1.1\r\n").unwrap();
        drop(server);
        let Message::Connection(fd, read) = recv_message(b.as_fd(), &mut Vec::new()).unwrap() else { panic!("a connection") };
        assert_eq!(read, b"GET /x HTTP/1.1\r\n");
        // The received descriptor is the same connection.
        use std::io::{Read, Write};
        let mut passed = std::net::TcpStream::from(fd);
        passed.set_nonblocking(false).unwrap();
        passed.write_all(b"hello").unwrap();
        let mut got = [0u8; 5];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
        assert_eq!(recv_message(b.as_fd(), &mut Vec::new()).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        send_bye(a.as_fd()).unwrap();
        assert!(matches!(recv_message(b.as_fd(), &mut Vec::new()).unwrap(), Message::Bye));
        drop(a);
        assert!(matches!(recv_message(b.as_fd(), &mut Vec::new()).unwrap(), Message::Closed));
        assert!(send_connection(b.as_fd(), passed.as_fd(), &vec![0; MAX_READ_BYTES + 1]).is_err());
    }
}
