//! The Linux swap header (`union swap_header` of linux/swap.h, as `mkswap` writes it): the only
//! proof that a partition is swap. A partition table's type code (MBR 0x82, the GPT Linux-swap
//! GUID) is a label anyone can set; it is not consulted.
//!
//! Page 0 of a swap area holds, at byte 1024, `version` (u32), `last_page` (u32), `nr_badpages`
//! (u32), the UUID and the label, and the magic `SWAPSPACE2` in its last 10 bytes. Only the
//! current format with 4 KiB pages (mkswap's default on x86-64) in the host's (little-endian)
//! byte order is recognised; the old `SWAP-SPACE` format, a header for another page size and a
//! byte-swapped header are not, and the caller reads such a partition in full.
//!
//! As a guest ([`SwapProbe`]): a partition (or a whole disk) behind a valid header drops its
//! pages 1..=`last_page` as `swap`, so the restored partition keeps its header and UUID; a
//! partition typed swap without a valid header is read in full.

use super::partition::Partition;
use super::{Droppable, Guest, Probe, Probed, Reason};
use crate::error::Result;
use crate::ranges::Ranges;
use crate::source::BlockSource;

/// The page size a recognised header is written for.
pub const PAGE: u64 = 4096;

/// Most bad pages a header can list (the `badpages` array fills the rest of the 1 KiB after the
/// fixed fields, as in linux/swap.h: `(PAGE - 1024 - 512 - 10) / 4`).
const MAX_BAD_PAGES: u64 = (PAGE - 1024 - 512 - 10) / 4;

/// A valid swap header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The last page the swap area uses: pages 1..=`last_page` are swap, page 0 is the header.
    pub last_page: u64,
}

impl Header {
    /// Parses page 0 of an area `len` bytes long; `None` unless it is a valid version-1 header
    /// with 4 KiB pages whose `last_page` lies inside the area.
    pub fn parse(page: &[u8], len: u64) -> Option<Header> {
        if page.len() < PAGE as usize || &page[PAGE as usize - 10..PAGE as usize] != b"SWAPSPACE2" {
            return None;
        }
        let u32_at = |at: usize| {
            u64::from(u32::from_le_bytes([
                page[at],
                page[at + 1],
                page[at + 2],
                page[at + 3],
            ]))
        };
        let (version, last_page, bad) = (u32_at(1024), u32_at(1028), u32_at(1032));
        // mkswap refuses areas under 10 pages; a smaller last_page is not its header.
        let fits = (last_page + 1) * PAGE <= len;
        (version == 1 && last_page >= 9 && fits && bad <= MAX_BAD_PAGES)
            .then_some(Header { last_page })
    }

    /// Reads and parses the header of the area at byte `start` of `disk`, `len` bytes long.
    ///
    /// # Errors
    /// I/O errors reading the disk.
    pub fn read(disk: &dyn BlockSource, start: u64, len: u64) -> Result<Option<Header>> {
        if len < PAGE || start + PAGE > disk.size() {
            return Ok(None);
        }
        let mut page = vec![0u8; PAGE as usize];
        disk.read_at(&mut page, start)?;
        Ok(Header::parse(&page, len))
    }

    /// The bytes of the area the kernel may use as swap, relative to its start: pages
    /// 1..=`last_page` (the header page and anything past `last_page` are not swap).
    pub fn swap_bytes(&self) -> (u64, u64) {
        (PAGE, (self.last_page + 1) * PAGE)
    }
}

/// The Linux swap probe.
#[derive(Debug, Clone, Copy)]
pub struct SwapProbe;

impl Probe for SwapProbe {
    fn name(&self) -> &'static str {
        "Linux swap"
    }

    fn probe<'a>(&self, disk: &'a dyn BlockSource, part: &Partition) -> Result<Probed<'a>> {
        Ok(match Header::read(disk, part.start, part.len)? {
            Some(header) => Probed::Found(Box::new(SwapArea {
                start: part.start,
                len: part.len,
                header,
            })),
            None if part.kind.is_swap() => {
                Probed::ReadInFull("typed Linux swap but no valid swap header: read in full".into())
            }
            None => Probed::NotMine,
        })
    }
}

/// A swap area behind a valid header.
#[derive(Debug)]
struct SwapArea {
    start: u64,
    len: u64,
    header: Header,
}

impl Guest for SwapArea {
    fn droppable(&self) -> Result<Droppable> {
        let (a, b) = self.header.swap_bytes();
        let mut summary = format!("Linux swap, {} MiB dropped", (b - a) >> 20);
        if b < self.len {
            summary.push_str(&format!(
                ", {} KiB past its last page read",
                (self.len - b) >> 10
            ));
        }
        Ok(Droppable {
            summary,
            dropped: vec![(Reason::Swap, Ranges::single(self.start + a, self.start + b))],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(version: u32, last_page: u32, bad: u32) -> Vec<u8> {
        let mut p = vec![0u8; PAGE as usize];
        p[1024..1028].copy_from_slice(&version.to_le_bytes());
        p[1028..1032].copy_from_slice(&last_page.to_le_bytes());
        p[1032..1036].copy_from_slice(&bad.to_le_bytes());
        p[PAGE as usize - 10..].copy_from_slice(b"SWAPSPACE2");
        p
    }

    #[test]
    fn only_a_valid_v1_header_inside_the_area_is_swap() {
        let len = 64 * PAGE;
        assert_eq!(
            Header::parse(&header(1, 63, 0), len),
            Some(Header { last_page: 63 })
        );
        assert_eq!(
            Header::parse(&header(1, 63, 0), len).map(|h| h.swap_bytes()),
            Some((PAGE, len))
        );
        // A shorter area than the header describes (last_page past the end).
        assert_eq!(Header::parse(&header(1, 64, 0), len), None);
        assert_eq!(Header::parse(&header(1, 63, 0), len - 1), None);
        // A smaller area inside a larger partition: only its pages are swap.
        assert_eq!(
            Header::parse(&header(1, 20, 0), len).map(|h| h.swap_bytes()),
            Some((PAGE, 21 * PAGE))
        );
        // Wrong version, byte-swapped, absurd bad-page count, too small.
        assert_eq!(Header::parse(&header(0, 63, 0), len), None);
        assert_eq!(
            Header::parse(&header(1u32.swap_bytes(), 63u32.swap_bytes(), 0), len),
            None
        );
        assert_eq!(Header::parse(&header(1, 63, 1000), len), None);
        assert_eq!(Header::parse(&header(1, 5, 0), len), None);
        // The old format's magic, and no magic.
        let mut old = header(1, 63, 0);
        old[PAGE as usize - 10..].copy_from_slice(b"SWAP-SPACE");
        assert_eq!(Header::parse(&old, len), None);
        assert_eq!(Header::parse(&vec![0u8; PAGE as usize], len), None);
        // A header written for 64 KiB pages has its magic at 65526, not 4086.
        let mut big = vec![0u8; 65536];
        big[1024..1028].copy_from_slice(&1u32.to_le_bytes());
        big[1028..1032].copy_from_slice(&63u32.to_le_bytes());
        big[65526..].copy_from_slice(b"SWAPSPACE2");
        assert_eq!(Header::parse(&big, 64 * 65536), None);
    }
}
