//! Contexts: named connection settings in one file, like kubeconfig.
//!
//! `~/.ttg/config` (or `TTG_CONFIG`), YAML, mode 0600, holds named contexts
//! — server URL, a token file (or an inline token), CA, client certificate
//! and key — and the current one. `ttgctl context list|use|show|set|delete`
//! edits it; `--context NAME` / `TTG_CONTEXT` picks one for a command;
//! `--server URL` alone uses the credentials of the context whose server
//! that is (as `gh` keeps a token per host). `ttgctl up` adds a context
//! named after its address and takes it away again on exit (see
//! [`UpContext`]).
//!
//! Every change is a read-modify-write under an exclusive lock
//! (`config.lock`), written to a temporary file and renamed over the old
//! one, so two `ttgctl up`s starting or stopping at once never lose each
//! other's context. A config file others can write is refused: whoever
//! can edit it can point ttgctl (and its tokens) at their own server.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::client::{CliError, CliResult};

/// The config file.
#[derive(Serialize, Deserialize, Debug, Default, Clone, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    /// The context commands use when none is named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    /// Contexts by name.
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

/// One context.
#[derive(Serialize, Deserialize, Debug, Default, Clone, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Context {
    /// Server URL (`http://` or `https://`).
    pub server: String,
    /// File holding the bearer token (preferred: the secret stays out of
    /// this file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// The bearer token itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// PEM CA of the server's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// PEM client certificate (mutual TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// PEM key of `cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// Set by `ttgctl up` for the context it made: `<pid>:<random>`. The
    /// `up` removes the context on exit only while this is still its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up: Option<String>,
}

impl Context {
    /// The token this context gives, read from its file if it names one.
    pub fn read_token(&self, name: &str) -> CliResult<Option<String>> {
        if let Some(t) = &self.token {
            return Ok(Some(t.trim().to_string()));
        }
        let Some(f) = &self.token_file else {
            return Ok(None);
        };
        let t = std::fs::read_to_string(f).map_err(|e| {
            CliError::usage(format!(
                "context {name}: cannot read its token file {}: {e}",
                f.display()
            ))
        })?;
        Ok(Some(t.trim().to_string()).filter(|t| !t.is_empty()))
    }

    /// How it authenticates, for listings (never the token).
    pub fn auth(&self) -> String {
        match (&self.token, &self.token_file) {
            (Some(_), _) => "token (inline)".into(),
            (None, Some(f)) => format!("token file {}", f.display()),
            (None, None) => "none".into(),
        }
    }

    /// Whether the `ttgctl up` that made it is gone (a context it could not
    /// take away: it was SIGKILLed).
    pub fn stale_up(&self) -> bool {
        self.up
            .as_deref()
            .and_then(|u| u.split(':').next())
            .and_then(|pid| pid.parse::<i32>().ok())
            .is_some_and(|pid| !crate::sys::alive(pid))
    }
}

/// Where the config file is: `TTG_CONFIG`, else `~/.ttg/config`.
pub fn path() -> CliResult<PathBuf> {
    if let Some(p) = std::env::var_os("TTG_CONFIG").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| Path::new(&h).join(".ttg").join("config"))
        .ok_or_else(|| CliError::usage("HOME is not set: set TTG_CONFIG to the config file's path"))
}

/// Read the config (an empty one if the file does not exist).
pub fn load() -> CliResult<Config> {
    load_from(&path()?)
}

fn load_from(path: &Path) -> CliResult<Config> {
    use std::os::unix::fs::MetadataExt;
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
        Err(e) => {
            return Err(CliError::usage(format!(
                "cannot read {}: {e}",
                path.display()
            )))
        }
    };
    let meta = std::fs::metadata(path)?;
    if meta.mode() & 0o022 != 0 {
        return Err(CliError::usage(format!(
            "{} can be written by other users (mode {:o}): refusing to use it; `chmod 600 {}`",
            path.display(),
            meta.mode() & 0o777,
            path.display()
        )));
    }
    if text.trim().is_empty() {
        return Ok(Config::default());
    }
    serde_yaml_ng::from_str(&text).map_err(|e| {
        CliError::usage(format!(
            "{} is not a valid ttgctl config: {e}",
            path.display()
        ))
    })
}

/// Change the config under its lock: read it, let `f` edit it, write it
/// back atomically (0600). Returns what `f` returned.
pub fn update<T>(f: impl FnOnce(&mut Config) -> CliResult<T>) -> CliResult<T> {
    let path = path()?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    if !dir.exists() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| CliError::usage(format!("cannot create {}: {e}", dir.display())))?;
    }
    let _lock = Lock::take(&path.with_extension("lock"))?;
    let mut config = load_from(&path)?;
    let out = f(&mut config)?;
    let text = format!(
        "# ttgctl contexts: `ttgctl context --help`. Written by ttgctl; comments are not kept.\n{}",
        serde_yaml_ng::to_string(&config)
            .map_err(|e| CliError::failed(format!("cannot write the config: {e}")))?
    );
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("config"),
        std::process::id()
    ));
    crate::cluster::write_private(&tmp, &text)?;
    std::fs::rename(&tmp, &path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        CliError::failed(format!("cannot replace {}: {e}", path.display()))
    })?;
    Ok(out)
}

/// An exclusive `flock` on a lock file, released when it closes (on drop).
struct Lock(#[allow(dead_code)] std::fs::File);

impl Lock {
    fn take(path: &Path) -> CliResult<Lock> {
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| CliError::usage(format!("cannot open {}: {e}", path.display())))?;
        crate::sys::lock_exclusive(&f)
            .map_err(|e| CliError::failed(format!("cannot lock {}: {e}", path.display())))?;
        Ok(Lock(f))
    }
}

/// The context `ttgctl up` made for its cluster, taken away by
/// [`UpContext::remove`] when the cluster stops.
pub struct UpContext {
    /// The context's name (the cluster's address).
    pub name: String,
    mark: String,
    /// What the context was before (a user's own context of that name),
    /// put back on exit.
    before: Option<Context>,
    /// The current context before, made current again on exit.
    previous_current: Option<String>,
}

impl UpContext {
    /// Add (or take over) the context `name` for a cluster at `server`
    /// whose client token is in `token_file`, and make it current.
    pub fn add(name: &str, server: &str, token_file: &Path) -> CliResult<UpContext> {
        let mark = format!("{}:{}", std::process::id(), crate::cluster::random_token()?);
        update(|c| {
            let before = c
                .contexts
                .get(name)
                // A dead up's leftover is not worth restoring.
                .filter(|ctx| ctx.up.is_none())
                .cloned();
            c.contexts.insert(
                name.to_string(),
                Context {
                    server: server.to_string(),
                    token_file: Some(token_file.to_path_buf()),
                    up: Some(mark.clone()),
                    ..Context::default()
                },
            );
            let previous_current = c.current_context.replace(name.to_string());
            Ok(UpContext {
                name: name.to_string(),
                mark,
                before,
                previous_current,
            })
        })
    }

    /// Take the context away again if it is still ours (put back what was
    /// there before), and make the previous current context current again
    /// if ours still is.
    pub fn remove(&self) -> CliResult<()> {
        update(|c| {
            let ours = c
                .contexts
                .get(&self.name)
                .is_some_and(|ctx| ctx.up.as_deref() == Some(self.mark.as_str()));
            if !ours {
                return Ok(());
            }
            match &self.before {
                Some(b) => {
                    c.contexts.insert(self.name.clone(), b.clone());
                }
                None => {
                    c.contexts.remove(&self.name);
                }
            }
            if c.current_context.as_deref() == Some(self.name.as_str()) {
                c.current_context = self
                    .previous_current
                    .clone()
                    .filter(|p| c.contexts.contains_key(p));
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_round_trips_and_refuses_unknown_fields() {
        let mut c = Config {
            current_context: Some("a".into()),
            ..Config::default()
        };
        c.contexts.insert(
            "a".into(),
            Context {
                server: "http://127.0.0.1:50051".into(),
                token_file: Some("/t".into()),
                ..Context::default()
            },
        );
        let text = serde_yaml_ng::to_string(&c).expect("yaml");
        assert!(text.contains("current-context: a"), "{text}");
        assert!(text.contains("token-file: /t"), "{text}");
        assert_eq!(serde_yaml_ng::from_str::<Config>(&text).expect("parse"), c);
        let typo = "contexts:\n  a:\n    server: http://x:1\n    tokenfile: /t\n";
        let e = serde_yaml_ng::from_str::<Config>(typo).expect_err("typo");
        assert!(e.to_string().contains("tokenfile"), "{e}");
    }
}
