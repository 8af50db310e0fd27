//! Bearer tokens with roles, checked in front of every gRPC service.
//!
//! Roles: `client` (submit, cancel, retry, and everything `reader` may),
//! `reader` (status, watch, listings, results), `agent` (the Session stream
//! only). `grpc.health.v1.Health` stays open for probes; reflection needs any
//! valid token. A missing or unknown token is `Unauthenticated`, a token
//! without the role `PermissionDenied`.
//!
//! The tokens file has one token per line: `<role> <token> [<name>]`, `#`
//! comments. It is re-read when it changes (polled every 5 s), so rotating a
//! Kubernetes Secret needs no restart; a file that fails to parse is logged
//! and the previous tokens stay in force. Tokens are compared in constant
//! time and never logged; the name is what logs and metrics show.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

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
    token: Vec<u8>,
    id: Identity,
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

impl Tokens {
    /// Parse `role token [name]` lines.
    pub fn parse(text: &str) -> Result<Tokens, String> {
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (Some(role), Some(token)) = (parts.next(), parts.next()) else {
                return Err(format!(
                    "line {}: expected `<role> <token> [<name>]`",
                    i + 1
                ));
            };
            let role = Role::parse(role).ok_or_else(|| {
                format!(
                    "line {}: role must be client, reader or agent, got {role:?}",
                    i + 1
                )
            })?;
            if token.len() < MIN_TOKEN_LEN {
                return Err(format!(
                    "line {}: tokens must be at least {MIN_TOKEN_LEN} characters",
                    i + 1
                ));
            }
            let name = parts
                .next()
                .map(str::to_string)
                .unwrap_or_else(|| format!("token-{}", i + 1));
            entries.push(Entry {
                token: token.as_bytes().to_vec(),
                id: Identity { name, role },
            });
        }
        if entries.is_empty() {
            return Err("no tokens".into());
        }
        Ok(Tokens { entries })
    }

    /// The identity holding `presented`. Every entry is compared, each in
    /// time independent of where the bytes differ, so timing reveals nothing.
    pub fn identify(&self, presented: &[u8]) -> Option<Identity> {
        let mut found = None;
        for e in &self.entries {
            if ct_eq(&e.token, presented) {
                found = Some(e.id.clone());
            }
        }
        found
    }
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
    tokens: RwLock<Arc<Tokens>>,
    path: Option<PathBuf>,
}

impl Auth {
    /// Tokens from `path` (read now; re-read by [`Auth::watch`]).
    pub fn from_file(path: &Path) -> Result<Auth, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--tokens-file {}: {e}", path.display()))?;
        let tokens =
            Tokens::parse(&text).map_err(|e| format!("--tokens-file {}: {e}", path.display()))?;
        Ok(Auth {
            tokens: RwLock::new(Arc::new(tokens)),
            path: Some(path.to_path_buf()),
        })
    }

    /// Check a request for `path` with this `authorization` header value.
    pub fn check(&self, path: &str, header: Option<&[u8]>) -> Result<Option<Identity>, Status> {
        let Some(roles) = required(path) else {
            return Ok(None);
        };
        let presented = header
            .and_then(|h| h.strip_prefix(b"Bearer ").or_else(|| h.strip_prefix(b"bearer ")))
            .ok_or_else(|| Status::unauthenticated("missing bearer token: send `authorization: Bearer <token>` (ttgctl --token / TTG_TOKEN)"))?;
        let tokens = self.tokens.read().map(|t| t.clone()).unwrap_or_default();
        let id = tokens
            .identify(presented)
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
        Ok(Some(id))
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
            match std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|t| Tokens::parse(&t))
            {
                Ok(t) => {
                    let n = t.entries.len();
                    if let Ok(mut w) = self.tokens.write() {
                        *w = Arc::new(t);
                    }
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
                Ok(Some(id)) => {
                    req.extensions_mut().insert(id);
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
            tokens: RwLock::new(Arc::new(Tokens::parse(text).unwrap())),
            path: None,
        }
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
            .contains("line 1: role must be"));
        assert!(Tokens::parse("client short")
            .unwrap_err()
            .contains("at least 16"));
        assert!(Tokens::parse("# nothing\n")
            .unwrap_err()
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
            let a = Auth { tokens: RwLock::new(Arc::new(Tokens::parse("client cccccccccccccccc").unwrap())), path: None };
            let _ = a.check("/ttg.v1.ControlPlane/Submit", Some(&header));
        }
    }
}
