//! An NBD export as a [`BlockSource`]: reads are `NBD_CMD_READ` on one shared connection
//! (many in flight), [`BlockSource::allocated`] is `base:allocation` (extents flagged `HOLE`
//! or `ZERO` are never read). The same connection serves the export's dirty bitmaps to
//! [`crate::cbt::DirtyBitmap`].

use std::sync::Arc;

use super::BlockSource;
use crate::error::Result;
use crate::nbd::{Client, NbdUri, Timeouts};
use crate::ranges::Ranges;

/// An open NBD export, read-only.
#[derive(Debug)]
pub struct NbdSource {
    client: Arc<Client>,
    uri: NbdUri,
}

impl NbdSource {
    /// Connects to `uri` and negotiates `base:allocation` and `qemu:dirty-bitmap:B` for each
    /// of `bitmaps` (a bitmap the server does not offer is simply not there:
    /// [`NbdSource::has_context`]).
    ///
    /// # Errors
    /// [`crate::Error::Nbd`]: the server cannot be reached or refuses the export.
    pub fn open(uri: &NbdUri, bitmaps: &[String]) -> Result<NbdSource> {
        let mut contexts = vec![nbd::BASE_ALLOCATION.to_owned()];
        contexts.extend(
            bitmaps
                .iter()
                .map(|b| format!("{}{b}", nbd::QEMU_DIRTY_BITMAP)),
        );
        let client = Client::connect(uri, &contexts, Timeouts::default())?;
        Ok(NbdSource {
            client: Arc::new(client),
            uri: uri.clone(),
        })
    }

    /// The connection (for the dirty bitmaps it carries).
    pub fn client(&self) -> &Arc<Client> {
        &self.client
    }

    /// Whether the server agreed to meta context `name`.
    pub fn has_context(&self, name: &str) -> bool {
        self.client.info().contexts.contains_key(name)
    }
}

impl BlockSource for NbdSource {
    fn describe(&self) -> String {
        self.uri.to_string()
    }

    fn size(&self) -> u64 {
        self.client.info().size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.client.read(buf, offset)
    }

    /// `base:allocation`'s extents that are neither holes nor zeros; the whole export when the
    /// server offers no allocation context.
    fn allocated(&self) -> Result<Ranges> {
        if !self.has_context(nbd::BASE_ALLOCATION) {
            return Ok(Ranges::single(0, self.size()));
        }
        Ok(Ranges::from_unsorted(self.client.allocated()?))
    }
}
