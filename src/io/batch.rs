//! Many datagrams per system call on the shard's socket: `recvmmsg` and
//! `sendmmsg` with `MSG_DONTWAIT`, beside glommio's one-datagram-per-op
//! API (which the shell keeps for parking when nothing is queued and for
//! waiting when the send buffer is full).
//!
//! Why `unsafe` here (the only module of the node with it): the two calls
//! take arrays of C message headers that point at our buffers. nix wraps
//! them, but reading its `sendmmsg` result walks address slots it never
//! initialised; these few blocks zero-initialise everything they hand the
//! kernel instead. Both calls only take what is already queued or write
//! what fits: they never block the executor. The header pointers are
//! rebuilt on every call, so the structs may move between calls.
#![allow(unsafe_code)]

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// Datagrams moved by one system call at most.
pub const BATCH_MAX: usize = 32;

const SOCKADDR_IN_LEN: usize = std::mem::size_of::<libc::sockaddr_in>();
const SOCKADDR_IN6_LEN: usize = std::mem::size_of::<libc::sockaddr_in6>();

/// A socket address in the C layout the kernel reads.
fn to_c(addr: &SocketAddr, out: &mut libc::sockaddr_storage) -> libc::socklen_t {
    const {
        assert!(SOCKADDR_IN6_LEN <= std::mem::size_of::<libc::sockaddr_storage>());
        assert!(
            std::mem::align_of::<libc::sockaddr_storage>()
                >= std::mem::align_of::<libc::sockaddr_in6>()
        );
    }
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is larger than and aligned for
            // sockaddr_in (its purpose; checked above), and `out` is a valid,
            // exclusive reference for the write.
            let sin = unsafe { &mut *std::ptr::from_mut(out).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr = libc::in_addr {
                s_addr: u32::from_ne_bytes(a.ip().octets()),
            };
            sin.sin_zero = [0; 8];
            SOCKADDR_IN_LEN as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &mut *std::ptr::from_mut(out).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_flowinfo = a.flowinfo().to_be();
            sin6.sin6_addr = libc::in6_addr {
                s6_addr: a.ip().octets(),
            };
            sin6.sin6_scope_id = a.scope_id();
            SOCKADDR_IN6_LEN as libc::socklen_t
        }
    }
}

/// The address the kernel wrote, if it is IPv4 or IPv6.
fn from_c(addr: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    match i32::from(addr.ss_family) {
        libc::AF_INET if len as usize >= SOCKADDR_IN_LEN => {
            // SAFETY: the storage is aligned and large enough for a
            // sockaddr_in, fully initialised (zeroed, then written by the
            // kernel), and the family says it holds one.
            let sin = unsafe { &*std::ptr::from_ref(addr).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len as usize >= SOCKADDR_IN6_LEN => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &*std::ptr::from_ref(addr).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                u32::from_be(sin6.sin6_flowinfo),
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn zeroed_storage() -> libc::sockaddr_storage {
    // SAFETY: sockaddr_storage is a plain C struct of integers; all zeroes
    // is a valid value (family AF_UNSPEC).
    unsafe { std::mem::zeroed() }
}

fn zeroed_header() -> libc::mmsghdr {
    // SAFETY: mmsghdr is a plain C struct of integers and pointers; all
    // zeroes (null pointers, zero lengths) is valid, and every pointer is
    // set before the kernel sees it.
    unsafe { std::mem::zeroed() }
}

fn empty_iovec() -> libc::iovec {
    libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }
}

/// One received datagram of a [`RecvBatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received<'a> {
    Datagram(SocketAddr, &'a [u8]),
    /// Longer than the slot (`datagram_bytes_max`): cut by the kernel.
    TooLarge,
    /// From an address family the shard does not speak.
    UnknownSource,
}

/// Buffers for receiving up to [`BATCH_MAX`] datagrams in one call.
pub struct RecvBatch {
    slot: usize,
    bufs: Vec<u8>,
    addrs: Vec<libc::sockaddr_storage>,
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
    len: usize,
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("slot", &self.slot)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl RecvBatch {
    /// Room for [`BATCH_MAX`] datagrams of `datagram_bytes_max` bytes; a
    /// longer one shows as [`Received::TooLarge`].
    pub fn new(datagram_bytes_max: usize) -> RecvBatch {
        // One byte more than the limit, so a longer datagram fills it.
        let slot = datagram_bytes_max + 1;
        RecvBatch {
            slot,
            bufs: vec![0; slot * BATCH_MAX],
            addrs: vec![zeroed_storage(); BATCH_MAX],
            iovecs: vec![empty_iovec(); BATCH_MAX],
            headers: vec![zeroed_header(); BATCH_MAX],
            len: 0,
        }
    }

    /// Reads the datagrams already queued on `fd`, up to [`BATCH_MAX`],
    /// without waiting: 0 when none is. Errors other than "nothing queued"
    /// are returned.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        self.len = 0;
        let slot = self.slot;
        // Every pointer handed to the kernel derives from one base pointer
        // per buffer, taken after the last write through a reference.
        self.addrs.fill(zeroed_storage());
        let bufs = self.bufs.as_mut_ptr();
        for (i, iov) in self.iovecs.iter_mut().enumerate() {
            iov.iov_base = bufs.wrapping_add(i * slot).cast();
            iov.iov_len = slot;
        }
        let (addrs, iovecs) = (self.addrs.as_mut_ptr(), self.iovecs.as_mut_ptr());
        for (i, header) in self.headers.iter_mut().enumerate() {
            *header = zeroed_header();
            header.msg_hdr.msg_name = addrs.wrapping_add(i).cast();
            header.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
            header.msg_hdr.msg_iov = iovecs.wrapping_add(i);
            header.msg_hdr.msg_iovlen = 1;
        }
        debug_assert_eq!(self.bufs.len(), slot * BATCH_MAX);
        debug_assert_eq!(self.headers.len(), BATCH_MAX);
        // SAFETY: `headers` holds BATCH_MAX initialised headers whose name
        // and iovec pointers point into `addrs`, `iovecs` and `bufs` (one
        // disjoint slot each, of the lengths given), all owned by `self`,
        // alive and not otherwise borrowed during the call. MSG_DONTWAIT:
        // the call never blocks; a null timeout is allowed.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.headers.as_mut_ptr(),
                BATCH_MAX as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(e),
            };
        }
        self.len = (n as usize).min(BATCH_MAX);
        Ok(self.len)
    }

    /// The `i`th datagram of the last [`Self::recv`].
    pub fn get(&self, i: usize) -> Received<'_> {
        assert!(i < self.len, "datagram {i} of {}", self.len);
        let header = &self.headers[i];
        let n = header.msg_len as usize;
        if n >= self.slot || header.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
            return Received::TooLarge;
        }
        match from_c(&self.addrs[i], header.msg_hdr.msg_namelen) {
            Some(source) => Received::Datagram(source, &self.bufs[i * self.slot..][..n]),
            None => Received::UnknownSource,
        }
    }
}

/// What one [`SendBatch::send`] call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// The first `n` datagrams went out.
    Some(usize),
    /// The socket's send buffer is full: nothing went out.
    Full,
    /// The first datagram was refused (bad destination, unreachable...):
    /// the caller drops it and goes on.
    Failed,
}

/// Headers for sending up to [`BATCH_MAX`] datagrams in one call.
pub struct SendBatch {
    addrs: Vec<libc::sockaddr_storage>,
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
}

impl std::fmt::Debug for SendBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SendBatch")
    }
}

impl Default for SendBatch {
    fn default() -> Self {
        SendBatch {
            addrs: vec![zeroed_storage(); BATCH_MAX],
            iovecs: vec![empty_iovec(); BATCH_MAX],
            headers: vec![zeroed_header(); BATCH_MAX],
        }
    }
}

impl SendBatch {
    /// Writes as many of `datagrams` (destination, bytes; at most
    /// [`BATCH_MAX`] are looked at) as the socket takes now, in order.
    pub fn send<'a>(
        &mut self,
        fd: RawFd,
        datagrams: impl Iterator<Item = (SocketAddr, &'a [u8])>,
    ) -> Sent {
        let mut count = 0;
        for (i, (destination, bytes)) in datagrams.take(BATCH_MAX).enumerate() {
            self.addrs[i] = zeroed_storage();
            let len = to_c(&destination, &mut self.addrs[i]);
            // The kernel only reads through this pointer (sendmmsg).
            self.iovecs[i].iov_base = bytes.as_ptr().cast_mut().cast();
            self.iovecs[i].iov_len = bytes.len();
            self.headers[i] = zeroed_header();
            self.headers[i].msg_hdr.msg_namelen = len;
            self.headers[i].msg_hdr.msg_iovlen = 1;
            count += 1;
        }
        // The pointers derive from one base per buffer, taken after the
        // last write through a reference.
        let (addrs, iovecs) = (self.addrs.as_mut_ptr(), self.iovecs.as_mut_ptr());
        for (i, header) in self.headers.iter_mut().take(count).enumerate() {
            header.msg_hdr.msg_name = addrs.wrapping_add(i).cast();
            header.msg_hdr.msg_iov = iovecs.wrapping_add(i);
        }
        if count == 0 {
            return Sent::Some(0);
        }
        debug_assert!(count <= BATCH_MAX);
        // SAFETY: the first `count` headers were initialised above; they
        // point into `addrs` and `iovecs` (owned by `self`, not otherwise
        // borrowed during the call) and at the callers' datagram bytes,
        // which outlive this call ('a) and are only read by sendmmsg.
        // MSG_DONTWAIT: the call never blocks.
        let n = unsafe {
            libc::sendmmsg(
                fd,
                self.headers.as_mut_ptr(),
                count as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if n > 0 {
            return Sent::Some((n as usize).min(count));
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::WouldBlock => Sent::Full,
            io::ErrorKind::Interrupted => Sent::Some(0),
            _ => {
                tracing::debug!("sendmmsg: {e}");
                Sent::Failed
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn addresses_round_trip_through_the_c_layout() {
        for a in ["127.0.0.1:4242", "[::1]:9", "[fe80::1%3]:65535"] {
            let addr: SocketAddr = a.parse().expect("an address");
            let mut c = zeroed_storage();
            let len = to_c(&addr, &mut c);
            assert_eq!(from_c(&c, len), Some(addr));
        }
        assert_eq!(from_c(&zeroed_storage(), 0), None);
    }

    #[test]
    fn a_batch_goes_out_and_comes_in_with_its_sources_and_limits() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").expect("binds");
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").expect("binds");
        let to = rx.local_addr().expect("bound");
        let mut recv = RecvBatch::new(100);
        assert_eq!(
            recv.recv(rx.as_raw_fd()).expect("recvmmsg"),
            0,
            "nothing queued"
        );

        let payloads: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; 10 + usize::from(i)]).collect();
        let mut send = SendBatch::default();
        let mut sent = 0;
        while sent < payloads.len() {
            match send.send(
                tx.as_raw_fd(),
                payloads[sent..].iter().map(|p| (to, &p[..])),
            ) {
                Sent::Some(n) => sent += n,
                other => panic!("send: {other:?}"),
            }
        }
        // One over the limit is reported, not cut silently.
        tx.send_to(&[7u8; 101], to).expect("sends");

        let mut got = Vec::new();
        let mut too_large = 0;
        for _ in 0..100 {
            let n = recv.recv(rx.as_raw_fd()).expect("recvmmsg");
            assert!(n <= BATCH_MAX);
            for i in 0..n {
                match recv.get(i) {
                    Received::Datagram(source, bytes) => {
                        assert_eq!(source, tx.local_addr().expect("bound"));
                        got.push(bytes.to_vec());
                    }
                    Received::TooLarge => too_large += 1,
                    Received::UnknownSource => panic!("unknown source"),
                }
            }
            if got.len() + too_large == payloads.len() + 1 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(got, payloads, "every datagram, in order, whole");
        assert_eq!(too_large, 1);
    }

    #[test]
    fn an_unreachable_destination_fails_that_datagram_only() {
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").expect("binds");
        let mut send = SendBatch::default();
        // An IPv6 destination on an IPv4 socket is refused by the kernel.
        let bad: SocketAddr = "[::1]:9".parse().expect("an address");
        assert_eq!(
            send.send(tx.as_raw_fd(), std::iter::once((bad, &b"x"[..]))),
            Sent::Failed
        );
    }
}
