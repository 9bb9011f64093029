//! Resource names: "images/{fingerprint}", "aliases/{alias}", "operations/{id}".

use imagestore_catalog::{ImageRef, ImageType};
use imagestore_image::FingerprintQuery;

use crate::error::{ApiResult, invalid};

/// Longer names are refused before any parsing, so a megabyte name costs nothing.
const MAX_NAME_LEN: usize = 512;

fn strip<'a>(field: &str, name: &'a str, collection: &str, example: &str) -> ApiResult<&'a str> {
    if name.len() > MAX_NAME_LEN {
        return Err(invalid(format!(
            "{field} is {} bytes long; the most is {MAX_NAME_LEN}",
            name.len()
        )));
    }
    match name.strip_prefix(collection) {
        Some(rest) if !rest.is_empty() => Ok(rest),
        _ => Err(invalid(format!(
            "{field} {name:?} is not a valid name: expected {example}"
        ))),
    }
}

/// "images/{fingerprint or prefix}" or "aliases/{alias}".
pub fn image_ref(field: &str, name: &str, image_type: Option<ImageType>) -> ApiResult<ImageRef> {
    if name.starts_with("aliases/") {
        return Ok(ImageRef::Alias {
            name: alias(field, name)?.to_owned(),
            image_type,
        });
    }
    let fp = strip(
        field,
        name,
        "images/",
        "\"images/{fingerprint}\" (12 to 64 lowercase hex characters) or \"aliases/{alias}\"",
    )?;
    FingerprintQuery::parse(fp)
        .map(ImageRef::Fingerprint)
        .map_err(|e| invalid(format!("{field}: {e}")))
}

/// "aliases/{alias}" → the alias name (which may contain slashes).
pub fn alias<'a>(field: &str, name: &'a str) -> ApiResult<&'a str> {
    let alias = strip(
        field,
        name,
        "aliases/",
        "\"aliases/{alias}\", e.g. \"aliases/debian/12\"",
    )?;
    imagestore_catalog::validate_alias_name(alias)?;
    Ok(alias)
}

/// "operations/{id}" → id.
pub fn operation<'a>(field: &str, name: &'a str) -> ApiResult<&'a str> {
    let id = strip(field, name, "operations/", "\"operations/{id}\"")?;
    if id.contains('/') {
        return Err(invalid(format!(
            "{field} {name:?}: an operation id has no '/'"
        )));
    }
    Ok(id)
}

/// "uploads/{id}" → id.
pub fn upload(field: &str, name: &str) -> ApiResult<String> {
    match name.strip_prefix("uploads/") {
        Some(id) if !id.is_empty() && id.len() <= 64 && !id.contains('/') => Ok(id.to_owned()),
        _ => Err(invalid(format!(
            "{field} {:?} is not a valid name: expected \"uploads/{{id}}\"",
            name.chars().take(100).collect::<String>()
        ))),
    }
}
