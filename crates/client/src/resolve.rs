//! Image names as `lxc` takes them: an alias first, else a fingerprint or a
//! unique fingerprint prefix.

use imagestore_proto::v1 as pb;

use crate::{Client, Error};

impl Client {
    /// The image `name` refers to. `vm` picks the virtual-machine image when an
    /// alias names both kinds (LXD's `--vm`).
    pub async fn resolve(&self, name: &str, vm: bool) -> Result<pb::Image, Error> {
        if name.is_empty() {
            return Err(Error::Invalid("an image name is required".into()));
        }
        let image_type = if vm {
            pb::ImageType::VirtualMachine
        } else {
            pb::ImageType::Unspecified
        };
        let by_alias = self
            .images()
            .get_image(pb::GetImageRequest {
                name: format!("aliases/{name}"),
                r#type: image_type as i32,
                ..Default::default()
            })
            .await;
        match by_alias {
            Ok(image) => return Ok(image.into_inner()),
            Err(s) if s.code() == tonic::Code::NotFound => {}
            // An alias-shaped name that is not a valid alias may still be a prefix.
            Err(s) if s.code() == tonic::Code::InvalidArgument => {}
            Err(s) => return Err(s.into()),
        }
        if !looks_like_fingerprint(name) {
            return Err(Error::NotFound(format!(
                "Image not found: no alias named {name:?}"
            )));
        }
        self.images()
            .get_image(pb::GetImageRequest {
                name: format!("images/{name}"),
                ..Default::default()
            })
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| match s.code() {
                tonic::Code::NotFound => Error::NotFound(format!(
                    "Image not found: no alias or fingerprint matches {name:?}"
                )),
                _ => s.into(),
            })
    }
}

fn looks_like_fingerprint(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_hexdigit())
}
