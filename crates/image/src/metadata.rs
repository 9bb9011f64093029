//! metadata.yaml: parsed, validated and normalised as LXD's `getImageMetadata`
//! does, with clearer words when something is wrong.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::arch::canonical_architecture;

/// The largest metadata.yaml read, as LXD (`MaxYAMLFileBytes`).
pub const MAX_METADATA_BYTES: u64 = 1024 * 1024;

/// Why a metadata.yaml was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    #[error("metadata.yaml is not valid YAML for an image: {0}")]
    Yaml(String),
    #[error("metadata.yaml has no architecture")]
    MissingArchitecture,
    #[error("Architecture isn't supported: {0:?} (metadata.yaml)")]
    UnknownArchitecture(String),
    #[error("Missing creation date: metadata.yaml needs creation_date as Unix seconds")]
    MissingCreationDate,
    #[error("metadata.yaml has expiry_date {0}; it must be Unix seconds, not negative")]
    BadExpiry(i64),
    #[error("metadata.yaml property {0:?}: {1}")]
    BadProperty(String, String),
    #[error("metadata.yaml template for {0:?}: {1}")]
    BadTemplate(String, String),
}

/// A validated metadata.yaml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// Canonical architecture name (amd64 becomes x86_64).
    pub architecture: String,
    /// Unix seconds.
    pub creation_date: i64,
    /// Unix seconds; None when absent or 0.
    pub expiry_date: Option<i64>,
    pub properties: BTreeMap<String, String>,
    /// Instance paths that have templates.
    pub templates: Vec<String>,
}

#[derive(Deserialize)]
struct Raw {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    creation_date: i64,
    #[serde(default)]
    expiry_date: i64,
    #[serde(default)]
    properties: BTreeMap<String, serde_yaml_ng::Value>,
    #[serde(default)]
    templates: BTreeMap<String, RawTemplate>,
}

#[derive(Deserialize)]
struct RawTemplate {
    #[serde(default)]
    template: String,
    #[serde(default)]
    when: Vec<String>,
}

/// Parses and validates metadata.yaml's bytes.
/// How deep metadata.yaml may nest (LXD's own nest three levels).
pub const MAX_YAML_NESTING: usize = 32;

/// The deepest nesting in a YAML text, over-estimated cheaply in one pass: flow
/// collections (`[`, `{` outside quotes and comments) inside block levels
/// (distinct indentations, each leading `- ` one more).
fn nesting(yaml: &[u8]) -> usize {
    let mut deepest = 0;
    let mut indents: Vec<usize> = Vec::new();
    let mut flow = 0usize;
    let mut quote: Option<u8> = None;
    for line in yaml.split(|&b| b == b'\n') {
        let mut i = 0;
        if quote.is_none() && flow == 0 {
            let indent = line.iter().take_while(|&&b| b == b' ').count();
            let rest = &line[indent..];
            if rest.is_empty() || rest[0] == b'#' {
                continue;
            }
            while indents.last().is_some_and(|&top| top >= indent) {
                indents.pop();
            }
            indents.push(indent);
            i = indent;
            let mut dashes = 0;
            while line.get(i) == Some(&b'-') && matches!(line.get(i + 1), Some(b' ') | None) {
                dashes += 1;
                i += 2;
            }
            deepest = deepest.max(indents.len() + dashes);
        }
        let block = indents.len();
        while i < line.len() {
            let b = line[i];
            match quote {
                Some(q) if b == q => quote = None,
                Some(b'"') if b == b'\\' => i += 1,
                Some(_) => {}
                None => match b {
                    b'\'' | b'"' => quote = Some(b),
                    b'#' if i == 0 || line[i - 1] == b' ' => break,
                    b'[' | b'{' => {
                        flow += 1;
                        deepest = deepest.max(block + flow);
                    }
                    b']' | b'}' => flow = flow.saturating_sub(1),
                    _ => {}
                },
            }
            i += 1;
        }
    }
    deepest
}

/// The most properties an image may have.
pub const MAX_PROPERTIES: usize = 256;
/// The longest property key, in bytes.
pub const MAX_PROPERTY_KEY: usize = 256;
/// The longest property value, in bytes.
pub const MAX_PROPERTY_VALUE: usize = 16 * 1024;

/// Why an image's properties are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("property {key:?}: {reason}")]
pub struct PropertyError {
    pub key: String,
    pub reason: String,
}

/// An image's properties, wherever they come from (metadata.yaml, an upload's
/// or an edit's): at most [`MAX_PROPERTIES`], keys of 1 to [`MAX_PROPERTY_KEY`]
/// bytes without white space or '=', values of at most [`MAX_PROPERTY_VALUE`].
pub fn validate_properties(props: &BTreeMap<String, String>) -> Result<(), PropertyError> {
    if props.len() > MAX_PROPERTIES {
        return Err(PropertyError {
            key: props
                .keys()
                .nth(MAX_PROPERTIES)
                .cloned()
                .unwrap_or_default(),
            reason: format!(
                "an image may have at most {MAX_PROPERTIES} properties, not {}",
                props.len()
            ),
        });
    }
    for (k, v) in props {
        let refuse = |reason: String| {
            Err(PropertyError {
                key: k.chars().take(80).collect(),
                reason,
            })
        };
        if k.is_empty()
            || k.len() > MAX_PROPERTY_KEY
            || k.chars().any(|c| c.is_whitespace() || c == '=')
        {
            return refuse(format!(
                "keys are 1 to {MAX_PROPERTY_KEY} bytes, without white space or '='"
            ));
        }
        if v.len() > MAX_PROPERTY_VALUE {
            return refuse(format!(
                "the value is {} bytes long; the most is {MAX_PROPERTY_VALUE}",
                v.len()
            ));
        }
    }
    Ok(())
}

pub fn parse_metadata(yaml: &[u8]) -> Result<Metadata, MetadataError> {
    // The parser's work grows with the square of the nesting (80 000 levels cost
    // 17 s): bound it first, in one pass.
    let depth = nesting(yaml);
    if depth > MAX_YAML_NESTING {
        return Err(MetadataError::Yaml(format!(
            "it nests {depth} levels deep; the most accepted is {MAX_YAML_NESTING}"
        )));
    }
    let raw: Raw =
        serde_yaml_ng::from_slice(yaml).map_err(|e| MetadataError::Yaml(e.to_string()))?;
    if raw.architecture.is_empty() {
        return Err(MetadataError::MissingArchitecture);
    }
    let architecture = canonical_architecture(&raw.architecture)
        .ok_or_else(|| MetadataError::UnknownArchitecture(raw.architecture.clone()))?
        .to_owned();
    if raw.creation_date <= 0 {
        return Err(MetadataError::MissingCreationDate);
    }
    if raw.expiry_date < 0 {
        return Err(MetadataError::BadExpiry(raw.expiry_date));
    }
    let mut properties = BTreeMap::new();
    for (key, value) in raw.properties {
        // YAML turns `release: 22.04` into a number; LXD's properties are strings.
        let text = match value {
            serde_yaml_ng::Value::String(s) => s,
            serde_yaml_ng::Value::Number(n) => n.to_string(),
            serde_yaml_ng::Value::Bool(b) => b.to_string(),
            serde_yaml_ng::Value::Null => String::new(),
            _ => {
                return Err(MetadataError::BadProperty(
                    key,
                    "values must be strings, not lists or maps".into(),
                ));
            }
        };
        if !text.is_empty() {
            properties.insert(key, text);
        }
    }
    // The catalog's rules, here too: what would be refused at registration is
    // refused while the upload is scanned, before anything is registered.
    validate_properties(&properties).map_err(|e| MetadataError::BadProperty(e.key, e.reason))?;
    let mut templates = Vec::new();
    for (path, t) in raw.templates {
        if !path.starts_with('/') {
            return Err(MetadataError::BadTemplate(
                path,
                "the key must be an absolute path inside the instance".into(),
            ));
        }
        if t.template.is_empty() || t.template.contains('/') || t.template == ".." {
            return Err(MetadataError::BadTemplate(
                path,
                format!(
                    "template {:?} must be a file name inside templates/, without '/'",
                    t.template
                ),
            ));
        }
        if t.when.iter().any(String::is_empty) {
            return Err(MetadataError::BadTemplate(
                path,
                "an empty trigger in when".into(),
            ));
        }
        templates.push(path);
    }
    Ok(Metadata {
        architecture,
        creation_date: raw.creation_date,
        expiry_date: (raw.expiry_date > 0).then_some(raw.expiry_date),
        properties,
        templates,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        let flow = format!(
            "architecture: x86_64\nx: {}{}\n",
            "[".repeat(80_000),
            "]".repeat(80_000)
        );
        assert!(
            matches!(parse_metadata(flow.as_bytes()), Err(MetadataError::Yaml(m)) if m.contains("80001 levels"))
        );
        let block = format!("architecture: x86_64\nx:\n  {}a\n", "- ".repeat(100));
        assert!(
            matches!(parse_metadata(block.as_bytes()), Err(MetadataError::Yaml(m)) if m.contains("levels"))
        );
        // Brackets in quoted values and comments are text, not nesting.
        let quoted = format!(
            "architecture: x86_64\ncreation_date: 1\nproperties:\n  a: \"{}\"\n  b: '{}' # {}\n",
            "[".repeat(100),
            "{".repeat(100),
            "[".repeat(100)
        );
        assert_eq!(
            parse_metadata(quoted.as_bytes()).unwrap().properties["a"].len(),
            100
        );
    }

    #[test]
    fn lxd_fixture_metadata_parses() {
        let yaml = b"architecture: x86_64\ncreation_date: 1700000000\nproperties:\n  os: busybox\n  release: \"1.35.0\"\n  description: BusyBox\n";
        let m = parse_metadata(yaml).unwrap();
        assert_eq!(m.architecture, "x86_64");
        assert_eq!(m.creation_date, 1_700_000_000);
        assert_eq!(m.expiry_date, None);
        assert_eq!(m.properties["release"], "1.35.0");
    }

    #[test]
    fn aliases_numbers_and_templates_are_normalised() {
        let yaml = b"architecture: amd64\ncreation_date: 1\nexpiry_date: 2\nproperties:\n  release: 22.04\n  empty: ''\ntemplates:\n  /etc/hostname:\n    when: [create, copy]\n    template: hostname.tpl\n";
        let m = parse_metadata(yaml).unwrap();
        assert_eq!(m.architecture, "x86_64");
        assert_eq!(m.expiry_date, Some(2));
        assert_eq!(m.properties["release"], "22.04");
        assert!(!m.properties.contains_key("empty"));
        assert_eq!(m.templates, ["/etc/hostname"]);
    }

    #[test]
    fn invalid_metadata_says_what_is_wrong() {
        let cases: &[(&[u8], &str)] = &[
            (b"creation_date: 1\n", "no architecture"),
            (b"architecture: sparc\ncreation_date: 1\n", "Architecture isn't supported"),
            (b"architecture: x86_64\n", "Missing creation date"),
            (b"architecture: x86_64\ncreation_date: 0\n", "Missing creation date"),
            (b"architecture: x86_64\ncreation_date: 1\nexpiry_date: -5\n", "expiry_date -5"),
            (b"architecture: x86_64\ncreation_date: nope\n", "not valid YAML"),
            (b"architecture: [x\n", "not valid YAML"),
            (b"architecture: x86_64\ncreation_date: 1\nproperties:\n  os: [a, b]\n", "not lists"),
            (b"architecture: x86_64\ncreation_date: 1\ntemplates:\n  etc/x:\n    template: x.tpl\n", "absolute path"),
            (b"architecture: x86_64\ncreation_date: 1\ntemplates:\n  /etc/x:\n    template: ../../x\n", "without '/'"),
        ];
        for (yaml, needle) in cases {
            let err = parse_metadata(yaml).unwrap_err().to_string();
            assert!(
                err.contains(needle),
                "{}: {err}",
                String::from_utf8_lossy(yaml)
            );
        }
    }
}
