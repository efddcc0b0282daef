//! SWIM messages as UDP datagrams, authenticated with the cluster's gossip key.
//!
//! Layout: `b"SW1"`, a 32-byte HMAC-SHA256 tag over everything after it, then the message
//! as JSON. A datagram with another prefix, a wrong tag (forged, corrupted, or from
//! another cluster) or a body that does not parse is rejected, and the caller counts it.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::node::Message;

const MAGIC: &[u8; 3] = b"SW1";
const TAG: usize = 32;

/// The largest datagram we send; updates beyond it are left for later messages.
pub const MAX_DATAGRAM: usize = 1400;

/// Why a datagram was rejected.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("not a SynapseDB gossip datagram")]
    Foreign,
    #[error("authentication failed (forged, corrupted, or another cluster's key)")]
    BadTag,
    #[error("malformed message: {0}")]
    Malformed(String),
}

/// The cluster's gossip key.
#[derive(Clone)]
pub struct Key(Vec<u8>);

impl Key {
    pub fn new(bytes: Vec<u8>) -> Key {
        Key(bytes)
    }

    /// A key from its hex form (as kept in the node's identity file).
    pub fn from_hex(hex: &str) -> Option<Key> {
        if !hex.len().is_multiple_of(2) || hex.is_empty() {
            return None;
        }
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()
            .map(Key)
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any length")
    }
}

/// Encodes `msg`, dropping piggybacked updates from the end until it fits a datagram.
pub fn encode(key: &Key, msg: &Message) -> Vec<u8> {
    let mut msg = msg.clone();
    loop {
        let body = serde_json::to_vec(&msg).expect("serializable");
        if body.len() + MAGIC.len() + TAG <= MAX_DATAGRAM || msg.updates.is_empty() {
            let mut mac = key.mac();
            mac.update(&body);
            let tag = mac.finalize().into_bytes();
            let mut out = Vec::with_capacity(MAGIC.len() + TAG + body.len());
            out.extend_from_slice(MAGIC);
            out.extend_from_slice(&tag);
            out.extend_from_slice(&body);
            return out;
        }
        msg.updates.pop();
    }
}

/// Checks and decodes a datagram.
pub fn decode(key: &Key, datagram: &[u8]) -> Result<Message, Rejected> {
    let rest = datagram.strip_prefix(MAGIC).ok_or(Rejected::Foreign)?;
    if rest.len() < TAG {
        return Err(Rejected::Foreign);
    }
    let (tag, body) = rest.split_at(TAG);
    let mut mac = key.mac();
    mac.update(body);
    mac.verify_slice(tag).map_err(|_| Rejected::BadTag)?;
    serde_json::from_slice(body).map_err(|e| Rejected::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::swim::node::{Body, State, Update};

    fn message(updates: usize) -> Message {
        Message {
            from: "node1".into(),
            incarnation: 3,
            body: Body::Ping {
                seq: 9,
                target: "node2".into(),
            },
            updates: (0..updates)
                .map(|i| Update {
                    name: format!("node{i}"),
                    state: State::Suspected,
                    incarnation: i as u64,
                    by: "node1".into(),
                })
                .collect(),
        }
    }

    #[test]
    fn round_trip_and_rejections() {
        let key = Key::from_hex("00112233445566778899aabbccddeeff").unwrap();
        let msg = message(2);
        let d = encode(&key, &msg);
        assert_eq!(decode(&key, &d).unwrap(), msg);

        let mut flipped = d.clone();
        let last = flipped.len() - 2;
        flipped[last] ^= 1;
        assert_eq!(decode(&key, &flipped), Err(Rejected::BadTag));
        let other = Key::new(b"another cluster".to_vec());
        assert_eq!(decode(&other, &d), Err(Rejected::BadTag));
        assert_eq!(decode(&key, b"hello"), Err(Rejected::Foreign));
        assert_eq!(decode(&key, b"SW1short"), Err(Rejected::Foreign));
    }

    #[test]
    fn big_messages_shed_updates_to_fit_a_datagram() {
        let key = Key::new(vec![7; 32]);
        let d = encode(&key, &message(200));
        assert!(d.len() <= MAX_DATAGRAM, "{}", d.len());
        let back = decode(&key, &d).unwrap();
        assert!(!back.updates.is_empty() && back.updates.len() < 200);
    }
}
