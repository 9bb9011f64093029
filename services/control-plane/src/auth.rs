//! Who is calling: trusted clients (a bearer token in the trust store), blob nodes
//! (the cluster credential) and everyone else. Tokens are looked up by hash in a
//! copy of the trust store kept in memory: the control plane is the store's only
//! writer, so the copy changes exactly when the Trust service changes the table.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use imagestore_auth::{
    Scope, TicketKey, hash_token, load_or_create, new_secret, read_secret, write_private,
};
use imagestore_catalog::{Catalog, TrustEntry, TrustKind, UnixNanos, now};
use imagestore_server::TlsPeer;
use tonic::Request;

use crate::error::{ApiError, ApiResult};

/// The file holding the admin token, in the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";
pub use imagestore_auth::CLUSTER_CREDENTIAL_FILE;

/// The caller of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    Anonymous,
    Trusted,
    /// A blob node, by the cluster credential.
    Node,
}

/// The trust store's copy in memory.
#[derive(Default)]
struct TrustCopy {
    /// Trusted fingerprints (token hashes, certificate digests) → expiry.
    entries: HashMap<String, Option<UnixNanos>>,
    /// How many entries this process added or removed itself.
    local_changes: u64,
}

type TrustMap = RwLock<TrustCopy>;

/// Copies the trust store into `trusted`, unless this process changed the
/// copy while the store was read: what was read may predate that change (a
/// token created a moment ago would be lost until the next look), so it is not
/// kept (false) and the next look reads the store again.
async fn load_trust(catalog: &Catalog, trusted: &TrustMap) -> imagestore_catalog::Result<bool> {
    let before = trusted
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .local_changes;
    let entries = catalog
        .list_trust()
        .await?
        .into_iter()
        .map(|e| (e.fingerprint, e.expires_at))
        .collect();
    let mut copy = trusted.write().unwrap_or_else(|e| e.into_inner());
    if copy.local_changes != before {
        return Ok(false);
    }
    copy.entries = entries;
    Ok(true)
}

/// How often each control plane looks whether the trust store changed.
const TRUST_REFRESH: Duration = Duration::from_millis(250);

#[derive(Clone)]
pub struct Auth {
    catalog: Catalog,
    trusted: Arc<TrustMap>,
    cluster_hash: String,
    /// The hash of this control plane's admin token: its holder has the role
    /// "admin" (import plugins' ignore_user_roles); other trusted callers "member".
    admin_hash: Option<String>,
    tickets: TicketKey,
    lane: crate::admission::Lane,
    ticket_ttl: Duration,
    secret_ttl: Duration,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Auth(..)")
    }
}

/// The cluster credential's name among the catalog's shared secrets.
const CLUSTER_SECRET: &str = "cluster_credential";

impl Auth {
    /// Loads the trust store, and the admin token and cluster credential from
    /// `dir`, creating them (mode 0600) on the first start; a new admin token is
    /// trusted at once.
    pub async fn open(catalog: Catalog, dir: &Path) -> Result<Self, crate::StartError> {
        let file_error = |path: &Path| {
            let path = path.display().to_string();
            move |source| crate::StartError::DataDir { path, source }
        };
        let cluster_path = dir.join(CLUSTER_CREDENTIAL_FILE);
        let (local, created) = load_or_create(&cluster_path).map_err(file_error(&cluster_path))?;
        // Tickets are signed with a key derived from it, so every replica on this
        // catalog needs the same one: the first to start stores its own, the
        // others take it.
        let cluster = catalog
            .adopt_secret(CLUSTER_SECRET.into(), local.clone())
            .await?;
        if cluster != local {
            if !created {
                return Err(crate::StartError::Config(format!(
                    "the cluster credential in {} is not the one the other control planes on \
                     this catalog share; replace it with theirs (their data directory's {}) or \
                     remove it to take theirs",
                    cluster_path.display(),
                    CLUSTER_CREDENTIAL_FILE
                )));
            }
            write_private(&cluster_path, format!("{cluster}\n").as_bytes())
                .map_err(file_error(&cluster_path))?;
        }
        let admin_path = dir.join(ADMIN_TOKEN_FILE);
        if read_secret(&admin_path)
            .map_err(file_error(&admin_path))?
            .is_none()
        {
            // Trusted before its file appears: a crash in between leaves a hash
            // nobody holds, never a token file the server does not trust.
            let admin = new_secret();
            catalog
                .add_trust(
                    TrustKind::Token,
                    format!("admin token ({})", admin_path.display()),
                    hash_token(&admin),
                    None,
                )
                .await?;
            write_private(&admin_path, format!("{admin}\n").as_bytes())
                .map_err(file_error(&admin_path))?;
            tracing::info!(file = %admin_path.display(), "admin token written; it is trusted");
        }
        let admin_hash = read_secret(&admin_path)
            .map_err(file_error(&admin_path))?
            .map(|t| hash_token(&t));
        let auth = Self {
            catalog,
            trusted: Arc::default(),
            cluster_hash: hash_token(&cluster),
            admin_hash,
            tickets: TicketKey::derive(&cluster),
            lane: crate::admission::Lane::new(0, 64),
            ticket_ttl: Duration::from_secs(15 * 60),
            secret_ttl: Duration::from_secs(24 * 3600),
        };
        auth.reload().await?;
        auth.follow_trust_changes();
        Ok(auth)
    }

    /// Reloads the trust store whenever it changes, whichever process changed
    /// it (another replica, `imagestore trust` on another control plane): a
    /// removed token is refused everywhere within `TRUST_REFRESH`. Stops when
    /// the last copy of this Auth goes.
    fn follow_trust_changes(&self) {
        let trusted = Arc::downgrade(&self.trusted);
        let catalog = self.catalog.clone();
        tokio::spawn(async move {
            // None: the first tick loads the store again, so that a change made
            // between open's load and this task's start is not missed.
            let mut seen = None;
            let mut tick = tokio::time::interval(TRUST_REFRESH);
            loop {
                tick.tick().await;
                let Some(trusted) = trusted.upgrade() else {
                    return;
                };
                let Ok(version) = catalog.trust_version().await else {
                    continue;
                };
                if seen == Some(version) {
                    continue;
                }
                match load_trust(&catalog, &trusted).await {
                    Ok(true) => seen = Some(version),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "could not reload the trust store"),
                }
            }
        });
    }

    /// Copies the trust store into memory again.
    pub async fn reload(&self) -> imagestore_catalog::Result<()> {
        load_trust(&self.catalog, &self.trusted).await.map(drop)
    }

    /// How long tickets and unused image secrets work.
    pub fn with_lifetimes(mut self, ticket_ttl: Duration, secret_ttl: Duration) -> Self {
        self.ticket_ttl = ticket_ttl;
        self.secret_ttl = secret_ttl;
        self
    }

    /// How many anonymous reads run at once (0: half the cores), and how many
    /// may wait for a place.
    pub fn with_anonymous_lane(mut self, places: usize, queue: usize) -> Self {
        self.lane = crate::admission::Lane::new(places, queue);
        self
    }

    /// Admits a read by the caller of `req`: what it may see and its place.
    pub async fn reader<T>(&self, req: &Request<T>) -> ApiResult<crate::admission::Reader> {
        self.lane.admit(self.public_only(req)?).await
    }

    pub fn secret_ttl(&self) -> Duration {
        self.secret_ttl
    }

    /// A ticket for `scope`, signed for blob nodes, and when it expires.
    pub fn ticket(&self, scope: &Scope) -> (String, prost_types::Timestamp) {
        let (ticket, expires) = self.tickets.issue(scope, self.ticket_ttl);
        let seconds = i64::try_from(expires).unwrap_or(i64::MAX);
        (ticket, prost_types::Timestamp { seconds, nanos: 0 })
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Who sent `req`. A credential that is present but not trusted is refused
    /// rather than treated as anonymous, so that a mistyped or revoked token
    /// says so instead of silently hiding private images.
    pub fn caller<T>(&self, req: &Request<T>) -> ApiResult<Caller> {
        let authorization = req.metadata().get("authorization").map(|v| v.to_str().ok());
        self.caller_from(authorization, req.extensions().get::<TlsPeer>())
    }

    /// Who sent a request with this authorization header (None: absent; Some(None):
    /// not text) over a connection from `peer`. The token comes as a bearer token
    /// or as the password of HTTP basic auth, which LXD's and Incus's clients
    /// send from `https://user:TOKEN@host` URLs.
    pub fn caller_from(
        &self,
        authorization: Option<Option<&str>>,
        peer: Option<&TlsPeer>,
    ) -> ApiResult<Caller> {
        let Some(value) = authorization else {
            return Ok(self.by_certificate(peer));
        };
        let token = value.and_then(token_of).ok_or_else(|| {
            unauthenticated(
                "the authorization header must be \"Bearer <token>\" (or HTTP basic auth \
                 with the token as the password)",
            )
        })?;
        let hash = hash_token(&token);
        if hash == self.cluster_hash {
            return Ok(Caller::Node);
        }
        match self.trust_of(&hash) {
            Some(true) => Ok(Caller::Trusted),
            Some(false) => Err(unauthenticated(
                "the bearer token has expired: ask an administrator for a new one",
            )),
            None => Err(unauthenticated(
                "the bearer token is not trusted by this server (unknown or removed); \
                 check IMAGESTORE_TOKEN or the remote's token",
            )),
        }
    }

    /// A caller without a token: trusted when its TLS client certificate is in
    /// the trust store. An unknown certificate is just anonymous, as in LXD: any
    /// client may have one.
    fn by_certificate(&self, peer: Option<&TlsPeer>) -> Caller {
        let Some(fingerprint) = peer.and_then(|p| p.certificate_sha256.as_ref()) else {
            return Caller::Anonymous;
        };
        match self.trust_of(fingerprint) {
            Some(true) => Caller::Trusted,
            _ => Caller::Anonymous,
        }
    }

    /// Whether `ticket` allows `scope`: a signed ticket in a URL stands for the
    /// caller that was given it.
    pub fn ticket_allows(&self, ticket: &str, scope: &Scope) -> bool {
        self.tickets.check(ticket, scope).is_ok()
    }

    /// Whether the credential with this fingerprint is trusted: None when the
    /// store does not know it, Some(false) when it has expired.
    fn trust_of(&self, fingerprint: &str) -> Option<bool> {
        let trusted = self.trusted.read().unwrap_or_else(|e| e.into_inner());
        trusted
            .entries
            .get(fingerprint)
            .map(|expires| expires.is_none_or(|at| at > now()))
    }

    /// The roles of a trusted caller, as Glance's import plugins name them:
    /// "admin" for the holder of this control plane's admin token, "member"
    /// for every other trusted caller.
    pub fn roles<T>(&self, req: &Request<T>) -> Vec<String> {
        let token = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(token_of);
        let admin = token.is_some_and(|t| Some(hash_token(&t)) == self.admin_hash);
        vec![if admin { "admin" } else { "member" }.to_owned()]
    }

    /// Calls that change anything, or manage trust.
    pub fn require_trusted<T>(&self, req: &Request<T>) -> ApiResult<()> {
        match self.caller(req)? {
            Caller::Trusted => Ok(()),
            Caller::Anonymous => Err(unauthenticated(
                "this call needs a trusted client: send \"authorization: Bearer <token>\" \
                 (the server's admin-token file, or a token from `imagestore trust add`)",
            )),
            Caller::Node => Err(not_for_nodes()),
        }
    }

    /// Calls from blob nodes.
    pub fn require_node<T>(&self, req: &Request<T>) -> ApiResult<()> {
        match self.caller(req)? {
            Caller::Node => Ok(()),
            Caller::Anonymous => Err(unauthenticated(
                "this call is for blob nodes: send the cluster credential as a bearer token",
            )),
            Caller::Trusted => Err(ApiError::PermissionDenied(
                "this call is for blob nodes holding the cluster credential, not for clients"
                    .into(),
            )),
        }
    }

    /// Whether the caller sees public images only: everyone but trusted clients.
    /// A private image must look missing to them. The cluster credential is
    /// refused: it is for the Registry, and a stolen one must not read images.
    pub fn public_only<T>(&self, req: &Request<T>) -> ApiResult<bool> {
        public_only(self.caller(req)?)
    }

    /// [`Self::public_only`] for a request with this authorization header from
    /// `peer` (as [`Self::caller_from`] reads them).
    pub fn public_only_from(
        &self,
        authorization: Option<Option<&str>>,
        peer: Option<&TlsPeer>,
    ) -> ApiResult<bool> {
        public_only(self.caller_from(authorization, peer)?)
    }

    /// An interceptor that admits trusted clients only, for services where every
    /// call needs trust.
    pub fn trusted_only(&self) -> impl tonic::service::Interceptor + Clone + use<> {
        let auth = self.clone();
        move |req: Request<()>| match auth.require_trusted(&req) {
            Ok(()) => Ok(req),
            Err(e) => Err(tonic::Status::from(e)),
        }
    }

    /// An interceptor that admits blob nodes only.
    pub fn nodes_only(&self) -> impl tonic::service::Interceptor + Clone + use<> {
        let auth = self.clone();
        move |req: Request<()>| match auth.require_node(&req) {
            Ok(()) => Ok(req),
            Err(e) => Err(tonic::Status::from(e)),
        }
    }

    /// Adds an entry to the store and to the copy in memory.
    pub async fn add(
        &self,
        kind: TrustKind,
        description: String,
        fingerprint: String,
        expires_at: Option<UnixNanos>,
    ) -> ApiResult<TrustEntry> {
        let entry = self
            .catalog
            .add_trust(kind, description, fingerprint, expires_at)
            .await?;
        let mut copy = self.trusted.write().unwrap_or_else(|e| e.into_inner());
        copy.entries
            .insert(entry.fingerprint.clone(), entry.expires_at);
        copy.local_changes += 1;
        Ok(entry)
    }

    /// Removes an entry; it stops working at once.
    pub async fn remove(&self, id: String) -> ApiResult<()> {
        let fingerprint = self.catalog.remove_trust(id).await?;
        let mut copy = self.trusted.write().unwrap_or_else(|e| e.into_inner());
        copy.entries.remove(&fingerprint);
        copy.local_changes += 1;
        Ok(())
    }
}

fn public_only(caller: Caller) -> ApiResult<bool> {
    match caller {
        Caller::Anonymous => Ok(true),
        Caller::Trusted => Ok(false),
        Caller::Node => Err(not_for_nodes()),
    }
}

fn not_for_nodes() -> ApiError {
    ApiError::PermissionDenied(
        "the cluster credential is for blob nodes, not for client calls".into(),
    )
}

/// The token in an authorization header: `Bearer TOKEN`, or `Basic` with the
/// token as the password (any user name).
fn token_of(value: &str) -> Option<String> {
    use base64::Engine;
    let token = if let Some(token) = value.strip_prefix("Bearer ") {
        token.trim().to_owned()
    } else {
        let encoded = value.strip_prefix("Basic ")?.trim();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        text.split_once(':')?.1.to_owned()
    };
    (!token.is_empty()).then_some(token)
}

fn unauthenticated(msg: &str) -> ApiError {
    ApiError::Unauthenticated(msg.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token works the moment it is created, however the copy's reloads fall
    /// around its creation: a reload that had read the store before the token
    /// was stored used to put back a copy without it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_token_is_trusted_at_once_while_the_copy_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(dir.path().join("catalog.db")).await.unwrap();
        let auth = Auth::open(catalog, dir.path()).await.unwrap();
        let reloading = tokio::spawn({
            let auth = auth.clone();
            async move {
                loop {
                    auth.reload().await.unwrap();
                }
            }
        });
        for i in 0..300 {
            let token = new_secret();
            auth.add(TrustKind::Token, format!("t{i}"), hash_token(&token), None)
                .await
                .unwrap();
            let header = format!("Bearer {token}");
            let caller = auth.caller_from(Some(Some(&header)), None);
            assert!(
                matches!(caller, Ok(Caller::Trusted)),
                "token {i} was not trusted at once"
            );
        }
        reloading.abort();
    }
}
