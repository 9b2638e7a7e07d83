//! WatchSnapshots: the current state of the snapshots a caller names, then each change.
//!
//! One hub task per server does every read a watch needs, one at a time, so what a watcher is
//! sent never goes back in time: a registration's first read and the reads that follow changes
//! are all made in the order the hub meets them, and a change committed after a first read is
//! announced after it (the store's change feed: PostgreSQL LISTEN/NOTIFY from every replica,
//! SQLite's change log of its one process). A watcher is registered before its first read, so
//! nothing committed in between is lost.
//!
//! The feed runs only while someone watches: the first watcher starts it and waits until the
//! store answers that every change committed from then on will be reported (PostgreSQL: the
//! `LISTEN` returned) before its first read, so a change committed after the watch started is
//! either in that read or reported after it. The hub stops the feed at the first tick that
//! finds no watcher. With nobody watching, a create wakes nothing but its own caller.
//!
//! The hub reads a changed snapshot once, however many watch it (only when someone does), and
//! keeps the last state it sent of each watched snapshot: a change that changes nothing the
//! caller sees is not sent, and the progress of a running copy is computed from that state and
//! the clock each [`PROGRESS_EVERY`] (the copy's progress is a function of time, as
//! DescribeSnapshots computes it), with no read at all.
//!
//! Each watcher has a buffer of [`WATCH_BUFFER`] messages; one that does not keep up is dropped
//! by the hub and its stream ends RESOURCE_EXHAUSTED after what the buffer holds. An account
//! holds at most `--max-watches-per-account` watches at once.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::snapshots::view_of;
use super::{Service, ServiceError, SnapshotView};
use crate::backend::SnapshotBackend;
use crate::clock::Clock;
use crate::domain::{MAX_SNAPSHOT_IDS, PageCursor, SnapshotStatus, WatchQuery};
use crate::store::{ChangeFeed, FeedControl, FeedEvent, SnapshotChange, Store};

/// Messages one watcher may have waiting; past it the watcher is dropped.
pub const WATCH_BUFFER: usize = 64;

/// How often the progress of the watched copies is sent.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Registrations waiting for the hub.
const REGISTRATION_BUFFER: usize = 1024;

/// What a watcher is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// The snapshot's state now, as DescribeSnapshots shows it.
    Changed(Arc<SnapshotView>),
    /// The snapshot is gone (deleted or released); nothing more is sent about it.
    Deleted {
        snapshot_id: Arc<str>,
        disk_id: Arc<str>,
    },
}

/// The watches of one server: started by the app with the store's change feed, ended at
/// shutdown.
#[derive(Default)]
pub struct Watches {
    hub: OnceLock<HubHandle>,
    ended: CancellationToken,
}

struct HubHandle {
    registrations: mpsc::Sender<Registration>,
    max_per_account: u32,
    /// Watches open now, per account.
    open: Arc<Mutex<HashMap<String, u32>>>,
}

struct Registration {
    query: WatchQuery,
    sender: mpsc::Sender<WatchEvent>,
    overflowed: Arc<AtomicBool>,
    /// The first messages (the current state), or why they could not be read.
    reply: oneshot::Sender<Result<Vec<WatchEvent>, ServiceError>>,
}

/// One open watch: the first messages, then the hub's.
pub struct Watch {
    first: VecDeque<WatchEvent>,
    receiver: mpsc::Receiver<WatchEvent>,
    overflowed: Arc<AtomicBool>,
    ended: CancellationToken,
    done: bool,
    _slot: WatchSlot,
}

impl Watch {
    /// The next message; an error ends the watch (the buffer overflowed, the server stops).
    pub async fn next(&mut self) -> Option<Result<WatchEvent, ServiceError>> {
        if self.done {
            return None;
        }
        if let Some(event) = self.first.pop_front() {
            return Some(Ok(event));
        }
        let received = tokio::select! {
            biased;
            () = self.ended.cancelled() => None,
            received = self.receiver.recv() => received,
        };
        if let Some(event) = received {
            return Some(Ok(event));
        }
        self.done = true;
        Some(Err(if self.overflowed.load(Ordering::Acquire) {
            ServiceError::WatchTooSlow {
                buffer: WATCH_BUFFER,
            }
        } else {
            ServiceError::WatchesClosed
        }))
    }
}

/// A place among the account's open watches, given back when the watch is dropped.
struct WatchSlot {
    open: Arc<Mutex<HashMap<String, u32>>>,
    account_id: String,
}

impl WatchSlot {
    fn take(
        open: &Arc<Mutex<HashMap<String, u32>>>,
        account_id: &str,
        limit: u32,
    ) -> Result<Self, ServiceError> {
        let mut counts = open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = counts.entry(account_id.to_owned()).or_default();
        if *count >= limit {
            return Err(ServiceError::TooManyWatches {
                account_id: account_id.to_owned(),
                limit,
            });
        }
        *count += 1;
        Ok(Self {
            open: Arc::clone(open),
            account_id: account_id.to_owned(),
        })
    }
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut counts = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.account_id) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.account_id);
            }
        }
    }
}

impl Watches {
    /// Ends every open watch (UNAVAILABLE, retry elsewhere) and refuses new ones.
    pub fn end(&self) {
        self.ended.cancel();
    }
}

impl Service {
    /// Starts the hub on the store's change feed; watches are refused until it runs.
    pub fn start_watches(&self, feed: ChangeFeed, max_per_account: u32) {
        let (registrations, incoming) = mpsc::channel(REGISTRATION_BUFFER);
        let hub = Hub {
            store: Arc::clone(&self.store),
            backend: Arc::clone(&self.backend),
            clock: Arc::clone(&self.clock),
            watchers: HashMap::new(),
            next_id: 0,
            by_snapshot: HashMap::new(),
            by_disk: HashMap::new(),
            known: HashMap::new(),
            resync: false,
            feed_control: feed.control,
            following: false,
        };
        let handle = HubHandle {
            registrations,
            max_per_account,
            open: Arc::default(),
        };
        if self.watches.hub.set(handle).is_ok() {
            tokio::spawn(hub.run(feed.events, incoming, self.watches.ended.clone()));
        }
    }

    /// Ends every open watch and refuses new ones (at shutdown).
    pub fn end_watches(&self) {
        self.watches.end();
    }

    /// Watches open now, over all accounts.
    pub fn open_watches(&self) -> u32 {
        self.watches.hub.get().map_or(0, |hub| {
            hub.open
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .values()
                .sum()
        })
    }

    /// Opens a watch: the matching snapshots' state now, then their changes.
    pub async fn watch_snapshots(&self, query: WatchQuery) -> Result<Watch, ServiceError> {
        let Some(hub) = self.watches.hub.get() else {
            return Err(ServiceError::WatchesClosed);
        };
        if self.watches.ended.is_cancelled() {
            return Err(ServiceError::WatchesClosed);
        }
        let slot = WatchSlot::take(&hub.open, &query.account_id, hub.max_per_account)?;
        let (sender, receiver) = mpsc::channel(WATCH_BUFFER);
        let overflowed = Arc::new(AtomicBool::new(false));
        let (reply, first) = oneshot::channel();
        let registration = Registration {
            query,
            sender,
            overflowed: Arc::clone(&overflowed),
            reply,
        };
        if hub.registrations.send(registration).await.is_err() {
            return Err(ServiceError::WatchesClosed);
        }
        let first = first.await.map_err(|_| ServiceError::WatchesClosed)??;
        Ok(Watch {
            first: first.into(),
            receiver,
            overflowed,
            ended: self.watches.ended.clone(),
            done: false,
            _slot: slot,
        })
    }
}

struct Watcher {
    query: WatchQuery,
    sender: mpsc::Sender<WatchEvent>,
    overflowed: Arc<AtomicBool>,
}

/// What the hub task owns: the watchers, their indexes, and the last state sent of each
/// watched snapshot.
struct Hub {
    store: Arc<dyn Store>,
    backend: Arc<dyn SnapshotBackend>,
    clock: Arc<dyn Clock>,
    watchers: HashMap<u64, Watcher>,
    next_id: u64,
    /// Watchers by the snapshot ids they name.
    by_snapshot: HashMap<String, Vec<u64>>,
    /// Watchers of a whole disk (no ids named), by disk id.
    by_disk: HashMap<String, Vec<u64>>,
    /// The last state sent of each watched snapshot.
    known: HashMap<String, Arc<SnapshotView>>,
    /// A read after a change failed: everything watched is read again at the next tick.
    resync: bool,
    /// Starts and stops the store's change feed.
    feed_control: mpsc::UnboundedSender<FeedControl>,
    /// Whether the feed was started (and not stopped since).
    following: bool,
}

impl Hub {
    async fn run(
        mut self,
        mut feed: mpsc::Receiver<FeedEvent>,
        mut registrations: mpsc::Receiver<Registration>,
        ended: CancellationToken,
    ) {
        let mut ticks = tokio::time::interval(PROGRESS_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = ended.cancelled() => return,
                Some(registration) = registrations.recv() => self.register(registration, &mut feed).await,
                event = feed.recv() => {
                    let Some(event) = event else {
                        tracing::error!("the snapshot change feed ended: watches see no more changes");
                        return;
                    };
                    // What piled up while the hub was busy is read together.
                    let mut changes = HashMap::new();
                    let mut resumed = false;
                    for event in std::iter::once(event).chain(std::iter::from_fn(|| feed.try_recv().ok())) {
                        match event {
                            FeedEvent::Changed(batch) => {
                                for change in batch {
                                    changes.insert(change.snapshot_id.clone(), change);
                                }
                            }
                            FeedEvent::Resumed => resumed = true,
                        }
                    }
                    if resumed {
                        self.resync().await;
                    } else {
                        self.changed(changes.into_values().collect()).await;
                    }
                }
                _ = ticks.tick() => self.tick().await,
            }
        }
    }

    /// Starts the feed if it is not (nobody watched until now), and waits until it reports
    /// every change committed from then on. What it reported before is dropped: it concerned
    /// nobody, as a watcher is added only after this.
    async fn follow(&mut self, feed: &mut mpsc::Receiver<FeedEvent>) -> Result<(), ServiceError> {
        if self.following {
            return Ok(());
        }
        let (answer, answered) = oneshot::channel();
        self.feed_control
            .send(FeedControl::Start(answer))
            .map_err(|_| ServiceError::WatchesClosed)?;
        // The feed may be waiting for room to send what it reported before it saw the start.
        let answered = async {
            tokio::pin!(answered);
            loop {
                tokio::select! {
                    answer = &mut answered => return answer,
                    Some(_) = feed.recv() => {}
                }
            }
        };
        answered.await.map_err(|_| ServiceError::WatchesClosed)??;
        self.following = true;
        Ok(())
    }

    /// Stops the feed when nobody watches any more.
    fn unfollow_if_unwatched(&mut self) {
        if self.following && self.watchers.is_empty() {
            self.following = false;
            self.resync = false;
            self.known.clear();
            // A feed that is gone has stopped already.
            let _ = self.feed_control.send(FeedControl::Stop);
        }
    }

    /// Reads the watch's snapshots, answers them as its first messages, then adds the watcher.
    async fn register(&mut self, registration: Registration, feed: &mut mpsc::Receiver<FeedEvent>) {
        let Registration {
            query,
            sender,
            overflowed,
            reply,
        } = registration;
        if let Err(err) = self.follow(feed).await {
            let _ = reply.send(Err(err));
            return;
        }
        let views = match self.read_query(&query).await {
            Ok(views) => views,
            Err(err) => {
                let _ = reply.send(Err(err));
                return;
            }
        };
        // A state newer than what the other watchers were sent is theirs too.
        for view in &views {
            self.publish(Arc::clone(view));
        }
        let first = views.into_iter().map(WatchEvent::Changed).collect();
        if reply.send(Ok(first)).is_err() {
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        if query.snapshot_ids.is_empty() {
            let disk = query.disk_id.clone().expect("a watch names ids or a disk");
            self.by_disk.entry(disk).or_default().push(id);
        } else {
            for snapshot_id in &query.snapshot_ids {
                self.by_snapshot
                    .entry(snapshot_id.clone())
                    .or_default()
                    .push(id);
            }
        }
        self.watchers.insert(
            id,
            Watcher {
                query,
                sender,
                overflowed,
            },
        );
    }

    /// Every snapshot `query` matches now, page by page.
    async fn read_query(&self, query: &WatchQuery) -> Result<Vec<Arc<SnapshotView>>, ServiceError> {
        let mut views = Vec::new();
        let mut after: Option<PageCursor> = None;
        loop {
            let page = {
                let mut read = self.store.read().await?;
                let page = read.describe_snapshots(&query.page(after)).await?;
                read.commit().await?;
                page
            };
            let now = self.clock.now();
            for snapshot in page.snapshots {
                views.push(Arc::new(
                    view_of(self.backend.as_ref(), snapshot, now).await,
                ));
            }
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(views),
            }
        }
    }

    /// The watchers a change to this snapshot concerns.
    fn interested(&self, account_id: &str, disk_id: &str, snapshot_id: &str) -> Vec<u64> {
        let by_id = self.by_snapshot.get(snapshot_id).into_iter().flatten();
        let by_disk = self.by_disk.get(disk_id).into_iter().flatten();
        by_id
            .chain(by_disk)
            .copied()
            .filter(|id| {
                self.watchers
                    .get(id)
                    .is_some_and(|w| w.query.matches(account_id, disk_id, snapshot_id))
            })
            .collect()
    }

    /// Reads the changed snapshots someone watches and tells their watchers.
    async fn changed(&mut self, changes: Vec<SnapshotChange>) {
        let watched: Vec<SnapshotChange> = changes
            .into_iter()
            .filter(|c| {
                !self
                    .interested(&c.account_id, &c.disk_id, &c.snapshot_id)
                    .is_empty()
            })
            .collect();
        if watched.is_empty() {
            return;
        }
        match self.read_ids(&watched).await {
            Ok(found) => self.apply(&watched, found),
            Err(err) => {
                tracing::warn!(error = %err, "reading changed snapshots for their watchers failed; reading again");
                self.resync = true;
            }
        }
    }

    /// The snapshots of `changes` that still exist, read per account in pages of ids.
    async fn read_ids(
        &self,
        changes: &[SnapshotChange],
    ) -> Result<Vec<Arc<SnapshotView>>, ServiceError> {
        let mut by_account: HashMap<&str, Vec<&str>> = HashMap::new();
        for change in changes {
            by_account
                .entry(&change.account_id)
                .or_default()
                .push(&change.snapshot_id);
        }
        let mut found = Vec::new();
        for (account_id, ids) in by_account {
            for chunk in ids.chunks(MAX_SNAPSHOT_IDS) {
                let mut snapshot_ids: Vec<String> =
                    chunk.iter().map(|id| (*id).to_owned()).collect();
                snapshot_ids.sort_unstable();
                let query = WatchQuery {
                    account_id: account_id.to_owned(),
                    disk_id: None,
                    snapshot_ids,
                };
                found.extend(self.read_query(&query).await?);
            }
        }
        Ok(found)
    }

    /// Tells the watchers of `changes` their new state: what `found` holds, or gone.
    fn apply(&mut self, changes: &[SnapshotChange], found: Vec<Arc<SnapshotView>>) {
        let present: HashSet<String> = found
            .iter()
            .map(|view| view.snapshot.snapshot_id.clone())
            .collect();
        for view in found {
            self.publish(view);
        }
        for change in changes {
            if !present.contains(&change.snapshot_id) {
                self.gone(&change.account_id, &change.disk_id, &change.snapshot_id);
            }
        }
    }

    /// Sends `view` to its watchers unless it is what they were last sent.
    fn publish(&mut self, view: Arc<SnapshotView>) {
        let snapshot = &view.snapshot;
        if self.known.get(&snapshot.snapshot_id) == Some(&view) {
            return;
        }
        let watchers = self.interested(
            &snapshot.account_id,
            &snapshot.source_disk_id,
            &snapshot.snapshot_id,
        );
        self.send(&watchers, &WatchEvent::Changed(Arc::clone(&view)));
        self.known.insert(snapshot.snapshot_id.clone(), view);
    }

    /// Tells the watchers of a snapshot they were sent that it is gone.
    fn gone(&mut self, account_id: &str, disk_id: &str, snapshot_id: &str) {
        if self.known.remove(snapshot_id).is_none() {
            // Created and gone between two reads: nobody was told it existed.
            return;
        }
        let watchers = self.interested(account_id, disk_id, snapshot_id);
        let event = WatchEvent::Deleted {
            snapshot_id: snapshot_id.into(),
            disk_id: disk_id.into(),
        };
        self.send(&watchers, &event);
    }

    /// Queues `event` for each watcher; one whose buffer is full is dropped (its stream ends
    /// RESOURCE_EXHAUSTED), one that hung up is forgotten.
    fn send(&mut self, watchers: &[u64], event: &WatchEvent) {
        for id in watchers {
            let Some(watcher) = self.watchers.get(id) else {
                continue;
            };
            match watcher.sender.try_send(event.clone()) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    watcher.overflowed.store(true, Ordering::Release);
                    self.remove(*id);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => self.remove(*id),
            }
        }
    }

    fn remove(&mut self, id: u64) {
        let Some(watcher) = self.watchers.remove(&id) else {
            return;
        };
        let unindex = |index: &mut HashMap<String, Vec<u64>>, key: &str| {
            if let Some(ids) = index.get_mut(key) {
                ids.retain(|other| *other != id);
                if ids.is_empty() {
                    index.remove(key);
                }
            }
        };
        if watcher.query.snapshot_ids.is_empty() {
            if let Some(disk) = &watcher.query.disk_id {
                unindex(&mut self.by_disk, disk);
            }
        } else {
            for snapshot_id in &watcher.query.snapshot_ids {
                unindex(&mut self.by_snapshot, snapshot_id);
            }
        }
    }

    /// Progress of the watched copies, computed from their last state and the clock; the
    /// watchers that hung up are forgotten, and so are the snapshots nobody watches.
    async fn tick(&mut self) {
        let hung_up: Vec<u64> = self
            .watchers
            .iter()
            .filter(|(_, watcher)| watcher.sender.is_closed())
            .map(|(id, _)| *id)
            .collect();
        for id in hung_up {
            self.remove(id);
        }
        self.unfollow_if_unwatched();
        self.known.retain(|snapshot_id, view| {
            self.by_snapshot.contains_key(snapshot_id)
                || self.by_disk.contains_key(&view.snapshot.source_disk_id)
        });
        if std::mem::take(&mut self.resync) {
            self.resync().await;
            return;
        }
        let now = self.clock.now();
        let copying: Vec<Arc<SnapshotView>> = self
            .known
            .values()
            .filter(|view| view.snapshot.status == SnapshotStatus::Progressing)
            .cloned()
            .collect();
        for view in copying {
            let fresh = view_of(self.backend.as_ref(), view.snapshot.clone(), now).await;
            if fresh != *view {
                self.publish(Arc::new(fresh));
            }
        }
    }

    /// Reads everything watched again (the feed may have missed changes): each watched disk
    /// and each snapshot sent, telling the watchers what changed meanwhile.
    async fn resync(&mut self) {
        let mut changes: HashMap<String, SnapshotChange> = self
            .known
            .values()
            .map(|view| {
                let snapshot = &view.snapshot;
                (
                    snapshot.snapshot_id.clone(),
                    SnapshotChange {
                        snapshot_id: snapshot.snapshot_id.clone(),
                        disk_id: snapshot.source_disk_id.clone(),
                        account_id: snapshot.account_id.clone(),
                    },
                )
            })
            .collect();
        let disks: HashSet<(String, String)> = self
            .by_disk
            .values()
            .flatten()
            .filter_map(|id| self.watchers.get(id))
            .filter_map(|w| Some((w.query.account_id.clone(), w.query.disk_id.clone()?)))
            .collect();
        let mut found = Vec::new();
        let read = async {
            for (account_id, disk_id) in disks {
                let query = WatchQuery {
                    account_id,
                    disk_id: Some(disk_id),
                    snapshot_ids: Vec::new(),
                };
                found.extend(self.read_query(&query).await?);
            }
            let by_id: Vec<SnapshotChange> = changes.values().cloned().collect();
            found.extend(self.read_ids(&by_id).await?);
            Ok::<_, ServiceError>(())
        };
        if let Err(err) = read.await {
            tracing::warn!(error = %err, "reading the watched snapshots again failed; trying at the next tick");
            self.resync = true;
            return;
        }
        for view in &found {
            let snapshot = &view.snapshot;
            changes
                .entry(snapshot.snapshot_id.clone())
                .or_insert_with(|| SnapshotChange {
                    snapshot_id: snapshot.snapshot_id.clone(),
                    disk_id: snapshot.source_disk_id.clone(),
                    account_id: snapshot.account_id.clone(),
                });
        }
        let changes: Vec<SnapshotChange> = changes.into_values().collect();
        self.apply(&changes, found);
    }
}
