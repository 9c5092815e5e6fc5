//! What the kernel's `/proc` files say about this process and its sockets: resident
//! memory, socket drop counts, drops no socket counts, and multicast source filters.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Fields of this process's `/proc/self/status` that are given in kB (`"VmRSS:"`,
/// `"RssAnon:"`), all from one reading; panics naming a field that is missing.
pub fn self_status_kib<const N: usize>(fields: [&str; N]) -> [u64; N] {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    fields.map(|name| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in /proc/self/status"))
    })
}

/// This process's resident set (`VmRSS`), in KiB.
pub fn rss_kib() -> u64 {
    let [rss] = self_status_kib(["VmRSS:"]);
    rss
}

/// The kernel's count of datagrams it dropped at the IPv4 UDP socket bound to `addr` (the
/// last column of the network namespace's `/proc/net/udp`; every fd of one socket shares
/// it), if that socket is listed.
///
/// The kernel writes that table a chunk per `read`, walking its socket hash afresh each
/// time, so a socket that other threads' sockets move past while it is read can be missing
/// from one reading; a socket that exists is found within a few readings, so the table is
/// read again (up to 50 times, 2 ms apart) before the socket is called absent.
pub fn udp_drops(addr: SocketAddr) -> Option<u64> {
    let SocketAddr::V4(addr) = addr else {
        return None;
    };
    for _ in 0..50 {
        if let Some(drops) = read_udp_drops(addr) {
            return Some(drops);
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    None
}

/// One reading of `/proc/net/udp`, in one large buffer to make a torn reading unlikely.
fn read_udp_drops(addr: std::net::SocketAddrV4) -> Option<u64> {
    use std::io::Read;
    let mut table = String::with_capacity(1 << 20);
    std::fs::File::open("/proc/net/udp")
        .ok()?
        .read_to_string(&mut table)
        .ok()?;
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (ip, port) = cols.get(1)?.split_once(':')?;
        // The kernel prints the address's bytes as a native-endian integer.
        let ip = Ipv4Addr::from(u32::from_str_radix(ip, 16).ok()?.to_ne_bytes());
        let port = u16::from_str_radix(port, 16).ok()?;
        (ip == *addr.ip() && port == addr.port())
            .then(|| cols.last()?.parse().ok())
            .flatten()
    })
}

/// Drops counted where no socket sees them: the per-CPU backlog of packets received
/// (`/proc/net/softnet_stat`, second column, in hex, summed over the CPUs). Loopback
/// delivers through it; a datagram dropped there never reaches the port's queue, so no
/// socket counter (`SO_RXQ_OVFL`, `SO_MEMINFO`) includes it. System-wide.
pub fn softnet_dropped() -> u64 {
    let text = std::fs::read_to_string("/proc/net/softnet_stat").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(|c| u64::from_str_radix(c, 16).ok())
        .sum()
}

/// One source filter of an interface's multicast membership, as `/proc/net/mcfilter` or
/// `/proc/net/mcfilter6` lists it: the interface's name, how many sockets include the
/// source, how many exclude it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFilter {
    pub device: String,
    pub include: u64,
    pub exclude: u64,
}

/// The source filters for `(source, group)` in this network namespace
/// (`/proc/net/mcfilter` for IPv4, `/proc/net/mcfilter6` for IPv6); empty if none, or
/// if the file cannot be read.
///
/// As with `/proc/net/udp` (see [`udp_drops`]), a reading made in several `read` calls
/// while other threads join and leave groups can miss an entry, so the file is read in
/// one large buffer, and again (up to 50 times, 2 ms apart) before none is reported.
pub fn source_filters(source: IpAddr, group: IpAddr) -> Vec<SourceFilter> {
    for _ in 0..50 {
        let found = read_source_filters(source, group);
        if !found.is_empty() {
            return found;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    Vec::new()
}

/// One reading of the source filters for `(source, group)`, in one large buffer.
fn read_source_filters(source: IpAddr, group: IpAddr) -> Vec<SourceFilter> {
    use std::io::Read;
    let file = if group.is_ipv4() {
        "/proc/net/mcfilter"
    } else {
        "/proc/net/mcfilter6"
    };
    let mut text = String::with_capacity(1 << 20);
    if let Ok(mut f) = std::fs::File::open(file) {
        let _ = f.read_to_string(&mut text);
    }
    text.lines()
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let [_index, device, g, s, include, exclude] = cols[..] else {
                return None;
            };
            (parse_proc_ip(g, group.is_ipv4())? == group
                && parse_proc_ip(s, group.is_ipv4())? == source)
                .then(|| {
                    Some(SourceFilter {
                        device: device.to_owned(),
                        include: include.parse().ok()?,
                        exclude: exclude.parse().ok()?,
                    })
                })
                .flatten()
        })
        .collect()
}

/// An address as the mcfilter files print it: `0xe8010203` (IPv4, in host order of the
/// big-endian value, i.e. read as written) or 32 hex digits (IPv6).
fn parse_proc_ip(text: &str, v4: bool) -> Option<IpAddr> {
    if v4 {
        let hex = text.strip_prefix("0x")?;
        Some(Ipv4Addr::from(u32::from_str_radix(hex, 16).ok()?).into())
    } else {
        Some(Ipv6Addr::from(u128::from_str_radix(text, 16).ok()?).into())
    }
}
