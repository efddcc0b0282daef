//! Plans of the statements synapse runs on this node's shards through SPI (a routed
//! statement whose shard is here, a fragment or a table scan of this node), kept for
//! the backend's life like a prepared statement: parsed once, planned by PostgreSQL's
//! plan cache (custom or generic plans, replanned when a table they use changes).

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CString;

use pgrx::pg_sys;

/// At most this many kept plans per backend; past it, plans last until `SPI_finish` only
/// (a kept plan is never freed: an open cursor of the statement being run may use it).
const MAX_PLANS: usize = 256;

/// A kept SPI plan (lives in PostgreSQL's CacheMemoryContext until freed).
struct Kept(pg_sys::SPIPlanPtr);

thread_local! {
    static PLANS: RefCell<HashMap<(String, Vec<pg_sys::Oid>), Kept>> = RefCell::new(HashMap::new());
}

/// The kept plan of `sql` with parameters of `types`, prepared on first use.
///
/// # Safety
/// Main thread, SPI connected; `sql` must be a statement synapse built (its planning
/// runs under the caller's routing settings, as execution does).
pub unsafe fn kept(sql: &str, types: &[pg_sys::Oid]) -> pg_sys::SPIPlanPtr {
    let key = (sql.to_owned(), types.to_vec());
    if let Some(plan) = PLANS.with(|p| p.borrow().get(&key).map(|k| k.0)) {
        return plan;
    }
    let text = CString::new(sql).expect("no NUL in SQL");
    let mut types = types.to_vec();
    // SAFETY: SPI is connected; SPI_prepare errors out (longjmp) rather than returning
    // NULL for bad SQL, and the kept plan is moved out of SPI's memory.
    unsafe {
        let plan = pg_sys::SPI_prepare(text.as_ptr(), types.len() as i32, types.as_mut_ptr());
        if plan.is_null() {
            let code = pg_sys::SPI_result;
            pgrx::error!("synapse: preparing a statement on this node failed (SPI code {code})");
        }
        PLANS.with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < MAX_PLANS {
                pg_sys::SPI_keepplan(plan);
                p.insert(key, Kept(plan));
            }
        });
        plan
    }
}
