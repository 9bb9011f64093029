//! Image files over HTTP: a request for a file is answered with a redirect to a
//! healthy blob node and a short-lived ticket, never with the bytes; and LXD's
//! URL-import discovery (`lxc image import https://HOST/images/NAME`) is answered
//! with the headers LXD and Incus read.

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::response::IntoResponse;
use http::{HeaderName, HeaderValue, StatusCode, header};
use imagestore_auth::Scope;
use imagestore_catalog::{CatalogError, Image, ImageRef, Layout, Part, PartRole};
use imagestore_image::{Fingerprint, FingerprintQuery, export_file_name};
use serde::Deserialize;

use super::{ErrorReply, Face, Reply, base_url};
use crate::convert::export_role;
use crate::error::{ApiError, invalid};

/// The path (relative to the server's URL) that serves one file of an image:
/// content-addressed, under the name `export` gives the file.
pub fn file_path(image: &Image, part: &Part) -> String {
    format!(
        "files/{}/{}",
        image.fingerprint,
        file_name(&image.fingerprint, part)
    )
}

fn file_name(fingerprint: &str, part: &Part) -> String {
    export_file_name(fingerprint, export_role(part.role), &part.extension)
}

#[derive(Debug, Deserialize)]
pub struct FileQuery {
    /// A download ticket, which stands for the caller it was given to.
    #[serde(default)]
    ticket: String,
}

/// `GET|HEAD /files/{fingerprint}/{name}` → 307 to a blob node.
pub async fn file(
    State(face): State<Arc<Face>>,
    Path((fingerprint, name)): Path<(String, String)>,
    Query(query): Query<FileQuery>,
    req: Request,
) -> Reply {
    let fp = Fingerprint::parse(&fingerprint).map_err(ApiError::from)?;
    let scope = Scope::Download(fp.as_str().to_owned());
    let public_only = if query.ticket.is_empty() {
        face.public_only(&req)?
    } else if face.auth.ticket_allows(&query.ticket, &scope) {
        false
    } else {
        return Err(ApiError::PermissionDenied(format!(
            "the ticket in this URL does not allow {scope} (expired, or not issued by this \
             server): ask for the image again"
        ))
        .into());
    };
    let image = face
        .catalog
        .get_image(
            ImageRef::Fingerprint(FingerprintQuery::Full(fp)),
            public_only,
        )
        .await
        .map_err(ApiError::from)?;
    crate::error::refuse_damaged(&image)?;
    let part = image
        .parts
        .iter()
        .find(|p| file_name(&image.fingerprint, p) == name)
        .ok_or_else(|| {
            let names: Vec<String> = image
                .parts
                .iter()
                .map(|p| file_name(&image.fingerprint, p))
                .collect();
            ApiError::from(CatalogError::NotFound(format!(
                "image {} has no file {name:?}; its files are {}",
                image.fingerprint,
                names.join(" and ")
            )))
        })?;
    if image.cached {
        // A cached image lives while it is used (LXD's last_used_at).
        face.catalog
            .touch_image(image.fingerprint.clone())
            .await
            .map_err(ApiError::from)?;
    }
    let node = face
        .nodes
        .pick(crate::nodes::Need::OneOf(&image.stores))
        .await?;
    let (ticket, _) = face.auth.ticket(&scope);
    let location = format!(
        "{}/blobs/{}/{}?ticket={ticket}",
        node.address.trim_end_matches('/'),
        image.fingerprint,
        file_name(&image.fingerprint, part)
    );
    let location = HeaderValue::from_str(&location)
        .map_err(|_| ApiError::Unavailable(format!("blob node address {:?}", node.address)))?;
    Ok((
        StatusCode::TEMPORARY_REDIRECT,
        [
            (header::LOCATION, location),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
    )
        .into_response())
}

/// `HEAD|GET /images/{alias or fingerprint}`: LXD's URL-import discovery. LXD
/// (`LXD-Image-*`) and Incus (`Incus-Image-*`) read the image's hash and the URL
/// of its file from the headers; the status is not looked at, the body is for
/// people.
pub async fn discover(
    State(face): State<Arc<Face>>,
    Path(name): Path<String>,
    req: Request,
) -> Reply {
    let public_only = face.public_only(&req)?;
    let image = named(&face, &name, public_only).await?;
    crate::error::refuse_damaged(&image)?;
    if image.layout == Layout::Split {
        return Err(ApiError::FailedPrecondition(format!(
            "image {} is split (metadata and rootfs); LXD's URL import carries one file only: \
             add this server as a simplestreams remote (`lxc remote add NAME URL --protocol \
             simplestreams`) and copy from there",
            image.fingerprint
        ))
        .into());
    }
    let part = image
        .parts
        .iter()
        .find(|p| p.role == PartRole::Unified)
        .ok_or_else(|| {
            ApiError::from(CatalogError::Corrupt(
                "unified image without its file".into(),
            ))
        })?;
    let mut url = format!("{}/{}", base_url(&req), file_path(&image, part));
    if !image.public {
        // LXD fetches the URL with no credentials: the ticket stands for them.
        let (ticket, _) = face
            .auth
            .ticket(&Scope::Download(image.fingerprint.clone()));
        url.push_str(&format!("?ticket={ticket}"));
    }
    let hash = HeaderValue::from_str(&image.fingerprint).map_err(|_| invalid("fingerprint"))?;
    let url_value =
        HeaderValue::from_str(&url).map_err(|_| invalid("the request's Host header"))?;
    let body = serde_json::json!({"fingerprint": image.fingerprint, "url": url});
    Ok((
        [
            (HeaderName::from_static("lxd-image-hash"), hash.clone()),
            (HeaderName::from_static("lxd-image-url"), url_value.clone()),
            (HeaderName::from_static("incus-image-hash"), hash),
            (HeaderName::from_static("incus-image-url"), url_value),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        axum::Json(body),
    )
        .into_response())
}

/// An image by alias, else by fingerprint or unique prefix, as LXD resolves
/// names.
async fn named(face: &Face, name: &str, public_only: bool) -> Result<Image, ErrorReply> {
    let by_alias = face
        .catalog
        .get_image(
            ImageRef::Alias {
                name: name.to_owned(),
                image_type: None,
            },
            public_only,
        )
        .await;
    match (by_alias, FingerprintQuery::parse(name)) {
        (Ok(image), _) => Ok(image),
        (Err(CatalogError::NotFound(_)), Ok(fp)) => Ok(face
            .catalog
            .get_image(ImageRef::Fingerprint(fp), public_only)
            .await
            .map_err(ApiError::from)?),
        (Err(e), _) => Err(ApiError::from(e).into()),
    }
}
