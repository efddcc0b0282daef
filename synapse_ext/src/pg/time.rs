//! Wall-clock time as synapse keeps it (Unix milliseconds or microseconds) and as
//! PostgreSQL shows it (`timestamptz`: microseconds since 2000-01-01).

use pgrx::datum::TimestampWithTimeZone;

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
pub const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The `timestamptz` of `unix_us` microseconds since the Unix epoch.
pub fn timestamptz_us(unix_us: i64) -> TimestampWithTimeZone {
    TimestampWithTimeZone::try_from(unix_us - PG_EPOCH_OFFSET_US)
        .unwrap_or_else(|_| TimestampWithTimeZone::negative_infinity())
}

/// The `timestamptz` of `unix_ms` milliseconds since the Unix epoch.
pub fn timestamptz_ms(unix_ms: i64) -> TimestampWithTimeZone {
    timestamptz_us(unix_ms.saturating_mul(1000))
}
