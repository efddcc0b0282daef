//! SQL surface of data distribution: `shard_of`, the hash support functions of the shard
//! operator classes, and the functions that distribute tables.

use pgrx::prelude::*;
use pgrx::{AnyElement, PgRelation};
use synapse_core::distribution::hash::{normalize_numeric, partition_hash, shard_hash, KeyValue};
use synapse_core::distribution::{DEFAULT_SHARD_COUNT, MAX_SHARD_COUNT};

use crate::distribution::shard_key::{self, KeyType};
use crate::distribution::{operations, stats};

/// `synapse.shard_of(key, shard_count DEFAULT 256)`: the shard a key belongs to (MD5-based;
/// the same on every node, platform and version). A NULL key is in shard 0.
#[pg_extern(immutable, parallel_safe)]
fn shard_of(key: Option<AnyElement>, shard_count: default!(i32, 256)) -> i32 {
    check_shard_count(shard_count);
    let hash = match key {
        None => shard_hash(None),
        Some(key) => {
            let Some(kt) = KeyType::of(key.oid()) else {
                shard_key::unsupported(key.oid());
            };
            // SAFETY: the datum is a non-NULL value of the type it was passed as.
            unsafe { shard_key::hash_datum(kt, Some(key.datum())) }
        }
    };
    (hash % shard_count as u64) as i32
}

pub fn check_shard_count(shard_count: i32) {
    if shard_count < 1 || shard_count as u32 > MAX_SHARD_COUNT {
        pgrx::pg_sys::panic::ErrorReport::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("shard_count must be between 1 and {MAX_SHARD_COUNT}, not {shard_count}"),
            "synapse",
        )
        .set_hint(format!(
            "The default, {DEFAULT_SHARD_COUNT}, suits clusters of up to a few dozen nodes."
        ))
        .report(PgLogLevel::ERROR);
    }
}

// The support functions of the `*_shard_ops` hash operator classes (sql/distribution.sql).
// `partition_hash` is the extended hash (function 2), whose value makes PostgreSQL's hash
// partitioning put a row in the partition of its shard; `shard_hash32` is the standard
// hash (function 1), the low 32 bits of it. The seed is ignored: the placement of a key
// must not depend on who asks.

fn h64(key: &KeyValue<'_>) -> i64 {
    partition_hash(key) as i64
}

fn h32(key: &KeyValue<'_>) -> i32 {
    partition_hash(key) as u32 as i32
}

macro_rules! shard_hash_support {
    ($($ty:ty, $to_key:expr, $h64:ident, $h32:ident;)*) => {$(
        #[pg_extern(immutable, strict, parallel_safe, name = "partition_hash")]
        fn $h64(value: $ty, _seed: i64) -> i64 {
            let to_key = $to_key;
            to_key(value, h64)
        }
        #[pg_extern(immutable, strict, parallel_safe, name = "shard_hash32")]
        fn $h32(value: $ty) -> i32 {
            let to_key = $to_key;
            to_key(value, h32)
        }
    )*};
}

shard_hash_support! {
    i16, |v: i16, f: fn(&KeyValue<'_>) -> _| f(&KeyValue::Int(v.into())), partition_hash_int2, shard_hash32_int2;
    i32, |v: i32, f: fn(&KeyValue<'_>) -> _| f(&KeyValue::Int(v.into())), partition_hash_int4, shard_hash32_int4;
    i64, |v: i64, f: fn(&KeyValue<'_>) -> _| f(&KeyValue::Int(v)), partition_hash_int8, shard_hash32_int8;
    &str, |v: &str, f: fn(&KeyValue<'_>) -> _| f(&KeyValue::Bytes(v.as_bytes())), partition_hash_text, shard_hash32_text;
    pgrx::Uuid, |v: pgrx::Uuid, f: fn(&KeyValue<'_>) -> _| f(&KeyValue::Uuid(*v.as_bytes())), partition_hash_uuid, shard_hash32_uuid;
    AnyNumeric, |v: AnyNumeric, f: fn(&KeyValue<'_>) -> _| f(&KeyValue::Bytes(normalize_numeric(&v.to_string()).as_bytes())), partition_hash_numeric, shard_hash32_numeric;
    pgrx::datum::Date, |v: pgrx::datum::Date, f: fn(&KeyValue<'_>) -> _| f(&KeyValue::Int(v.to_pg_epoch_days().into())), partition_hash_date, shard_hash32_date;
    pgrx::datum::Timestamp, |v: pgrx::datum::Timestamp, f: fn(&KeyValue<'_>) -> _| f(&KeyValue::Int(pg_sys::Timestamp::from(v))), partition_hash_timestamp, shard_hash32_timestamp;
    pgrx::datum::TimestampWithTimeZone, |v: pgrx::datum::TimestampWithTimeZone, f: fn(&KeyValue<'_>) -> _| f(&KeyValue::Int(pg_sys::TimestampTz::from(v))), partition_hash_timestamptz, shard_hash32_timestamptz;
}

/// The oid of a `regclass` argument, closing the relation the argument opened (its lock
/// stays): the operations below drop and replace it.
fn closed(table: PgRelation) -> pg_sys::Oid {
    let oid = table.oid();
    drop(table);
    oid
}

/// `synapse.create_distributed_table(table, shard_key, shard_count DEFAULT 256)`: spreads
/// the table over the cluster's nodes by the hash of `shard_key`, moving its rows.
#[pg_extern(volatile)]
fn create_distributed_table(table: PgRelation, shard_key: &str, shard_count: default!(i32, 256)) {
    check_shard_count(shard_count);
    operations::distribute(closed(table), shard_key, shard_count as u32);
}

/// `synapse.create_reference_table(table)`: a full copy of the table on every node.
#[pg_extern(volatile)]
fn create_reference_table(table: PgRelation) {
    operations::make_reference(closed(table));
}

/// `synapse.undistribute_table(table)`: gathers the rows of a distributed or reference
/// table back into an ordinary table on this node, and drops it on the other nodes.
#[pg_extern(volatile)]
fn undistribute_table(table: PgRelation) {
    operations::undistribute(closed(table));
}

/// `synapse.table_distribution(table)`: per node, the shards, rows and bytes of the table.
#[pg_extern(volatile)]
fn table_distribution(
    table: PgRelation,
) -> TableIterator<
    'static,
    (
        name!(node, String),
        name!(shards, i64),
        name!(rows, i64),
        name!(bytes, i64),
    ),
> {
    TableIterator::new(stats::table_distribution(closed(table)))
}

/// `synapse.shard_sizes()`: every shard of every distributed table, with its node, size
/// and row estimate (behind the `synapse.shards` view).
#[pg_extern(volatile)]
fn shard_sizes() -> TableIterator<
    'static,
    (
        name!(table_name, String),
        name!(shard, i32),
        name!(node, String),
        name!(role, String),
        name!(bytes, i64),
        name!(row_estimate, i64),
    ),
> {
    TableIterator::new(stats::shard_sizes())
}

/// `synapse.connections()`: this backend's cached connections to other nodes.
#[pg_extern(volatile)]
fn connections() -> TableIterator<
    'static,
    (
        name!(node_id, i64),
        name!(node, String),
        name!(state, String),
        name!(transaction, String),
    ),
> {
    TableIterator::new(crate::remote::pool::describe())
}

/// Trigger on each copy of a reference table: a write must reach every copy, which only
/// synapse's routed statements (fragments) do.
#[pg_trigger]
fn reference_table_write_guard<'a>(
    trigger: &'a pgrx::PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, impl WhoAllocated>>, pgrx::heap_tuple::PgHeapTupleError> {
    if !crate::gucs::fragment() && !crate::distribution::guard::is_bypassed() {
        let table = trigger.table_name().unwrap_or_else(|_| "table".into());
        pgrx::pg_sys::panic::ErrorReport::new(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("writes to reference table \"{table}\" are not routed to every node yet"),
            "synapse",
        )
        .set_detail("Each node holds a copy of a reference table; a write made here alone would make the copies differ.")
        .set_hint("Query routing arrives with the distributed tables issue.")
        .report(PgLogLevel::ERROR);
    }
    Ok(trigger.new())
}

/// `synapse.circuit_breakers()`: per other node, its circuit breaker (closed, open,
/// half-open; fed by connection errors and by SWIM) and the connections this node's
/// backends hold to it.
#[allow(clippy::type_complexity)] // the row type pgrx turns into SQL
#[pg_extern(volatile)]
fn circuit_breakers() -> TableIterator<
    'static,
    (
        name!(node, String),
        name!(state, String),
        name!(failures, i32),
        name!(opened_at, Option<pgrx::datum::TimestampWithTimeZone>),
        name!(retry_at, Option<pgrx::datum::TimestampWithTimeZone>),
        name!(connections, i32),
    ),
> {
    let me = crate::distribution::metadata::local_node_id();
    let at = |ms: i64| (ms > 0).then(|| crate::pg::time::timestamptz_ms(ms));
    let rows: Vec<_> = crate::distribution::metadata::nodes()
        .into_iter()
        .filter(|n| n.id != me)
        .map(|n| {
            let (b, connections) = crate::shmem::peer_status(&n.name);
            let open = b.state != synapse_core::breaker::BreakerState::Closed;
            (
                n.name,
                b.state.as_str().to_owned(),
                b.failures as i32,
                if open { at(b.opened_at_ms) } else { None },
                if open { at(b.retry_at_ms) } else { None },
                connections,
            )
        })
        .collect();
    TableIterator::new(rows)
}
