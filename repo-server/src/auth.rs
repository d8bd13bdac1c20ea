//! Bearer tokens → (tenant, role).
//!
//! Tokens are looked up by their blake3 hash, so the table never compares secrets byte by byte
//! with early exit.

use std::collections::HashMap;
use std::path::Path;

use schema::ErrorCode;

use crate::config::{Role, TokenConfig};
use crate::error::{Error, Result};

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Tenant the token acts for.
    pub tenant: String,
    /// What it may do.
    pub role: Role,
}

impl Caller {
    /// Admins see every tenant.
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// Whether the caller may see an object of `tenant`.
    pub fn sees(&self, tenant: &str) -> bool {
        self.is_admin() || self.tenant == tenant
    }

    /// Requires the `backup` or `admin` role (writing sessions).
    ///
    /// # Errors
    /// 403 for a reader.
    pub fn require_writer(&self) -> Result<()> {
        match self.role {
            Role::Backup | Role::Admin => Ok(()),
            Role::Reader => Err(Error::new(
                ErrorCode::Forbidden,
                "this token's role (reader) may not write backups",
            )),
        }
    }

    /// Requires the `admin` role.
    ///
    /// # Errors
    /// 403 otherwise.
    pub fn require_admin(&self) -> Result<()> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(Error::new(
                ErrorCode::Forbidden,
                "this operation needs an admin token",
            ))
        }
    }
}

/// The token table.
#[derive(Debug, Default)]
pub struct Tokens {
    by_hash: HashMap<[u8; 32], Caller>,
}

impl Tokens {
    /// Builds the table from the configuration.
    pub fn new(tokens: &[TokenConfig]) -> Tokens {
        let by_hash = tokens
            .iter()
            .map(|t| {
                (
                    *blake3::hash(t.token.as_bytes()).as_bytes(),
                    Caller {
                        tenant: t.tenant.clone(),
                        role: t.role,
                    },
                )
            })
            .collect();
        Tokens { by_hash }
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// Resolves an `Authorization` header value.
    ///
    /// # Errors
    /// 401 when missing, malformed or unknown.
    pub fn authenticate(&self, header: Option<&str>) -> Result<Caller> {
        let value = header.ok_or_else(|| {
            Error::new(
                ErrorCode::Unauthorized,
                "missing 'Authorization: Bearer <token>' header",
            )
        })?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                Error::new(
                    ErrorCode::Unauthorized,
                    "Authorization header must be 'Bearer <token>'",
                )
            })?;
        self.by_hash
            .get(blake3::hash(token.as_bytes()).as_bytes())
            .cloned()
            .ok_or_else(|| Error::new(ErrorCode::Unauthorized, "unknown token"))
    }
}

/// Reads `DATA/admin.token`, or creates it (mode 0600) with a fresh random admin token.
///
/// # Errors
/// I/O errors reading or writing the file.
pub fn load_or_create_admin_token(data: &Path) -> std::io::Result<(TokenConfig, bool)> {
    let path = data.join("admin.token");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let token = text.trim().to_owned();
        if token.len() >= 16 {
            return Ok((
                TokenConfig {
                    token,
                    tenant: "default".into(),
                    role: Role::Admin,
                },
                false,
            ));
        }
    }
    let mut raw = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut raw))?;
    let token = schema::id::to_hex(&raw);
    stdx::durable::write_with_mode(&path, format!("{token}\n").as_bytes(), Some(0o600))?;
    Ok((
        TokenConfig {
            token,
            tenant: "default".into(),
            role: Role::Admin,
        },
        true,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_admin_token_is_private_and_stable() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().expect("tempdir");
        let (first, created) = load_or_create_admin_token(d.path()).expect("create");
        assert!(created && first.token.len() >= 32 && first.role == Role::Admin);
        let mode = std::fs::metadata(d.path().join("admin.token"))
            .expect("file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (again, created) = load_or_create_admin_token(d.path()).expect("load");
        assert!(!created);
        assert_eq!(again.token, first.token);
    }

    #[test]
    fn authenticate_maps_tokens() {
        let t = Tokens::new(&[TokenConfig {
            token: "0123456789abcdef".into(),
            tenant: "acme".into(),
            role: Role::Backup,
        }]);
        let c = t
            .authenticate(Some("Bearer 0123456789abcdef"))
            .expect("known");
        assert_eq!(
            c,
            Caller {
                tenant: "acme".into(),
                role: Role::Backup
            }
        );
        for bad in [
            None,
            Some("Bearer nope"),
            Some("Basic abc"),
            Some("0123456789abcdef"),
        ] {
            assert_eq!(
                t.authenticate(bad).err().map(|e| e.code),
                Some(ErrorCode::Unauthorized)
            );
        }
    }
}
