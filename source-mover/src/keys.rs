//! The `source-mover key` commands (create, show, change-passphrase, export and import of the
//! paper key) and the key the other commands' `--encryption-key` names, over [`crate::key`].

use std::path::Path;

use crate::cli::{Encryption, KeyCmd};
use crate::error::{Error, Result};
use crate::key::{passphrase, MasterKey, NEW_PASSPHRASE_ENV, PASSPHRASE_ENV};

/// The key `--encryption-key` names, if any, unwrapped with the passphrase from
/// `--passphrase-file` or [`PASSPHRASE_ENV`].
///
/// # Errors
/// See [`MasterKey::load`].
pub fn from_args(e: &Encryption) -> Result<Option<std::sync::Arc<MasterKey>>> {
    let Some(file) = &e.encryption_key else {
        return Ok(None);
    };
    let p = passphrase(e.passphrase_file.as_deref(), PASSPHRASE_ENV)?;
    Ok(Some(std::sync::Arc::new(MasterKey::load(
        file,
        p.as_deref(),
    )?)))
}

/// The passphrase a new key file is wrapped with: none with `raw`, else from `file` or `env`
/// (one of them is required).
fn new_passphrase(raw: bool, file: Option<&Path>, env: &str) -> Result<Option<Vec<u8>>> {
    if raw {
        return Ok(None);
    }
    match passphrase(file, env)? {
        Some(p) => Ok(Some(p)),
        None => Err(Error::Refused(format!(
            "a new key file needs a passphrase: give a passphrase file or set {env} (or --raw for an unwrapped key)"
        ))),
    }
}

/// Runs one `source-mover key` command; returns what it prints.
///
/// # Errors
/// Key file errors ([`MasterKey::load`], [`MasterKey::save_new`]).
pub fn command(cmd: KeyCmd) -> Result<String> {
    let old = |f: &Option<std::path::PathBuf>| passphrase(f.as_deref(), PASSPHRASE_ENV);
    match cmd {
        KeyCmd::Create {
            file,
            raw,
            passphrase_file,
        } => {
            let p = new_passphrase(raw, passphrase_file.as_deref(), PASSPHRASE_ENV)?;
            let k = MasterKey::generate()?;
            k.save_new(&file, p.as_deref())?;
            Ok(format!(
                "created key {} in {} ({})\nfingerprint {}\nKeep a copy apart from the repository (source-mover key export --paper): without the key its backups cannot be read by anyone.",
                k.id_hex(),
                file.display(),
                if raw { "raw, mode 0600" } else { "wrapped by the passphrase with argon2id, mode 0600" },
                k.fingerprint()
            ))
        }
        KeyCmd::Show {
            file,
            passphrase_file,
        } => {
            let k = MasterKey::load(&file, old(&passphrase_file)?.as_deref())?;
            let how = if MasterKey::is_wrapped(&file)? {
                "wrapped"
            } else {
                "raw"
            };
            Ok(format!(
                "key {}\nfingerprint {}\nfile {} ({how})",
                k.id_hex(),
                k.fingerprint(),
                file.display()
            ))
        }
        KeyCmd::ChangePassphrase {
            file,
            passphrase_file,
            new_passphrase_file,
            raw,
        } => {
            let k = MasterKey::load(&file, old(&passphrase_file)?.as_deref())?;
            let p = new_passphrase(raw, new_passphrase_file.as_deref(), NEW_PASSPHRASE_ENV)?;
            k.save(&file, p.as_deref())?;
            Ok(format!(
                "key {} in {} is now {}",
                k.id_hex(),
                file.display(),
                if raw {
                    "raw"
                } else {
                    "wrapped by the new passphrase"
                }
            ))
        }
        KeyCmd::Export {
            file,
            passphrase_file,
            ..
        } => {
            let k = MasterKey::load(&file, old(&passphrase_file)?.as_deref())?;
            Ok(format!(
                "paper key of key {} (fingerprint {}):\n{}\nWhoever holds it can read every backup of this key; keep it offline.",
                k.id_hex(),
                k.fingerprint(),
                k.paper()
            ))
        }
        KeyCmd::Import {
            file,
            paper,
            raw,
            passphrase_file,
        } => {
            let text = if paper.as_os_str() == "-" {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                    .map_err(|e| Error::io("standard input", e))?;
                s
            } else {
                std::fs::read_to_string(&paper).map_err(|e| Error::io(paper.display(), e))?
            };
            // The paper key is the line that starts with smk1 (export prints more around it).
            let line = text
                .lines()
                .find(|l| l.trim_start().to_ascii_lowercase().starts_with("smk1"))
                .unwrap_or(&text);
            let k = MasterKey::from_paper(line)?;
            let p = new_passphrase(raw, passphrase_file.as_deref(), PASSPHRASE_ENV)?;
            k.save_new(&file, p.as_deref())?;
            Ok(format!(
                "imported key {} into {}\nfingerprint {}",
                k.id_hex(),
                file.display(),
                k.fingerprint()
            ))
        }
    }
}
