//! Sessions (`sessions`), the chunks pinned to them (`pins`) and their record runs
//! (`entries`).

use rocksdb::{Direction, IteratorMode};
use schema::api::{CreateSession, SessionState};
use schema::{BackupId, ChunkId, SessionId};
use serde::{Deserialize, Serialize};

use super::{keys, Batch, Catalog, Cf, Pages, Snapshot};
use crate::error::{Error, Result};

/// A session as persisted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Id.
    pub id: SessionId,
    /// Owner tenant.
    pub tenant: String,
    /// Parameters as created (compared on repeated creation).
    pub params: CreateSession,
    /// State.
    pub state: SessionState,
    /// Creation time, Unix ms.
    pub created_ms: i64,
    /// Last persisted activity, Unix ms.
    pub last_active_ms: i64,
    /// Records held, per disk (same order as `params.disks`).
    pub entries: Vec<u64>,
    /// The backup once committed.
    pub backup_id: Option<BackupId>,
}

/// A chunk pinned to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pin {
    /// Whether this session stored the chunk for the first time.
    pub new: bool,
    /// Body bytes received for it (0 when found present by find-missing).
    pub sent: u64,
    /// Bytes this session added to the store for it.
    pub stored: u64,
}

impl Pin {
    /// The stored value: new (1) + sent (8) + stored (8), LE.
    fn encode(&self) -> [u8; 17] {
        let mut b = [0u8; 17];
        b[0] = u8::from(self.new);
        b[1..9].copy_from_slice(&self.sent.to_le_bytes());
        b[9..17].copy_from_slice(&self.stored.to_le_bytes());
        b
    }

    /// A stored value back (another length reads as the default pin).
    fn decode(b: &[u8]) -> Pin {
        if b.len() != 17 {
            return Pin::default();
        }
        Pin {
            new: b[0] == 1,
            sent: keys::parse_u64(&b[1..9]),
            stored: keys::parse_u64(&b[9..17]),
        }
    }
}

/// One `pins` row, as a paged scan returns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinRow {
    /// The session.
    pub session: SessionId,
    /// The pinned chunk.
    pub chunk: ChunkId,
}

/// One `entries` row (a run of records), as a paged scan returns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntriesRow {
    /// The session.
    pub session: SessionId,
    /// The disk's index in the session's parameters.
    pub disk: u16,
    /// The first record number of the run.
    pub start: u64,
}

impl Batch<'_> {
    /// Stores a session record.
    ///
    /// # Errors
    /// Encoding errors.
    pub fn put_session(&mut self, r: &SessionRecord) -> Result<()> {
        let v = serde_json::to_vec(r).map_err(|e| Error::internal("encoding a session", e))?;
        self.put(Cf::Sessions, r.id.0, v);
        Ok(())
    }

    /// Pins a chunk to a session.
    pub fn put_pin(&mut self, s: &SessionId, c: &ChunkId, p: Pin) {
        self.put(Cf::Pins, keys::pin(s, c), p.encode());
    }

    /// Removes one pin.
    pub fn delete_pin(&mut self, s: &SessionId, c: &ChunkId) {
        self.delete(Cf::Pins, keys::pin(s, c));
    }

    /// Appends a run of records for a disk, starting at record number `start`.
    pub fn put_entries(&mut self, s: &SessionId, disk: u16, start: u64, records: &[u8]) {
        self.put(Cf::Entries, keys::entries(s, disk, start), records);
    }

    /// Removes one run of records.
    pub fn delete_entries(&mut self, r: &EntriesRow) {
        self.delete(Cf::Entries, keys::entries(&r.session, r.disk, r.start));
    }

    /// Removes every pin and record run of a session.
    pub fn delete_session_data(&mut self, s: &SessionId) {
        let (start, end) = keys::session_range(s);
        for cf in [Cf::Pins, Cf::Entries] {
            self.wb
                .delete_range_cf(self.cat.cf(cf), start.as_slice(), end.as_slice());
        }
    }
}

impl Catalog {
    /// A session record.
    ///
    /// # Errors
    /// RocksDB or decoding errors.
    pub fn session(&self, s: &SessionId) -> Result<Option<SessionRecord>> {
        self.get_json(Cf::Sessions, s.0, "decoding a session")
    }

    /// Every session record.
    ///
    /// # Errors
    /// RocksDB or decoding errors.
    pub fn sessions(&self) -> Result<Vec<SessionRecord>> {
        let mut out = Vec::new();
        for kv in self
            .db
            .iterator_cf(self.cf(Cf::Sessions), IteratorMode::Start)
        {
            let (_, v) = kv?;
            out.push(
                serde_json::from_slice(&v).map_err(|e| Error::internal("decoding a session", e))?,
            );
        }
        Ok(out)
    }

    /// The pins among `ids` for session `s` (`None` where not pinned).
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn pins(&self, s: &SessionId, ids: &[ChunkId]) -> Result<Vec<Option<Pin>>> {
        let cf = self.cf(Cf::Pins);
        let wanted: Vec<_> = ids.iter().map(|c| (cf, keys::pin(s, c))).collect();
        self.db
            .multi_get_cf(wanted)
            .into_iter()
            .map(|r| Ok(r?.map(|v| Pin::decode(&v))))
            .collect()
    }

    /// Every pin of a session, as (chunk, pin).
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn session_pins(&self, s: &SessionId) -> Result<Vec<(ChunkId, Pin)>> {
        let mut out = Vec::new();
        for kv in self.db.iterator_cf(
            self.cf(Cf::Pins),
            IteratorMode::From(&s.0, Direction::Forward),
        ) {
            let (k, v) = kv?;
            if !k.starts_with(&s.0) {
                break;
            }
            if let Some((_, c)) = keys::parse_pin(&k) {
                out.push((c, Pin::decode(&v)));
            }
        }
        Ok(out)
    }

    /// Every pinned chunk in a snapshot (GC's roots besides the backups).
    ///
    /// # Errors
    /// RocksDB errors; errors from `f`.
    pub fn for_each_pin_in(
        &self,
        snap: &Snapshot<'_>,
        mut f: impl FnMut(ChunkId) -> Result<()>,
    ) -> Result<()> {
        for kv in snap.iterator_cf(self.cf(Cf::Pins), IteratorMode::Start) {
            let (k, _) = kv?;
            if let Some(c) = ChunkId::from_slice(&k[16.min(k.len())..]) {
                f(c)?;
            }
        }
        Ok(())
    }

    /// Every pin, `n` a page (the offline check's walk).
    pub fn pin_pages(&self, n: usize) -> Pages<'_, PinRow> {
        self.pages(Cf::Pins, n, |k, _| {
            keys::parse_pin(k).map(|(session, chunk)| PinRow { session, chunk })
        })
    }

    /// Every record run (its position, not its records), `n` a page (the offline check's walk).
    pub fn entries_pages(&self, n: usize) -> Pages<'_, EntriesRow> {
        self.pages(Cf::Entries, n, |k, _| {
            keys::parse_entries(k).map(|(session, disk, start)| EntriesRow {
                session,
                disk,
                start,
            })
        })
    }

    /// The record runs of one disk of a session, in order: (first record number, bytes).
    ///
    /// # Errors
    /// RocksDB errors.
    pub fn entries(&self, s: &SessionId, disk: u16) -> Result<Vec<(u64, Vec<u8>)>> {
        let from = keys::entries(s, disk, 0);
        let mut out = Vec::new();
        for kv in self.db.iterator_cf(
            self.cf(Cf::Entries),
            IteratorMode::From(&from, Direction::Forward),
        ) {
            let (k, v) = kv?;
            match keys::parse_entries(&k) {
                Some((ks, kd, start)) if ks == *s && kd == disk => out.push((start, v.to_vec())),
                _ => break,
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::Pin;

    /// The value layout is the on-disk format.
    #[test]
    fn pin_layout() {
        let p = Pin {
            new: true,
            sent: 5,
            stored: 6,
        };
        assert_eq!(p.encode()[..2], [1, 5]);
        assert_eq!(p.encode()[9], 6);
        assert_eq!(Pin::decode(&p.encode()), p);
        assert_eq!(Pin::decode(&[1; 3]), Pin::default());
    }
}
