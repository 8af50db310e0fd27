//! Bearer tokens with roles, checked in front of every gRPC service.
//!
//! Roles: `client` (submit, cancel, retry, and everything `reader` may),
//! `reader` (status, watch, listings, results), `agent` (the Session stream
//! only). `grpc.health.v1.Health` stays open for probes; reflection needs any
//! valid token. A missing or unknown token is `Unauthenticated`, a token
//! without the role `PermissionDenied`.
//!
//! The tokens file has one token per line: `<role> <token> [<name>]`, `#`
//! comments. A token may be written as `sha256:<64 hex digits>` (the SHA-256
//! of the token, e.g. `printf %s "$TOKEN" | sha256sum`), so a leaked file is
//! not a leaked credential. It is re-read when it changes (polled every 5 s),
//! so rotating a Kubernetes Secret needs no restart; a file that fails to
//! parse is logged and the previous tokens stay in force. A reload that
//! removes a token also ends the Watch streams and agent sessions it opened
//! (see [`Grant`]). Only digests are kept in memory, compared in constant
//! time; tokens are never logged; the name is what logs and metrics show.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tonic::Status;

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Submit, cancel, retry, delete and read.
    Client,
    /// Read only.
    Reader,
    /// Agent sessions only.
    Agent,
}

impl Role {
    fn parse(s: &str) -> Option<Role> {
        match s {
            "client" => Some(Role::Client),
            "reader" => Some(Role::Reader),
            "agent" => Some(Role::Agent),
            _ => None,
        }
    }

    /// Name as written in the tokens file.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Reader => "reader",
            Role::Agent => "agent",
        }
    }
}

/// Who made a request: put in the request's extensions for handlers (rate
/// limits are per token).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The token's name (from the file; `token-<line>` when unnamed).
    pub name: String,
    /// Its role.
    pub role: Role,
}

struct Entry {
    /// SHA-256 of the token.
    digest: [u8; 32],
    id: Identity,
}

/// SHA-256 of a presented token.
fn digest(token: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// `sha256:<64 hex digits>` as a digest.
fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A parsed tokens file.
#[derive(Default)]
pub struct Tokens {
    entries: Vec<Entry>,
}

/// Never prints a token: only how many there are and their names.
impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self
            .entries
            .iter()
            .map(|e| (&e.id.name, e.id.role.as_str()))
            .collect();
        f.debug_struct("Tokens").field("names", &names).finish()
    }
}

/// Shortest token accepted: shorter ones are guessable.
pub const MIN_TOKEN_LEN: usize = 16;

/// A tokens file that cannot be used; the previous tokens stay in force on
/// a reload, and the server does not start with one.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    /// The file could not be read.
    #[error("--tokens-file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A line is wrong.
    #[error("--tokens-file {}: line {line}: {message}", path.display())]
    Line {
        /// The file ('' when parsing text).
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The file holds no token.
    #[error("--tokens-file {}: no tokens", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

impl TokensError {
    /// The same error, naming `path`.
    fn in_file(self, path: &Path) -> Self {
        let path = path.to_path_buf();
        match self {
            TokensError::Line { line, message, .. } => TokensError::Line {
                path,
                line,
                message,
            },
            TokensError::Empty { .. } => TokensError::Empty { path },
            e @ TokensError::Read { .. } => e,
        }
    }
}

impl Tokens {
    /// Parse `role token [name]` lines.
    pub fn parse(text: &str) -> Result<Tokens, TokensError> {
        let bad = |i: usize, message: String| TokensError::Line {
            path: PathBuf::new(),
            line: i + 1,
            message,
        };
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (Some(role), Some(token)) = (parts.next(), parts.next()) else {
                return Err(bad(i, "expected `<role> <token> [<name>]`".into()));
            };
            let role = Role::parse(role).ok_or_else(|| {
                bad(
                    i,
                    format!("role must be client, reader or agent, got {role:?}"),
                )
            })?;
            let digest = match token.strip_prefix("sha256:") {
                Some(hex) => parse_digest(hex)
                    .ok_or_else(|| bad(i, "sha256: must be followed by 64 hex digits".into()))?,
                None if token.len() < MIN_TOKEN_LEN => {
                    return Err(bad(
                        i,
                        format!("tokens must be at least {MIN_TOKEN_LEN} characters"),
                    ))
                }
                None => digest(token.as_bytes()),
            };
            let name = parts
                .next()
                .map(str::to_string)
                .unwrap_or_else(|| format!("token-{}", i + 1));
            entries.push(Entry {
                digest,
                id: Identity { name, role },
            });
        }
        if entries.is_empty() {
            return Err(TokensError::Empty {
                path: PathBuf::new(),
            });
        }
        Ok(Tokens { entries })
    }

    /// The identity holding `presented`. Every entry is compared, each in
    /// time independent of where the bytes differ, so timing reveals nothing.
    pub fn identify(&self, presented: &[u8]) -> Option<Identity> {
        self.identify_digest(&digest(presented))
    }

    fn identify_digest(&self, d: &[u8; 32]) -> Option<Identity> {
        let mut found = None;
        for e in &self.entries {
            if ct_eq(&e.digest, d) {
                found = Some(e.id.clone());
            }
        }
        found
    }
}

/// What a request's token was granted, in the request's extensions: its
/// identity, and a way for a long-lived stream to learn that a tokens reload
/// removed the token (or changed its role).
#[derive(Clone)]
pub struct Grant {
    /// Who made the request.
    pub id: Identity,
    digest: [u8; 32],
    tokens: watch::Receiver<Arc<Tokens>>,
}

/// Shows who, never the digest.
impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grant").field("id", &self.id).finish()
    }
}

impl Grant {
    /// Resolves once a reload no longer grants this token its role; never
    /// while it still does.
    pub async fn revoked(mut self) {
        loop {
            if self.tokens.changed().await.is_err() {
                // No more reloads: the grant stands for good.
                return std::future::pending().await;
            }
            let still = self.tokens.borrow().identify_digest(&self.digest);
            if still.as_ref() != Some(&self.id) {
                return;
            }
        }
    }
}

/// Resolves when `grant` is revoked; never without one (auth off, or an
/// open method).
pub async fn revoked(grant: Option<Grant>) {
    match grant {
        Some(g) => g.revoked().await,
        None => std::future::pending().await,
    }
}

/// Read and parse a tokens file.
fn read_tokens(path: &Path) -> Result<Tokens, TokensError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokensError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Tokens::parse(&text).map_err(|e| e.in_file(path))
}

/// Constant-time equality (for equal lengths; the length itself is not secret).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The role a gRPC method needs; None means open to anyone.
fn required(path: &str) -> Option<&'static [Role]> {
    const READ: &[Role] = &[Role::Client, Role::Reader];
    const WRITE: &[Role] = &[Role::Client];
    const AGENT: &[Role] = &[Role::Agent];
    const ANY: &[Role] = &[Role::Client, Role::Reader, Role::Agent];
    if path.starts_with("/grpc.health.v1.Health/") {
        return None;
    }
    Some(match path {
        "/ttg.v1.ControlPlane/Submit"
        | "/ttg.v1.ControlPlane/Cancel"
        | "/ttg.v1.ControlPlane/Retry"
        | "/ttg.v1.ControlPlane/Delete" => WRITE,
        p if p.starts_with("/ttg.v1.ControlPlane/") => READ,
        p if p.starts_with("/ttg.v1.AgentGateway/") => AGENT,
        _ => ANY,
    })
}

/// Token checking, shared by every connection.
pub struct Auth {
    tokens: watch::Sender<Arc<Tokens>>,
    path: Option<PathBuf>,
}

impl Auth {
    /// Tokens from `path` (read now; re-read by [`Auth::watch`]).
    pub fn from_file(path: &Path) -> Result<Auth, TokensError> {
        let tokens = read_tokens(path)?;
        Ok(Auth {
            tokens: watch::Sender::new(Arc::new(tokens)),
            path: Some(path.to_path_buf()),
        })
    }

    /// Check a request for `path` with this `authorization` header value.
    pub fn check(&self, path: &str, header: Option<&[u8]>) -> Result<Option<Grant>, Status> {
        let Some(roles) = required(path) else {
            return Ok(None);
        };
        let presented = header
            .and_then(|h| h.strip_prefix(b"Bearer ").or_else(|| h.strip_prefix(b"bearer ")))
            .ok_or_else(|| Status::unauthenticated("missing bearer token: send `authorization: Bearer <token>` (ttgctl --token / TTG_TOKEN)"))?;
        let d = digest(presented);
        let id = self
            .tokens
            .borrow()
            .identify_digest(&d)
            .ok_or_else(|| Status::unauthenticated("unknown bearer token"))?;
        if !roles.contains(&id.role) {
            let want: Vec<_> = roles.iter().map(|r| r.as_str()).collect();
            return Err(Status::permission_denied(format!(
                "token {:?} has role {}; {path} needs {}",
                id.name,
                id.role.as_str(),
                want.join(" or ")
            )));
        }
        Ok(Some(Grant {
            id,
            digest: d,
            tokens: self.tokens.subscribe(),
        }))
    }

    /// Re-read the tokens file when it changes, until `stop`.
    pub async fn watch(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let Some(path) = self.path.clone() else {
            return;
        };
        let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let mut seen: Option<SystemTime> = mtime(&path);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
            let now = mtime(&path);
            if now == seen {
                continue;
            }
            seen = now;
            match read_tokens(&path) {
                Ok(t) => {
                    let n = t.entries.len();
                    self.tokens.send_replace(Arc::new(t));
                    tracing::info!(file = %path.display(), tokens = n, "tokens reloaded");
                }
                Err(e) => {
                    tracing::error!(file = %path.display(), error = %e, "tokens file not reloaded; previous tokens stay in force")
                }
            }
        }
    }
}

/// Tower layer applying [`Auth`] (or nothing, with `--insecure-no-auth`).
#[derive(Clone)]
pub struct AuthLayer(pub Option<Arc<Auth>>);

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: self.0.clone(),
        }
    }
}

/// See [`AuthLayer`].
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Option<Arc<Auth>>,
}

type BoxFut<T, E> = Pin<Box<dyn std::future::Future<Output = Result<T, E>> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFut<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        if let Some(auth) = &self.auth {
            let header = req
                .headers()
                .get(http::header::AUTHORIZATION)
                .map(|v| v.as_bytes());
            match auth.check(req.uri().path(), header) {
                Ok(Some(grant)) => {
                    req.extensions_mut().insert(grant.id.clone());
                    req.extensions_mut().insert(grant);
                }
                Ok(None) => {}
                Err(status) => {
                    tracing::info!(path = req.uri().path(), code = ?status.code(), "request refused");
                    return Box::pin(async move { Ok(status.into_http()) });
                }
            }
        }
        // The inner service was readied by poll_ready; call a clone readied
        // the same way, as tower requires.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(text: &str) -> Auth {
        Auth {
            tokens: watch::Sender::new(Arc::new(Tokens::parse(text).unwrap())),
            path: None,
        }
    }

    #[test]
    fn hashed_tokens_work_and_bad_digests_are_refused() {
        // printf %s cccccccccccccccc | sha256sum
        let d = digest(b"cccccccccccccccc");
        let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
        let a = auth(&format!("client sha256:{hex} hashed\n"));
        let id = a
            .check(
                "/ttg.v1.ControlPlane/Submit",
                Some(b"Bearer cccccccccccccccc"),
            )
            .unwrap()
            .unwrap();
        assert_eq!(id.id.name, "hashed");
        // The digest itself is not a token.
        let as_token = format!("Bearer sha256:{hex}");
        assert!(a
            .check("/ttg.v1.ControlPlane/Submit", Some(as_token.as_bytes()))
            .is_err());
        assert!(Tokens::parse("client sha256:abc")
            .unwrap_err()
            .to_string()
            .contains("64 hex digits"));
        assert!(Tokens::parse(&format!("client sha256:{}", "zz".repeat(32))).is_err());
    }

    #[tokio::test]
    async fn a_reload_that_removes_a_token_revokes_its_grants() {
        let a = auth("client cccccccccccccccc alice\nreader rrrrrrrrrrrrrrrr bob\n");
        let alice = a
            .check(
                "/ttg.v1.ControlPlane/Watch",
                Some(b"Bearer cccccccccccccccc"),
            )
            .unwrap();
        let bob = a
            .check(
                "/ttg.v1.ControlPlane/Watch",
                Some(b"Bearer rrrrrrrrrrrrrrrr"),
            )
            .unwrap();
        let alice_gone = tokio::spawn(revoked(alice));
        let bob_gone = tokio::spawn(revoked(bob));
        // A reload that keeps both revokes nothing.
        a.tokens.send_replace(Arc::new(
            Tokens::parse("client cccccccccccccccc alice\nreader rrrrrrrrrrrrrrrr bob\n").unwrap(),
        ));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!alice_gone.is_finished() && !bob_gone.is_finished());
        // Bob's token removed: only his grant ends.
        a.tokens.send_replace(Arc::new(
            Tokens::parse("client cccccccccccccccc alice\n").unwrap(),
        ));
        tokio::time::timeout(Duration::from_secs(5), bob_gone)
            .await
            .unwrap()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!alice_gone.is_finished());
        alice_gone.abort();
    }

    #[test]
    fn roles_gate_methods() {
        let a = auth("client cccccccccccccccc alice\nreader rrrrrrrrrrrrrrrr\nagent aaaaaaaaaaaaaaaa node-1 # comment\n");
        let c = Some(&b"Bearer cccccccccccccccc"[..]);
        let r = Some(&b"Bearer rrrrrrrrrrrrrrrr"[..]);
        let g = Some(&b"Bearer aaaaaaaaaaaaaaaa"[..]);
        assert_eq!(
            a.check("/ttg.v1.ControlPlane/Submit", c)
                .unwrap()
                .unwrap()
                .id
                .name,
            "alice"
        );
        assert_eq!(
            a.check("/ttg.v1.ControlPlane/Submit", r)
                .unwrap_err()
                .code(),
            tonic::Code::PermissionDenied
        );
        assert!(a.check("/ttg.v1.ControlPlane/Status", r).is_ok());
        assert_eq!(
            a.check("/ttg.v1.ControlPlane/Status", g)
                .unwrap_err()
                .code(),
            tonic::Code::PermissionDenied
        );
        assert!(a.check("/ttg.v1.AgentGateway/Session", g).is_ok());
        assert_eq!(
            a.check("/ttg.v1.AgentGateway/Session", c)
                .unwrap_err()
                .code(),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            a.check("/ttg.v1.ControlPlane/Status", None)
                .unwrap_err()
                .code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            a.check(
                "/ttg.v1.ControlPlane/Status",
                Some(&b"Bearer wrongwrongwrongwrong"[..])
            )
            .unwrap_err()
            .code(),
            tonic::Code::Unauthenticated
        );
        assert!(a
            .check("/grpc.health.v1.Health/Check", None)
            .unwrap()
            .is_none());
        assert_eq!(
            a.check(
                "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                None
            )
            .unwrap_err()
            .code(),
            tonic::Code::Unauthenticated
        );
        for write in ["Submit", "Cancel", "Retry", "Delete"] {
            let e = a
                .check(&format!("/ttg.v1.ControlPlane/{write}"), r)
                .unwrap_err();
            assert_eq!(e.code(), tonic::Code::PermissionDenied, "{write}");
        }
        let e = a.check("/ttg.v1.ControlPlane/Cancel", r).unwrap_err();
        assert!(
            !e.message().contains("rrrr"),
            "tokens never appear in messages"
        );
    }

    #[test]
    fn bad_files_are_rejected_with_the_line() {
        assert!(Tokens::parse("admin xxxxxxxxxxxxxxxx")
            .unwrap_err()
            .to_string()
            .contains("line 1: role must be"));
        assert!(Tokens::parse("client short")
            .unwrap_err()
            .to_string()
            .contains("at least 16"));
        assert!(Tokens::parse("# nothing\n")
            .unwrap_err()
            .to_string()
            .contains("no tokens"));
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Tokens files and authorization headers are attacker-controlled.
        #[test]
        fn parsing_and_checking_never_panic(file in ".{0,300}", header in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = Tokens::parse(&file);
            let a = Auth { tokens: watch::Sender::new(Arc::new(Tokens::parse("client cccccccccccccccc").unwrap())), path: None };
            let _ = a.check("/ttg.v1.ControlPlane/Submit", Some(&header));
        }
    }
}
