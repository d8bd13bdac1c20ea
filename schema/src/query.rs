//! URL query values, shared by the repository (its `Link` headers) and the mover (its requests).

/// Percent-encodes a query value: everything but unreserved characters (RFC 3986) is `%XX`.
pub fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn encodes_reserved_bytes() {
        assert_eq!(super::encode("vm 42/a&b=é"), "vm%2042%2Fa%26b%3D%C3%A9");
        assert_eq!(super::encode("plain-name_1.x~"), "plain-name_1.x~");
    }
}
