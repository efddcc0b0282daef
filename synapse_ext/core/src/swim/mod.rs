//! SWIM failure detection and membership gossip (Das, Gupta, Motivala 2002) with the
//! Lifeguard refinements (Dadgar et al. 2018), as used by HashiCorp's memberlist.
//!
//! [`node::Swim`] is the protocol as a pure state machine: packets and clock readings go
//! in, packets to send and the time of its next timer come out. It has no I/O and no clock
//! of its own, so the same code runs in the gossip worker and in simulated networks with
//! simulated time (`tests/swim_sim.rs`). [`wire`] turns messages into authenticated UDP
//! datagrams and back.

pub mod broadcast;
pub mod node;
pub mod service;
pub mod wire;

pub use node::{Config, Event, Member, Message, Partition, State, Swim, Update};
