//! Between catalog records and protobuf messages.

use imagestore_catalog as cat;
use imagestore_proto::v1 as pb;
use prost_types::Timestamp;

use crate::error::{ApiResult, invalid};

pub fn timestamp(nanos: cat::UnixNanos) -> Timestamp {
    Timestamp {
        seconds: nanos.div_euclid(1_000_000_000),
        nanos: nanos.rem_euclid(1_000_000_000) as i32,
    }
}

pub fn opt_timestamp(nanos: Option<cat::UnixNanos>) -> Option<Timestamp> {
    nanos.map(timestamp)
}

/// A timestamp as UnixNanos; out of range (before 1678 or after 2262) is refused.
pub fn unix_nanos(field: &str, t: &Timestamp) -> ApiResult<cat::UnixNanos> {
    if !(0..1_000_000_000).contains(&t.nanos) {
        return Err(invalid(format!(
            "{field}: nanos must be 0 to 999999999, got {}",
            t.nanos
        )));
    }
    t.seconds
        .checked_mul(1_000_000_000)
        .and_then(|s| s.checked_add(i64::from(t.nanos)))
        .ok_or_else(|| invalid(format!("{field}: {}s is out of range", t.seconds)))
}

pub fn image_type(t: cat::ImageType) -> pb::ImageType {
    match t {
        cat::ImageType::Container => pb::ImageType::Container,
        cat::ImageType::VirtualMachine => pb::ImageType::VirtualMachine,
    }
}

/// An optional type from a request: unspecified means "any".
pub fn want_type(raw: i32) -> ApiResult<Option<cat::ImageType>> {
    match pb::ImageType::try_from(raw) {
        Ok(pb::ImageType::Unspecified) => Ok(None),
        Ok(pb::ImageType::Container) => Ok(Some(cat::ImageType::Container)),
        Ok(pb::ImageType::VirtualMachine) => Ok(Some(cat::ImageType::VirtualMachine)),
        Err(_) => Err(invalid(format!("unknown image type {raw}"))),
    }
}

fn layout(l: cat::Layout) -> pb::ImageLayout {
    match l {
        cat::Layout::Unified => pb::ImageLayout::Unified,
        cat::Layout::Split => pb::ImageLayout::Split,
    }
}

/// How a part is named on export.
pub fn export_role(r: cat::PartRole) -> imagestore_image::ExportRole {
    use imagestore_image::ExportRole;
    match r {
        cat::PartRole::Unified => ExportRole::Unified,
        cat::PartRole::Metadata => ExportRole::Metadata,
        cat::PartRole::Rootfs => ExportRole::Rootfs,
    }
}

/// A part role from the wire; None for unspecified.
pub fn catalog_part_role(r: pb::PartRole) -> Option<cat::PartRole> {
    match r {
        pb::PartRole::Unified => Some(cat::PartRole::Unified),
        pb::PartRole::Metadata => Some(cat::PartRole::Metadata),
        pb::PartRole::Rootfs => Some(cat::PartRole::Rootfs),
        pb::PartRole::Unspecified => None,
    }
}

pub fn part_role(r: cat::PartRole) -> pb::PartRole {
    match r {
        cat::PartRole::Unified => pb::PartRole::Unified,
        cat::PartRole::Metadata => pb::PartRole::Metadata,
        cat::PartRole::Rootfs => pb::PartRole::Rootfs,
    }
}

fn update_source(s: &cat::UpdateSource) -> pb::UpdateSource {
    pb::UpdateSource {
        server: s.server.clone(),
        protocol: s.protocol.clone(),
        alias: s.alias.clone(),
        certificate: s.certificate.clone(),
        image_type: s.image_type.map(image_type).unwrap_or_default() as i32,
    }
}

pub fn image(i: cat::Image) -> pb::Image {
    let etag = i.etag();
    pb::Image {
        name: format!("images/{}", i.fingerprint),
        fingerprint: i.fingerprint,
        r#type: image_type(i.image_type) as i32,
        architecture: i.architecture,
        size: i.size,
        filename: i.filename,
        layout: layout(i.layout) as i32,
        parts: i
            .parts
            .into_iter()
            .map(|p| pb::ImagePart {
                role: part_role(p.role) as i32,
                sha256: p.sha256,
                size: p.size,
                storage_key: p.storage_key,
                extension: p.extension,
            })
            .collect(),
        properties: i.properties.into_iter().collect(),
        public: i.public,
        auto_update: i.auto_update,
        cached: i.cached,
        create_time: opt_timestamp(i.created_at),
        upload_time: Some(timestamp(i.uploaded_at)),
        last_use_time: opt_timestamp(i.last_used_at),
        expire_time: opt_timestamp(i.expires_at),
        update_source: i.update_source.as_ref().map(update_source),
        aliases: i
            .aliases
            .into_iter()
            .map(|a| pb::AliasRef {
                name: a.name,
                description: a.description,
            })
            .collect(),
        etag,
        damage: i.damage.map(damage),
        stores: i.stores,
        failed_stores: i.failed_stores.into_iter().map(failed_store).collect(),
    }
}

pub fn failed_store(f: cat::FailedStore) -> pb::FailedStore {
    pb::FailedStore {
        store: f.store,
        message: f.message,
    }
}

pub fn damage(d: cat::Damage) -> pb::ImageDamage {
    pb::ImageDamage {
        part: cat::PartRole::parse(&d.part)
            .map(part_role)
            .unwrap_or(pb::PartRole::Unspecified) as i32,
        expected_sha256: d.expected_sha256,
        expected_size: d.expected_size,
        found_sha256: d.found_sha256,
        found_size: d.found_size,
        detect_time: Some(timestamp(d.detected_at)),
        message: d.message,
    }
}

pub fn alias(a: cat::Alias) -> pb::Alias {
    pb::Alias {
        name: format!("aliases/{}", a.name),
        target: a.target,
        description: a.description,
        r#type: image_type(a.image_type) as i32,
        create_time: Some(timestamp(a.created_at)),
        update_time: Some(timestamp(a.updated_at)),
    }
}

pub fn operation(o: cat::Operation) -> pb::Operation {
    let state = match o.state {
        cat::OperationState::Queued => pb::OperationState::Queued,
        cat::OperationState::Running => pb::OperationState::Running,
        cat::OperationState::Succeeded => pb::OperationState::Succeeded,
        cat::OperationState::Failed => pb::OperationState::Failed,
        cat::OperationState::Cancelled => pb::OperationState::Cancelled,
    };
    pb::Operation {
        name: format!("operations/{}", o.id),
        description: o.description,
        done: o.state.is_done(),
        state: state as i32,
        progress: Some(pb::OperationProgress {
            stage: o.stage,
            bytes_done: o.bytes_done,
            bytes_total: o.bytes_total,
            bytes_per_second: o.bytes_per_second,
        }),
        error: o
            .error
            .map(|(code, message)| pb::OperationError { code, message }),
        image: o.image,
        metadata: o.metadata.into_iter().collect(),
        may_cancel: o.may_cancel,
        create_time: Some(timestamp(o.created_at)),
        update_time: Some(timestamp(o.updated_at)),
    }
}

pub fn upload_state(s: cat::UploadState) -> pb::UploadState {
    match s {
        cat::UploadState::Open => pb::UploadState::Open,
        cat::UploadState::Complete => pb::UploadState::Complete,
        cat::UploadState::Cancelled => pb::UploadState::Cancelled,
        cat::UploadState::Failed => pb::UploadState::Failed,
    }
}
