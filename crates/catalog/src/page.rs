//! Page sizes and page tokens. A token is the last key of the previous page plus a
//! digest of the filter it was issued for, so it cannot be replayed against another
//! filter to probe what that filter would hide.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{CatalogError, Result};

pub const DEFAULT_PAGE_SIZE: usize = 100;
pub const MAX_PAGE_SIZE: usize = 1000;
/// Rows a listing reads per query while it fills a page.
pub(crate) const SCAN_BATCH: i64 = 512;

/// A validated request for one page.
#[derive(Debug, Clone)]
pub struct PageRequest {
    pub size: usize,
    /// The last key of the previous page.
    pub after: Option<String>,
    scope: String,
}

/// One page of results.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Empty on the last page.
    pub next_token: String,
}

#[derive(Serialize, Deserialize)]
struct Token {
    a: String,
    s: String,
}

impl PageRequest {
    /// `scope` is everything besides the position that shapes the listing (filter,
    /// visibility); a token is only valid for the same scope.
    pub fn new(page_size: i32, page_token: &str, scope: &str) -> Result<Self> {
        let size = match page_size {
            n if n < 0 => {
                return Err(CatalogError::InvalidArgument(format!(
                    "page_size must not be negative (got {n})"
                )));
            }
            0 => DEFAULT_PAGE_SIZE,
            n => (n as usize).min(MAX_PAGE_SIZE),
        };
        let scope = scope_digest(scope);
        let after = if page_token.is_empty() {
            None
        } else {
            let invalid = || {
                CatalogError::InvalidArgument(
                    "page_token is not valid for this listing (it belongs to another filter, \
                     or is damaged): list again without it"
                        .into(),
                )
            };
            let raw = URL_SAFE_NO_PAD.decode(page_token).map_err(|_| invalid())?;
            let token: Token = serde_json::from_slice(&raw).map_err(|_| invalid())?;
            if token.s != scope {
                return Err(invalid());
            }
            Some(token.a)
        };
        Ok(Self { size, after, scope })
    }

    /// The token for the page after one that ended at `last`.
    pub fn next_token(&self, last: &str) -> String {
        let token = Token {
            a: last.to_owned(),
            s: self.scope.clone(),
        };
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&token).unwrap_or_default())
    }
}

impl PageRequest {
    /// The page made of `items`; `more` says whether anything follows, and `key`
    /// gives an item's position for the next page's token.
    pub fn finish<T>(&self, items: Vec<T>, more: bool, key: impl Fn(&T) -> String) -> Page<T> {
        let next = more.then(|| items.last().map(key)).flatten();
        self.finish_after(items, next)
    }

    /// The page made of `items`, continued after the key `next` (None: the last
    /// page).
    pub fn finish_after<T>(&self, items: Vec<T>, next: Option<String>) -> Page<T> {
        let next_token = next.map(|k| self.next_token(&k)).unwrap_or_default();
        Page { items, next_token }
    }
}

fn scope_digest(scope: &str) -> String {
    hex::encode(&Sha256::digest(scope.as_bytes())[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_only_within_their_scope() {
        let first = PageRequest::new(2, "", "os=debian").unwrap();
        assert_eq!(first.size, 2);
        let token = first.next_token("abc");
        let second = PageRequest::new(2, &token, "os=debian").unwrap();
        assert_eq!(second.after.as_deref(), Some("abc"));
        assert!(matches!(
            PageRequest::new(2, &token, "os=ubuntu"),
            Err(CatalogError::InvalidArgument(_))
        ));
        assert!(matches!(
            PageRequest::new(2, "!!garbage", ""),
            Err(CatalogError::InvalidArgument(_))
        ));
    }

    #[test]
    fn page_sizes_are_bounded() {
        assert_eq!(PageRequest::new(0, "", "").unwrap().size, DEFAULT_PAGE_SIZE);
        assert_eq!(
            PageRequest::new(1 << 30, "", "").unwrap().size,
            MAX_PAGE_SIZE
        );
        assert!(PageRequest::new(-1, "", "").is_err());
    }
}
