//! DNS A-record lookup over UDP with `twine::request`: one query, resent on a timeout
//! (3 tries, 200 ms apart, by default), finished by the first well-formed answer from the
//! server, a refusal, or the last try's timeout. The query is built by hand (the 12-byte
//! header and one question) and the answer parsed minimally: the header, the question
//! (which must be ours), and the A records among the answers. A datagram that is not a
//! well-formed answer to our question, or that comes from another address, is ignored
//! (logged at debug): it does not end the query, so a forged or garbled datagram cannot
//! either.
//!
//! Run:  `python3 tests/peers/dns_standin.py --drop 2` in one terminal (a stand-in server
//!       that ignores the first 2 tries of each query), then
//!       `cargo run --example dns_client [SERVER_IP:PORT] [--name NAME] [--tries N]
//!       [--timeout SECONDS] [--backoff FACTOR]`
//!       (default server `127.0.0.1:9953`, name `example.test`, 3 tries, first timeout
//!       0.2 s, backoff 1: the same timeout each try)
//! Prints: `answer: NAME A IP` for each A record, then `answered after N tries` (`1 try`).
//! Exit: 0 with at least one A record; 1 otherwise (no answer, refused, the server's
//!       error such as NXDOMAIN, no A record); 2 for bad arguments.

mod common;

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use twine::request::{Outcome, Requests, RetryPolicy};
use twine::{DatagramProtocol, Error, ListenOptions, Reactor, UdpTransport};

const USAGE: &str = "usage: dns_client [SERVER_IP:PORT] [--name NAME] [--tries N] \
[--timeout SECONDS] [--backoff FACTOR]

Looks up the A records of NAME (default example.test) at SERVER (default 127.0.0.1:9953),
sending the query up to N times (default 3), waiting SECONDS (default 0.2) after the first
try and FACTOR (default 1) times as long after each next one.";

/// The DNS wire format: what the client needs of it, and no more.
mod dns {
    use std::fmt;
    use std::net::Ipv4Addr;

    /// Type A (a host address).
    const TYPE_A: u16 = 1;
    const TYPE_CNAME: u16 = 5;
    /// The most aliases followed from the question's name.
    const MAX_ALIASES: usize = 8;
    /// Class IN (the Internet).
    const CLASS_IN: u16 = 1;
    /// The most a name takes on the wire (RFC 1035 §2.3.4).
    const MAX_NAME: usize = 255;
    /// The most compression pointers followed while reading one name.
    const MAX_POINTERS: usize = 32;

    /// Why a name could not be queried, or a datagram is not an answer to the query.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum DnsError {
        /// The name to look up is not a DNS name this client can send.
        BadQueryName(&'static str),
        /// The datagram ended before the part named.
        Short(&'static str),
        /// The datagram is a query, not a response.
        NotAResponse,
        /// The response is not to a standard query (its opcode).
        Opcode(u8),
        /// The response was cut to fit in a datagram (TC): the answer needs TCP.
        Truncated,
        /// The response does not carry exactly our one question.
        QuestionCount(u16),
        /// The response's question is not ours.
        NotOurQuestion,
        /// A name in the response is malformed (a reserved label type, a pointer out of
        /// the datagram or in a loop, longer than 255 bytes).
        BadName(&'static str),
    }

    impl fmt::Display for DnsError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                DnsError::BadQueryName(why) => write!(f, "bad name to look up: {why}"),
                DnsError::Short(part) => write!(f, "datagram ends inside the {part}"),
                DnsError::NotAResponse => write!(f, "a query, not a response"),
                DnsError::Opcode(op) => write!(f, "not a standard query's response (opcode {op})"),
                DnsError::Truncated => write!(f, "response truncated (TC): it needs TCP"),
                DnsError::QuestionCount(n) => write!(f, "{n} questions, expected 1"),
                DnsError::NotOurQuestion => write!(f, "the response's question is not ours"),
                DnsError::BadName(why) => write!(f, "bad name in the response: {why}"),
            }
        }
    }

    impl std::error::Error for DnsError {}

    /// A well-formed response to our question.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Response {
        /// The response code: 0 no error, 2 server failure, 3 no such name (NXDOMAIN) ...
        pub rcode: u8,
        /// The A records among the answers, in order.
        pub addresses: Vec<Ipv4Addr>,
    }

    /// The name of a response code.
    pub fn rcode_name(rcode: u8) -> String {
        match rcode {
            0 => "NOERROR".to_owned(),
            1 => "FORMERR".to_owned(),
            2 => "SERVFAIL".to_owned(),
            3 => "NXDOMAIN".to_owned(),
            4 => "NOTIMP".to_owned(),
            5 => "REFUSED".to_owned(),
            n => format!("RCODE {n}"),
        }
    }

    /// The query id of a DNS message (its first two bytes), if it has them.
    pub fn id(message: &[u8]) -> Option<u16> {
        Some(u16::from_be_bytes([*message.first()?, *message.get(1)?]))
    }

    /// `name` in wire form: length-prefixed labels and a zero byte. A trailing dot is
    /// allowed; only ASCII names are (no IDNA).
    fn encode_name(name: &str) -> Result<Vec<u8>, DnsError> {
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.is_empty() {
            return Err(DnsError::BadQueryName("empty"));
        }
        if !name.is_ascii() {
            return Err(DnsError::BadQueryName("not ASCII"));
        }
        let mut wire = Vec::with_capacity(name.len() + 2);
        for label in name.split('.') {
            if label.is_empty() {
                return Err(DnsError::BadQueryName("an empty label"));
            }
            let len = u8::try_from(label.len())
                .ok()
                .filter(|&n| n <= 63)
                .ok_or(DnsError::BadQueryName("a label over 63 bytes"))?;
            wire.push(len);
            wire.extend_from_slice(label.as_bytes());
        }
        wire.push(0);
        if wire.len() > MAX_NAME {
            return Err(DnsError::BadQueryName("over 255 bytes"));
        }
        Ok(wire)
    }

    /// A standard query with recursion desired for the A records of `name`.
    pub fn query(id: u16, name: &str) -> Result<Vec<u8>, DnsError> {
        let mut q = Vec::with_capacity(12 + name.len() + 6);
        q.extend_from_slice(&id.to_be_bytes());
        q.extend_from_slice(&0x0100u16.to_be_bytes()); // RD
        q.extend_from_slice(&1u16.to_be_bytes()); // QDCOUNT
        q.extend_from_slice(&[0; 6]); // ANCOUNT, NSCOUNT, ARCOUNT
        q.extend_from_slice(&encode_name(name)?);
        q.extend_from_slice(&TYPE_A.to_be_bytes());
        q.extend_from_slice(&CLASS_IN.to_be_bytes());
        Ok(q)
    }

    /// Reads a big-endian u16 at `at`.
    fn u16_at(m: &[u8], at: usize, part: &'static str) -> Result<u16, DnsError> {
        match m.get(at..at.saturating_add(2)) {
            Some(&[a, b]) => Ok(u16::from_be_bytes([a, b])),
            _ => Err(DnsError::Short(part)),
        }
    }

    /// A name as compared: its labels in ASCII lower case (a dot inside a label stays a
    /// byte of that label, so `a.b` as one label is not `a` then `b`).
    type Name = Vec<Vec<u8>>;

    /// The labels of `name` (a query name, as `encode_name` takes it) as compared.
    fn labels(name: &str) -> Name {
        let name = name.strip_suffix('.').unwrap_or(name);
        name.split('.')
            .map(|label| label.as_bytes().to_ascii_lowercase())
            .collect()
    }

    /// Reads the name at `at`, following compression pointers: its labels as compared,
    /// and where the name ends in the message (after its first pointer, if any).
    fn read_name(m: &[u8], at: usize) -> Result<(Name, usize), DnsError> {
        let mut name = Name::new();
        let mut pos = at;
        let mut end = None;
        let mut wire_len = 0usize;
        let mut pointers = 0;
        loop {
            let len = *m.get(pos).ok_or(DnsError::Short("name"))?;
            match len & 0xC0 {
                0x00 if len == 0 => {
                    return Ok((name, end.unwrap_or(pos + 1)));
                }
                0x00 => {
                    let len = usize::from(len);
                    let label = m
                        .get(pos + 1..pos + 1 + len)
                        .ok_or(DnsError::Short("name"))?;
                    wire_len += len + 1;
                    if wire_len >= MAX_NAME {
                        return Err(DnsError::BadName("over 255 bytes"));
                    }
                    name.push(label.to_ascii_lowercase());
                    pos += 1 + len;
                }
                0xC0 => {
                    let low = *m.get(pos + 1).ok_or(DnsError::Short("name"))?;
                    let target = usize::from(u16::from_be_bytes([len & 0x3F, low]));
                    pointers += 1;
                    if pointers > MAX_POINTERS {
                        return Err(DnsError::BadName("a compression loop"));
                    }
                    if target >= m.len() {
                        return Err(DnsError::BadName("a pointer past the end"));
                    }
                    end.get_or_insert(pos + 2);
                    pos = target;
                }
                _ => return Err(DnsError::BadName("a reserved label type")),
            }
        }
    }

    /// Parses `m` as the response to our query for the A records of `name` with `id`.
    pub fn parse_response(m: &[u8], id: u16, name: &str) -> Result<Response, DnsError> {
        if m.len() < 12 {
            return Err(DnsError::Short("header"));
        }
        if self::id(m) != Some(id) {
            return Err(DnsError::NotOurQuestion);
        }
        let flags = u16_at(m, 2, "header")?;
        if flags & 0x8000 == 0 {
            return Err(DnsError::NotAResponse);
        }
        let opcode = ((flags >> 11) & 0xF) as u8;
        if opcode != 0 {
            return Err(DnsError::Opcode(opcode));
        }
        if flags & 0x0200 != 0 {
            return Err(DnsError::Truncated);
        }
        let rcode = (flags & 0xF) as u8;
        let questions = u16_at(m, 4, "header")?;
        let answers = u16_at(m, 6, "header")?;
        if questions != 1 {
            return Err(DnsError::QuestionCount(questions));
        }
        let (qname, mut pos) = read_name(m, 12)?;
        let qtype = u16_at(m, pos, "question")?;
        let qclass = u16_at(m, pos + 2, "question")?;
        pos += 4;
        let ours = labels(name);
        if qname != ours || qtype != TYPE_A || qclass != CLASS_IN {
            return Err(DnsError::NotOurQuestion);
        }
        // The names whose A records answer the question: ours, and the aliases a CNAME
        // among the answers leads to from it (in order, as servers send them).
        let mut names = vec![ours];
        let mut addresses = Vec::new();
        for _ in 0..answers {
            let (owner, after) = read_name(m, pos)?;
            let rtype = u16_at(m, after, "answer")?;
            let rclass = u16_at(m, after + 2, "answer")?;
            let rdlen = usize::from(u16_at(m, after + 8, "answer")?);
            let start = after + 10;
            let rdata = m
                .get(start..start + rdlen)
                .ok_or(DnsError::Short("answer's data"))?;
            if rclass == CLASS_IN && names.contains(&owner) {
                match (rtype, rdata) {
                    (TYPE_A, &[a, b, c, d]) => addresses.push(Ipv4Addr::new(a, b, c, d)),
                    (TYPE_CNAME, _) if names.len() < MAX_ALIASES => {
                        names.push(read_name(m, start)?.0);
                    }
                    _ => {}
                }
            }
            pos = start + rdlen;
        }
        Ok(Response { rcode, addresses })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn answer(id: u16, name: &str, ips: &[[u8; 4]]) -> Vec<u8> {
            let q = query(id, name).expect("query");
            let mut r = q.clone();
            r[2] = 0x81;
            r[3] = 0x80;
            r[7] = ips.len() as u8;
            for ip in ips {
                r.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
                r.extend_from_slice(ip);
            }
            r
        }

        /// Only A records of the question's name (or of an alias a CNAME leads to from it)
        /// answer it; a label with a dot in it is not two labels.
        #[test]
        fn only_the_questions_name_and_its_aliases_answer() {
            let mut r = answer(7, "example.test", &[]);
            // An A record for another name (written out), a CNAME from ours to
            // alias.test, and A records for alias.test and ours.
            let other: &[u8] = b"\x04evil\x04test\x00";
            r.extend_from_slice(other);
            r.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 0, 0, 1]);
            let alias: &[u8] = b"\x05alias\x04test\x00";
            r.extend_from_slice(&[0xC0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, alias.len() as u8]);
            let alias_at = r.len();
            r.extend_from_slice(alias);
            r.extend_from_slice(&[
                0xC0,
                alias_at as u8,
                0,
                1,
                0,
                1,
                0,
                0,
                0,
                60,
                0,
                4,
                127,
                0,
                0,
                9,
            ]);
            r.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 7]);
            r[7] = 4;
            let parsed = parse_response(&r, 7, "example.test").expect("parsed");
            assert_eq!(
                parsed.addresses,
                [Ipv4Addr::new(127, 0, 0, 9), Ipv4Addr::new(127, 0, 0, 7)]
            );
            // One label `example.test` is not the two labels of our question.
            let mut one = query(7, "x").expect("query");
            one.truncate(12);
            one.extend_from_slice(b"\x0cexample.test\x00\x00\x01\x00\x01");
            one[2] = 0x81;
            assert!(matches!(
                parse_response(&one, 7, "example.test"),
                Err(DnsError::NotOurQuestion)
            ));
        }

        #[test]
        fn a_records_are_read() {
            let r = answer(7, "Example.Test.", &[[127, 0, 0, 7], [127, 0, 0, 8]]);
            let parsed = parse_response(&r, 7, "example.test").expect("parsed");
            assert_eq!(parsed.rcode, 0);
            assert_eq!(
                parsed.addresses,
                [Ipv4Addr::new(127, 0, 0, 7), Ipv4Addr::new(127, 0, 0, 8)]
            );
        }

        #[test]
        fn every_prefix_and_every_byte_flip_is_an_error_or_an_answer_never_a_panic() {
            let r = answer(7, "example.test", &[[127, 0, 0, 7]]);
            for n in 0..r.len() {
                assert!(
                    parse_response(&r[..n], 7, "example.test").is_err(),
                    "prefix {n}"
                );
            }
            for i in 0..r.len() {
                for v in [0x00, 0x3F, 0x40, 0xC0, 0xFF] {
                    let mut bad = r.clone();
                    bad[i] = v;
                    let _ = parse_response(&bad, 7, "example.test");
                }
            }
        }

        #[test]
        fn loops_pointers_past_the_end_and_wrong_questions_are_errors() {
            let mut looped = answer(7, "example.test", &[]);
            looped[7] = 1;
            let at = looped.len() as u8;
            looped.extend_from_slice(&[0xC0, at, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 1, 2, 3, 4]);
            assert_eq!(
                parse_response(&looped, 7, "example.test"),
                Err(DnsError::BadName("a compression loop"))
            );
            let mut past = answer(7, "example.test", &[[127, 0, 0, 7]]);
            let n = past.len();
            past[n - 16] = 0xFF;
            assert!(matches!(
                parse_response(&past, 7, "example.test"),
                Err(DnsError::BadName(_))
            ));
            let other = answer(7, "evil.test", &[[127, 0, 0, 66]]);
            assert_eq!(
                parse_response(&other, 7, "example.test"),
                Err(DnsError::NotOurQuestion)
            );
            assert_eq!(
                parse_response(&answer(8, "example.test", &[]), 7, "example.test"),
                Err(DnsError::NotOurQuestion)
            );
            assert_eq!(
                parse_response(&query(7, "example.test").expect("q"), 7, "example.test"),
                Err(DnsError::NotAResponse)
            );
        }

        #[test]
        fn bad_names_are_refused_before_sending() {
            for name in [
                "",
                ".",
                "a..b",
                "é.test",
                &"a".repeat(64),
                &"a.".repeat(128),
            ] {
                assert!(
                    matches!(query(1, name), Err(DnsError::BadQueryName(_))),
                    "{name:?}"
                );
            }
            assert!(query(1, &"a".repeat(63)).is_ok());
        }
    }
}

use dns::DnsError;

/// How the lookup ended, for the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Waiting,
    Answered,
    Failed,
}

/// The client: one query, its retries in a [`Requests`] table keyed by the query id.
struct DnsClient {
    server: SocketAddr,
    name: String,
    id: u16,
    requests: Requests<DnsClient, u16>,
    ended: Rc<Cell<Ended>>,
}

/// Why the lookup gave no address.
enum Failure<'a> {
    Outcome(&'a Outcome),
    Server(u8),
    NoAddress,
    Parse(DnsError),
}

impl fmt::Display for Failure<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Outcome(o) => write!(f, "{o}"),
            Failure::Server(rcode) => write!(f, "the server says {}", dns::rcode_name(*rcode)),
            Failure::NoAddress => write!(f, "no A record"),
            Failure::Parse(e) => write!(f, "{e}"),
        }
    }
}

impl DnsClient {
    /// The lookup finished: print what it found, and stop the reactor.
    fn done(&mut self, t: &mut UdpTransport<'_>, outcome: Outcome) {
        let failure = match &outcome {
            Outcome::Reply { data, tries } => {
                match dns::parse_response(data, self.id, &self.name) {
                    Ok(r) if r.rcode != 0 => Some(Failure::Server(r.rcode)),
                    Ok(r) if r.addresses.is_empty() => Some(Failure::NoAddress),
                    Ok(r) => {
                        for ip in &r.addresses {
                            println!("answer: {} A {ip}", self.name);
                        }
                        println!("answered after {}", common::count(*tries as usize, "try"));
                        None
                    }
                    Err(e) => Some(Failure::Parse(e)),
                }
            }
            other => Some(Failure::Outcome(other)),
        };
        match failure {
            None => self.ended.set(Ended::Answered),
            Some(why) => {
                log::error!("{} at {}: {why}", self.name, self.server);
                self.ended.set(Ended::Failed);
            }
        }
        t.reactor().stop();
    }
}

impl DatagramProtocol for DnsClient {
    fn start_protocol(&mut self, t: &mut UdpTransport<'_>) {
        let query = match dns::query(self.id, &self.name) {
            Ok(q) => q,
            Err(e) => {
                log::error!("{e}");
                self.ended.set(Ended::Failed);
                t.reactor().stop();
                return;
            }
        };
        log::info!(
            "asking {} for the A records of {} (query {}, up to {} tries)",
            self.server,
            self.name,
            self.id,
            self.requests.policy().tries()
        );
        let sent = self.requests.send(
            t,
            self.server,
            self.id,
            &query,
            |me: &mut DnsClient, t, outcome| me.done(t, outcome),
        );
        if let Err(e) = sent {
            log::error!("query to {}: {e}", self.server);
            self.ended.set(Ended::Failed);
            t.reactor().stop();
        }
    }

    fn datagram_received(&mut self, t: &mut UdpTransport<'_>, data: &[u8], from: SocketAddr) {
        // Only a well-formed response to our question is a reply: anything else, even
        // with our id and from the server, leaves the query waiting.
        let Some(id) = dns::id(data) else {
            log::debug!("ignored {} from {from}", common::count(data.len(), "byte"));
            return;
        };
        if let Err(e) = dns::parse_response(data, self.id, &self.name) {
            log::debug!("ignored a datagram from {from}: {e}");
            return;
        }
        if !self.requests.reply(t, id, data, from) {
            log::debug!("ignored a response from {from}: no query {id} outstanding to it");
        }
    }

    fn error_received(&mut self, t: &mut UdpTransport<'_>, error: &Error, addr: SocketAddr) {
        self.requests.error(t, error, addr);
    }

    fn stop_protocol(&mut self, _t: &mut UdpTransport<'_>) {
        if !self.requests.is_empty() {
            log::info!("stopped before an answer");
        }
    }
}

/// A query id nobody can guess from the outside (std's per-process random hash keys).
fn random_id() -> u16 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish() as u16
}

fn main() -> Result<(), common::Failed> {
    common::init(USAGE, &["--name", "--tries", "--timeout", "--backoff"], 1);
    let server = common::addr_arg(0, "127.0.0.1:9953");
    let name = common::flag("--name").unwrap_or_else(|| "example.test".to_owned());
    let tries: u32 = common::parsed_flag("--tries", 3);
    let timeout = common::seconds_flag("--timeout", Duration::from_millis(200));
    let backoff: u32 = common::parsed_flag("--backoff", 1);
    for (flag, value) in [("--tries", tries), ("--backoff", backoff)] {
        if value == 0 {
            eprintln!("{flag}: at least 1, got 0");
            std::process::exit(2);
        }
    }
    let policy = RetryPolicy::new(tries, timeout).backoff(backoff);
    let requests = match Requests::new(policy, 1, |me: &mut DnsClient| &mut me.requests) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = dns::query(0, &name) {
        eprintln!("--name: {e}");
        std::process::exit(2);
    }
    let ended = Rc::new(Cell::new(Ended::Waiting));
    let client = DnsClient {
        server,
        name,
        id: random_id(),
        requests,
        ended: Rc::clone(&ended),
    };
    let mut reactor = Reactor::new()?;
    reactor.listen_udp_with(
        ListenOptions::from(common::client_bind_addr(server)),
        client,
    )?;
    reactor.run()?;
    if ended.get() != Ended::Answered {
        std::process::exit(1);
    }
    Ok(())
}
