//! Store names: how a cluster's configuration, its blob nodes and its catalog
//! name the stores image bytes live in (Glance's backend identifiers).

/// The store a cluster has when its configuration names none.
pub const DEFAULT_STORE: &str = "local";

/// Checks a store name: 1 to 63 characters, lowercase letters, digits, '-' and
/// '_', starting with a letter or digit (so that a name is safe in a filter, a
/// path and a metric label).
pub fn check_store_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(format!(
            "store name {name:?} is not valid: 1 to 63 lowercase letters, digits, '-' and '_', \
             starting with a letter or digit"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["local", "s3-eu", "s3_us2", "0"] {
            assert!(check_store_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-x", "S3", "a b", "a/b", &"x".repeat(64)] {
            assert!(check_store_name(bad).is_err(), "{bad}");
        }
    }
}
