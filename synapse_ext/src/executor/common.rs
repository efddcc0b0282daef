//! Pieces shared by the custom scans: the statement's parameters (for SPI here and as
//! text for other nodes), and filling slots.

use std::ffi::{c_void, CStr};

use pgrx::pg_sys;

/// External parameter `id` (1-based) of a parameter list.
pub unsafe fn param(list: pg_sys::ParamListInfo, id: i32) -> Option<pg_sys::ParamExternData> {
    // SAFETY: a valid parameter list; fetch hooks are called as PostgreSQL documents.
    unsafe {
        if list.is_null() || id < 1 || id > (*list).numParams {
            return None;
        }
        if let Some(fetch) = (*list).paramFetch {
            let mut workspace: pg_sys::ParamExternData = std::mem::zeroed();
            let p = fetch(list, id, false, &mut workspace);
            return (!p.is_null()).then(|| *p);
        }
        Some(*(*list).params.as_ptr().add(id as usize - 1))
    }
}

/// Empties a virtual slot: every column NULL.
pub unsafe fn clear(slot: *mut pg_sys::TupleTableSlot) {
    // SAFETY: a valid slot with natts values.
    unsafe {
        pg_sys::ExecClearTuple(slot);
        let natts = (*(*slot).tts_tupleDescriptor).natts as usize;
        for i in 0..natts {
            *(*slot).tts_isnull.add(i) = true;
            *(*slot).tts_values.add(i) = pg_sys::Datum::from(0);
        }
    }
}

/// The statement's external parameters: types, values, and text for other nodes.
pub struct Params {
    pub types: Vec<pg_sys::Oid>,
    pub values: Vec<pg_sys::Datum>,
    pub nulls: Vec<bool>,
    pub texts: Vec<Option<String>>,
}

impl Params {
    /// Parameters $1..$max of `list`; their text (for other nodes) only if `text`.
    pub unsafe fn of(list: pg_sys::ParamListInfo, max: i32, text: bool) -> Params {
        let mut p = Params {
            types: vec![],
            values: vec![],
            nulls: vec![],
            texts: vec![],
        };
        // SAFETY: a valid (or NULL) parameter list.
        let n = if list.is_null() {
            0
        } else {
            unsafe { (*list).numParams }.min(max)
        };
        for id in 1..=n {
            // SAFETY: as above; output functions of the parameters' own types.
            unsafe {
                let param = param(list, id).unwrap_or_else(|| std::mem::zeroed());
                p.types.push(param.ptype);
                p.values.push(param.value);
                p.nulls
                    .push(param.isnull || param.ptype == pg_sys::Oid::INVALID);
                p.texts.push(
                    if !text || param.isnull || param.ptype == pg_sys::Oid::INVALID {
                        None
                    } else {
                        let mut out = pg_sys::Oid::INVALID;
                        let mut varlena = false;
                        pg_sys::getTypeOutputInfo(param.ptype, &mut out, &mut varlena);
                        let text = pg_sys::OidOutputFunctionCall(out, param.value);
                        Some(CStr::from_ptr(text).to_string_lossy().into_owned())
                    },
                );
            }
        }
        p
    }
}

impl Params {
    /// The texts as libpq takes them.
    pub fn text_refs(&self) -> Vec<Option<&str>> {
        self.texts.iter().map(|t| t.as_deref()).collect()
    }

    /// NULL flags as SPI takes them.
    pub fn spi_nulls(&self) -> Vec<std::os::raw::c_char> {
        self.nulls
            .iter()
            .map(|n| if *n { b'n' as _ } else { b' ' as _ })
            .collect()
    }
}

/// How to read one column's text: its type's input function.
pub struct TextInput {
    pub input: pg_sys::FmgrInfo,
    pub ioparam: pg_sys::Oid,
    pub typmod: i32,
}

impl TextInput {
    /// The input function of type `typid`, looked up in memory context `cxt`.
    ///
    /// # Safety
    /// Main thread, inside a transaction; `cxt` outlives the uses.
    pub unsafe fn new(typid: pg_sys::Oid, typmod: i32, cxt: pg_sys::MemoryContext) -> TextInput {
        // SAFETY: catalog lookups on the main thread.
        unsafe {
            let mut input = pg_sys::Oid::INVALID;
            let mut ioparam = pg_sys::Oid::INVALID;
            pg_sys::getTypeInputInfo(typid, &mut input, &mut ioparam);
            let mut finfo: pg_sys::FmgrInfo = std::mem::zeroed();
            pg_sys::fmgr_info_cxt(input, &mut finfo, cxt);
            TextInput {
                input: finfo,
                ioparam,
                typmod,
            }
        }
    }

    /// The datum of `text`.
    ///
    /// # Safety
    /// Main thread; the datum lives in the current memory context.
    pub unsafe fn read(&mut self, text: &str) -> pg_sys::Datum {
        let text = std::ffi::CString::new(text).expect("no NUL in a value's text");
        // SAFETY: the type's own input function on a C string.
        unsafe {
            pg_sys::InputFunctionCall(
                &mut self.input,
                text.as_ptr() as *mut _,
                self.ioparam,
                self.typmod,
            )
        }
    }
}

/// The rows of a custom scan, all fetched at its first row into a tuplestore (spilling
/// past `work_mem`), which rescans replay.
pub struct Rows {
    /// Reads the tuplestore's minimal tuples; copied into the scan slot.
    read_slot: *mut pg_sys::TupleTableSlot,
    store: *mut pg_sys::Tuplestorestate,
    /// Whether the rows are fetched.
    pub filled: bool,
}

impl Rows {
    /// Rows of the scan tuple descriptor `desc`.
    ///
    /// # Safety
    /// In the scan's `BeginCustomScan`.
    pub unsafe fn new(estate: *mut pg_sys::EState, desc: pg_sys::TupleDesc) -> Rows {
        Rows {
            // SAFETY: a slot of the executor's, freed with it.
            read_slot: unsafe {
                pg_sys::ExecInitExtraTupleSlot(estate, desc, &pg_sys::TTSOpsMinimalTuple)
            },
            store: std::ptr::null_mut(),
            filled: false,
        }
    }

    /// Starts filling an empty store, in the query's memory context.
    ///
    /// # Safety
    /// In the executor, before the first row.
    pub unsafe fn start(&mut self, estate: *mut pg_sys::EState) {
        // SAFETY: the query's memory context outlives the scan.
        unsafe {
            let old = pg_sys::MemoryContextSwitchTo((*estate).es_query_cxt);
            self.store = pg_sys::tuplestore_begin_heap(false, false, pg_sys::work_mem);
            pg_sys::MemoryContextSwitchTo(old);
        }
    }

    /// Adds the row in `slot` (copied).
    ///
    /// # Safety
    /// After `start`; `slot` holds a tuple of the scan's descriptor.
    pub unsafe fn put(&mut self, slot: *mut pg_sys::TupleTableSlot) {
        // SAFETY: as documented.
        unsafe { pg_sys::tuplestore_puttupleslot(self.store, slot) };
    }

    /// The next row in `slot`, or `slot` cleared after the last.
    ///
    /// # Safety
    /// After the store is filled; `slot` is the scan slot.
    pub unsafe fn next(
        &mut self,
        slot: *mut pg_sys::TupleTableSlot,
    ) -> *mut pg_sys::TupleTableSlot {
        // SAFETY: as documented.
        unsafe {
            if pg_sys::tuplestore_gettupleslot(self.store, true, false, self.read_slot) {
                pg_sys::ExecCopySlot(slot, self.read_slot)
            } else {
                pg_sys::ExecClearTuple(slot)
            }
        }
    }

    /// From the first row again.
    ///
    /// # Safety
    /// In the scan's `ReScanCustomScan`.
    pub unsafe fn rescan(&mut self) {
        if self.filled {
            // SAFETY: a filled store.
            unsafe { pg_sys::tuplestore_rescan(self.store) };
        }
    }

    /// Frees the store.
    ///
    /// # Safety
    /// In the scan's `EndCustomScan`.
    pub unsafe fn end(&mut self) {
        if !self.store.is_null() {
            // SAFETY: our store, ended once.
            unsafe { pg_sys::tuplestore_end(self.store) };
            self.store = std::ptr::null_mut();
            self.filled = false;
        }
    }
}

/// Runs the kept plan of `sql` on this node's shards through SPI (connected; synapse's
/// routing bypassed), keeps the rows it returns in `rows` (through the scan slot `slot`)
/// and returns how many rows it processed.
///
/// # Safety
/// Main thread, SPI connected, inside the executor; `slot` has the rows' descriptor.
pub unsafe fn run_here(
    sql: &str,
    types: &[pg_sys::Oid],
    values: &mut [pg_sys::Datum],
    nulls: &[bool],
    read_only: bool,
    slot: *mut pg_sys::TupleTableSlot,
    rows: &mut Rows,
) -> u64 {
    // SAFETY: as documented; tuples are copied into the store before SPI frees them.
    unsafe {
        let nulls: Vec<std::os::raw::c_char> = nulls
            .iter()
            .map(|n| if *n { b'n' as _ } else { b' ' as _ })
            .collect();
        let code = crate::distribution::guard::bypassed(|| {
            let plan = crate::pg::plans::kept(sql, types);
            pg_sys::SPI_execute_plan(plan, values.as_mut_ptr(), nulls.as_ptr(), read_only, 0)
        });
        if code < 0 {
            pgrx::error!("synapse: running the statement on this node failed (SPI code {code})");
        }
        let n = pg_sys::SPI_processed;
        let table = pg_sys::SPI_tuptable;
        if !table.is_null() {
            for i in 0..n as usize {
                let tuple = *(*table).vals.add(i);
                clear(slot);
                for j in 0..(*(*slot).tts_tupleDescriptor).natts as usize {
                    let mut isnull = false;
                    *(*slot).tts_values.add(j) =
                        pg_sys::SPI_getbinval(tuple, (*table).tupdesc, j as i32 + 1, &mut isnull);
                    *(*slot).tts_isnull.add(j) = isnull;
                }
                pg_sys::ExecStoreVirtualTuple(slot);
                rows.put(slot);
            }
            pg_sys::SPI_freetuptable(table);
        }
        n
    }
}

/// Keeps rows another node sent as text (column `j` read by `columns[j]`) in `rows`,
/// through the scan slot `slot`, each read in `econtext`'s per-tuple memory.
///
/// # Safety
/// Main thread, inside the executor; `slot` has the rows' descriptor.
pub unsafe fn put_text_rows(
    text_rows: Vec<Vec<Option<String>>>,
    columns: &mut [TextInput],
    slot: *mut pg_sys::TupleTableSlot,
    econtext: *mut pg_sys::ExprContext,
    rows: &mut Rows,
) {
    // SAFETY: as documented.
    unsafe {
        for row in text_rows {
            let old = pg_sys::MemoryContextSwitchTo((*econtext).ecxt_per_tuple_memory);
            clear(slot);
            for (j, value) in row.into_iter().enumerate() {
                if let (Some(value), Some(column)) = (value, columns.get_mut(j)) {
                    *(*slot).tts_values.add(j) = column.read(&value);
                    *(*slot).tts_isnull.add(j) = false;
                }
            }
            pg_sys::ExecStoreVirtualTuple(slot);
            rows.put(slot);
            pg_sys::MemoryContextSwitchTo(old);
            pg_sys::MemoryContextReset((*econtext).ecxt_per_tuple_memory);
        }
    }
}

/// Leaks `run` into the query: it is dropped when the query's memory context goes away.
///
/// # Safety
/// `run` comes from `Box::into_raw` and is not freed otherwise.
pub unsafe fn drop_with_query<T>(estate: *mut pg_sys::EState, run: *mut T) {
    unsafe extern "C-unwind" fn drop_box<T>(arg: *mut c_void) {
        // SAFETY: the Box leaked by the caller, freed once.
        drop(unsafe { Box::from_raw(arg as *mut T) });
    }
    // SAFETY: a callback record in the query's memory context, which outlives the run.
    unsafe {
        let callback = pg_sys::MemoryContextAllocZero(
            (*estate).es_query_cxt,
            std::mem::size_of::<pg_sys::MemoryContextCallback>(),
        ) as *mut pg_sys::MemoryContextCallback;
        (*callback).func = Some(drop_box::<T>);
        (*callback).arg = run.cast();
        pg_sys::MemoryContextRegisterResetCallback((*estate).es_query_cxt, callback);
    }
}

/// The text of a String node of a plan's private list.
pub fn str_val(node: *mut pg_sys::Node) -> String {
    // SAFETY: a String node made by the planner.
    unsafe { CStr::from_ptr((*(node as *mut pg_sys::String)).sval) }
        .to_string_lossy()
        .into_owned()
}

/// The value of an Integer node of a plan's private list.
pub fn int_val(node: *mut pg_sys::Node) -> i32 {
    // SAFETY: an Integer node made by the planner.
    unsafe { (*(node as *mut pg_sys::Integer)).ival }
}

/// `ExecScan`'s recheck: the rows need none (the scan's quals are evaluated anyway).
#[pgrx::pg_guard]
pub unsafe extern "C-unwind" fn recheck(
    _ss: *mut pg_sys::ScanState,
    _slot: *mut pg_sys::TupleTableSlot,
) -> bool {
    true
}

/// The parts every synapse custom scan shares, for a scan named `$name` (a C string
/// literal) whose node is `$node` (PostgreSQL's `CustomScanState`, then `run: *mut
/// Runtime` with the scan's `rows: Rows`): its method tables (registered by name, as plans
/// are copied and serialized by name), `register`, a zeroed node of its size, and
/// `EndCustomScan` / `ReScanCustomScan` over its rows. The module defines `begin`, `exec`
/// and `explain`.
macro_rules! custom_scan {
    ($name:literal, $node:ident) => {
        pub struct ScanMethods(pub pgrx::pg_sys::CustomScanMethods);
        // SAFETY: immutable tables of function pointers; backends are single-threaded.
        unsafe impl Sync for ScanMethods {}
        struct ExecMethods(pgrx::pg_sys::CustomExecMethods);
        // SAFETY: as above.
        unsafe impl Sync for ExecMethods {}

        pub static SCAN_METHODS: ScanMethods = ScanMethods(pgrx::pg_sys::CustomScanMethods {
            CustomName: $name.as_ptr(),
            CreateCustomScanState: Some(create_state),
        });

        static EXEC_METHODS: ExecMethods = ExecMethods(pgrx::pg_sys::CustomExecMethods {
            CustomName: $name.as_ptr(),
            BeginCustomScan: Some(begin),
            ExecCustomScan: Some(exec),
            EndCustomScan: Some(end),
            ReScanCustomScan: Some(rescan),
            MarkPosCustomScan: None,
            RestrPosCustomScan: None,
            EstimateDSMCustomScan: None,
            InitializeDSMCustomScan: None,
            ReInitializeDSMCustomScan: None,
            InitializeWorkerCustomScan: None,
            ShutdownCustomScan: None,
            ExplainCustomScan: Some(explain),
        });

        /// Registers the scan's methods by name.
        pub fn register() {
            // SAFETY: _PG_init; the methods live as long as the library.
            unsafe { pgrx::pg_sys::RegisterCustomScanMethods(&SCAN_METHODS.0) };
        }

        #[pgrx::pg_guard]
        unsafe extern "C-unwind" fn create_state(
            _cscan: *mut pgrx::pg_sys::CustomScan,
        ) -> *mut pgrx::pg_sys::Node {
            // SAFETY: a zeroed node of our size, in the executor's memory context.
            unsafe {
                let node = pgrx::pg_sys::palloc0(std::mem::size_of::<$node>()) as *mut $node;
                (*node).css.ss.ps.type_ = pgrx::pg_sys::NodeTag::T_CustomScanState;
                (*node).css.methods = &EXEC_METHODS.0;
                node.cast()
            }
        }

        #[pgrx::pg_guard]
        unsafe extern "C-unwind" fn end(css: *mut pgrx::pg_sys::CustomScanState) {
            // SAFETY: our node. The runtime itself is freed with the query's memory context.
            unsafe {
                let run = (*(css as *mut $node)).run;
                if !run.is_null() {
                    (*run).rows.end();
                }
            }
        }

        #[pgrx::pg_guard]
        unsafe extern "C-unwind" fn rescan(css: *mut pgrx::pg_sys::CustomScanState) {
            // SAFETY: our node.
            unsafe {
                (*(*(css as *mut $node)).run).rows.rescan();
                pgrx::pg_sys::ExecScanReScan(&mut (*css).ss);
            }
        }
    };
}
pub(crate) use custom_scan;
