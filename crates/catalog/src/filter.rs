//! `lxc image list` filters: space-separated terms, all of which must match.
//!
//! - A bare word matches an image whose fingerprint starts with it, one of whose
//!   alias names contains it, or whose description property contains it
//!   (case-insensitive).
//! - `key=value` matches a field (fingerprint, type, architecture, public,
//!   auto_update, cached, filename, layout; store: one of the stores holding it)
//!   or else the property `key`;
//!   `properties.key=value` always means the property. The value is a
//!   case-insensitive regular expression anchored at both ends, and commas separate
//!   alternatives, as LXD's server-side filter. A value that is not a valid regular
//!   expression is compared literally, as LXD does.

use regex::{Regex, RegexBuilder};

use crate::error::{CatalogError, Result};
use crate::model::Image;

const MAX_FILTER_LEN: usize = 4096;
const MAX_TERMS: usize = 32;
/// Bounds the compiled size of caller-supplied patterns so a filter cannot make the
/// server build a huge automaton.
const MAX_REGEX_BYTES: usize = 64 * 1024;
/// Bytes of text one listing may run the filter over (every term's field of
/// every image examined, each pattern once). Past it the listing stops with
/// what it found and a token to continue: a request's cost is bounded whatever
/// the filter and the images (tens of milliseconds of matching).
pub const FILTER_BUDGET_BYTES: u64 = 32 << 20;

/// A parsed filter.
#[derive(Debug, Clone, Default)]
pub struct ImageFilter {
    terms: Vec<Term>,
}

#[derive(Debug, Clone)]
enum Term {
    Word(String),
    /// Alternatives that compile together are one pattern, so a value is read
    /// once whatever their number.
    Match {
        key: Key,
        alternatives: Vec<Value>,
    },
}

#[derive(Debug, Clone)]
enum Key {
    Fingerprint,
    Type,
    Architecture,
    Public,
    AutoUpdate,
    Cached,
    Filename,
    Layout,
    /// One of the stores holding the image.
    Store,
    Property(String),
}

#[derive(Debug, Clone)]
enum Value {
    Pattern(Regex),
    Literal(String),
}

impl Value {
    fn matches(&self, s: &str) -> bool {
        match self {
            Self::Pattern(re) => re.is_match(s),
            Self::Literal(l) => l.eq_ignore_ascii_case(s),
        }
    }
}

impl ImageFilter {
    /// Parses a filter; an empty string matches everything.
    pub fn parse(filter: &str) -> Result<Self> {
        if filter.len() > MAX_FILTER_LEN {
            return Err(CatalogError::InvalidArgument(format!(
                "filter is {} bytes long; the most is {MAX_FILTER_LEN}",
                filter.len()
            )));
        }
        let terms = filter
            .split_whitespace()
            .map(parse_term)
            .collect::<Result<Vec<_>>>()?;
        if terms.len() > MAX_TERMS {
            return Err(CatalogError::InvalidArgument(format!(
                "filter has {} terms; the most is {MAX_TERMS}",
                terms.len()
            )));
        }
        Ok(Self { terms })
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// Whether `image` satisfies every term.
    pub fn matches(&self, image: &Image) -> bool {
        let mut unbounded = u64::MAX;
        self.matches_within(image, &mut unbounded)
    }

    /// As [`Self::matches`], taking the bytes of text it reads from `budget`.
    pub fn matches_within(&self, image: &Image, budget: &mut u64) -> bool {
        if self.terms.is_empty() {
            return true;
        }
        // Lowered once per image, not once per word.
        let mut lowered: Option<(String, Vec<String>)> = None;
        self.terms.iter().all(|t| {
            let (matched, cost) = term_matches(t, image, &mut lowered);
            *budget = budget.saturating_sub(cost);
            matched
        })
    }
}

fn parse_term(term: &str) -> Result<Term> {
    let Some((key, value)) = term.split_once('=') else {
        return Ok(Term::Word(term.to_lowercase()));
    };
    if key.is_empty() {
        return Err(CatalogError::InvalidArgument(format!(
            "filter term {term:?} has no key before '='; write key=value, e.g. os=debian"
        )));
    }
    let key = match key {
        "fingerprint" => Key::Fingerprint,
        "type" => Key::Type,
        "architecture" => Key::Architecture,
        "public" => Key::Public,
        "auto_update" => Key::AutoUpdate,
        "cached" => Key::Cached,
        "filename" => Key::Filename,
        "layout" => Key::Layout,
        "store" => Key::Store,
        other => {
            let name = other.strip_prefix("properties.").unwrap_or(other);
            if name.is_empty() {
                return Err(CatalogError::InvalidArgument(format!(
                    "filter term {term:?} names no property after 'properties.'"
                )));
            }
            Key::Property(name.to_owned())
        }
    };
    let alternatives: Vec<String> = value.split(',').map(|alt| normalise(&key, alt)).collect();
    let each: Vec<Value> = alternatives.iter().map(|alt| compile(alt)).collect();
    let alternatives = if each.iter().all(|v| matches!(v, Value::Pattern(_)))
        && let Value::Pattern(one) = compile(&alternatives.join("|"))
    {
        vec![Value::Pattern(one)]
    } else {
        each
    };
    Ok(Term::Match { key, alternatives })
}

/// Lets people write what they mean: amd64 for x86_64, yes for true.
fn normalise(key: &Key, value: &str) -> String {
    match key {
        Key::Architecture => imagestore_image::canonical_architecture(value)
            .map(str::to_owned)
            .unwrap_or_else(|| value.to_owned()),
        Key::Public | Key::AutoUpdate | Key::Cached => match value.to_ascii_lowercase().as_str() {
            "yes" | "1" | "on" => "true".into(),
            "no" | "0" | "off" => "false".into(),
            _ => value.to_owned(),
        },
        _ => value.to_owned(),
    }
}

fn compile(value: &str) -> Value {
    RegexBuilder::new(&format!("^(?:{value})$"))
        .case_insensitive(true)
        .size_limit(MAX_REGEX_BYTES)
        .build()
        .map(Value::Pattern)
        .unwrap_or_else(|_| Value::Literal(value.to_owned()))
}

/// Whether `term` holds for `image`, and the bytes of text that took reading.
fn term_matches(
    term: &Term,
    image: &Image,
    lowered: &mut Option<(String, Vec<String>)>,
) -> (bool, u64) {
    match term {
        Term::Word(word) => {
            let (description, aliases) = lowered.get_or_insert_with(|| {
                (
                    image
                        .properties
                        .get("description")
                        .map(|d| d.to_lowercase())
                        .unwrap_or_default(),
                    image
                        .aliases
                        .iter()
                        .map(|a| a.name.to_lowercase())
                        .collect(),
                )
            });
            let cost = (description.len() + aliases.iter().map(String::len).sum::<usize>()) as u64;
            let matched = image.fingerprint.starts_with(word.as_str())
                || aliases.iter().any(|a| a.contains(word.as_str()))
                || description.contains(word.as_str());
            (matched, cost)
        }
        Term::Match {
            key: Key::Store,
            alternatives,
        } => {
            let cost = image.stores.iter().map(String::len).sum::<usize>() * alternatives.len();
            let matched = image
                .stores
                .iter()
                .any(|s| alternatives.iter().any(|v| v.matches(s)));
            (matched, cost as u64)
        }
        Term::Match { key, alternatives } => {
            let bool_text = |b: bool| if b { "true" } else { "false" };
            let field: Option<&str> = match key {
                Key::Fingerprint => Some(&image.fingerprint),
                Key::Type => Some(image.image_type.as_str()),
                Key::Architecture => Some(&image.architecture),
                Key::Public => Some(bool_text(image.public)),
                Key::AutoUpdate => Some(bool_text(image.auto_update)),
                Key::Cached => Some(bool_text(image.cached)),
                Key::Filename => Some(&image.filename),
                Key::Layout => Some(image.layout.as_str()),
                Key::Property(name) => image.properties.get(name).map(String::as_str),
                Key::Store => None,
            };
            let cost = field.map_or(0, |f| (f.len() * alternatives.len()) as u64);
            let matched = field.is_some_and(|f| alternatives.iter().any(|v| v.matches(f)));
            (matched, cost)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::{AliasRef, ImageType, Layout};

    fn image() -> Image {
        Image {
            fingerprint: "01a4a9962e8e8bc3b6e3ceb25fecc2de0898b677ab1135aefc0986507e397294".into(),
            image_type: ImageType::Container,
            architecture: "x86_64".into(),
            size: 1,
            filename: "busybox.tar.gz".into(),
            layout: Layout::Unified,
            parts: vec![],
            properties: BTreeMap::from([
                ("os".into(), "Ubuntu".into()),
                ("description".into(), "Ubuntu Noble amd64".into()),
            ]),
            public: true,
            auto_update: false,
            cached: false,
            created_at: None,
            uploaded_at: 0,
            last_used_at: None,
            expires_at: None,
            update_source: None,
            aliases: vec![AliasRef {
                name: "hello-world".into(),
                description: String::new(),
            }],
            damage: None,
            stores: vec!["local".into(), "s3-eu".into()],
            failed_stores: vec![],
        }
    }

    #[test]
    fn store_matches_any_store_holding_the_image() {
        assert!(m("store=s3-eu"));
        assert!(m("store=local"));
        assert!(m("store=s3-.*"));
        assert!(!m("store=s3-us"));
    }

    fn m(f: &str) -> bool {
        ImageFilter::parse(f).unwrap().matches(&image())
    }

    #[test]
    fn alternatives_read_together_as_one_pattern_or_one_by_one() {
        assert!(m("os=debian,ubuntu,arch"));
        assert!(!m("os=debian,arch"));
        // An invalid alternative is compared literally; the others stay patterns.
        assert!(m("os=(,ubun.*"));
        assert!(!m("os=(,ubun"));
        let mut budget = 10;
        assert!(
            ImageFilter::parse("noble")
                .unwrap()
                .matches_within(&image(), &mut budget)
        );
        assert_eq!(budget, 0, "the description read is taken from the budget");
    }

    #[test]
    fn bare_words_match_prefix_alias_and_description() {
        assert!(m("01a4a9"));
        assert!(!m("a4a9")); // fingerprints match by prefix only
        assert!(m("hello"));
        assert!(m("noble"));
        assert!(!m("debian"));
        assert!(m(""));
    }

    #[test]
    fn key_values_are_anchored_case_insensitive_patterns() {
        assert!(m("os=ubuntu"));
        assert!(m("properties.os=UBUNTU"));
        assert!(!m("os=ubu"));
        assert!(m("os=ubu.*"));
        assert!(m("os=debian,ubuntu"));
        assert!(m("architecture=amd64"));
        assert!(m("type=container public=yes"));
        assert!(!m("type=virtual-machine"));
        assert!(!m("missing=x"));
        assert!(m("os=ubuntu hello"));
        assert!(!m("os=ubuntu debian"));
    }

    #[test]
    fn invalid_patterns_compare_literally_and_bad_terms_are_refused() {
        assert!(!m("os=("));
        assert!(ImageFilter::parse("=x").is_err());
        assert!(ImageFilter::parse("properties.=x").is_err());
        assert!(ImageFilter::parse(&"a ".repeat(40)).is_err());
        assert!(ImageFilter::parse(&"a".repeat(5000)).is_err());
        // A pattern whose automaton would be huge is not compiled; it compares literally.
        assert!(!m("os=(a{1000}){1000}"));
    }
}
