//! Shard keys as PostgreSQL sees them: which column types may be a shard key, the hash
//! operator class that partitions each, and the shard hash of a `Datum`.
//! The hash itself is `synapse_core::distribution::hash`; this file only reads datums.

use pgrx::pg_sys;
use pgrx::prelude::*;
use synapse_core::distribution::hash::{normalize_numeric, shard_hash, KeyValue};

/// The types a shard key may have (domains over them too).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyType {
    Int2,
    Int4,
    Int8,
    /// `text` and `varchar` (binary-compatible).
    Text,
    Uuid,
    Numeric,
    Date,
    Timestamp,
    TimestampTz,
}

/// What the error hint lists.
pub const SUPPORTED: &str =
    "smallint, integer, bigint, text, varchar, uuid, numeric, date, timestamp, timestamptz";

impl KeyType {
    /// The key type of values of type `typid` (a domain counts as its base type).
    pub fn of(typid: pg_sys::Oid) -> Option<KeyType> {
        // SAFETY: a catalog lookup by oid on the main thread.
        let base = unsafe { pg_sys::getBaseType(typid) };
        Some(match base {
            pg_sys::INT2OID => KeyType::Int2,
            pg_sys::INT4OID => KeyType::Int4,
            pg_sys::INT8OID => KeyType::Int8,
            pg_sys::TEXTOID | pg_sys::VARCHAROID => KeyType::Text,
            pg_sys::UUIDOID => KeyType::Uuid,
            pg_sys::NUMERICOID => KeyType::Numeric,
            pg_sys::DATEOID => KeyType::Date,
            pg_sys::TIMESTAMPOID => KeyType::Timestamp,
            pg_sys::TIMESTAMPTZOID => KeyType::TimestampTz,
            _ => return None,
        })
    }

    /// The hash operator class (in schema `synapse`) that partitions a key of this type.
    pub fn opclass(self) -> &'static str {
        match self {
            KeyType::Int2 => "int2_shard_ops",
            KeyType::Int4 => "int4_shard_ops",
            KeyType::Int8 => "int8_shard_ops",
            KeyType::Text => "text_shard_ops",
            KeyType::Uuid => "uuid_shard_ops",
            KeyType::Numeric => "numeric_shard_ops",
            KeyType::Date => "date_shard_ops",
            KeyType::Timestamp => "timestamp_shard_ops",
            KeyType::TimestampTz => "timestamptz_shard_ops",
        }
    }
}

/// Calls `f` with the canonical key of `datum` (not NULL) of key type `kt`.
///
/// # Safety
/// `datum` must be a valid, non-NULL value of a type whose key type is `kt`.
pub unsafe fn with_key<R>(
    kt: KeyType,
    datum: pg_sys::Datum,
    f: impl FnOnce(&KeyValue<'_>) -> R,
) -> R {
    match kt {
        KeyType::Int2 => f(&KeyValue::Int(datum.value() as i16 as i64)),
        KeyType::Int4 => f(&KeyValue::Int(datum.value() as i32 as i64)),
        KeyType::Int8 | KeyType::Timestamp | KeyType::TimestampTz => {
            // SAFETY: int8 and timestamps are by-value 8-byte datums on 64-bit platforms.
            f(&KeyValue::Int(datum.value() as i64))
        }
        KeyType::Date => f(&KeyValue::Int(datum.value() as i32 as i64)),
        KeyType::Text => {
            // SAFETY: a text/varchar datum is a (maybe toasted) varlena; from_datum detoasts
            // it into memory that lives for the current memory context.
            let bytes = unsafe { <&[u8]>::from_datum(datum, false) }.expect("not NULL");
            f(&KeyValue::Bytes(bytes))
        }
        KeyType::Uuid => {
            // SAFETY: a uuid datum points at its 16 bytes.
            let bytes = unsafe { std::slice::from_raw_parts(datum.cast_mut_ptr::<u8>(), 16) };
            f(&KeyValue::Uuid(bytes.try_into().expect("16 bytes")))
        }
        KeyType::Numeric => {
            // SAFETY: a numeric datum; AnyNumeric formats it with numeric_out.
            let n = unsafe { AnyNumeric::from_datum(datum, false) }.expect("not NULL");
            let text = n.to_string();
            f(&KeyValue::Bytes(normalize_numeric(&text).as_bytes()))
        }
    }
}

/// The shard hash of a value (`None`: NULL).
///
/// # Safety
/// As [`with_key`].
pub unsafe fn hash_datum(kt: KeyType, datum: Option<pg_sys::Datum>) -> u64 {
    match datum {
        // SAFETY: forwarded from the caller.
        Some(d) => unsafe { with_key(kt, d, |k| shard_hash(Some(k))) },
        None => shard_hash(None),
    }
}

/// Raises the ERROR for a shard key of an unsupported type.
pub fn unsupported(typid: pg_sys::Oid) -> ! {
    // SAFETY: format_type_be looks the type up by oid and palloc's its name.
    let name = unsafe { std::ffi::CStr::from_ptr(pg_sys::format_type_be(typid)) }
        .to_string_lossy()
        .into_owned();
    pgrx::pg_sys::panic::ErrorReport::new(
        PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
        format!("type {name} cannot be a shard key"),
        "synapse",
    )
    .set_hint(format!("Shard keys may be of type {SUPPORTED}."))
    .report(PgLogLevel::ERROR);
    unreachable!()
}
