//! The guest file catalog from the command line (`source-mover files ls|get|search`): the same
//! answers as `GET /v1/backups/{id}/files`, `.../files/content` and `GET /v1/search`, with
//! `latest` resolved, search pages followed, and listings printed like `ls -l`. An encrypted
//! backup's catalog is sealed: with its key these answer from [`sealed`] instead.

use std::fmt;
use std::path::Path;

use schema::api::{FileListing, SearchHit, SearchResults};
use schema::files::FileKind;
use schema::query::encode;

use std::sync::Arc;

use crate::client::RepoClient;
use crate::error::{Error, Result};
use crate::key::MasterKey;
use crate::restore::resolve;

pub mod sealed;

/// Which file system of a backup: by default the first indexed one of the first indexed disk.
#[derive(Debug, Clone, Default)]
pub struct FileSystem {
    /// Disk name.
    pub disk: Option<String>,
    /// Partition number (0: a file system on the whole disk).
    pub partition: Option<u32>,
}

impl FileSystem {
    fn query(&self) -> String {
        let mut q = String::new();
        if let Some(d) = &self.disk {
            q.push_str(&format!("&disk={}", encode(d)));
        }
        if let Some(p) = self.partition {
            q.push_str(&format!("&partition={p}"));
        }
        q
    }
}

/// Lists `path` of backup `backup` (an id, or `latest` of `source`) down to `depth` levels.
///
/// # Errors
/// No such backup or path, or repository errors.
pub async fn list(
    client: &RepoClient,
    backup: &str,
    source: Option<&str>,
    path: &str,
    depth: u32,
    fs: &FileSystem,
    key: Option<&Arc<MasterKey>>,
) -> Result<FileListing> {
    let m = resolve(client, backup, source).await?;
    if m.key_id().is_some() {
        crate::restore::check_key(&m, key.map(|k| &**k))?;
        if let Some(k) = key {
            let all = sealed::load(client, &m, k).await?;
            return sealed::list(&m, &all, fs, path, depth);
        }
    }
    client.files(&m.id, path, depth, &fs.query()).await
}

/// Streams file `path` of backup `backup` into `out`; returns its length.
///
/// # Errors
/// No such backup or file, an excluded file (409), a write error, or repository errors.
pub async fn get(
    client: &RepoClient,
    backup: &str,
    source: Option<&str>,
    path: &str,
    fs: &FileSystem,
    key: Option<&Arc<MasterKey>>,
    out: &mut (dyn std::io::Write + Send),
) -> Result<u64> {
    let m = resolve(client, backup, source).await?;
    if m.key_id().is_some() {
        crate::restore::check_key(&m, key.map(|k| &**k))?;
        if let Some(k) = key {
            let all = sealed::load(client, &m, k).await?;
            return sealed::get(client, &m, &all, fs, path, k, out).await;
        }
    }
    client.file_content(&m.id, path, &fs.query(), out).await
}

/// Writes file `path` of backup `backup` to the file `to`, or to standard output. A file is
/// written beside its name (`NAME.part`) and made durable under the name once complete
/// ([`stdx::durable::persist`]): a failed fetch never leaves a truncated file under the
/// asked-for name.
///
/// # Errors
/// See [`get`]; the output cannot be created, written or renamed.
pub async fn get_to(
    client: &RepoClient,
    backup: &str,
    source: Option<&str>,
    path: &str,
    fs: &FileSystem,
    to: Option<&Path>,
    key: Option<&Arc<MasterKey>>,
) -> Result<u64> {
    let Some(to) = to else {
        let mut stdout = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout());
        let n = get(client, backup, source, path, fs, key, &mut stdout).await?;
        std::io::Write::flush(&mut stdout).map_err(|e| Error::io("standard output", e))?;
        return Ok(n);
    };
    let part = to.with_extension("part");
    let mut file = std::fs::File::create(&part)
        .map_err(|e| Error::io(format!("cannot create {}", part.display()), e))?;
    match get(client, backup, source, path, fs, key, &mut file).await {
        Ok(n) => {
            stdx::durable::persist(file, &part, to).map_err(|e| {
                Error::io(
                    format!("cannot rename {} to {}", part.display(), to.display()),
                    e,
                )
            })?;
            Ok(n)
        }
        Err(e) => {
            drop(file);
            let _ = std::fs::remove_file(&part);
            Err(e)
        }
    }
}

/// What to search for.
#[derive(Debug, Clone, Default)]
pub struct Search {
    /// Glob on the file name (`*`, `?`).
    pub name: String,
    /// Only under this directory.
    pub path: Option<String>,
    /// Only backups of this source.
    pub source: Option<String>,
    /// Only backups created at or after (RFC 3339).
    pub since: Option<String>,
    /// Only backups created before (RFC 3339).
    pub until: Option<String>,
}

/// Searches, following pages until `max` results; newest backup first. With a key, searches
/// the encrypted backups of that key instead, through the mover ([`sealed::search`]).
///
/// # Errors
/// A malformed query (400), or repository errors.
pub async fn search(
    client: &RepoClient,
    s: &Search,
    max: usize,
    key: Option<&Arc<MasterKey>>,
) -> Result<SearchResults> {
    if let Some(k) = key {
        return sealed::search(client, k, s, max).await;
    }
    let mut q = format!("name={}", encode(&s.name));
    for (k, v) in [
        ("path", &s.path),
        ("source", &s.source),
        ("since", &s.since),
        ("until", &s.until),
    ] {
        if let Some(v) = v {
            q.push_str(&format!("&{k}={}", encode(v)));
        }
    }
    let mut all: Option<SearchResults> = None;
    let mut after = 0usize;
    loop {
        let page = (max - all.as_ref().map_or(0, |a| a.results.len())).min(1000);
        let r = client.search(&q, page, after).await?;
        let next = r.next;
        match &mut all {
            None => all = Some(r),
            Some(a) => a.results.extend(r.results),
        }
        let have = all.as_ref().map_or(0, |a| a.results.len());
        match next {
            Some(n) if have < max => after = n,
            _ => break,
        }
    }
    let mut all = all.expect("the loop runs at least once");
    all.next = (all.results.len() < all.total).then_some(all.results.len());
    Ok(all)
}

/// A listing as `files ls` prints it (see [`format_listing`]).
#[derive(Debug, Clone, Copy)]
pub struct Listing<'a>(pub &'a FileListing);

impl fmt::Display for Listing<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_listing(self.0))
    }
}

/// Search results as `files search` prints them: one line per hit (see [`format_hit`]).
#[derive(Debug, Clone, Copy)]
pub struct Hits<'a>(pub &'a SearchResults);

impl fmt::Display for Hits<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for h in &self.0.results {
            writeln!(f, "{}", format_hit(h))?;
        }
        Ok(())
    }
}

impl Hits<'_> {
    /// The count line printed on stderr after the hits.
    pub fn summary(&self) -> String {
        let r = self.0;
        format!(
            "{} of {} matches shown{}",
            r.results.len(),
            r.total,
            if r.truncated {
                " (the scan stopped at its limit; narrow the name)"
            } else {
                ""
            }
        )
    }
}

/// `ls -l`-style lines: mode, uid, gid, size, mtime, path (`-> excluded` marked).
pub fn format_listing(l: &FileListing) -> String {
    let mut out = String::new();
    for e in &l.entries {
        let mode = u32::from_str_radix(&e.mode, 8).unwrap_or(0);
        out.push_str(&format!(
            "{}{} {:>5} {:>5} {:>12} {} {}{}\n",
            kind_char(e.kind),
            permissions(mode),
            e.uid,
            e.gid,
            e.size,
            e.mtime,
            e.path,
            if e.excluded { "  (excluded)" } else { "" }
        ));
    }
    if l.truncated {
        out.push_str("... (truncated: more entries than the listing limit)\n");
    }
    out
}

/// One line per search result.
pub fn format_hit(h: &SearchHit) -> String {
    format!(
        "{}  {:<16} {}  {}:{}  {}  {} bytes  mtime {}",
        h.created, h.source, h.backup, h.disk, h.partition, h.path, h.size, h.mtime
    )
}

fn kind_char(k: FileKind) -> char {
    match k {
        FileKind::File => '-',
        FileKind::Dir => 'd',
        FileKind::Symlink => 'l',
        FileKind::Other => '?',
    }
}

/// `rwxr-xr-x` with setuid/setgid/sticky as `ls` shows them.
fn permissions(mode: u32) -> String {
    let mut s: Vec<char> = "rwxrwxrwx"
        .chars()
        .enumerate()
        .map(|(i, c)| if mode & (0o400 >> i) != 0 { c } else { '-' })
        .collect();
    for (bit, at, set) in [(0o4000, 2, 's'), (0o2000, 5, 's'), (0o1000, 8, 't')] {
        if mode & bit != 0 {
            s[at] = if s[at] == '-' {
                set.to_ascii_uppercase()
            } else {
                set
            };
        }
    }
    s.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::permissions;

    #[test]
    fn permissions_read_like_ls() {
        assert_eq!(permissions(0o100644), "rw-r--r--");
        assert_eq!(permissions(0o40755), "rwxr-xr-x");
        assert_eq!(permissions(0o104755), "rwsr-xr-x");
        assert_eq!(permissions(0o41777), "rwxrwxrwt");
        assert_eq!(permissions(0o102640), "rw-r-S---");
    }
}
