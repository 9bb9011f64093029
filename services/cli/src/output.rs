//! Output for people (tables that fit the terminal) and for scripts (JSON, YAML,
//! CSV), and the JSON shape of an image, which is LXD's.

use comfy_table::{ContentArrangement, presets};
use imagestore_proto::v1 as pb;
use serde_json::{Value, json};

/// `--format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Compact,
    Json,
    Yaml,
    Csv,
}

/// Rows for the table formats, plus the objects behind them for JSON and YAML.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    /// Rows sorted as lxc sorts them: by their text.
    pub fn sort(&mut self) {
        self.rows.sort();
    }

    pub fn print(&self, format: Format, items: &[Value]) {
        match format {
            Format::Json => println!("{}", Value::Array(items.to_vec())),
            Format::Yaml => print!("{}", yaml(&Value::Array(items.to_vec()))),
            Format::Csv => {
                let mut w = csv::Writer::from_writer(std::io::stdout());
                for row in &self.rows {
                    let _ = w.write_record(row);
                }
                let _ = w.flush();
            }
            Format::Table | Format::Compact => {
                let mut t = comfy_table::Table::new();
                t.load_preset(if format == Format::Table {
                    presets::ASCII_FULL
                } else {
                    presets::NOTHING
                });
                // Fit the terminal when there is one; scripts get whole lines.
                t.set_content_arrangement(ContentArrangement::Dynamic);
                t.set_header(self.header.clone());
                for row in &self.rows {
                    t.add_row(row.clone());
                }
                println!("{t}");
            }
        }
    }
}

pub fn yaml(v: &Value) -> String {
    serde_yaml_ng::to_string(v).unwrap_or_default()
}

/// A protobuf timestamp as a UTC time; None when unset or out of range.
pub fn datetime(t: &Option<prost_types::Timestamp>) -> Option<chrono::DateTime<chrono::Utc>> {
    t.as_ref()
        .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
}

fn time(t: &Option<prost_types::Timestamp>, unset: &str) -> String {
    datetime(t)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        .unwrap_or_else(|| unset.to_owned())
}

/// Go's zero time, which LXD prints for "never".
const NEVER: &str = "0001-01-01T00:00:00Z";
/// LXD stores "no expiry" as the Unix epoch.
const NO_EXPIRY: &str = "1970-01-01T00:00:00Z";

pub fn type_name(t: i32) -> &'static str {
    match pb::ImageType::try_from(t) {
        Ok(pb::ImageType::VirtualMachine) => "virtual-machine",
        _ => "container",
    }
}

/// One image as LXD's API shows it (`lxc image list --format json` prints a list
/// of these; `imagestore info --format json` prints one).
pub fn image_json(i: &pb::Image) -> Value {
    let properties: serde_json::Map<String, Value> = i
        .properties
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let mut v = json!({
        "aliases": i.aliases.iter().map(|a| json!({"name": a.name, "description": a.description})).collect::<Vec<_>>(),
        "architecture": i.architecture,
        "auto_update": i.auto_update,
        "cached": i.cached,
        "created_at": time(&i.create_time, NEVER),
        "expires_at": time(&i.expire_time, NO_EXPIRY),
        "filename": i.filename,
        "fingerprint": i.fingerprint,
        "last_used_at": time(&i.last_use_time, NEVER),
        "properties": properties,
        "public": i.public,
        "size": i.size,
        "type": type_name(i.r#type),
        "uploaded_at": time(&i.upload_time, NEVER),
        "layout": match pb::ImageLayout::try_from(i.layout) {
            Ok(pb::ImageLayout::Split) => "split",
            _ => "unified",
        },
        "stores": i.stores,
        "failed_stores": i.failed_stores.iter().map(|f| json!({"store": f.store, "message": f.message})).collect::<Vec<_>>(),
    });
    if let Some(s) = &i.update_source {
        v["update_source"] = json!({
            "alias": s.alias,
            "certificate": s.certificate,
            "protocol": s.protocol,
            "server": s.server,
            "image_type": match s.image_type { 0 => "", t => type_name(t) },
        });
    }
    if let Some(d) = &i.damage {
        v["damage"] = json!({
            "part": pb::PartRole::try_from(d.part).map(|r| r.as_str_name()).unwrap_or(""),
            "expected_sha256": d.expected_sha256,
            "expected_size": d.expected_size,
            "found_sha256": d.found_sha256,
            "found_size": d.found_size,
            "detected_at": time(&d.detect_time, NEVER),
            "message": d.message,
        });
    }
    v
}

/// Sizes as lxc prints them in tables.
pub fn mib(bytes: u64) -> String {
    format!("{:.2}MiB", bytes as f64 / 1024.0 / 1024.0)
}

/// A short human date, as `lxc image info` prints them.
pub fn human_time(t: &Option<prost_types::Timestamp>, none: &str) -> String {
    datetime(t)
        .map(|d| d.format("%Y/%m/%d %H:%M UTC").to_string())
        .unwrap_or_else(|| none.to_owned())
}
