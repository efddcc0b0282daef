//! Distributed and reference tables on the PostgreSQL side: shard keys and their operator
//! classes, the table definitions sent to other nodes, the operations that (un)distribute
//! tables, COPY into them, sizes per node, and the planner guard that keeps partial
//! answers out.

pub mod copy_from;
pub mod ddl;
pub mod guard;
pub mod metadata;
pub mod operations;
pub mod pins;
pub mod shard_key;
pub mod stats;
