//! Connections from this backend to the other nodes' PostgreSQL servers (the cluster-aware
//! pool): libpq over mutual TLS, waited on through the latch, cached across transactions.

pub mod connection;
pub mod pool;
