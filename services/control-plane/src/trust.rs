//! imagestore.v1.Trust: the trust store, managed by trusted clients (the service
//! is served behind the trust check).

use imagestore_auth::{fingerprint_pem, hash_token, new_secret};
use imagestore_catalog::{TrustEntry, TrustKind, now};
use imagestore_proto::v1 as pb;
use pb::trust_server::Trust;
use tonic::{Request, Response};

use crate::auth::Auth;
use crate::convert;
use crate::error::{Reply, invalid};

pub struct TrustService {
    auth: Auth,
}

impl TrustService {
    pub fn new(auth: Auth) -> Self {
        Self { auth }
    }
}

fn entry(e: TrustEntry) -> pb::TrustEntry {
    let (kind, fingerprint) = match e.kind {
        TrustKind::Certificate => (pb::TrustKind::Certificate, e.fingerprint),
        // Enough of the hash to tell tokens apart, not enough to matter.
        TrustKind::Token => (
            pb::TrustKind::Token,
            e.fingerprint.chars().take(12).collect(),
        ),
    };
    pb::TrustEntry {
        name: format!("trust/{}", e.id),
        kind: kind as i32,
        description: e.description,
        fingerprint,
        create_time: Some(convert::timestamp(e.created_at)),
        expire_time: convert::opt_timestamp(e.expires_at),
    }
}

#[tonic::async_trait]
impl Trust for TrustService {
    async fn add_certificate(
        &self,
        req: Request<pb::AddCertificateRequest>,
    ) -> Reply<pb::TrustEntry> {
        let req = req.into_inner();
        let fingerprint = fingerprint_pem(req.certificate_pem.as_bytes())
            .map_err(|e| invalid(format!("certificate_pem is {e}")))?;
        let added = self
            .auth
            .add(TrustKind::Certificate, req.description, fingerprint, None)
            .await?;
        Ok(Response::new(entry(added)))
    }

    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Reply<pb::CreateTokenResponse> {
        let req = req.into_inner();
        let expires_at = match req.ttl_seconds {
            0 => None,
            s => {
                let nanos = i64::try_from(s)
                    .ok()
                    .and_then(|s| s.checked_mul(1_000_000_000))
                    .and_then(|n| n.checked_add(now()))
                    .ok_or_else(|| invalid(format!("ttl_seconds {s} is too large")))?;
                Some(nanos)
            }
        };
        let token = new_secret();
        let added = self
            .auth
            .add(
                TrustKind::Token,
                req.description,
                hash_token(&token),
                expires_at,
            )
            .await?;
        Ok(Response::new(pb::CreateTokenResponse {
            entry: Some(entry(added)),
            token,
        }))
    }

    async fn list_trust(
        &self,
        _req: Request<pb::ListTrustRequest>,
    ) -> Reply<pb::ListTrustResponse> {
        let entries = self
            .auth
            .catalog()
            .list_trust()
            .await
            .map_err(crate::error::ApiError::from)?;
        Ok(Response::new(pb::ListTrustResponse {
            entries: entries.into_iter().map(entry).collect(),
        }))
    }

    async fn remove_trust(
        &self,
        req: Request<pb::RemoveTrustRequest>,
    ) -> Reply<pb::RemoveTrustResponse> {
        let name = req.into_inner().name;
        let id = name
            .strip_prefix("trust/")
            .filter(|id| !id.is_empty() && !id.contains('/'))
            .ok_or_else(|| invalid(format!("name {name:?} is not \"trust/{{id}}\"")))?;
        self.auth.remove(id.to_owned()).await?;
        Ok(Response::new(pb::RemoveTrustResponse {}))
    }
}
