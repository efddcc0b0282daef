//! The cluster secret, and sealing under it.
//!
//! `init_cluster` makes 32 random bytes; every member keeps them in its identity file
//! (directory mode 0700, file 0600) and a joining node receives them from the leader that
//! admits it. The CA's private key lives in the Raft catalog only sealed under this secret
//! (ChaCha20-Poly1305, a random nonce per seal, the cluster id as associated data), so any
//! member can sign renewals once it leads, while the catalog, its snapshots, the log and
//! every SQL result carry nothing but ciphertext.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use super::TlsError;

/// Marks the format of a sealed value, so a later format can be told apart.
const SEAL_PREFIX: &str = "sealed-v1:";
const SECRET_LEN: usize = 32;

/// The cluster secret. Never printed: `Debug` shows only that it is there.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSecret(Zeroizing<[u8; SECRET_LEN]>);

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(..)")
    }
}

impl ClusterSecret {
    /// 32 bytes from the operating system's random source.
    pub fn generate() -> ClusterSecret {
        let mut bytes = Zeroizing::new([0u8; SECRET_LEN]);
        SystemRandom::new()
            .fill(bytes.as_mut())
            .expect("the system random source works");
        ClusterSecret(bytes)
    }

    /// The secret from its hex form (as kept in the identity file).
    pub fn from_hex(text: &str) -> Result<ClusterSecret, TlsError> {
        let mut bytes = Zeroizing::new([0u8; SECRET_LEN]);
        hex::decode_to_slice(text.trim(), bytes.as_mut())
            .map_err(|_| TlsError::Secret("the cluster secret is not 64 hex digits".into()))?;
        Ok(ClusterSecret(bytes))
    }

    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.0.as_ref()))
    }

    fn key(&self) -> LessSafeKey {
        LessSafeKey::new(
            UnboundKey::new(&CHACHA20_POLY1305, self.0.as_ref()).expect("a 32-byte key"),
        )
    }

    /// Encrypts and authenticates `plaintext`, bound to `context` (which must be given
    /// again to open it).
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .expect("the system random source works");
        let mut data = plaintext.to_vec();
        self.key()
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut data,
            )
            .expect("sealing cannot fail for in-memory data");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        format!("{SEAL_PREFIX}{}", hex::encode(out))
    }

    /// Opens what [`seal`](Self::seal) made with the same secret and context.
    pub fn open(&self, context: &str, sealed: &str) -> Result<Zeroizing<Vec<u8>>, TlsError> {
        let wrong = || {
            TlsError::Secret(
                "the sealed value does not open with this node's cluster secret".into(),
            )
        };
        let bytes = sealed
            .strip_prefix(SEAL_PREFIX)
            .and_then(|h| hex::decode(h).ok())
            .filter(|b| b.len() >= NONCE_LEN)
            .ok_or_else(wrong)?;
        let (nonce, data) = bytes.split_at(NONCE_LEN);
        let mut data = Zeroizing::new(data.to_vec());
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| wrong())?;
        let len = self
            .key()
            .open_in_place(nonce, Aad::from(context.as_bytes()), data.as_mut_slice())
            .map_err(|_| wrong())?
            .len();
        data.truncate(len);
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_the_same_secret_and_context() {
        let secret = ClusterSecret::generate();
        let sealed = secret.seal("cluster-a", b"the CA key");
        assert!(!sealed.contains("the CA key"));
        assert_eq!(
            secret.open("cluster-a", &sealed).unwrap().as_slice(),
            b"the CA key"
        );
        assert!(secret.open("cluster-b", &sealed).is_err());
        assert!(ClusterSecret::generate()
            .open("cluster-a", &sealed)
            .is_err());
        let mut tampered = sealed.clone();
        let last = tampered.pop().unwrap();
        tampered.push(if last == '0' { '1' } else { '0' });
        assert!(secret.open("cluster-a", &tampered).is_err());
        assert!(secret.open("cluster-a", "garbage").is_err());
        // Two seals of the same value differ (random nonces).
        assert_ne!(sealed, secret.seal("cluster-a", b"the CA key"));
    }

    #[test]
    fn the_secret_round_trips_through_hex_and_never_prints() {
        let secret = ClusterSecret::generate();
        let again = ClusterSecret::from_hex(&secret.to_hex()).unwrap();
        assert_eq!(secret, again);
        assert_eq!(format!("{secret:?}"), "ClusterSecret(..)");
        assert!(ClusterSecret::from_hex("abcd").is_err());
    }
}
