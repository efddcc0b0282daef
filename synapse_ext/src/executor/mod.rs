//! Run-time parts of distributed plans: the custom scan nodes.

pub mod common;
pub mod modify_scan;
pub mod remote_scan;
pub mod router_scan;
