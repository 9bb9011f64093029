//! Tickets: what the control plane allows one caller to do on a blob node, for a
//! short time, signed with a key both derive from the cluster credential.
//!
//! A ticket is `v1.{expires}.{scope}.{mac}`: the expiry in Unix seconds, the scope
//! in URL-safe base64, and an HMAC-SHA256 over `v1.{expires}.{scope}` in hex.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = hmac::Hmac<Sha256>;

/// Exactly what a ticket allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Writing one upload session ("uploads/{id}").
    Upload(String),
    /// A one-shot upload; with a fingerprint, only content that hashes to it.
    OneShot(Option<String>),
    /// Reading the parts of the image with this fingerprint.
    Download(String),
}

impl Scope {
    fn encode(&self) -> String {
        match self {
            Self::Upload(name) => format!("upload:{name}"),
            Self::OneShot(None) => "one-shot:".to_owned(),
            Self::OneShot(Some(fp)) => format!("one-shot:{fp}"),
            Self::Download(fp) => format!("download:{fp}"),
        }
    }

    fn decode(s: &str) -> Option<Self> {
        let (kind, what) = s.split_once(':')?;
        Some(match kind {
            "upload" => Self::Upload(what.to_owned()),
            "one-shot" if what.is_empty() => Self::OneShot(None),
            "one-shot" => Self::OneShot(Some(what.to_owned())),
            "download" => Self::Download(what.to_owned()),
            _ => return None,
        })
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Upload(name) => write!(f, "upload {name}"),
            Self::OneShot(None) => f.write_str("a one-shot upload"),
            Self::OneShot(Some(fp)) => write!(f, "a one-shot upload of {fp}"),
            Self::Download(fp) => write!(f, "downloading image {fp}"),
        }
    }
}

/// Why a ticket was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    #[error("no ticket: ask the control plane for one (CreateUpload, GetUpload, ExportImage)")]
    Missing,
    #[error("the ticket is malformed")]
    Malformed,
    #[error("the ticket's signature is not valid: it was not issued by this cluster")]
    Forged,
    #[error("the ticket expired {0} s ago: ask the control plane for a fresh one")]
    Expired(u64),
    #[error("the ticket is for {granted}, not for {wanted}")]
    WrongScope { granted: String, wanted: String },
}

/// The gRPC metadata key under which a blob node names what kind of ticket
/// error it answered with, so that clients act on the kind, not the words.
pub const TICKET_ERROR_METADATA: &str = "imagestore-ticket-error";

impl TicketError {
    /// The kind, as sent under [`TICKET_ERROR_METADATA`]: `expired` is the one a
    /// client cures by asking for a fresh ticket.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::Forged => "forged",
            Self::Expired(_) => "expired",
            Self::WrongScope { .. } => "wrong-scope",
        }
    }
}

/// The signing key. Both tiers derive it from the cluster credential, so a
/// blob node can check what the control plane signed.
#[derive(Clone)]
pub struct TicketKey([u8; 32]);

impl std::fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TicketKey(..)")
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl TicketKey {
    /// The key for tickets of the cluster whose credential this is.
    pub fn derive(cluster_credential: &str) -> Self {
        let mut mac = HmacSha256::new_from_slice(cluster_credential.as_bytes())
            .expect("HMAC takes a key of any length");
        mac.update(b"imagestore ticket key v1");
        Self(mac.finalize().into_bytes().into())
    }

    fn mac(&self, body: &str) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        mac.update(body.as_bytes());
        mac
    }

    /// A ticket for `scope` that works for `ttl` (at least, whole seconds, so
    /// one issued late in a second does not lapse at the next); with its expiry
    /// (Unix seconds).
    pub fn issue(&self, scope: &Scope, ttl: Duration) -> (String, u64) {
        let end = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            + ttl.max(Duration::from_secs(1));
        let expires = end.as_secs() + u64::from(end.subsec_nanos() > 0);
        let body = format!("v1.{expires}.{}", URL_SAFE_NO_PAD.encode(scope.encode()));
        let tag = hex::encode(self.mac(&body).finalize().into_bytes());
        (format!("{body}.{tag}"), expires)
    }

    /// Checks the signature, the expiry and that the ticket allows `wanted`; a
    /// one-shot ticket without a fingerprint allows any one-shot upload.
    pub fn check(&self, ticket: &str, wanted: &Scope) -> Result<(), TicketError> {
        if ticket.is_empty() {
            return Err(TicketError::Missing);
        }
        let (body, tag) = ticket.rsplit_once('.').ok_or(TicketError::Malformed)?;
        let tag = hex::decode(tag).map_err(|_| TicketError::Malformed)?;
        self.mac(body)
            .verify_slice(&tag)
            .map_err(|_| TicketError::Forged)?;
        let mut fields = body.split('.');
        let (Some("v1"), Some(expires), Some(scope), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(TicketError::Malformed);
        };
        let expires: u64 = expires.parse().map_err(|_| TicketError::Malformed)?;
        let now = now();
        if now >= expires {
            return Err(TicketError::Expired(now - expires));
        }
        let granted = URL_SAFE_NO_PAD
            .decode(scope)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| Scope::decode(&s))
            .ok_or(TicketError::Malformed)?;
        let allowed = granted == *wanted
            || matches!(
                (&granted, wanted),
                (Scope::OneShot(None), Scope::OneShot(_))
            );
        if !allowed {
            return Err(TicketError::WrongScope {
                granted: granted.to_string(),
                wanted: wanted.to_string(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: &str = "01a4a996b5d3d3a4cba0d1a1d0d3b6a8f0e1c2b3a4958677685940312a1b0c0d";

    #[test]
    fn a_ticket_opens_exactly_its_scope() {
        let key = TicketKey::derive("cluster secret");
        let (ticket, _) = key.issue(&Scope::Download(FP.into()), Duration::from_secs(60));
        assert_eq!(key.check(&ticket, &Scope::Download(FP.into())), Ok(()));
        assert!(matches!(
            key.check(&ticket, &Scope::Download("ab".repeat(32))),
            Err(TicketError::WrongScope { .. })
        ));
        assert!(matches!(
            key.check(&ticket, &Scope::Upload("uploads/x".into())),
            Err(TicketError::WrongScope { .. })
        ));
        let (any, _) = key.issue(&Scope::OneShot(None), Duration::from_secs(60));
        assert_eq!(key.check(&any, &Scope::OneShot(Some(FP.into()))), Ok(()));
        let (one, _) = key.issue(&Scope::OneShot(Some(FP.into())), Duration::from_secs(60));
        assert!(key.check(&one, &Scope::OneShot(None)).is_err());
    }

    #[test]
    fn forged_tampered_expired_and_missing_tickets_are_refused() {
        let key = TicketKey::derive("cluster secret");
        let other = TicketKey::derive("another cluster");
        let scope = Scope::Upload("uploads/abc".into());
        let (ticket, _) = other.issue(&scope, Duration::from_secs(60));
        assert_eq!(key.check(&ticket, &scope), Err(TicketError::Forged));
        let (ticket, expires) = key.issue(&scope, Duration::from_secs(60));
        // Moving the expiry breaks the signature.
        let stretched = ticket.replacen(&expires.to_string(), &(expires + 3600).to_string(), 1);
        assert_eq!(key.check(&stretched, &scope), Err(TicketError::Forged));
        assert_eq!(key.check("", &scope), Err(TicketError::Missing));
        assert_eq!(key.check("garbage", &scope), Err(TicketError::Malformed));
        // An expired ticket, signed properly.
        let body = format!(
            "v1.{}.{}",
            now() - 5,
            URL_SAFE_NO_PAD.encode(scope.encode())
        );
        let tag = hex::encode(key.mac(&body).finalize().into_bytes());
        assert!(matches!(
            key.check(&format!("{body}.{tag}"), &scope),
            Err(TicketError::Expired(_))
        ));
    }
}
