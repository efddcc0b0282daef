//! openraft's state machine: the [`Catalog`] in memory, mirrored durably by a
//! [`CatalogSink`] (in the raft worker: the `synapse` catalog tables, written by the main
//! thread in one transaction per applied batch together with the applied log id).
//!
//! Snapshots are the serialized catalog with its applied log id and membership, kept in
//! `snapshot.json` beside the log so a lagging or new node can be sent one.

use std::future::Future;
use std::io::{self, Cursor};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::RaftStateMachine;
use openraft::{
    BasicNode, EntryPayload, OptionalSend, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
    StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};

use super::catalog::{Catalog, CatalogChange};
use super::log_store::write_json_atomic;
use super::types::{CommandResult, Entry, LogId, NodeId, StorageError, TypeConfig};

pub type Membership = StoredMembership<NodeId, BasicNode>;

/// Everything the state machine holds: the content of a snapshot, and what the sink
/// stores.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CatalogState {
    pub catalog: Catalog,
    pub last_applied: Option<LogId>,
    pub membership: Membership,
}

/// One applied batch for the sink: row changes and the state they lead to.
#[derive(Clone, Debug, PartialEq)]
pub struct AppliedBatch {
    pub last_applied: LogId,
    pub membership: Membership,
    pub changes: Vec<CatalogChange>,
}

impl AppliedBatch {
    /// Whether the batch may be written to the tables after it counts as applied: commit
    /// decisions only, which are not metadata backends read from the tables.
    pub fn written_behind(&self) -> bool {
        !self.changes.is_empty() && self.changes.iter().all(|c| !c.affects_metadata())
    }
}

/// The durable mirror of the catalog.
pub trait CatalogSink: Send + Sync + 'static {
    /// Writes a batch atomically: its changes and its applied state, or nothing.
    fn persist(&self, batch: AppliedBatch) -> impl Future<Output = io::Result<()>> + Send;
    /// Replaces the whole catalog (a snapshot was installed).
    fn replace(&self, state: CatalogState) -> impl Future<Output = io::Result<()>> + Send;
}

/// A sink that keeps nothing beyond the state machine's memory and snapshot file; for
/// tests of the Raft glue.
pub struct MemorySink;

impl CatalogSink for MemorySink {
    async fn persist(&self, _batch: AppliedBatch) -> io::Result<()> {
        Ok(())
    }
    async fn replace(&self, _state: CatalogState) -> io::Result<()> {
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: Vec<u8>,
}

struct Inner {
    state: CatalogState,
    snapshot: Option<StoredSnapshot>,
    snapshots_built: u64,
}

/// The state machine. Clones share state (the snapshot builder is a clone).
pub struct CatalogStateMachine<S> {
    inner: Arc<Mutex<Inner>>,
    sink: Arc<S>,
    snapshot_path: PathBuf,
}

impl<S> Clone for CatalogStateMachine<S> {
    fn clone(&self) -> Self {
        CatalogStateMachine {
            inner: Arc::clone(&self.inner),
            sink: Arc::clone(&self.sink),
            snapshot_path: self.snapshot_path.clone(),
        }
    }
}

impl<S: CatalogSink> CatalogStateMachine<S> {
    /// Starts from `state` (what the sink holds) and the snapshot file in `dir`, if any.
    ///
    /// The sink may lag behind the snapshot (it commits asynchronously: the Raft log, not
    /// the sink, is the durable record). When the snapshot is newer, the sink is brought
    /// up to it first, so the log entries Raft replays always follow the sink's state.
    pub async fn open(
        dir: impl Into<PathBuf>,
        mut state: CatalogState,
        sink: S,
    ) -> io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        let snapshot_path = dir.join("snapshot.json");
        let snapshot: Option<StoredSnapshot> = match std::fs::read(&snapshot_path) {
            Ok(bytes) => Some(serde_json::from_slice(&bytes).map_err(io::Error::other)?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        if let Some(snap) = &snapshot {
            if snap.meta.last_log_id > state.last_applied {
                let mut newer: CatalogState =
                    serde_json::from_slice(&snap.data).map_err(io::Error::other)?;
                newer.last_applied = snap.meta.last_log_id;
                newer.membership = snap.meta.last_membership.clone();
                sink.replace(newer.clone()).await?;
                state = newer;
            }
        }
        Ok(CatalogStateMachine {
            inner: Arc::new(Mutex::new(Inner {
                state,
                snapshot,
                snapshots_built: 0,
            })),
            sink: Arc::new(sink),
            snapshot_path,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Forgets everything: the node left its cluster (Raft is already stopped).
    pub async fn clear(&self) -> io::Result<()> {
        {
            let mut inner = self.lock();
            inner.state = CatalogState::default();
            inner.snapshot = None;
        }
        self.sink.replace(CatalogState::default()).await
    }

    /// A copy of the current state (for reads that need no Raft round trip).
    pub fn state(&self) -> CatalogState {
        self.lock().state.clone()
    }

    /// Reads the current state in place: the catalog holds every recent commit decision,
    /// so copying it whole is too costly for reads on hot paths (a peer call's membership
    /// check, following the CRL at every applied batch).
    pub fn read<R>(&self, f: impl FnOnce(&CatalogState) -> R) -> R {
        f(&self.lock().state)
    }

    fn store_snapshot(
        &self,
        snapshot: StoredSnapshot,
    ) -> Result<Snapshot<TypeConfig>, StorageError> {
        write_json_atomic(&self.snapshot_path, &snapshot)
            .map_err(|e| StorageIOError::write_snapshot(Some(snapshot.meta.signature()), &e))?;
        let result = Snapshot {
            meta: snapshot.meta.clone(),
            snapshot: Box::new(Cursor::new(snapshot.data.clone())),
        };
        self.lock().snapshot = Some(snapshot);
        Ok(result)
    }
}

impl<S: CatalogSink> RaftSnapshotBuilder<TypeConfig> for CatalogStateMachine<S> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (state, counter) = {
            let mut inner = self.lock();
            inner.snapshots_built += 1;
            (inner.state.clone(), inner.snapshots_built)
        };
        let data =
            serde_json::to_vec(&state).map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        let index = state.last_applied.map_or(0, |l| l.index);
        let meta = SnapshotMeta {
            last_log_id: state.last_applied,
            last_membership: state.membership.clone(),
            snapshot_id: format!("{index}-{counter}"),
        };
        self.store_snapshot(StoredSnapshot { meta, data })
    }
}

impl<S: CatalogSink> RaftStateMachine<TypeConfig> for CatalogStateMachine<S> {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Membership), StorageError> {
        let inner = self.lock();
        Ok((inner.state.last_applied, inner.state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let (results, batch) = {
            let mut inner = self.lock();
            let mut results = Vec::new();
            let mut changes = Vec::new();
            let mut last = None;
            for entry in entries {
                last = Some(entry.log_id);
                inner.state.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => results.push(CommandResult::Done),
                    EntryPayload::Normal(command) => {
                        let (result, mut c) =
                            inner.state.catalog.apply(entry.log_id.index, &command);
                        changes.append(&mut c);
                        results.push(result);
                    }
                    EntryPayload::Membership(m) => {
                        inner.state.membership = StoredMembership::new(Some(entry.log_id), m);
                        results.push(CommandResult::Done);
                    }
                }
            }
            let batch = last.map(|last_applied| AppliedBatch {
                last_applied,
                membership: inner.state.membership.clone(),
                changes,
            });
            (results, batch)
        };
        if let Some(batch) = batch {
            let at = batch.last_applied;
            self.sink
                .persist(batch)
                .await
                .map_err(|e| StorageIOError::apply(at, &e))?;
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let mut state: CatalogState = serde_json::from_slice(&data)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        state.last_applied = meta.last_log_id;
        state.membership = meta.last_membership.clone();
        self.sink
            .replace(state.clone())
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        self.lock().state = state;
        self.store_snapshot(StoredSnapshot {
            meta: meta.clone(),
            data,
        })?;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let inner = self.lock();
        Ok(inner.snapshot.as_ref().map(|s| Snapshot {
            meta: s.meta.clone(),
            snapshot: Box::new(Cursor::new(s.data.clone())),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::log_store::FileLogStore;
    use openraft::testing::{StoreBuilder, Suite};

    #[test]
    fn only_batches_of_decisions_are_written_behind() {
        use crate::txn::{Decision, Outcome};
        let batch = |changes| AppliedBatch {
            last_applied: LogId::default(),
            membership: Membership::default(),
            changes,
        };
        let decision = CatalogChange::UpsertDecision(Decision {
            gid: "synapse_1_2_3".into(),
            outcome: Outcome::Commit,
            coordinator: 1,
            participants: vec![],
            decided_at_unix_ms: 0,
            decided_by: "coordinator".into(),
        });
        let forget = CatalogChange::DeleteDecisions(vec!["synapse_1_2_3".into()]);
        assert!(batch(vec![decision.clone(), forget]).written_behind());
        // A membership change or a blank entry: its applied state is written first.
        assert!(!batch(vec![]).written_behind());
        assert!(!batch(vec![decision, CatalogChange::DeleteTable(7)]).written_behind());
    }

    /// Fresh stores in a new temporary directory for every sub-test of openraft's suite.
    struct Builder;

    static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    impl StoreBuilder<TypeConfig, FileLogStore, CatalogStateMachine<MemorySink>, ()> for Builder {
        async fn build(
            &self,
        ) -> Result<((), FileLogStore, CatalogStateMachine<MemorySink>), StorageError> {
            let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let dir =
                std::env::temp_dir().join(format!("synapse-raft-suite-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let log = FileLogStore::open(dir.join("log")).map_err(|e| StorageIOError::write(&e))?;
            let sm = CatalogStateMachine::open(dir.join("sm"), CatalogState::default(), MemorySink)
                .await
                .map_err(|e| StorageIOError::write(&e))?;
            Ok(((), log, sm))
        }
    }

    #[test]
    fn file_log_store_and_catalog_state_machine_pass_openraft_suite() {
        Suite::test_all(Builder).unwrap();
    }
}
