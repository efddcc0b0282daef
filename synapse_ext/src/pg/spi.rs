//! Read-only SPI helpers. pgrx's `Spi::get_one*` run their query as an update, which
//! assigns the transaction an id: a read must not look like a write (routing counts the
//! nodes a transaction wrote on by exactly that).

use pgrx::datum::{DatumWithOid, FromDatum, IntoDatum};
use pgrx::prelude::*;

/// The first column of the first row of a read-only query, if any.
pub fn select_one<T: FromDatum + IntoDatum>(sql: &str, args: &[DatumWithOid<'_>]) -> Option<T> {
    Spi::connect(|client| {
        client
            .select(sql, Some(1), args)
            .ok()
            .and_then(|table| table.first().get_one::<T>().ok().flatten())
    })
}
