//! Query routing: the planner hook and the paths that make a statement over distributed
//! tables return what one server holding all their rows would return (DESIGN.md, "Query
//! routing"). The levels: local and router ([`router`]: the statement needs one node's
//! shards only, and runs whole there), pushdown ([`pushdown`]: every node answers for
//! its shards, this node combines) and pull-up ([`pullup`]: rows are fetched, this node
//! does the rest).

pub mod hook;
pub mod modify;
pub mod pullup;
pub mod pushdown;
pub mod router;
pub mod shippable;
pub mod utility;

use crate::distribution::guard;
use crate::gucs;

/// Whether statements planned now are routed: not in fragments (which act on this node's
/// shards) and not in synapse's own work on shards.
pub fn routing_active() -> bool {
    !gucs::fragment() && !guard::is_bypassed()
}

/// Installs the hooks (from `_PG_init`).
pub fn install() {
    hook::install();
    pullup::install();
    utility::install();
    crate::remote::connection::install();
    crate::executor::remote_scan::register();
    crate::executor::router_scan::register();
    crate::executor::modify_scan::register();
}
