//! Run-time parts of distributed plans: the custom scan nodes.

pub mod remote_scan;
