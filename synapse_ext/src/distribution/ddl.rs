//! A table's definition read from the catalog and rendered back as DDL for the other
//! nodes (PostgreSQL has no `pg_get_tabledef`). Expressions, types and constraints come
//! from PostgreSQL's own deparsers (`format_type`, `pg_get_expr`,
//! `pg_get_constraintdef`, `pg_get_indexdef`), with `search_path` reduced to
//! `pg_catalog` so every name they print is schema-qualified.

use pgrx::pg_sys;
use pgrx::prelude::*;

/// One column.
#[derive(Clone, Debug)]
pub struct Column {
    pub name: String,
    /// `format_type(atttypid, atttypmod)`.
    pub type_sql: String,
    pub typid: pg_sys::Oid,
    pub not_null: bool,
    pub default: Option<String>,
    /// `GENERATED ALWAYS AS (...) STORED` expression.
    pub generated: Option<String>,
    /// A collation other than the type's default, qualified.
    pub collation: Option<String>,
    pub identity: bool,
}

/// What the other nodes need to recreate a table.
#[derive(Clone, Debug)]
pub struct TableDef {
    pub schema: String,
    pub name: String,
    pub owner: String,
    pub columns: Vec<Column>,
    /// CHECK constraints: (name, definition).
    pub checks: Vec<(String, String)>,
    /// PRIMARY KEY, UNIQUE and EXCLUDE constraints: (name, definition).
    pub keys: Vec<(String, String)>,
    /// `CREATE INDEX` statements of indexes that back no constraint.
    pub indexes: Vec<String>,
    /// `GRANT` statements reproducing the table's privileges.
    pub grants: Vec<String>,
}

/// The SQL of `query` for another node: PostgreSQL's deparser with every name
/// schema-qualified, on one line.
///
/// # Safety
/// `query` must be a valid Query; it is copied, not changed.
pub unsafe fn deparse_query(query: *mut pg_sys::Query) -> String {
    with_qualified_names(|| {
        // SAFETY: the deparser reads a copy of a valid Query.
        let text = unsafe {
            let copy = pg_sys::copyObjectImpl(query.cast()) as *mut pg_sys::Query;
            std::ffi::CStr::from_ptr(pg_sys::pg_get_querydef(copy, false))
        };
        synapse_core::distribution::sql_text::one_line(&text.to_string_lossy())
    })
}

/// Runs `f` with `search_path` = `pg_catalog` (restored afterwards, also on error).
pub fn with_qualified_names<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(i32);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: pops the GUC nest level pushed below, main thread.
            unsafe { pg_sys::AtEOXact_GUC(true, self.0) };
        }
    }
    // SAFETY: main thread inside a transaction; the level is popped by `Restore`.
    let restore = unsafe {
        let level = pg_sys::NewGUCNestLevel();
        pg_sys::set_config_option(
            c"search_path".as_ptr(),
            c"pg_catalog".as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SAVE,
            true,
            0,
            false,
        );
        Restore(level)
    };
    let result = f();
    drop(restore);
    result
}

use crate::pg::errors::raise as refuse;

/// Reads `table`'s definition, refusing what cannot be kept on several nodes: other
/// relation kinds, temporary or unlogged tables, inheritance, foreign keys, triggers,
/// row security, identity columns and sequence defaults.
pub fn read(table: pg_sys::Oid) -> TableDef {
    with_qualified_names(|| read_qualified(table, false))
}

/// Reads the definition of a distributed table (partitioned by synapse).
pub fn read_distributed(table: pg_sys::Oid) -> TableDef {
    with_qualified_names(|| read_qualified(table, true))
}

/// The schema and name of a relation.
pub fn names(table: pg_sys::Oid) -> (String, String) {
    // SAFETY: syscache lookups by oid; the names are palloc'd copies.
    unsafe {
        let name = pg_sys::get_rel_name(table);
        let schema = pg_sys::get_namespace_name(pg_sys::get_rel_namespace(table));
        let text = |p: *mut std::os::raw::c_char| {
            if p.is_null() {
                String::new()
            } else {
                std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
            }
        };
        (text(schema), text(name))
    }
}

fn read_qualified(table: pg_sys::Oid, distributed: bool) -> TableDef {
    let (schema, name, owner, relkind, persistence, rls, display): (
        String,
        String,
        String,
        String,
        String,
        bool,
        String,
    ) = Spi::connect(|client| {
        let row = client
                .select(
                    "SELECT n.nspname::text, c.relname::text, pg_get_userbyid(c.relowner)::text, c.relkind::text, \
                            c.relpersistence::text, c.relrowsecurity, c.oid::regclass::text \
                     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
                    None,
                    &[table.into()],
                )
                .expect("pg_class")
                .first();
        (
            row.get::<String>(1).ok().flatten().unwrap_or_default(),
            row.get::<String>(2).ok().flatten().unwrap_or_default(),
            row.get::<String>(3).ok().flatten().unwrap_or_default(),
            row.get::<String>(4).ok().flatten().unwrap_or_default(),
            row.get::<String>(5).ok().flatten().unwrap_or_default(),
            row.get::<bool>(6).ok().flatten().unwrap_or_default(),
            row.get::<String>(7).ok().flatten().unwrap_or_default(),
        )
    });
    use PgSqlErrorCode::*;
    match relkind.as_str() {
        "r" if !distributed => {}
        "p" if distributed => {}
        "p" => refuse(
            ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("{display} is a partitioned table"),
            "Distribute an ordinary table: synapse partitions it by shard itself.",
        ),
        _ => refuse(
            ERRCODE_WRONG_OBJECT_TYPE,
            format!("{display} is not an ordinary table"),
            "",
        ),
    }
    match persistence.as_str() {
        "p" => {}
        "t" => refuse(
            ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("{display} is a temporary table"),
            "Temporary tables exist in one session only and cannot be distributed.",
        ),
        _ => refuse(
            ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("{display} is an unlogged table"),
            "Make it logged first: ALTER TABLE ... SET LOGGED.",
        ),
    }
    if schema == "synapse" || schema == "pg_catalog" || schema == "information_schema" {
        refuse(
            ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("{display} is a system table"),
            "",
        );
    }
    if rls {
        refuse(
            ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("{display} has row level security enabled"),
            "Row security policies are not enforced on the other nodes yet; disable it first.",
        );
    }
    let count = |sql: &str| -> i64 {
        Spi::get_one_with_args::<i64>(sql, &[table.into()])
            .ok()
            .flatten()
            .unwrap_or(0)
    };
    if !distributed
        && count("SELECT count(*) FROM pg_inherits WHERE inhrelid = $1 OR inhparent = $1") > 0
    {
        refuse(
            ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("{display} inherits from or is inherited by another table"),
            "",
        );
    }
    let fk = Spi::get_one_with_args::<String>(
        "SELECT format('%s on %s', conname, conrelid::regclass) FROM pg_constraint \
         WHERE contype = 'f' AND (conrelid = $1 OR confrelid = $1) ORDER BY conname LIMIT 1",
        &[table.into()],
    )
    .ok()
    .flatten();
    if let Some(fk) = fk {
        refuse(ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("{display} has a foreign key that cannot be kept across nodes ({fk})"),
            "Drop the foreign key first (ALTER TABLE ... DROP CONSTRAINT); foreign keys between distributed tables are not supported yet.");
    }
    let trigger = Spi::get_one_with_args::<String>(
        "SELECT tgname::text FROM pg_trigger WHERE tgrelid = $1 AND NOT tgisinternal ORDER BY tgname LIMIT 1",
        &[table.into()],
    )
    .ok()
    .flatten();
    if let Some(trigger) = trigger {
        refuse(
            ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("{display} has trigger \"{trigger}\""),
            "Triggers on distributed tables are not supported yet; drop it first.",
        );
    }

    let columns: Vec<Column> = Spi::connect(|client| {
        client
            .select(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.atttypid, a.attnotnull, \
                        CASE WHEN a.attgenerated = '' THEN pg_get_expr(d.adbin, d.adrelid) END, \
                        CASE WHEN a.attgenerated = 's' THEN pg_get_expr(d.adbin, d.adrelid) END, \
                        CASE WHEN a.attcollation <> t.typcollation THEN \
                          (SELECT format('%I.%I', cn.nspname, co.collname) FROM pg_collation co \
                           JOIN pg_namespace cn ON cn.oid = co.collnamespace WHERE co.oid = a.attcollation) END, \
                        a.attidentity <> '' \
                 FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
                 LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
                 WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
                None,
                &[table.into()],
            )
            .expect("pg_attribute")
            .map(|row| Column {
                name: row.get::<String>(1).ok().flatten().unwrap_or_default(),
                type_sql: row.get::<String>(2).ok().flatten().unwrap_or_default(),
                typid: row.get::<pg_sys::Oid>(3).ok().flatten().unwrap_or(pg_sys::InvalidOid),
                not_null: row.get::<bool>(4).ok().flatten().unwrap_or_default(),
                default: row.get::<String>(5).ok().flatten(),
                generated: row.get::<String>(6).ok().flatten(),
                collation: row.get::<String>(7).ok().flatten(),
                identity: row.get::<bool>(8).ok().flatten().unwrap_or_default(),
            })
            .collect()
    });
    for c in &columns {
        if c.identity {
            refuse(ERRCODE_FEATURE_NOT_SUPPORTED,
                format!("column \"{}\" of {display} is an identity column", c.name),
                "Identity sequences are per node, so values would repeat across nodes; use a uuid key (gen_random_uuid()) or drop the identity.");
        }
        if c.default.as_deref().is_some_and(|d| d.contains("nextval(")) {
            refuse(ERRCODE_FEATURE_NOT_SUPPORTED,
                format!("column \"{}\" of {display} takes its default from a sequence", c.name),
                "Sequences are per node, so values would repeat across nodes; use a uuid key (gen_random_uuid()) or drop the default.");
        }
    }
    let pairs = |sql: &str| -> Vec<(String, String)> {
        Spi::connect(|client| {
            client
                .select(sql, None, &[table.into()])
                .expect("catalog")
                .map(|row| {
                    (
                        row.get::<String>(1).ok().flatten().unwrap_or_default(),
                        row.get::<String>(2).ok().flatten().unwrap_or_default(),
                    )
                })
                .collect()
        })
    };
    let checks = pairs(
        "SELECT conname::text, pg_get_constraintdef(oid) FROM pg_constraint \
         WHERE conrelid = $1 AND contype = 'c' ORDER BY conname",
    );
    let keys = pairs(
        "SELECT conname::text, pg_get_constraintdef(oid) FROM pg_constraint \
         WHERE conrelid = $1 AND contype IN ('p', 'u', 'x') ORDER BY contype, conname",
    );
    let indexes = pairs(
        "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) FROM pg_index i \
         WHERE i.indrelid = $1 AND NOT EXISTS \
           (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid AND c.conrelid = i.indrelid) \
         ORDER BY 1",
    )
    .into_iter()
    // A partitioned table's own index prints as `ON ONLY`; the other nodes build it with
    // its partitions.
    .map(|(_, def)| def.replacen(" ON ONLY ", " ON ", 1))
    .collect();
    let grants = pairs(
        "SELECT a.privilege_type, format('GRANT %s ON %s TO %s%s', a.privilege_type, $1::regclass, \
                CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END, \
                CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END) \
         FROM pg_class c, aclexplode(c.relacl) a WHERE c.oid = $1 AND a.grantee <> c.relowner ORDER BY 2",
    )
    .into_iter()
    .map(|(_, g)| g)
    .collect();
    TableDef {
        schema,
        name,
        owner,
        columns,
        checks,
        keys,
        indexes,
        grants,
    }
}

/// `"schema"."name"`.
pub fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(name))
}

pub fn quote_ident(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain && !is_keyword(s) {
        s.to_owned()
    } else {
        format!("\"{}\"", s.replace('"', "\"\""))
    }
}

fn is_keyword(s: &str) -> bool {
    let c = std::ffi::CString::new(s).expect("identifier without NUL");
    // SAFETY: quote_identifier reads the C string and returns it or a palloc'd copy.
    let quoted = unsafe { std::ffi::CStr::from_ptr(pg_sys::quote_identifier(c.as_ptr())) };
    quoted.to_bytes() != s.as_bytes()
}

/// A SQL string literal.
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl TableDef {
    pub fn qualified(&self) -> String {
        qualified(&self.schema, &self.name)
    }

    /// The columns and CHECK constraints, as `CREATE TABLE <name> (...)` continues.
    pub fn column_list(&self) -> String {
        let mut items: Vec<String> = self
            .columns
            .iter()
            .map(|c| {
                let mut s = format!("{} {}", quote_ident(&c.name), c.type_sql);
                if let Some(coll) = &c.collation {
                    s.push_str(&format!(" COLLATE {coll}"));
                }
                if let Some(g) = &c.generated {
                    s.push_str(&format!(" GENERATED ALWAYS AS ({g}) STORED"));
                }
                if let Some(d) = &c.default {
                    s.push_str(&format!(" DEFAULT {d}"));
                }
                if c.not_null {
                    s.push_str(" NOT NULL");
                }
                s
            })
            .collect();
        items.extend(
            self.checks
                .iter()
                .map(|(name, def)| format!("CONSTRAINT {} {def}", quote_ident(name))),
        );
        format!("({})", items.join(", "))
    }

    /// The columns a COPY or INSERT writes (not the generated ones).
    pub fn stored_columns(&self) -> Vec<&Column> {
        self.columns
            .iter()
            .filter(|c| c.generated.is_none())
            .collect()
    }

    /// The stored columns cast to text (their output functions): how rows travel.
    pub fn stored_as_text(&self) -> String {
        self.stored_columns()
            .iter()
            .map(|c| format!("CAST({} AS text)", quote_ident(&c.name)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Statements that add the keys and indexes, give the owner and the privileges, for
    /// table `target` (already named like the original).
    pub fn finishing_statements(&self, target: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .keys
            .iter()
            .map(|(name, def)| {
                format!(
                    "ALTER TABLE {target} ADD CONSTRAINT {} {def}",
                    quote_ident(name)
                )
            })
            .collect();
        out.extend(self.indexes.iter().cloned());
        out.push(format!(
            "ALTER TABLE {target} OWNER TO {}",
            quote_ident(&self.owner)
        ));
        out.extend(self.grants.iter().cloned());
        out
    }
}
