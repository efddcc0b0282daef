//! Recognising distributed tables, and the switch that lets synapse's own statements read
//! and write this node's shards directly.
//!
//! A distributed table is recognised physically, without a catalog query: a table
//! hash-partitioned with one of synapse's operator classes. Anywhere else than in a
//! fragment (`synapse.fragment`, set on connections between nodes, which act on this
//! node's shards by definition) or in synapse's own work ([`bypassed`]), a statement over
//! one must be routed: run alone here it would see only this node's shards.

use std::cell::Cell;

use pgrx::pg_sys;

thread_local! {
    /// Set while synapse itself works on distributed tables (moving rows).
    static BYPASS: Cell<u32> = const { Cell::new(0) };
}

/// Whether synapse's own work is running (see [`bypassed`]).
pub fn is_bypassed() -> bool {
    BYPASS.with(|b| b.get()) > 0
}

/// Runs `f` with the guard off (synapse's own reads and writes of shards).
pub fn bypassed<R>(f: impl FnOnce() -> R) -> R {
    struct Restore;
    impl Drop for Restore {
        fn drop(&mut self) {
            BYPASS.with(|b| b.set(b.get() - 1));
        }
    }
    BYPASS.with(|b| b.set(b.get() + 1));
    let _restore = Restore;
    f()
}

/// Whether `oid` is a distributed table: hash-partitioned on one column with an operator
/// class of schema `synapse`.
pub fn is_distributed(oid: pg_sys::Oid) -> bool {
    shard_opclass(oid).is_some()
}

/// The hash operator family of a distributed table's shard key.
pub fn key_opfamily(oid: pg_sys::Oid) -> Option<pg_sys::Oid> {
    // SAFETY: a syscache lookup by oid.
    shard_opclass(oid).map(|opclass| unsafe { pg_sys::get_opclass_family(opclass) })
}

/// The synapse operator class partitioning `oid`, if it is a distributed table.
fn shard_opclass(oid: pg_sys::Oid) -> Option<pg_sys::Oid> {
    /// `pg_partitioned_table.partclass`.
    const ANUM_PARTCLASS: pg_sys::AttrNumber = 6;
    // SAFETY: syscache lookups by oid on the main thread; each tuple is released after
    // its fields are read.
    unsafe {
        if pg_sys::get_rel_relkind(oid) != pg_sys::RELKIND_PARTITIONED_TABLE as std::os::raw::c_char
        {
            return None;
        }
        let tuple =
            pg_sys::SearchSysCache1(pg_sys::SysCacheIdentifier::PARTRELID as i32, oid.into());
        if tuple.is_null() {
            return None;
        }
        let mut isnull = false;
        let datum = pg_sys::SysCacheGetAttr(
            pg_sys::SysCacheIdentifier::PARTRELID as i32,
            tuple,
            ANUM_PARTCLASS,
            &mut isnull,
        );
        let opclass = if isnull {
            None
        } else {
            let classes = datum.cast_mut_ptr::<pg_sys::oidvector>();
            ((*classes).dim1 == 1).then(|| *(*classes).values.as_ptr())
        };
        pg_sys::ReleaseSysCache(tuple);
        let opclass = opclass?;
        let tuple =
            pg_sys::SearchSysCache1(pg_sys::SysCacheIdentifier::CLAOID as i32, opclass.into());
        if tuple.is_null() {
            return None;
        }
        let namespace =
            (*pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_opclass>(tuple)).opcnamespace;
        pg_sys::ReleaseSysCache(tuple);
        (namespace == synapse_namespace()).then_some(opclass)
    }
}

/// The oid of schema `synapse` (looked up once per backend; it never changes while the
/// extension exists).
fn synapse_namespace() -> pg_sys::Oid {
    thread_local! {
        static NAMESPACE: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::InvalidOid) };
    }
    NAMESPACE.with(|ns| {
        if ns.get() == pg_sys::InvalidOid {
            // SAFETY: a syscache lookup by name on the main thread.
            ns.set(unsafe { pg_sys::get_namespace_oid(c"synapse".as_ptr(), true) });
        }
        ns.get()
    })
}
