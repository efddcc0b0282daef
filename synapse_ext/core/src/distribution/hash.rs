//! The shard of a key: the first 8 bytes of the MD5 digest of the key's canonical bytes,
//! read big-endian, modulo the table's shard count.
//!
//! Canonical bytes, per key type (so equal values hash equally, and the result does not
//! depend on the platform or on PostgreSQL's output settings):
//! - `int2`, `int4`, `int8`: the value as an 8-byte big-endian signed integer, so a key is
//!   in the same shard whichever integer width holds it;
//! - `text`, `varchar`: the bytes of the string (in the database encoding);
//! - `uuid`: its 16 bytes;
//! - `numeric`: its shortest decimal form (`1.50` and `1.5` are equal, so both hash as
//!   `1.5`; `NaN`, `Infinity`, `-Infinity` as spelled);
//! - `date`: days since 2000-01-01; `timestamp`, `timestamptz`: microseconds since
//!   2000-01-01 00:00 UTC; both as 8-byte big-endian signed integers.
//!
//! A NULL key is in shard 0: that is where PostgreSQL's hash partitioning puts it too.
//!
//! PostgreSQL's hash partitioning combines the hash `h` of the one key column into
//! `h + PARTITION_HASH_OFFSET` (`hash_combine64(0, h)`) and picks the partition whose
//! remainder is that modulo the modulus. [`partition_hash`] returns the value whose
//! combination is our [`shard_hash`], so a table partitioned with synapse's operator
//! classes puts each row in the partition of its shard, and PostgreSQL's own partition
//! pruning agrees with [`shard_of`].

use md5::{Digest, Md5};

/// Shards of a distributed table unless its creator says otherwise.
pub const DEFAULT_SHARD_COUNT: u32 = 256;
/// The most shards a table may have.
pub const MAX_SHARD_COUNT: u32 = 4096;

/// The constant `hash_combine64(0, h)` adds to `h` (PostgreSQL's `common/hashfn.h`).
pub const PARTITION_HASH_OFFSET: u64 = 0x49a0_f4dd_15e5_a8e3;

/// A key value, already in its canonical form.
#[derive(Clone, Debug, PartialEq)]
pub enum KeyValue<'a> {
    /// Any integer width, date, timestamp (see the module comment for the units).
    Int(i64),
    /// Text, varchar, or a numeric's normalized decimal form (see [`normalize_numeric`]).
    Bytes(&'a [u8]),
    Uuid([u8; 16]),
}

impl KeyValue<'_> {
    fn hash(&self) -> u64 {
        let digest = match self {
            KeyValue::Int(v) => Md5::digest(v.to_be_bytes()),
            KeyValue::Bytes(b) => Md5::digest(b),
            KeyValue::Uuid(u) => Md5::digest(u),
        };
        u64::from_be_bytes(digest[..8].try_into().expect("an MD5 digest has 16 bytes"))
    }
}

/// The 64-bit hash of a key (`None`: a NULL key, hash 0).
pub fn shard_hash(key: Option<&KeyValue<'_>>) -> u64 {
    key.map_or(0, KeyValue::hash)
}

/// The shard of `key` among `shard_count` shards.
pub fn shard_of(key: Option<&KeyValue<'_>>, shard_count: u32) -> u32 {
    assert!(shard_count > 0, "a table has at least one shard");
    (shard_hash(key) % u64::from(shard_count)) as u32
}

/// What the extended hash support function of synapse's hash operator classes returns,
/// so that PostgreSQL's partition routing lands the row in the partition of its shard.
pub fn partition_hash(key: &KeyValue<'_>) -> u64 {
    key.hash().wrapping_sub(PARTITION_HASH_OFFSET)
}

/// The shortest decimal form of a numeric's text (`-1.500` → `-1.5`, `2.000` → `2`,
/// `0.0` → `0`): equal numerics have equal forms whatever their scale.
pub fn normalize_numeric(text: &str) -> &str {
    if !text.contains('.') {
        return text;
    }
    let trimmed = text.trim_end_matches('0');
    let trimmed = trimmed.strip_suffix('.').unwrap_or(trimmed);
    if trimmed == "-0" {
        "0"
    } else {
        trimmed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hash is part of the on-disk format: these values must never change.
    #[test]
    fn hashes_are_stable() {
        let cases: [(KeyValue, u64); 5] = [
            (KeyValue::Int(1), 0xfa5a_d9a8_557e_5a84),
            (KeyValue::Int(-7), 0xcc1b_f87b_79bf_5d3f),
            (KeyValue::Bytes(b"hello"), 0x5d41_402a_bc4b_2a76),
            (KeyValue::Bytes(b""), 0xd41d_8cd9_8f00_b204),
            (KeyValue::Uuid([0; 16]), 0x4ae7_1336_e44b_f9bf),
        ];
        for (key, expected) in cases {
            assert_eq!(shard_hash(Some(&key)), expected, "{key:?}");
        }
    }

    #[test]
    fn null_is_shard_zero() {
        assert_eq!(shard_of(None, 256), 0);
    }

    #[test]
    fn shards_cover_the_range_evenly() {
        let mut counts = vec![0u32; 256];
        for i in 0..256_000 {
            counts[shard_of(Some(&KeyValue::Int(i)), 256) as usize] += 1;
        }
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(*min > 850 && *max < 1150, "min {min} max {max}");
    }

    #[test]
    fn partition_routing_agrees_with_shard_of() {
        for i in -1000..1000 {
            let key = KeyValue::Int(i);
            // PostgreSQL: hash_combine64(0, h) = h + offset, then % modulus.
            let row_hash = partition_hash(&key).wrapping_add(PARTITION_HASH_OFFSET);
            assert_eq!((row_hash % 256) as u32, shard_of(Some(&key), 256));
        }
    }

    #[test]
    fn numerics_normalize_to_their_shortest_form() {
        for (text, form) in [
            ("1.500", "1.5"),
            ("2.000", "2"),
            ("-0.000", "0"),
            ("0.0", "0"),
            ("100", "100"),
            ("-12.0100", "-12.01"),
            ("NaN", "NaN"),
            ("Infinity", "Infinity"),
        ] {
            assert_eq!(normalize_numeric(text), form, "{text}");
        }
    }
}
