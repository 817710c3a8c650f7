//! A raw-socket SYN flood: spoofed-source TCP SYNs to a VIP, bounded in count and time, fast
//! enough to load an XDP program (issue #16; scapy sends a few thousand packets a second).
//!
//! [`Flood::run`] opens an `AF_PACKET` socket in the network namespace of the calling
//! thread, so it is meant to run inside one of the harness's namespaces, on a thread of its
//! own, through [`in_ns`](crate::in_ns) (a named namespace) or [`in_new_ns`](crate::in_new_ns):
//!
//! ```no_run
//! use sluice_e2e::{flood::{interface_mac, Flood}, in_ns};
//! # let (client, router): (String, String) = Default::default();
//! // The next hop's MAC, read in the next hop's namespace.
//! let dst_mac = in_ns(&router, || interface_mac("c")).expect("router MAC");
//! let report = in_ns(&client, || {
//!     Flood {
//!         ifname: "eth0".into(),
//!         src_mac: interface_mac("eth0")?,
//!         dst_mac,
//!         sources: "10.99.0.0/16".parse().expect("literal"),
//!         dst: "198.51.100.1:80".parse().expect("literal"),
//!         count: 200_000,
//!         max_duration: std::time::Duration::from_secs(5),
//!         rate_pps: None,
//!         seed: 16,
//!     }
//!     .run()
//! })
//! .expect("flood");
//! eprintln!("{} SYNs at {:.0} packets/s", report.sent, report.rate());
//! ```
//!
//! Frames are built from a [`SynTemplate`] (everything but the varying fields is written, and
//! summed, once), written into a reusable buffer and handed to the kernel in batches of
//! [`BATCH`] with one `sendmmsg` each; `PACKET_QDISC_BYPASS` skips the device's queueing
//! discipline. Checksums are complete, as on a wire: the frames leave as `CHECKSUM_NONE`, and
//! a receiving kernel verifies them.

use std::{
    ffi::CString,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use ipnet::IpNet;

/// Frames handed to the kernel per `sendmmsg`: enough that the syscall's cost is spread
/// thin, few enough that the buffer stays in the L1/L2 cache.
pub const BATCH: usize = 128;

/// Bytes of buffer per frame (the longest frame, IPv6, is [`SYN_V6_LEN`]).
const STRIDE: usize = 128;

/// Length of an IPv4 SYN frame: Ethernet 14, IPv4 20, TCP 20 plus a 4-byte MSS option.
pub const SYN_V4_LEN: usize = 14 + 20 + 24;
/// Length of an IPv6 SYN frame: Ethernet 14, IPv6 40, TCP 20 plus a 4-byte MSS option.
pub const SYN_V6_LEN: usize = 14 + 40 + 24;

/// The TCP window of every SYN (Linux's default for a 1460-byte MSS).
pub const WINDOW: u16 = 64240;

/// Source ports are drawn from `FIRST_PORT..=65535`, the range a real client would use.
const FIRST_PORT: u16 = 1024;

/// A bounded SYN flood from spoofed sources.
#[derive(Clone, Debug)]
pub struct Flood {
    /// The interface to send on, in the network namespace of the thread calling [`Flood::run`].
    pub ifname: String,
    /// Ethernet source address of every frame (normally `ifname`'s: [`interface_mac`]).
    pub src_mac: [u8; 6],
    /// Ethernet destination: the next hop's MAC, which must accept the frames as its own.
    pub dst_mac: [u8; 6],
    /// Spoofed sources are drawn from this prefix (random host part); same family as `dst`.
    pub sources: IpNet,
    /// The VIP and port every SYN goes to.
    pub dst: SocketAddr,
    /// At most this many frames are sent.
    pub count: u64,
    /// Sending stops after this long, whatever is left of `count`.
    pub max_duration: Duration,
    /// Paces sending to this many packets per second; `None` sends as fast as it can.
    pub rate_pps: Option<u64>,
    /// Seeds the generator: the same seed gives the same frames in the same order.
    pub seed: u64,
}

/// What a [`Flood::run`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FloodReport {
    /// Frames the kernel accepted. A device may still drop some (a veth whose peer is down
    /// or whose XDP ring is full): what arrived is counted at the receiver.
    pub sent: u64,
    /// From the first send to the last.
    pub elapsed: Duration,
    /// `sendmmsg` calls refused for lack of room (`ENOBUFS`, `EAGAIN`); their frames were
    /// offered again, not counted as sent.
    pub errors: u64,
}

impl FloodReport {
    /// Frames sent per second.
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl Flood {
    /// The frames this flood sends, in order, without a socket: for tests and for
    /// [`Flood::run`]. Fails if `sources` and `dst` are of different families.
    pub fn frames(&self) -> io::Result<SynFrames> {
        SynFrames::new(self)
    }

    /// Sends the flood on `ifname` in the calling thread's network namespace and returns
    /// once `count` frames are sent or `max_duration` has passed, whichever comes first.
    ///
    /// A full socket buffer or device (`EAGAIN`, `ENOBUFS`) is counted in
    /// [`FloodReport::errors`] and waited out briefly; any other error (no such interface,
    /// interface down, not root) ends the flood with that error.
    pub fn run(&self) -> io::Result<FloodReport> {
        if self.rate_pps == Some(0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "rate_pps must be positive (None for unpaced)",
            ));
        }
        let mut frames = self.frames()?;
        let sock = PacketSocket::open()?;
        let ifindex = sock.ifindex(&self.ifname)?;
        let ethertype = match self.dst {
            SocketAddr::V4(_) => libc::ETH_P_IP,
            SocketAddr::V6(_) => libc::ETH_P_IPV6,
        } as u16;
        let mut batch = Batch::new(ifindex, ethertype, self.dst_mac, frames.frame_len());
        // Paced, a batch is about a millisecond's worth, so the rate is even at that scale.
        let per_batch = match self.rate_pps {
            Some(r) => (r / 1000).clamp(1, BATCH as u64),
            None => BATCH as u64,
        };
        let start = Instant::now();
        // A bound too large for an Instant is no bound.
        let deadline = start.checked_add(self.max_duration);
        let expired = |now: Instant| deadline.is_some_and(|d| now >= d);
        let (mut sent, mut errors) = (0u64, 0u64);
        'flood: while sent < self.count && !expired(Instant::now()) {
            if let Some(rate) = self.rate_pps {
                let due = start + Duration::from_secs_f64(sent as f64 / rate as f64);
                let now = Instant::now();
                if due > now {
                    let until = deadline.map_or(due, |d| due.min(d));
                    std::thread::sleep(until.saturating_duration_since(now));
                    continue;
                }
            }
            let n = per_batch.min(self.count - sent) as usize;
            batch.fill(n, &mut frames);
            let mut done = 0;
            while done < n {
                if expired(Instant::now()) {
                    break 'flood;
                }
                match batch.send(&sock, done, n) {
                    Ok(k) => {
                        done += k;
                        sent += k as u64;
                    }
                    Err(e) => match e.raw_os_error() {
                        Some(libc::EINTR) => {}
                        Some(libc::EAGAIN) => {
                            // The socket's send buffer is full: wait for room rather than spin.
                            errors += 1;
                            sock.wait_writable(deadline);
                        }
                        Some(libc::ENOBUFS) => {
                            // The device has no room (or memory is short), which poll does not
                            // report: give it a moment.
                            errors += 1;
                            std::thread::sleep(Duration::from_micros(50));
                        }
                        _ => return Err(e),
                    },
                }
            }
        }
        Ok(FloodReport {
            sent,
            elapsed: start.elapsed(),
            errors,
        })
    }
}

/// The MAC address of interface `ifname` in the calling thread's network namespace.
pub fn interface_mac(ifname: &str) -> io::Result<[u8; 6]> {
    PacketSocket::open()?.mac(ifname)
}

/// A SYN frame with everything fixed except the source address, source port, sequence
/// number and IPv4 identification, and the checksum sums of the fixed parts, so that a frame
/// costs a copy, four stores and two short sums.
#[derive(Clone, Debug)]
pub struct SynTemplate {
    bytes: [u8; SYN_V6_LEN],
    v6: bool,
    /// One's-complement sum of the IPv4 header's fixed 16-bit words (0 for IPv6).
    ip_sum: u32,
    /// One's-complement sum of the TCP pseudo-header's and segment's fixed words.
    tcp_sum: u32,
}

impl SynTemplate {
    /// Offset of the IP header.
    const IP: usize = 14;

    /// SYNs from `src_mac` to `dst_mac` for `dst`: IPv4 with DF, TTL 64; or IPv6, hop limit
    /// 64; TCP with window [`WINDOW`] and an MSS option (1460, or 1440 for IPv6).
    pub fn new(src_mac: [u8; 6], dst_mac: [u8; 6], dst: SocketAddr) -> SynTemplate {
        let mut b = [0u8; SYN_V6_LEN];
        b[0..6].copy_from_slice(&dst_mac);
        b[6..12].copy_from_slice(&src_mac);
        let v6 = dst.is_ipv6();
        let ip = Self::IP;
        let (ip_len, mss): (usize, u16) = if v6 { (40, 1440) } else { (20, 1460) };
        let t = ip + ip_len;
        const TCP_LEN: u16 = 24;
        let mut pseudo = Vec::with_capacity(40);
        match dst.ip() {
            IpAddr::V4(d) => {
                b[12..14].copy_from_slice(&(libc::ETH_P_IP as u16).to_be_bytes());
                b[ip] = 0x45; // version 4, 5 words
                b[ip + 2..ip + 4].copy_from_slice(&(20 + TCP_LEN).to_be_bytes());
                b[ip + 6] = 0x40; // don't fragment
                b[ip + 8] = 64; // TTL
                b[ip + 9] = libc::IPPROTO_TCP as u8;
                b[ip + 16..ip + 20].copy_from_slice(&d.octets());
                pseudo.extend_from_slice(&d.octets());
                pseudo.extend_from_slice(&[0, libc::IPPROTO_TCP as u8]);
                pseudo.extend_from_slice(&TCP_LEN.to_be_bytes());
            }
            IpAddr::V6(d) => {
                b[12..14].copy_from_slice(&(libc::ETH_P_IPV6 as u16).to_be_bytes());
                b[ip] = 0x60; // version 6, traffic class and flow label 0
                b[ip + 4..ip + 6].copy_from_slice(&TCP_LEN.to_be_bytes());
                b[ip + 6] = libc::IPPROTO_TCP as u8;
                b[ip + 7] = 64; // hop limit
                b[ip + 24..ip + 40].copy_from_slice(&d.octets());
                pseudo.extend_from_slice(&d.octets());
                pseudo.extend_from_slice(&u32::from(TCP_LEN).to_be_bytes());
                pseudo.extend_from_slice(&[0, 0, 0, libc::IPPROTO_TCP as u8]);
            }
        }
        b[t + 2..t + 4].copy_from_slice(&dst.port().to_be_bytes());
        b[t + 12] = 6 << 4; // data offset: 6 words, with the option
        b[t + 13] = 0x02; // SYN
        b[t + 14..t + 16].copy_from_slice(&WINDOW.to_be_bytes());
        b[t + 20..t + 22].copy_from_slice(&[2, 4]); // MSS, length 4
        b[t + 22..t + 24].copy_from_slice(&mss.to_be_bytes());
        // The varying fields and the checksums are still zero, so they add nothing here.
        let ip_sum = if v6 { 0 } else { sum(&b[ip..t]) };
        let tcp_sum = sum(&pseudo) + sum(&b[t..t + usize::from(TCP_LEN)]);
        SynTemplate {
            bytes: b,
            v6,
            ip_sum,
            tcp_sum,
        }
    }

    /// Length of the frames: [`SYN_V4_LEN`] or [`SYN_V6_LEN`].
    pub fn len(&self) -> usize {
        if self.v6 {
            SYN_V6_LEN
        } else {
            SYN_V4_LEN
        }
    }

    /// Always false: a frame is never empty (clippy asks for this next to `len`).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Writes the SYN from `src`:`sport` with sequence number `seq` (and IPv4 identification
    /// `ip_id`, ignored for IPv6) into the start of `out`, checksums complete; returns its
    /// length. Panics if `out` is shorter than [`SynTemplate::len`] or `src` is not of the
    /// destination's family (both mistakes of the caller, not of the network).
    pub fn write(&self, out: &mut [u8], src: IpAddr, sport: u16, seq: u32, ip_id: u16) -> usize {
        let len = self.len();
        let out = &mut out[..len];
        out.copy_from_slice(&self.bytes[..len]);
        let ip = Self::IP;
        let mut tcp_sum = self.tcp_sum + u32::from(sport) + (seq >> 16) + (seq & 0xffff);
        let t = match (src, self.v6) {
            (IpAddr::V4(a), false) => {
                let a = a.octets();
                out[ip + 4..ip + 6].copy_from_slice(&ip_id.to_be_bytes());
                out[ip + 12..ip + 16].copy_from_slice(&a);
                let a_sum = sum(&a);
                let ip_sum = self.ip_sum + u32::from(ip_id) + a_sum;
                out[ip + 10..ip + 12].copy_from_slice(&(!fold(ip_sum)).to_be_bytes());
                tcp_sum += a_sum;
                ip + 20
            }
            (IpAddr::V6(a), true) => {
                let a = a.octets();
                out[ip + 8..ip + 24].copy_from_slice(&a);
                tcp_sum += sum(&a);
                ip + 40
            }
            _ => panic!("SynTemplate::write: source {src} is not of the destination's family"),
        };
        out[t..t + 2].copy_from_slice(&sport.to_be_bytes());
        out[t + 4..t + 8].copy_from_slice(&seq.to_be_bytes());
        out[t + 16..t + 18].copy_from_slice(&(!fold(tcp_sum)).to_be_bytes());
        len
    }
}

/// Sum of `bytes` as big-endian 16-bit words (an odd last byte padded with zero), not yet
/// folded: the callers add at most a few hundred words, far from overflowing.
fn sum(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|w| u32::from(w[0]) << 8 | u32::from(w.get(1).copied().unwrap_or(0)))
        .sum()
}

/// Folds a 32-bit sum into a 16-bit one's-complement sum.
fn fold(mut s: u32) -> u16 {
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// The frames of a [`Flood`], in order: each from a different (source address, source port)
/// while the prefix has pairs left (hosts × 64512), with random sequence numbers and IPv4
/// identifications.
#[derive(Clone, Debug)]
pub struct SynFrames {
    template: SynTemplate,
    v6: bool,
    /// Network address of the source prefix, and its host mask (IPv4 in the low 32 bits).
    net: u128,
    hostmask: u128,
    /// Host bits beyond the 48 that [`Spread`] covers (only prefixes shorter than /80 in
    /// IPv6) come from `rng`.
    wide: bool,
    spread: Spread,
    rng: SplitMix,
}

impl SynFrames {
    fn new(f: &Flood) -> io::Result<SynFrames> {
        let (net, hostmask, v6) = match (f.sources, f.dst) {
            (IpNet::V4(n), SocketAddr::V4(_)) => (
                u128::from(u32::from(n.network())),
                u128::from(u32::from(n.hostmask())),
                false,
            ),
            (IpNet::V6(n), SocketAddr::V6(_)) => {
                (u128::from(n.network()), u128::from(n.hostmask()), true)
            }
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "sources {} and destination {} are of different families",
                        f.sources, f.dst
                    ),
                ))
            }
        };
        let host_bits = u32::from(f.sources.max_prefix_len() - f.sources.prefix_len());
        let mut rng = SplitMix(f.seed);
        Ok(SynFrames {
            template: SynTemplate::new(f.src_mac, f.dst_mac, f.dst),
            v6,
            net,
            hostmask,
            wide: host_bits > Spread::HOST_BITS,
            spread: Spread::new(host_bits.min(Spread::HOST_BITS), &mut rng),
            rng,
        })
    }

    /// Length of every frame.
    pub fn frame_len(&self) -> usize {
        self.template.len()
    }

    /// Writes the next frame into the start of `out` (at least [`SynFrames::frame_len`]
    /// bytes) and returns its length.
    pub fn next_into(&mut self, out: &mut [u8]) -> usize {
        let (host, port) = self.spread.next_pair();
        let mut host = u128::from(host);
        if self.wide {
            let high = u128::from(self.rng.next()) << 64 | u128::from(self.rng.next());
            host |= high << Spread::HOST_BITS;
        }
        let addr = self.net | (host & self.hostmask);
        let src = if self.v6 {
            IpAddr::V6(Ipv6Addr::from(addr))
        } else {
            // The host mask of an IPv4 prefix keeps the address within 32 bits.
            IpAddr::V4(Ipv4Addr::from(addr as u32))
        };
        let r = self.rng.next();
        self.template
            .write(out, src, port, (r >> 32) as u32, (r >> 16) as u16)
    }
}

/// A seeded permutation of the (host, port) pairs of a prefix: pair `i` is a bijective mix
/// of `i` on `bits` bits, its low 16 bits the port and the rest the host part, skipping
/// ports below [`FIRST_PORT`]. Distinct pairs for as long as there are any, and no set to
/// remember them in; random enough to spread over an XDP program's hash buckets.
#[derive(Clone, Debug)]
struct Spread {
    bits: u32,
    mask: u64,
    next: u64,
    /// Seed-derived offsets, applied before and after mixing.
    pre: u64,
    post: u64,
}

impl Spread {
    /// Host bits the permutation covers (with 16 port bits, that fills a u64).
    const HOST_BITS: u32 = 48;

    fn new(host_bits: u32, rng: &mut SplitMix) -> Spread {
        let bits = host_bits + 16;
        Spread {
            bits,
            mask: if bits >= 64 {
                u64::MAX
            } else {
                (1u64 << bits) - 1
            },
            next: 0,
            pre: rng.next(),
            post: rng.next(),
        }
    }

    /// A bijection on `bits`-bit values: each step (xor or add a constant, multiply by an
    /// odd constant, xor with a right shift of itself, all modulo 2^bits) is invertible.
    fn mix(&self, mut x: u64) -> u64 {
        let m = self.mask;
        let shift = self.bits / 2;
        x = (x ^ self.pre) & m;
        x = x.wrapping_mul(0x9e37_79b9_7f4a_7c15) & m;
        x ^= x >> shift;
        x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9) & m;
        x ^= x >> shift;
        x = x.wrapping_mul(0x94d0_49bb_1331_11eb) & m;
        x ^= x >> shift;
        x.wrapping_add(self.post) & m
    }

    /// The next (host part, port).
    fn next_pair(&mut self) -> (u64, u16) {
        loop {
            let v = self.mix(self.next);
            // After every pair has been drawn, the same order again.
            self.next = self.next.wrapping_add(1) & self.mask;
            let port = v as u16;
            if port >= FIRST_PORT {
                return (v >> 16, port);
            }
        }
    }
}

/// splitmix64: small, fast and good enough for sequence numbers and IDs.
#[derive(Clone, Debug)]
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// An `AF_PACKET` raw socket in the calling thread's network namespace. Its protocol is 0,
/// so it receives nothing: no receive queue fills up behind the flood.
struct PacketSocket(OwnedFd);

impl PacketSocket {
    fn open() -> io::Result<PacketSocket> {
        // SAFETY: plain socket(2); the result is checked before it is owned.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nothing else owns.
        let sock = PacketSocket(unsafe { OwnedFd::from_raw_fd(fd) });
        let one: libc::c_int = 1;
        // Straight to the driver, past the device's queueing discipline. Only an
        // optimisation: a kernel without it (before 3.14) still sends, so a failure is ignored.
        // SAFETY: a valid socket and an int-sized option value that outlives the call.
        unsafe {
            libc::setsockopt(
                sock.0.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        Ok(sock)
    }

    /// An interface request for `ifname`, answered by the kernel.
    fn ifreq(&self, ifname: &str, request: libc::c_ulong) -> io::Result<libc::ifreq> {
        let name = CString::new(ifname)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name has NUL"))?;
        let bytes = name.as_bytes_with_nul();
        // SAFETY: ifreq is plain data (a name and a union of integers, addresses and a
        // pointer), for which all zeroes is valid.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        if bytes.len() > req.ifr_name.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("interface name {ifname} is too long"),
            ));
        }
        for (d, s) in req.ifr_name.iter_mut().zip(bytes) {
            *d = *s as libc::c_char;
        }
        // SAFETY: a valid socket and an ifreq the kernel fills in for these requests.
        if unsafe { libc::ioctl(self.0.as_raw_fd(), request as _, &mut req) } != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("interface {ifname}: {e}")));
        }
        Ok(req)
    }

    fn ifindex(&self, ifname: &str) -> io::Result<libc::c_int> {
        let req = self.ifreq(ifname, libc::SIOCGIFINDEX)?;
        // SAFETY: SIOCGIFINDEX fills the ifindex member of the union.
        Ok(unsafe { req.ifr_ifru.ifru_ifindex })
    }

    fn mac(&self, ifname: &str) -> io::Result<[u8; 6]> {
        let req = self.ifreq(ifname, libc::SIOCGIFHWADDR)?;
        // SAFETY: SIOCGIFHWADDR fills the hwaddr member of the union.
        let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
        let mut mac = [0u8; 6];
        for (d, s) in mac.iter_mut().zip(data) {
            *d = s as u8;
        }
        Ok(mac)
    }

    /// Waits until the socket has room again, at most a millisecond and never past `deadline`.
    fn wait_writable(&self, deadline: Option<Instant>) {
        let mut wait = Duration::from_millis(1);
        if let Some(d) = deadline {
            wait = wait.min(d.saturating_duration_since(Instant::now()));
        }
        let mut pfd = libc::pollfd {
            fd: self.0.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        // Whatever poll answers, the caller tries again and checks its bounds.
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut pfd, 1, wait.as_millis() as libc::c_int) };
    }
}

/// The frames of one `sendmmsg`: a buffer of [`BATCH`] slots, one iovec and one message
/// header per slot, and the destination they all share. The headers point into the
/// buffer, the iovecs and the address, all heap allocations that never move or grow, so the
/// pointers stay valid for as long as the `Batch` lives, wherever it is moved.
struct Batch {
    buf: Vec<u8>,
    /// Read by the kernel through `msgs`, never directly.
    _iov: Vec<libc::iovec>,
    _addr: Box<libc::sockaddr_ll>,
    msgs: Vec<libc::mmsghdr>,
}

impl Batch {
    fn new(ifindex: libc::c_int, ethertype: u16, dst_mac: [u8; 6], frame_len: usize) -> Batch {
        let mut buf = vec![0u8; BATCH * STRIDE];
        let mut iov: Vec<libc::iovec> = buf
            .chunks_exact_mut(STRIDE)
            .map(|slot| libc::iovec {
                iov_base: slot.as_mut_ptr().cast(),
                iov_len: frame_len,
            })
            .collect();
        // SAFETY: sockaddr_ll is plain data; all zeroes is valid.
        let mut addr: Box<libc::sockaddr_ll> = Box::new(unsafe { std::mem::zeroed() });
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = ethertype.to_be();
        addr.sll_ifindex = ifindex;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&dst_mac);
        let addr_ptr: *mut libc::sockaddr_ll = &mut *addr;
        let msgs = iov
            .iter_mut()
            .map(|v| {
                // SAFETY: mmsghdr is plain data (pointers and lengths); all zeroes is valid.
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_name = addr_ptr.cast();
                m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as _;
                m.msg_hdr.msg_iov = v;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        Batch {
            buf,
            _iov: iov,
            _addr: addr,
            msgs,
        }
    }

    /// Writes the next `n` frames into the first `n` slots.
    fn fill(&mut self, n: usize, frames: &mut SynFrames) {
        for slot in self.buf.chunks_exact_mut(STRIDE).take(n) {
            frames.next_into(slot);
        }
    }

    /// Sends slots `from..to` with one non-blocking `sendmmsg`: how many the kernel took.
    fn send(&mut self, sock: &PacketSocket, from: usize, to: usize) -> io::Result<usize> {
        let msgs = &mut self.msgs[from..to];
        // SAFETY: the headers point into this Batch's live allocations (see the type's
        // comment), and the count is the slice's length.
        let rc = unsafe {
            libc::sendmmsg(
                sock.0.as_raw_fd(),
                msgs.as_mut_ptr(),
                msgs.len() as libc::c_uint,
                libc::MSG_DONTWAIT as _,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(rc as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn flood(sources: &str, dst: &str, seed: u64) -> Flood {
        Flood {
            ifname: "unused".into(),
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            sources: sources.parse().expect("literal"),
            dst: dst.parse().expect("literal"),
            count: 0,
            max_duration: Duration::ZERO,
            rate_pps: None,
            seed,
        }
    }

    /// A SYN parsed back, by code that shares nothing with the builder.
    #[derive(Debug)]
    struct Parsed {
        src: IpAddr,
        dst: SocketAddr,
        sport: u16,
        seq: u32,
        ip_id: u16,
    }

    fn be16(b: &[u8], at: usize) -> u16 {
        u16::from_be_bytes([b[at], b[at + 1]])
    }

    /// The plain RFC 1071 checksum of `parts`, laid end to end (each of even length).
    fn ones_sum(parts: &[&[u8]]) -> u16 {
        let mut s: u64 = 0;
        for p in parts {
            assert_eq!(p.len() % 2, 0);
            for w in p.chunks(2) {
                s += u64::from(be16(w, 0));
            }
        }
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }

    fn parse(f: &Flood, frame: &[u8]) -> Parsed {
        assert_eq!(&frame[0..6], &f.dst_mac);
        assert_eq!(&frame[6..12], &f.src_mac);
        let (src, dst_ip, tcp, ip_id) = match be16(frame, 12) {
            0x0800 => {
                assert_eq!(frame.len(), SYN_V4_LEN);
                let ip = &frame[14..34];
                assert_eq!(ip[0], 0x45, "version 4, no options");
                assert_eq!(be16(ip, 2) as usize, frame.len() - 14, "total length");
                assert_eq!(be16(ip, 6), 0x4000, "DF, no fragment offset");
                assert_eq!(ip[8], 64, "TTL");
                assert_eq!(ip[9], 6, "TCP");
                assert_eq!(ones_sum(&[ip]), 0xffff, "IPv4 header checksum");
                let src: [u8; 4] = ip[12..16].try_into().expect("4 bytes");
                let dst: [u8; 4] = ip[16..20].try_into().expect("4 bytes");
                let tcp = &frame[34..];
                let len = (tcp.len() as u16).to_be_bytes();
                let pseudo = [&src[..], &dst[..], &[0, 6], &len[..]].concat();
                assert_eq!(ones_sum(&[&pseudo, tcp]), 0xffff, "TCP checksum");
                (IpAddr::from(src), IpAddr::from(dst), tcp, be16(ip, 4))
            }
            0x86dd => {
                assert_eq!(frame.len(), SYN_V6_LEN);
                let ip = &frame[14..54];
                assert_eq!(ip[0] >> 4, 6);
                assert_eq!(be16(ip, 4) as usize, frame.len() - 54, "payload length");
                assert_eq!(ip[6], 6, "TCP");
                assert_eq!(ip[7], 64, "hop limit");
                let src: [u8; 16] = ip[8..24].try_into().expect("16 bytes");
                let dst: [u8; 16] = ip[24..40].try_into().expect("16 bytes");
                let tcp = &frame[54..];
                let len = (tcp.len() as u32).to_be_bytes();
                let pseudo = [&src[..], &dst[..], &len[..], &[0, 0, 0, 6]].concat();
                assert_eq!(ones_sum(&[&pseudo, tcp]), 0xffff, "TCP checksum");
                (IpAddr::from(src), IpAddr::from(dst), tcp, 0)
            }
            t => panic!("ethertype {t:#x}"),
        };
        assert_eq!(tcp[12] >> 4, 6, "data offset");
        assert_eq!(tcp[13], 0x02, "SYN and nothing else");
        assert_eq!(be16(tcp, 14), WINDOW);
        assert_eq!(&tcp[8..12], &[0; 4], "no acknowledgement number");
        assert_eq!(be16(tcp, 18), 0, "no urgent pointer");
        assert_eq!(&tcp[20..22], &[2, 4], "MSS option");
        Parsed {
            src,
            dst: SocketAddr::new(dst_ip, be16(tcp, 2)),
            sport: be16(tcp, 0),
            seq: u32::from_be_bytes(tcp[4..8].try_into().expect("4 bytes")),
            ip_id,
        }
    }

    /// Builds `n` frames of `f` and checks each; returns them parsed.
    fn check(f: &Flood, n: usize) -> Vec<Parsed> {
        let mut frames = f.frames().expect("frames");
        let mut buf = [0u8; STRIDE];
        (0..n)
            .map(|_| {
                let len = frames.next_into(&mut buf);
                assert_eq!(len, frames.frame_len());
                let p = parse(f, &buf[..len]);
                assert!(
                    f.sources.contains(&p.src),
                    "{} outside {}",
                    p.src,
                    f.sources
                );
                assert_eq!(p.dst, f.dst);
                assert!(p.sport >= FIRST_PORT, "{}", p.sport);
                p
            })
            .collect()
    }

    #[test]
    fn ipv4_syns_are_valid_and_from_distinct_sources() {
        let f = flood("10.99.0.0/16", "198.51.100.1:80", 16);
        let syns = check(&f, 100_000);
        let pairs: HashSet<(IpAddr, u16)> = syns.iter().map(|p| (p.src, p.sport)).collect();
        assert_eq!(pairs.len(), syns.len(), "a (source, port) pair repeated");
        // Spread over the prefix and the ports as uniform draws would be: 100 000 of them
        // from 65 536 values hit about 51 000 different ones; walking in order would hit
        // far fewer hosts (or ports), repeating ones would hit fewer of both.
        let hosts = syns.iter().map(|p| p.src).collect::<HashSet<_>>().len();
        let ports = syns.iter().map(|p| p.sport).collect::<HashSet<_>>().len();
        let ids = syns.iter().map(|p| p.ip_id).collect::<HashSet<_>>().len();
        let seqs = syns.iter().map(|p| p.seq).collect::<HashSet<_>>().len();
        for (what, n) in [("hosts", hosts), ("ports", ports), ("ids", ids)] {
            assert!((48_000..55_000).contains(&n), "{n} {what}");
        }
        assert!(seqs > 99_000, "{seqs} sequence numbers");
    }

    #[test]
    fn a_single_source_gets_every_port_once() {
        let f = flood("10.1.2.3/32", "198.51.100.1:443", 1);
        let syns = check(&f, usize::from(u16::MAX - FIRST_PORT + 1));
        let ports: HashSet<u16> = syns.iter().map(|p| p.sport).collect();
        assert_eq!(ports.len(), syns.len());
        assert!(syns
            .iter()
            .all(|p| p.src == "10.1.2.3".parse::<IpAddr>().expect("literal")));
    }

    #[test]
    fn ipv6_syns_are_valid_even_from_a_wide_prefix() {
        for sources in ["2001:db8:99::/64", "2001:db8:99::/112", "::/0"] {
            let f = flood(sources, "[2001:db8::1]:80", 6);
            let syns = check(&f, 20_000);
            let pairs: HashSet<(IpAddr, u16)> = syns.iter().map(|p| (p.src, p.sport)).collect();
            assert_eq!(pairs.len(), syns.len(), "{sources}");
        }
    }

    #[test]
    fn the_seed_decides_the_frames() {
        let frames = |seed| {
            let mut g = flood("10.99.0.0/16", "198.51.100.1:80", seed)
                .frames()
                .expect("frames");
            let mut buf = [0u8; STRIDE];
            (0..100)
                .map(|_| {
                    let n = g.next_into(&mut buf);
                    buf[..n].to_vec()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(frames(7), frames(7));
        assert_ne!(frames(7), frames(8));
    }

    #[test]
    fn families_must_match() {
        let f = flood("10.99.0.0/16", "[2001:db8::1]:80", 0);
        assert_eq!(
            f.frames().expect_err("mixed families").kind(),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            f.run().expect_err("mixed families").kind(),
            io::ErrorKind::InvalidInput
        );
    }

    #[test]
    fn spread_is_a_permutation() {
        for host_bits in [0, 1, 3] {
            let mut s = Spread::new(host_bits, &mut SplitMix(host_bits.into()));
            let all: HashSet<u64> = (0..=s.mask).map(|i| s.mix(i)).collect();
            assert_eq!(all.len() as u64, s.mask + 1, "{host_bits} host bits");
            let n = (1usize << host_bits) * usize::from(u16::MAX - FIRST_PORT + 1);
            let pairs: HashSet<(u64, u16)> = (0..n).map(|_| s.next_pair()).collect();
            assert_eq!(pairs.len(), n);
        }
    }
}
