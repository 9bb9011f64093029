//! S3 stores: configured from the standard AWS environment (AWS_ACCESS_KEY_ID,
//! AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, AWS_REGION, ...) and the store's
//! options, which win. Credentials never come from a cloud's instance metadata
//! service (169.254.169.254) unless the operator asks for that.

use std::collections::BTreeMap;

use object_store::ObjectStore;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};

/// The store option that lets credentials come from the instance metadata
/// service ("true"); every other option is one of object_store's S3 keys.
pub const INSTANCE_CREDENTIALS: &str = "instance_credentials";

/// Opens the S3 bucket `url` names; Err says what to set.
pub fn open(url: &str, options: &BTreeMap<String, String>) -> Result<Box<dyn ObjectStore>, String> {
    open_in(std::env::vars(), url, options)
}

/// As [`open`], with `env` as the environment.
fn open_in(
    env: impl Iterator<Item = (String, String)>,
    url: &str,
    options: &BTreeMap<String, String>,
) -> Result<Box<dyn ObjectStore>, String> {
    // As AmazonS3Builder::from_env, from the environment given.
    let mut builder = AmazonS3Builder::new();
    for (key, value) in env {
        if key.starts_with("AWS_")
            && let Ok(parsed) = key.to_ascii_lowercase().parse::<AmazonS3ConfigKey>()
        {
            builder = builder.with_config(parsed, value);
        }
    }
    let mut builder = builder.with_url(url);
    let mut instance = false;
    for (key, value) in options {
        if key == INSTANCE_CREDENTIALS {
            instance = matches!(value.to_ascii_lowercase().as_str(), "true" | "1" | "yes");
            continue;
        }
        let parsed: AmazonS3ConfigKey = key.to_ascii_lowercase().parse().map_err(|_| {
            format!(
                "unknown S3 store option {key:?}: the options are object_store's S3 keys \
                 (aws_endpoint, aws_region, aws_access_key_id, aws_secret_access_key, \
                 aws_allow_http, ...) and {INSTANCE_CREDENTIALS}"
            )
        })?;
        builder = builder.with_config(parsed, value);
    }
    let set = |key: AmazonS3ConfigKey| {
        builder
            .get_config_value(&key)
            .is_some_and(|v| !v.is_empty() && v != "false")
    };
    let credentials = set(AmazonS3ConfigKey::AccessKeyId)
        || set(AmazonS3ConfigKey::WebIdentityTokenFile)
        || set(AmazonS3ConfigKey::ContainerCredentialsRelativeUri)
        || set(AmazonS3ConfigKey::ContainerCredentialsFullUri)
        || set(AmazonS3ConfigKey::SkipSignature);
    if !credentials && !instance {
        return Err(format!(
            "no S3 credentials for {url}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or \
             aws_access_key_id and aws_secret_access_key in the store options); to take them \
             from the cloud's instance metadata service instead, set the store option \
             {INSTANCE_CREDENTIALS} = \"true\""
        ));
    }
    Ok(Box::new(builder.build().map_err(|e| e.to_string())?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn credentials_are_needed_unless_instance_credentials_are_asked_for() {
        let open = |url: &str, o: &BTreeMap<String, String>| open_in(std::iter::empty(), url, o);
        let none = open("s3://bucket", &options(&[("aws_region", "us-east-1")]));
        assert!(
            none.as_ref()
                .is_err_and(|e| e.contains(INSTANCE_CREDENTIALS)),
            "{:?}",
            none.err()
        );
        assert!(
            open(
                "s3://bucket",
                &options(&[("aws_region", "us-east-1"), (INSTANCE_CREDENTIALS, "true")])
            )
            .is_ok()
        );
        assert!(
            open(
                "s3://bucket",
                &options(&[
                    ("aws_access_key_id", "a"),
                    ("aws_secret_access_key", "b"),
                    ("aws_region", "us-east-1"),
                ])
            )
            .is_ok()
        );
        let typo = open("s3://bucket", &options(&[("aws_acess_key_id", "a")]));
        assert!(typo.is_err_and(|e| e.contains("unknown S3 store option")));
        // The standard environment's names, AWS_ENDPOINT_URL included.
        let env = [
            ("AWS_ACCESS_KEY_ID", "a"),
            ("AWS_SECRET_ACCESS_KEY", "b"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
            ("AWS_REGION", "us-east-1"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        assert!(open_in(env.into_iter(), "s3://bucket", &BTreeMap::new()).is_ok());
    }
}
