//! What a job did, for people and for scripts: [`BackupReport`] (with a [`DiskReport`] per disk),
//! [`RestoreReport`] and [`BackupTable`] (the `list` command). Each serializes as the `--json`
//! answer and prints through [`std::fmt::Display`] as the command's summary.

use std::collections::BTreeMap;
use std::fmt;

use schema::api::Manifest;
use serde::Serialize;

/// One disk in the report.
#[derive(Debug, Clone, Serialize)]
pub struct DiskReport {
    /// Name.
    pub name: String,
    /// The source read ([`crate::source::BlockSource::describe`]: an image's or device's path).
    pub path: String,
    /// Size.
    pub size: u64,
    /// Partitions and file systems found.
    pub found: Vec<String>,
    /// Whether changed-block tracking (a list or a dirty bitmap) limited what was read.
    pub cbt: bool,
    /// Why the changes given for this disk (`--cbt`) were not used and it was read in full.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cbt_unused: Option<String>,
}

/// What a backup did.
#[derive(Debug, Clone, Serialize)]
pub struct BackupReport {
    /// The committed backup.
    pub backup_id: String,
    /// Source.
    pub source: String,
    /// Base backup.
    pub base: Option<String>,
    /// Whether this run continued an interrupted one.
    pub resumed: bool,
    /// Sum of disk sizes.
    pub logical_bytes: u64,
    /// Bytes read from the disks.
    pub read_bytes: u64,
    /// Bytes not read or not sent, by reason.
    pub skipped_bytes: BTreeMap<String, u64>,
    /// Blocks looked at.
    pub blocks: u64,
    /// Index records sent.
    pub records: u64,
    /// Entries of the guest file indexes uploaded with the backup.
    pub files_indexed: u64,
    /// Seconds spent walking file systems for the file indexes and uploading them.
    pub file_index_seconds: f64,
    /// Chunks this run uploaded.
    pub chunks_uploaded: u64,
    /// Compressed bytes this run uploaded.
    pub sent_bytes: u64,
    /// Chunks the backup stored for the first time (repository's count).
    pub new_chunks: u64,
    /// Chunks the backup found already stored (repository's count).
    pub reused_chunks: u64,
    /// Bytes the backup added to the repository.
    pub stored_bytes: u64,
    /// Wall time of this run.
    pub duration_ms: u64,
    /// Peak resident memory of the mover.
    pub peak_rss_bytes: u64,
    /// Disks.
    pub disks: Vec<DiskReport>,
    /// Whether guest files were indexed (`--no-file-index` turns it off); the summary says so,
    /// the JSON answer does not carry it.
    #[serde(skip)]
    pub file_index: bool,
}

/// What a restore or verify did.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    /// Backup.
    pub backup_id: String,
    /// Disk.
    pub disk: String,
    /// Where it was written (`None` for verify).
    pub to: Option<String>,
    /// Disk size.
    pub size: u64,
    /// Blocks.
    pub blocks: u64,
    /// Blocks that are holes.
    pub holes: u64,
    /// Bytes fetched (compressed).
    pub fetched_bytes: u64,
    /// Bytes written.
    pub written_bytes: u64,
    /// Wall time.
    pub duration_ms: u64,
    /// Peak resident memory.
    pub peak_rss_bytes: u64,
}

/// Peak resident set size of this process (`VmHWM`).
pub fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kib| kib * 1024)
        .unwrap_or(0)
}

/// Bytes as the summaries show them: decimal megabytes, one decimal.
pub fn mb(b: u64) -> String {
    format!("{:.1} MB", b as f64 / 1e6)
}

impl fmt::Display for BackupReport {
    /// The `backup` command's summary, one line per fact.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self;
        writeln!(
            f,
            "backup {} of {} committed{}",
            r.backup_id,
            r.source,
            r.base
                .as_ref()
                .map(|b| format!(" (incremental over {b})"))
                .unwrap_or_default()
        )?;
        for d in &r.disks {
            let cbt = if d.cbt { ", CBT" } else { "" };
            writeln!(f, "  disk {} = {} ({}){cbt}", d.name, d.path, mb(d.size))?;
            if let Some(why) = &d.cbt_unused {
                writeln!(f, "    changes not used, read in full: {why}")?;
            }
            for found in &d.found {
                writeln!(f, "    {found}")?;
            }
        }
        let skipped: Vec<String> = r
            .skipped_bytes
            .iter()
            .map(|(k, v)| format!("{k} {}", mb(*v)))
            .collect();
        writeln!(
            f,
            "  read {} of {}; skipped {}",
            mb(r.read_bytes),
            mb(r.logical_bytes),
            skipped.join(", ")
        )?;
        writeln!(
            f,
            "  uploaded {} chunks, {} compressed; repository stored {} new chunks ({}), reused {}",
            r.chunks_uploaded,
            mb(r.sent_bytes),
            r.new_chunks,
            mb(r.stored_bytes),
            r.reused_chunks
        )?;
        if r.file_index {
            writeln!(
                f,
                "  guest files indexed: {} ({:.2} s walking and uploading, beside the data)",
                r.files_indexed, r.file_index_seconds
            )?;
        } else {
            writeln!(f, "  guest files not indexed (--no-file-index)")?;
        }
        write!(
            f,
            "  {:.2} s, peak RSS {}{}",
            r.duration_ms as f64 / 1000.0,
            mb(r.peak_rss_bytes),
            if r.resumed { ", resumed" } else { "" }
        )
    }
}

impl fmt::Display for RestoreReport {
    /// `restored disk ...` for a restore, `verified disk ...` for a verify (no `to`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self;
        match &r.to {
            Some(to) => write!(
                f,
                "restored disk {} of {} to {to}: {}, {} blocks ({} holes not fetched), every block verified, {:.2} s",
                r.disk,
                r.backup_id,
                mb(r.size),
                r.blocks,
                r.holes,
                r.duration_ms as f64 / 1000.0
            ),
            None => write!(
                f,
                "verified disk {} of {}: {} blocks ({} holes), all match their digests",
                r.disk, r.backup_id, r.blocks, r.holes
            ),
        }
    }
}

/// Backups as the `list` command prints them: a header and one row per backup.
#[derive(Debug, Clone, Copy)]
pub struct BackupTable<'a>(pub &'a [Manifest]);

impl fmt::Display for BackupTable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<28} {:<16} {:<25} {:>10} {:>10}  base",
            "backup", "source", "created", "logical", "stored"
        )?;
        for m in self.0 {
            write!(
                f,
                "\n{:<28} {:<16} {:<25} {:>10} {:>10}  {}",
                m.id.as_str(),
                m.source,
                m.created,
                mb(m.stats.logical_bytes),
                mb(m.stats.stored_bytes),
                m.base.as_ref().map(|b| b.as_str()).unwrap_or("-")
            )?;
        }
        Ok(())
    }
}

impl BackupReport {
    /// The report of committed backup `id` as its manifest `m` tells it: this run's own figures
    /// (blocks, records, uploads, file index) are zero until the caller sets them; `skipped`
    /// replaces the manifest's figures unless empty.
    pub fn from_manifest(
        id: &str,
        m: &Manifest,
        disks: Vec<DiskReport>,
        skipped: BTreeMap<String, u64>,
    ) -> BackupReport {
        BackupReport {
            backup_id: id.to_owned(),
            source: m.source.clone(),
            base: m.base.as_ref().map(|b| b.to_string()),
            resumed: false,
            logical_bytes: m.stats.logical_bytes,
            read_bytes: m.stats.read_bytes,
            skipped_bytes: if skipped.is_empty() {
                m.stats.skipped_bytes.clone()
            } else {
                skipped
            },
            blocks: 0,
            records: 0,
            files_indexed: 0,
            file_index_seconds: 0.0,
            chunks_uploaded: 0,
            sent_bytes: 0,
            new_chunks: m.stats.new_chunks,
            reused_chunks: m.stats.reused_chunks,
            stored_bytes: m.stats.stored_bytes,
            duration_ms: 0,
            peak_rss_bytes: peak_rss(),
            disks,
            file_index: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_read_as_the_command_line_printed_them() {
        let mut r = BackupReport {
            backup_id: "b2".into(),
            source: "vm".into(),
            base: Some("b1".into()),
            resumed: true,
            logical_bytes: 8_000_000,
            read_bytes: 2_000_000,
            skipped_bytes: [("free".to_owned(), 5_000_000), ("zero".to_owned(), 0)].into(),
            blocks: 8,
            records: 2,
            files_indexed: 12,
            file_index_seconds: 0.5,
            chunks_uploaded: 2,
            sent_bytes: 1_000_000,
            new_chunks: 2,
            reused_chunks: 1,
            stored_bytes: 900_000,
            duration_ms: 1500,
            peak_rss_bytes: 50_000_000,
            disks: vec![DiskReport {
                name: "disk0".into(),
                path: "/d.raw".into(),
                size: 8_000_000,
                found: vec!["p1: ext4".into()],
                cbt: true,
                cbt_unused: None,
            }],
            file_index: true,
        };
        assert_eq!(
            r.to_string(),
            "backup b2 of vm committed (incremental over b1)\n\
             \x20 disk disk0 = /d.raw (8.0 MB), CBT\n\
             \x20   p1: ext4\n\
             \x20 read 2.0 MB of 8.0 MB; skipped free 5.0 MB, zero 0.0 MB\n\
             \x20 uploaded 2 chunks, 1.0 MB compressed; repository stored 2 new chunks (0.9 MB), reused 1\n\
             \x20 guest files indexed: 12 (0.50 s walking and uploading, beside the data)\n\
             \x20 1.50 s, peak RSS 50.0 MB, resumed"
        );
        r.file_index = false;
        assert!(r
            .to_string()
            .contains("\n  guest files not indexed (--no-file-index)\n"));
        r.disks[0].cbt = false;
        r.disks[0].cbt_unused = Some("dirty bitmap b0 is not tied to base b1".into());
        assert!(r.to_string().contains(
            "\n    changes not used, read in full: dirty bitmap b0 is not tied to base b1\n"
        ));
        let mut v = RestoreReport {
            backup_id: "b2".into(),
            disk: "disk0".into(),
            to: None,
            size: 8_000_000,
            blocks: 8,
            holes: 3,
            fetched_bytes: 0,
            written_bytes: 0,
            duration_ms: 250,
            peak_rss_bytes: 0,
        };
        assert_eq!(
            v.to_string(),
            "verified disk disk0 of b2: 8 blocks (3 holes), all match their digests"
        );
        v.to = Some("/out.raw".into());
        assert_eq!(
            v.to_string(),
            "restored disk disk0 of b2 to /out.raw: 8.0 MB, 8 blocks (3 holes not fetched), every block verified, 0.25 s"
        );
    }
}
