//! imagestore.v1.Images.

use imagestore_auth::{Scope, hash_token, new_secret};
use imagestore_catalog::{self as cat, Catalog, ImageEdit, ImageFilter, PageRequest};
use imagestore_image::export_file_name;
use imagestore_proto::v1 as pb;
use pb::images_server::Images;
use tonic::{Request, Response};

use crate::auth::Auth;
use crate::convert;
use crate::error::{ApiError, ApiResult, Reply, invalid};
use crate::imports::ImportRules;
use crate::names;
use crate::nodes::{Need, NodePicker};

pub struct ImagesService {
    catalog: Catalog,
    nodes: NodePicker,
    auth: Auth,
    rules: std::sync::Arc<ImportRules>,
}

impl ImagesService {
    pub fn new(
        catalog: Catalog,
        nodes: NodePicker,
        auth: Auth,
        rules: std::sync::Arc<ImportRules>,
    ) -> Self {
        Self {
            catalog,
            nodes,
            auth,
            rules,
        }
    }

    /// Resolves a request's image name and wanted type to the record.
    async fn lookup(
        &self,
        name: &str,
        image_type: i32,
        public_only: bool,
    ) -> ApiResult<cat::Image> {
        let what = names::image_ref("name", name, convert::want_type(image_type)?)?;
        Ok(self.catalog.get_image(what, public_only).await?)
    }

    /// The image a read names, as the caller may see it: trusted callers see every
    /// image, others public ones, plus the private one an image secret opens
    /// (`use_secret` spends the secret).
    async fn visible(
        &self,
        public_only: bool,
        name: &str,
        image_type: i32,
        secret: &str,
        use_secret: bool,
    ) -> ApiResult<cat::Image> {
        if !public_only || secret.is_empty() {
            return self.lookup(name, image_type, public_only).await;
        }
        let what = names::image_ref("name", name, convert::want_type(image_type)?)?;
        let hash = hash_token(secret);
        Ok(if use_secret {
            self.catalog.use_image_secret(what, hash).await?
        } else {
            self.catalog.get_image_with_secret(what, hash).await?
        })
    }
}

/// The fields UpdateImage may change, as LXD's `ImagePut` (profiles aside: this
/// server has no instances).
const EDITABLE: &str = "public, auto_update, expire_time, properties, properties.{key}";

fn edit_from(image: &pb::Image, paths: &[String]) -> ApiResult<ImageEdit> {
    if paths.is_empty() {
        return Err(invalid(format!(
            "update_mask is empty: name the fields to change ({EDITABLE})"
        )));
    }
    let mut edit = ImageEdit {
        if_etag: (!image.etag.is_empty()).then(|| image.etag.clone()),
        ..ImageEdit::default()
    };
    for path in paths {
        match path.as_str() {
            "public" => edit.public = Some(image.public),
            "auto_update" => edit.auto_update = Some(image.auto_update),
            "properties" => {
                edit.properties = Some(image.properties.clone().into_iter().collect());
            }
            "expire_time" => {
                edit.expires_at = image
                    .expire_time
                    .as_ref()
                    .map(|t| convert::unix_nanos("image.expire_time", t))
                    .transpose()?;
            }
            p if p.starts_with("properties.") => {
                let key = &p["properties.".len()..];
                if key.is_empty() {
                    return Err(invalid("update_mask path \"properties.\" names no key"));
                }
                let value = image.properties.get(key).filter(|v| !v.is_empty()).cloned();
                edit.property_changes.push((key.to_owned(), value));
            }
            "name" | "fingerprint" | "type" | "architecture" | "size" | "filename" | "layout"
            | "parts" | "cached" | "create_time" | "upload_time" | "last_use_time"
            | "update_source" | "aliases" | "etag" => {
                return Err(invalid(format!(
                    "field {path:?} cannot be changed; editable fields are {EDITABLE} \
                     (aliases change through the Aliases service)"
                )));
            }
            _ => {
                return Err(invalid(format!(
                    "update_mask names unknown field {path:?}; editable fields are {EDITABLE}"
                )));
            }
        }
    }
    Ok(edit)
}

fn export_file(fingerprint: &str, part: &cat::Part) -> pb::ExportFile {
    pb::ExportFile {
        role: convert::part_role(part.role) as i32,
        file_name: export_file_name(
            fingerprint,
            convert::export_role(part.role),
            &part.extension,
        ),
        size: part.size,
        sha256: part.sha256.clone(),
    }
}

#[tonic::async_trait]
impl Images for ImagesService {
    async fn get_image(&self, req: Request<pb::GetImageRequest>) -> Reply<pb::Image> {
        let reader = self.auth.reader(&req).await?;
        let public_only = reader.public_only;
        let r = req.into_inner();
        let image = self
            .visible(public_only, &r.name, r.r#type, &r.secret, false)
            .await?;
        Ok(Response::new(convert::image(image)))
    }

    async fn list_images(
        &self,
        req: Request<pb::ListImagesRequest>,
    ) -> Reply<pb::ListImagesResponse> {
        let reader = self.auth.reader(&req).await?;
        let public_only = reader.public_only;
        let r = req.into_inner();
        let filter = ImageFilter::parse(&r.filter).map_err(ApiError::from)?;
        let scope = format!("images|{public_only}|{}", r.filter);
        let page = PageRequest::new(r.page_size, &r.page_token, &scope).map_err(ApiError::from)?;
        let page = self
            .catalog
            .list_images(filter, page, public_only)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::ListImagesResponse {
            images: page.items.into_iter().map(convert::image).collect(),
            next_page_token: page.next_token,
        }))
    }

    async fn update_image(&self, req: Request<pb::UpdateImageRequest>) -> Reply<pb::Image> {
        self.auth.require_trusted(&req)?;
        let r = req.into_inner();
        let image = r.image.ok_or_else(|| invalid("image is required"))?;
        let what = names::image_ref("image.name", &image.name, None)?;
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let edit = edit_from(&image, &paths)?;
        let updated = self
            .catalog
            .update_image(what, edit)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(convert::image(updated)))
    }

    async fn delete_image(
        &self,
        req: Request<pb::DeleteImageRequest>,
    ) -> Reply<pb::DeleteImageResponse> {
        self.auth.require_trusted(&req)?;
        let r = req.into_inner();
        let what = names::image_ref("name", &r.name, None)?;
        let (image, released) = self
            .catalog
            .delete_image(what)
            .await
            .map_err(ApiError::from)?;
        tracing::info!(fingerprint = %image.fingerprint, released = released.len(), "image deleted");
        Ok(Response::new(pb::DeleteImageResponse {
            fingerprint: image.fingerprint,
            released_storage_keys: released,
        }))
    }

    async fn export_image(
        &self,
        req: Request<pb::ExportImageRequest>,
    ) -> Reply<pb::ExportImageResponse> {
        let reader = self.auth.reader(&req).await?;
        let public_only = reader.public_only;
        let r = req.into_inner();
        let image = self
            .visible(public_only, &r.name, r.r#type, &r.secret, true)
            .await?;
        crate::error::refuse_damaged(&image)?;
        if !public_only {
            // Only trusted callers' reports count: a stranger cannot move load.
            self.nodes.report_unreachable(&r.unreachable_blob_node);
        }
        let node = self.nodes.pick(Need::OneOf(&image.stores)).await?;
        if image.cached {
            // A cached image lives while it is used (LXD's last_used_at).
            self.catalog
                .touch_image(image.fingerprint.clone())
                .await
                .map_err(ApiError::from)?;
        }
        let (ticket, expires) = self
            .auth
            .ticket(&Scope::Download(image.fingerprint.clone()));
        let files = image
            .parts
            .iter()
            .map(|p| export_file(&image.fingerprint, p))
            .collect();
        Ok(Response::new(pb::ExportImageResponse {
            image: Some(convert::image(image)),
            files,
            blob_node: node.address,
            ticket,
            ticket_expire_time: Some(expires),
        }))
    }

    async fn create_image_secret(
        &self,
        req: Request<pb::CreateImageSecretRequest>,
    ) -> Reply<pb::ImageSecret> {
        self.auth.require_trusted(&req)?;
        let what = names::image_ref("name", &req.get_ref().name, None)?;
        let secret = new_secret();
        let (image, expires) = self
            .catalog
            .create_image_secret(what, hash_token(&secret), self.auth.secret_ttl())
            .await
            .map_err(ApiError::from)?;
        tracing::info!(fingerprint = %image.fingerprint, "image secret created");
        Ok(Response::new(pb::ImageSecret {
            image: format!("images/{}", image.fingerprint),
            secret,
            expire_time: Some(convert::timestamp(expires)),
        }))
    }

    async fn refresh_image(&self, req: Request<pb::RefreshImageRequest>) -> Reply<pb::Operation> {
        self.auth.require_trusted(&req)?;
        let r = req.into_inner();
        let what = names::image_ref("name", &r.name, None)?;
        let image = self
            .catalog
            .get_image(what, false)
            .await
            .map_err(ApiError::from)?;
        let op = crate::imports::queue_refresh(&self.catalog, &image).await?;
        Ok(Response::new(convert::operation(op)))
    }

    async fn verify_image(&self, req: Request<pb::VerifyImageRequest>) -> Reply<pb::Operation> {
        self.auth.require_trusted(&req)?;
        let what = names::image_ref("name", &req.get_ref().name, None)?;
        let op = self
            .catalog
            .create_verification(what)
            .await
            .map_err(ApiError::from)?;
        tracing::info!(operation = %op.id, image = %op.image, "verification queued");
        Ok(Response::new(convert::operation(op)))
    }

    async fn copy_image(&self, req: Request<pb::CopyImageRequest>) -> Reply<pb::Operation> {
        self.auth.require_trusted(&req)?;
        let roles = self.auth.roles(&req);
        let r = req.into_inner();
        let image = self.lookup(&r.name, 0, false).await?;
        let request = pb::ImportImageRequest {
            source: Some(pb::import_image_request::Source::Copy(pb::CopySource {
                fingerprint: image.fingerprint,
            })),
            target: r.target,
            ..Default::default()
        };
        let op = crate::imports::queue(&self.catalog, &self.rules, request, roles).await?;
        Ok(Response::new(convert::operation(op)))
    }

    async fn remove_image_location(
        &self,
        req: Request<pb::RemoveImageLocationRequest>,
    ) -> Reply<pb::Image> {
        self.auth.require_trusted(&req)?;
        let r = req.into_inner();
        self.rules.stores.check("store", &r.store)?;
        let what = names::image_ref("name", &r.name, None)?;
        let image = self
            .catalog
            .remove_location(what, r.store.clone())
            .await
            .map_err(ApiError::from)?;
        tracing::info!(fingerprint = %image.fingerprint, store = %r.store, "image removed from a store");
        Ok(Response::new(convert::image(image)))
    }

    async fn list_stores(
        &self,
        req: Request<pb::ListStoresRequest>,
    ) -> Reply<pb::ListStoresResponse> {
        self.auth.require_trusted(&req)?;
        let nodes = self.catalog.list_nodes().await.map_err(ApiError::from)?;
        let stores = self.rules.stores.names();
        Ok(Response::new(pb::ListStoresResponse {
            stores: stores
                .iter()
                .map(|name| pb::StoreInfo {
                    name: name.clone(),
                    default: name == self.rules.stores.default_store(),
                    nodes: nodes
                        .iter()
                        .filter(|n| self.nodes.is_healthy(n) && n.stores.contains(name))
                        .count() as u32,
                })
                .collect(),
        }))
    }
}
