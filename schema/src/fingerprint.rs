//! The SHA-256 fingerprint of a TLS certificate, as the repository prints it at start and in
//! `/v1/capabilities`, and as `source-mover --fingerprint` pins it: `SHA256:` followed by 64
//! lowercase hex digits. Parsing also takes what people paste: upper case, colons between the
//! bytes (`openssl x509 -fingerprint -sha256` output, with or without its
//! `sha256 Fingerprint=` prefix).
//!
//! The digest itself is computed by the caller (the crate has no SHA-256); this is the format.

use std::fmt;
use std::str::FromStr;

/// A certificate's SHA-256 digest (of its DER encoding).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SHA256:")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a fingerprint does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a SHA-256 fingerprint (SHA256: and 64 hex digits, colons allowed)")]
pub struct FingerprintError(pub String);

impl FromStr for Fingerprint {
    type Err = FingerprintError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || FingerprintError(s.to_owned());
        let t = s.trim();
        let lower = t.to_ascii_lowercase();
        let hex = ["sha256 fingerprint=", "sha256:", "sha256="]
            .iter()
            .find_map(|p| lower.strip_prefix(p))
            .unwrap_or(&lower);
        let digits: Vec<u8> = hex.bytes().filter(|&c| c != b':').collect();
        if digits.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, pair) in digits.chunks(2).enumerate() {
            let pair = std::str::from_utf8(pair).map_err(|_| bad())?;
            out[i] = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
        }
        Ok(Fingerprint(out))
    }
}

impl serde::Serialize for Fingerprint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Fingerprint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_and_parses_what_people_paste() {
        let fp = Fingerprint([0xab; 32]);
        let printed = fp.to_string();
        assert_eq!(printed, format!("SHA256:{}", "ab".repeat(32)));
        assert_eq!(printed.parse::<Fingerprint>(), Ok(fp));
        let openssl = format!("sha256 Fingerprint={}", vec!["AB"; 32].join(":"));
        assert_eq!(openssl.parse::<Fingerprint>(), Ok(fp));
        assert_eq!("ab".repeat(32).parse::<Fingerprint>(), Ok(fp));
        assert!("SHA256:abc".parse::<Fingerprint>().is_err());
        assert!(format!("SHA256:{}", "zz".repeat(32))
            .parse::<Fingerprint>()
            .is_err());
        assert!(format!("SHA256:{}é", "ab".repeat(31))
            .parse::<Fingerprint>()
            .is_err());
    }
}
