//! Data distribution: which shard a key belongs to ([`hash`]) and which node holds a
//! shard ([`placement`]). Both are fixed functions of their inputs, identical on every
//! node, platform and version: a change to either would silently misplace rows.

pub mod hash;
pub mod placement;
pub mod sql_text;

pub use hash::{shard_hash, shard_of, KeyValue, DEFAULT_SHARD_COUNT, MAX_SHARD_COUNT};
pub use placement::{place_shards, Ring, DEFAULT_VNODES};
