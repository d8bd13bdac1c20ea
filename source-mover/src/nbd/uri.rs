//! NBD URIs as the NBD project's `doc/uri.md` spells them (and `qemu-img`, `nbdinfo` and
//! `nbdcopy` take them): `nbd://HOST[:PORT]/EXPORT` over TCP (port 10809 when left out) and
//! `nbd+unix:///EXPORT?socket=PATH` over a Unix socket. TLS forms (`nbds://`) are refused.

use std::fmt;
use std::path::PathBuf;

use crate::error::{Error, Result};

/// The NBD port when a URI names none.
pub const DEFAULT_PORT: u16 = 10809;

/// Where an NBD server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// TCP: host (a name, an IPv4 address or a bracketed IPv6 address without brackets) and port.
    Tcp { host: String, port: u16 },
    /// A Unix socket.
    Unix(PathBuf),
}

/// An NBD export: where its server listens and the export's name (may be empty: the default
/// export).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdUri {
    /// The server.
    pub address: Address,
    /// The export name.
    pub export: String,
    /// The URI as given, for messages and the resume journal's key.
    text: String,
}

impl NbdUri {
    /// Whether `s` is meant as an NBD URI (starts with an NBD scheme), valid or not.
    pub fn looks_like(s: &str) -> bool {
        s.starts_with("nbd:") || s.starts_with("nbd+") || s.starts_with("nbds")
    }

    /// Parses `nbd://HOST[:PORT]/EXPORT` or `nbd+unix:///EXPORT?socket=PATH`.
    ///
    /// # Errors
    /// [`Error::Invalid`] saying what is wrong and which forms are accepted.
    pub fn parse(s: &str) -> Result<NbdUri> {
        let bad = |why: &str| {
            Error::Invalid(format!(
                "{s:?}: {why}; an NBD disk is nbd://HOST[:PORT]/EXPORT or nbd+unix:///EXPORT?socket=PATH"
            ))
        };
        let (scheme, rest) = s.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let export = percent_decode(path).ok_or_else(|| bad("bad %-escape in the export name"))?;
        let address = match scheme {
            "nbd" => {
                if query.is_some_and(|q| !q.is_empty()) {
                    return Err(bad("nbd:// takes no query"));
                }
                let (host, port) =
                    split_host_port(authority).ok_or_else(|| bad("bad host or port"))?;
                if host.is_empty() {
                    return Err(bad("no host"));
                }
                Address::Tcp { host, port }
            }
            "nbd+unix" => {
                if !authority.is_empty() {
                    return Err(bad(
                        "nbd+unix:// takes no host (three slashes: nbd+unix:///EXPORT)",
                    ));
                }
                let mut socket = None;
                for kv in query.unwrap_or("").split('&').filter(|kv| !kv.is_empty()) {
                    match kv.split_once('=') {
                        Some(("socket", v)) => {
                            socket = Some(
                                percent_decode(v)
                                    .ok_or_else(|| bad("bad %-escape in the socket path"))?,
                            )
                        }
                        _ => return Err(bad(&format!("unknown query parameter {kv:?}"))),
                    }
                }
                let socket = socket
                    .filter(|p| !p.is_empty())
                    .ok_or_else(|| bad("no ?socket=PATH"))?;
                Address::Unix(PathBuf::from(socket))
            }
            "nbds" | "nbds+unix" => return Err(bad("TLS (nbds) is not supported")),
            other => return Err(bad(&format!("unknown scheme {other:?}"))),
        };
        Ok(NbdUri {
            address,
            export,
            text: s.to_owned(),
        })
    }
}

impl fmt::Display for NbdUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// `HOST`, `HOST:PORT`, `[V6]` or `[V6]:PORT`.
fn split_host_port(a: &str) -> Option<(String, u16)> {
    let (host, port) = if let Some(rest) = a.strip_prefix('[') {
        let (h, tail) = rest.split_once(']')?;
        match tail {
            "" => (h, None),
            t => (h, Some(t.strip_prefix(':')?)),
        }
    } else {
        match a.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (a, None),
        }
    };
    let port = match port {
        Some(p) => p.parse().ok().filter(|&p| p != 0)?,
        None => DEFAULT_PORT,
    };
    Some((host.to_owned(), port))
}

/// Decodes `%XX` escapes; `None` for a bad escape or bytes that are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_forms_parse() {
        let u = NbdUri::parse("nbd://127.0.0.1:10810/vm%20disk").expect("tcp");
        assert_eq!(
            u.address,
            Address::Tcp {
                host: "127.0.0.1".into(),
                port: 10810
            }
        );
        assert_eq!(u.export, "vm disk");
        assert_eq!(u.to_string(), "nbd://127.0.0.1:10810/vm%20disk");
        let u = NbdUri::parse("nbd://host").expect("default port and export");
        assert_eq!(
            u.address,
            Address::Tcp {
                host: "host".into(),
                port: DEFAULT_PORT
            }
        );
        assert_eq!(u.export, "");
        let u = NbdUri::parse("nbd://[::1]:1234/e").expect("v6");
        assert_eq!(
            u.address,
            Address::Tcp {
                host: "::1".into(),
                port: 1234
            }
        );
        let u = NbdUri::parse("nbd+unix:///vm?socket=/run/a%2Bb.sock").expect("unix");
        assert_eq!(u.address, Address::Unix("/run/a+b.sock".into()));
        assert_eq!(u.export, "vm");
        let u = NbdUri::parse("nbd+unix://?socket=/s").expect("unix, default export");
        assert_eq!(u.export, "");
    }

    #[test]
    fn bad_forms_say_what_is_wrong() {
        for (s, why) in [
            ("nbd+unix:///vm", "socket"),
            ("nbd+unix://host/vm?socket=/s", "no host"),
            ("nbd://:10809/vm", "no host"),
            ("nbd://h:99999/vm", "port"),
            ("nbds://h/vm", "TLS"),
            ("nbd+unix:///vm?socket=/s&x=1", "unknown query"),
            ("nbd://h/%zz", "escape"),
            ("http://h/vm", "scheme"),
        ] {
            let e = NbdUri::parse(s).expect_err(s).to_string();
            assert!(e.contains(why), "{s}: {e}");
        }
        assert!(NbdUri::looks_like("nbd+unix:///x") && !NbdUri::looks_like("/var/x.raw"));
    }
}
