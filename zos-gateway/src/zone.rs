//! The gateway domain's name server: a farmer delegates the domain to the gateway node (an NS
//! record), and the node answers for it itself: every name in it resolves to the gateway's
//! addresses, and `_acme-challenge.<domain>` carries the DNS-01 answers while a wildcard
//! certificate is ordered. So one certificate serves every name under the domain, and new
//! names need neither DNS changes nor certificate orders (the CA's rate limits stay far).
//!
//! Authoritative only: names outside the domain are refused, nothing is resolved recursively.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, RwLock},
    time::Duration,
};

use hickory_proto::{
    op::{Message, MessageType, OpCode, ResponseCode},
    rr::{
        rdata::{A, AAAA, TXT},
        RData, Record, RecordType,
    },
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, UdpSocket},
};

/// Pending DNS-01 answers kept at most per name (one per authorization of an order).
const MAX_CHALLENGE_VALUES: usize = 4;
/// The largest UDP answer sent: longer ones go truncated (the client asks again over TCP).
const MAX_UDP_RESPONSE: usize = 512;
/// Time-to-live of the answers: short, since challenge values and addresses change.
const TTL_SECS: u32 = 60;
/// A TCP client has this long to send its query.
const TCP_QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP clients served at once (UDP needs no bound: one task answers in turn).
const MAX_TCP_CLIENTS: usize = 64;

#[derive(Default)]
struct ZoneState {
    /// The gateway domain (lowercase, no trailing dot); nothing is answered before it is known.
    domain: Option<String>,
    addresses: Vec<IpAddr>,
    /// TXT values by full name (`_acme-challenge.<domain>`).
    challenges: HashMap<String, Vec<String>>,
}

/// The zone a gateway answers for: its domain, its addresses and pending DNS-01 answers.
#[derive(Default)]
pub struct Zone {
    state: RwLock<ZoneState>,
}

/// What the name server sends back for one question.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Not our zone (or the zone is not known yet).
    Refused,
    /// In the zone: these records (none: the name has no record of that type).
    Records(Vec<RData>),
}

impl Zone {
    /// A zone whose names all resolve to `addresses`; its domain is set once known.
    pub fn new(addresses: Vec<IpAddr>) -> Arc<Self> {
        Arc::new(Self {
            state: RwLock::new(ZoneState {
                addresses,
                ..Default::default()
            }),
        })
    }

    /// Sets the gateway domain (as the chain has it); a change drops pending challenges.
    pub fn set_domain(&self, domain: &str) {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        if state.domain.as_deref() != Some(domain.as_str()) {
            state.domain = Some(domain);
            state.challenges.clear();
        }
    }

    /// Sets the addresses every name in the zone resolves to (the node's public addresses).
    pub fn set_addresses(&self, addresses: Vec<IpAddr>) {
        self.state
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .addresses = addresses;
    }

    /// The gateway domain, once known.
    pub fn domain(&self) -> Option<String> {
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .domain
            .clone()
    }

    pub(crate) fn add_challenge(&self, name: &str, value: String) -> anyhow::Result<()> {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        let values = state.challenges.entry(name.to_string()).or_default();
        anyhow::ensure!(
            values.len() < MAX_CHALLENGE_VALUES,
            "too many pending DNS-01 answers for {name}"
        );
        values.push(value);
        Ok(())
    }

    pub(crate) fn remove_challenge(&self, name: &str, value: &str) {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        if let Some(values) = state.challenges.get_mut(name) {
            values.retain(|v| v != value);
            if values.is_empty() {
                state.challenges.remove(name);
            }
        }
    }

    /// The answer to a question for `name` (lowercase, no trailing dot) of type `kind`.
    pub(crate) fn answer(&self, name: &str, kind: RecordType) -> Answer {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let Some(domain) = state.domain.as_deref() else {
            return Answer::Refused;
        };
        let in_zone = name == domain
            || name
                .strip_suffix(domain)
                .is_some_and(|prefix| prefix.ends_with('.'));
        if !in_zone {
            return Answer::Refused;
        }
        let records = match kind {
            RecordType::TXT => state
                .challenges
                .get(name)
                .map(|values| {
                    values
                        .iter()
                        .map(|v| RData::TXT(TXT::new(vec![v.clone()])))
                        .collect()
                })
                .unwrap_or_default(),
            // Challenge names carry only their TXT records.
            _ if name.starts_with("_acme-challenge.") => Vec::new(),
            RecordType::A => state
                .addresses
                .iter()
                .filter_map(|ip| match ip {
                    IpAddr::V4(v4) => Some(RData::A(A(*v4))),
                    IpAddr::V6(_) => None,
                })
                .collect(),
            RecordType::AAAA => state
                .addresses
                .iter()
                .filter_map(|ip| match ip {
                    IpAddr::V6(v6) => Some(RData::AAAA(AAAA(*v6))),
                    IpAddr::V4(_) => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        Answer::Records(records)
    }

    /// The response to a query message; `None` for what is not a query (dropped silently).
    /// Over `max_len`, the answers are left out and the response marked truncated.
    pub(crate) fn respond(&self, query: &[u8], max_len: usize) -> Option<Vec<u8>> {
        let request = Message::from_vec(query).ok()?;
        if request.message_type() != MessageType::Query {
            return None;
        }
        let mut response = Message::new();
        response
            .set_id(request.id())
            .set_message_type(MessageType::Response)
            .set_op_code(request.op_code())
            .set_recursion_desired(request.recursion_desired())
            .set_authoritative(true);
        match (request.op_code(), request.queries()) {
            (OpCode::Query, [question]) => {
                response.add_query(question.clone());
                let name = question.name().to_lowercase().to_ascii();
                let name = name.trim_end_matches('.');
                match self.answer(name, question.query_type()) {
                    Answer::Refused => {
                        response.set_authoritative(false);
                        response.set_response_code(ResponseCode::Refused);
                    }
                    Answer::Records(records) => {
                        for rdata in records {
                            response.add_answer(Record::from_rdata(
                                question.name().clone(),
                                TTL_SECS,
                                rdata,
                            ));
                        }
                    }
                }
            }
            _ => {
                response.set_response_code(ResponseCode::NotImp);
            }
        }
        let encoded = response.to_vec().ok()?;
        if encoded.len() <= max_len {
            return Some(encoded);
        }
        response.take_answers();
        response.set_truncated(true);
        response.to_vec().ok()
    }

    /// Answers queries over UDP, forever.
    pub async fn serve_udp(self: Arc<Self>, socket: UdpSocket) {
        let mut buf = vec![0u8; 4096];
        loop {
            let (len, client) = match socket.recv_from(&mut buf).await {
                Ok(received) => received,
                Err(e) => {
                    tracing::debug!("name server: {e}");
                    continue;
                }
            };
            if let Some(response) = self.respond(&buf[..len], MAX_UDP_RESPONSE) {
                let _ = socket.send_to(&response, client).await;
            }
        }
    }

    /// Answers queries over TCP (two-byte length before each message), forever.
    pub async fn serve_tcp(self: Arc<Self>, listener: TcpListener) {
        let clients = Arc::new(tokio::sync::Semaphore::new(MAX_TCP_CLIENTS));
        loop {
            let Ok((mut stream, client)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let Ok(slot) = clients.clone().try_acquire_owned() else {
                continue;
            };
            let zone = self.clone();
            tokio::spawn(async move {
                let served = tokio::time::timeout(TCP_QUERY_TIMEOUT, async {
                    let len = stream.read_u16().await? as usize;
                    let mut query = vec![0u8; len];
                    stream.read_exact(&mut query).await?;
                    if let Some(response) = zone.respond(&query, u16::MAX as usize) {
                        stream.write_u16(response.len() as u16).await?;
                        stream.write_all(&response).await?;
                    }
                    std::io::Result::Ok(())
                })
                .await;
                if let Ok(Err(e)) = served {
                    tracing::debug!(%client, "name server over TCP: {e}");
                }
                drop(slot);
            });
        }
    }
}

/// Binds the name server's UDP and TCP sockets on `addr` and serves `zone` on both.
pub async fn serve(zone: Arc<Zone>, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let udp = UdpSocket::bind(addr).await?;
    let bound = udp.local_addr()?;
    let tcp = TcpListener::bind(bound).await?;
    tokio::spawn(zone.clone().serve_udp(udp));
    tokio::spawn(zone.serve_tcp(tcp));
    Ok(bound)
}

/// The name whose TXT records prove control of `domain` (RFC 8555 section 8.4).
pub(crate) fn challenge_name(domain: &str) -> String {
    format!("_acme-challenge.{domain}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone() -> Arc<Zone> {
        let zone = Zone::new(vec![
            "198.51.100.7".parse().unwrap(),
            "2001:db8::7".parse().unwrap(),
        ]);
        zone.set_domain("GW.Example.com.");
        zone
    }

    #[test]
    fn names_in_the_zone_resolve_to_the_gateway_and_others_are_refused() {
        let zone = zone();
        assert_eq!(
            zone.answer("app.gw.example.com", RecordType::A),
            Answer::Records(vec![RData::A(A("198.51.100.7".parse().unwrap()))])
        );
        assert_eq!(
            zone.answer("gw.example.com", RecordType::AAAA),
            Answer::Records(vec![RData::AAAA(AAAA("2001:db8::7".parse().unwrap()))])
        );
        for outside in ["example.com", "xgw.example.com", "gw.example.com.evil.org"] {
            assert_eq!(
                zone.answer(outside, RecordType::A),
                Answer::Refused,
                "{outside}"
            );
        }
        assert_eq!(
            Zone::new(vec![]).answer("gw.example.com", RecordType::A),
            Answer::Refused
        );
    }

    #[test]
    fn challenge_values_come_and_go() {
        let zone = zone();
        let name = challenge_name("gw.example.com");
        assert_eq!(zone.answer(&name, RecordType::TXT), Answer::Records(vec![]));
        zone.add_challenge(&name, "abc".into()).unwrap();
        zone.add_challenge(&name, "def".into()).unwrap();
        let Answer::Records(records) = zone.answer(&name, RecordType::TXT) else {
            panic!("refused");
        };
        assert_eq!(records.len(), 2);
        assert_eq!(zone.answer(&name, RecordType::A), Answer::Records(vec![]));
        zone.remove_challenge(&name, "abc");
        zone.remove_challenge(&name, "def");
        assert_eq!(zone.answer(&name, RecordType::TXT), Answer::Records(vec![]));
        for i in 0..MAX_CHALLENGE_VALUES {
            zone.add_challenge(&name, i.to_string()).unwrap();
        }
        assert!(zone.add_challenge(&name, "one too many".into()).is_err());
        // A new domain drops what was pending for the old one.
        zone.set_domain("gw2.example.com");
        assert_eq!(zone.answer(&name, RecordType::TXT), Answer::Refused);
    }

    #[test]
    fn an_answer_too_long_for_a_datagram_goes_truncated() {
        use hickory_proto::{op::Query, rr::Name};
        let zone = zone();
        let name = challenge_name("gw.example.com");
        for value in ["a", "b", "c", "d"] {
            zone.add_challenge(&name, value.repeat(43)).unwrap();
        }
        let mut query = Message::new();
        query.set_id(7).add_query(Query::query(
            Name::from_ascii(&name).unwrap(),
            RecordType::TXT,
        ));
        let query = query.to_vec().unwrap();
        let whole = Message::from_vec(&zone.respond(&query, 512).unwrap()).unwrap();
        assert_eq!((whole.answers().len(), whole.truncated()), (4, false));
        assert!(whole.authoritative());
        let cut = Message::from_vec(&zone.respond(&query, 100).unwrap()).unwrap();
        assert_eq!(
            (cut.answers().len(), cut.truncated(), cut.id()),
            (0, true, 7)
        );
    }

    #[test]
    fn garbage_and_non_queries_get_no_answer() {
        let zone = zone();
        assert_eq!(zone.respond(b"\x00\x01garbage", 512), None);
        let mut response = Message::new();
        response.set_message_type(MessageType::Response);
        assert_eq!(zone.respond(&response.to_vec().unwrap(), 512), None);
    }
}
