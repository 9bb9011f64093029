//! imagestore.v1.Imports: server-side imports. The request is checked here (method
//! enabled, source well-formed and allowed by import filtering) and queued as an
//! operation; a blob node claims it, fetches and registers (Registry), so the
//! bytes never come here. Refreshes (RefreshImage, auto-update) are the same
//! imports, with the image they replace.

use std::sync::Arc;

use imagestore_catalog::{Catalog, Image, ImageRef, ImageType, Importer, Operation, StoreNeeds};
use imagestore_fetch::{ImportFiltering, parse_url};
use imagestore_image::FingerprintQuery;
use imagestore_proto::v1 as pb;
use pb::import_image_request::Source;
use pb::imports_server::Imports;
use prost::Message;
use tonic::{Request, Response};

use crate::auth::Auth;
use crate::config::ImportSettings;
use crate::convert;
use crate::error::{ApiError, ApiResult, Reply, invalid};
use crate::stores::{Stores, Target};

/// What imports need to know of the configuration, shared by the services that
/// queue and hand them out.
#[derive(Debug)]
pub struct ImportRules {
    pub filtering: ImportFiltering,
    pub settings: ImportSettings,
    pub stores: Stores,
}

impl ImportRules {
    /// FAILED_PRECONDITION unless the administrator enabled `method`.
    pub fn require_enabled(&self, method: &str) -> ApiResult<()> {
        if self.settings.enabled(method) {
            return Ok(());
        }
        Err(ApiError::FailedPrecondition(format!(
            "the import method {method:?} is disabled on this server (import.enabled_methods is {:?})",
            self.settings.enabled_methods
        )))
    }

    /// Checks a source address before anything connects to it.
    fn check_url(&self, field: &str, s: &str) -> ApiResult<()> {
        if s.is_empty() {
            return Err(invalid(format!("{field} is required")));
        }
        let url = parse_url(s).map_err(|e| invalid(format!("{field}: {e}")))?;
        self.filtering
            .check_url(&url)
            .map_err(|e| invalid(e.to_string()))
    }

    /// A source server's address, image name and certificate pin, checked;
    /// `kind` names the request's field.
    fn check_source(&self, kind: &str, server: &str, image: &str, pin: &str) -> ApiResult<()> {
        self.check_url(&format!("{kind}.server"), server)?;
        need_image(&format!("{kind}.image"), image)?;
        if !pin.is_empty() && !imagestore_fetch::is_sha256(pin) {
            return Err(invalid(format!(
                "{kind}.certificate_sha256 must be 64 lowercase hex characters"
            )));
        }
        Ok(())
    }

    /// The import method a request uses, checked.
    fn check(&self, r: &pb::ImportImageRequest) -> ApiResult<&'static str> {
        let method = match &r.source {
            None => {
                return Err(invalid(
                    "source is required: url, remote, simplestreams, lxd or copy",
                ));
            }
            Some(Source::Copy(c)) => {
                if r.auto_update || !r.aliases.is_empty() || !r.properties.is_empty() {
                    return Err(invalid(
                        "a copy to other stores takes only copy.fingerprint and target: the \
                         image keeps its aliases, properties and auto_update",
                    ));
                }
                need_image("copy.fingerprint", &c.fingerprint)?;
                "copy"
            }
            Some(Source::Url(u)) => {
                self.check_url("url.url", &u.url)?;
                if r.auto_update {
                    return Err(invalid(
                        "auto_update needs a source that names an alias (remote or simplestreams); \
                         a URL import has none, as in LXD",
                    ));
                }
                "url"
            }
            Some(Source::Remote(s)) => {
                self.check_source("remote", &s.server, &s.image, &s.certificate_sha256)?;
                refuse_followed_secret(r.auto_update, &s.secret)?;
                "remote"
            }
            Some(Source::Simplestreams(s)) => {
                self.check_source("simplestreams", &s.server, &s.image, &s.certificate_sha256)?;
                "simplestreams"
            }
            Some(Source::Lxd(s)) => {
                self.check_source("lxd", &s.server, &s.image, &s.certificate_sha256)?;
                refuse_followed_secret(r.auto_update, &s.secret)?;
                // Copying from another server, as from another imagestore.
                "remote"
            }
        };
        self.require_enabled(method)?;
        for a in &r.aliases {
            imagestore_catalog::validate_alias(&a.name, &a.description)?;
        }
        convert::want_type(r.r#type)?;
        Ok(method)
    }
}

/// LXD follows only public images named by alias.
fn refuse_followed_secret(auto_update: bool, secret: &str) -> ApiResult<()> {
    if auto_update && !secret.is_empty() {
        return Err(invalid(
            "auto_update needs a public source image named by alias; an image reached with a \
             secret cannot be followed",
        ));
    }
    Ok(())
}

fn need_image(field: &str, s: &str) -> ApiResult<()> {
    if s.trim().is_empty() {
        return Err(invalid(format!(
            "{field} is required: an alias, fingerprint or fingerprint prefix"
        )));
    }
    if s.len() > 512 {
        return Err(invalid(format!("{field} is longer than 512 bytes")));
    }
    Ok(())
}

/// The import that brings a newer version of `image` from its source, or None
/// when it follows nothing.
pub fn refresh_request(image: &Image) -> Option<pb::ImportImageRequest> {
    let src = image
        .update_source
        .as_ref()
        .filter(|s| !s.alias.is_empty())?;
    let source = match src.protocol.as_str() {
        "simplestreams" => Source::Simplestreams(pb::SimplestreamsSource {
            server: src.server.clone(),
            image: src.alias.clone(),
            architecture: image.architecture.clone(),
            copy_aliases: false,
            certificate_sha256: src.certificate.clone(),
        }),
        "imagestore" => Source::Remote(pb::RemoteSource {
            server: src.server.clone(),
            image: src.alias.clone(),
            certificate: src.certificate.clone(),
            ..Default::default()
        }),
        "lxd" => Source::Lxd(pb::LxdSource {
            server: src.server.clone(),
            image: src.alias.clone(),
            certificate_sha256: src.certificate.clone(),
            ..Default::default()
        }),
        _ => return None,
    };
    Some(pb::ImportImageRequest {
        source: Some(source),
        public: image.public,
        auto_update: true,
        cached: image.cached,
        r#type: match src.image_type.unwrap_or(image.image_type) {
            ImageType::VirtualMachine => pb::ImageType::VirtualMachine,
            ImageType::Container => pb::ImageType::Container,
        } as i32,
        ..Default::default()
    })
}

/// Queues a refresh of `image` (or returns the one under way).
pub async fn queue_refresh(catalog: &Catalog, image: &Image) -> ApiResult<Operation> {
    let request = refresh_request(image).ok_or_else(|| {
        ApiError::FailedPrecondition(format!(
            "image {} has no update source it can be refreshed from (it was uploaded, \
             imported from a URL, or copied by fingerprint or secret)",
            image.fingerprint
        ))
    })?;
    // The newer version goes where the old one is.
    let mut request = request;
    let mut needs = StoreNeeds::default();
    if !image.stores.is_empty() {
        let target = Target {
            stores: image.stores.clone(),
            must_succeed: true,
        };
        request.target = Some(Stores::selection(&target));
        needs.all = target.stores;
    }
    Ok(catalog
        .create_import(
            "Refreshing image".into(),
            request.encode_to_vec(),
            Some(image.fingerprint.clone()),
            needs,
            Importer {
                roles: Vec::new(),
                trace_parent: imagestore_telemetry::propagation::traceparent(),
            },
        )
        .await?)
}

/// Checks and queues an import (a copy to other stores included) asked for by
/// a caller with `roles`.
pub async fn queue(
    catalog: &Catalog,
    rules: &ImportRules,
    mut r: pb::ImportImageRequest,
    roles: Vec<String>,
) -> ApiResult<Operation> {
    let method = rules.check(&r)?;
    let target = rules.stores.target(r.target.as_ref())?;
    let (description, needs, target) = match &mut r.source {
        Some(Source::Copy(c)) => {
            let image = catalog
                .get_image(
                    ImageRef::Fingerprint(FingerprintQuery::parse(&c.fingerprint)?),
                    false,
                )
                .await?;
            crate::error::refuse_damaged(&image)?;
            c.fingerprint = image.fingerprint.clone();
            let missing: Vec<String> = target
                .stores
                .iter()
                .filter(|s| !image.stores.contains(s))
                .cloned()
                .collect();
            // A store the image was removed from keeps its bytes until a node
            // collects them; a copy written before then could be collected
            // after it is recorded.
            let keys = image.parts.iter().map(|p| p.storage_key.clone()).collect();
            let pending = catalog.releases_pending(missing.clone(), keys).await?;
            if !pending.is_empty() {
                return Err(ApiError::FailedPrecondition(format!(
                    "image {} was removed from {} and its bytes there are not collected yet: \
                     copy it again once a blob node reaching the store has collected them \
                     (every gc_interval)",
                    image.fingerprint,
                    pending.join(", ")
                )));
            }
            if missing.is_empty() {
                return Err(ApiError::Catalog(
                    imagestore_catalog::CatalogError::AlreadyExists(format!(
                        "image {} is in {} already",
                        image.fingerprint,
                        target.stores.join(", ")
                    )),
                ));
            }
            let target = Target {
                stores: missing,
                must_succeed: target.must_succeed,
            };
            let needs = StoreNeeds {
                all: target.stores.clone(),
                any: image.stores.clone(),
                copy_of: Some(image.fingerprint.clone()),
            };
            ("Copying image to stores", needs, target)
        }
        _ => {
            let needs = StoreNeeds {
                all: target.stores.clone(),
                ..StoreNeeds::default()
            };
            ("Downloading image", needs, target)
        }
    };
    r.target = Some(Stores::selection(&target));
    let op = catalog
        .create_import(
            description.into(),
            r.encode_to_vec(),
            None,
            needs,
            Importer {
                roles,
                trace_parent: imagestore_telemetry::propagation::traceparent(),
            },
        )
        .await?;
    tracing::info!(operation = %op.id, method, stores = ?target.stores, "import queued");
    Ok(op)
}

pub struct ImportsService {
    catalog: Catalog,
    rules: Arc<ImportRules>,
    auth: Auth,
}

impl ImportsService {
    pub fn new(catalog: Catalog, rules: Arc<ImportRules>, auth: Auth) -> Self {
        Self {
            catalog,
            rules,
            auth,
        }
    }
}

#[tonic::async_trait]
impl Imports for ImportsService {
    async fn import_image(&self, req: Request<pb::ImportImageRequest>) -> Reply<pb::Operation> {
        let roles = self.auth.roles(&req);
        let op = queue(&self.catalog, &self.rules, req.into_inner(), roles).await?;
        Ok(Response::new(convert::operation(op)))
    }
}
