//! W3C trace context (`traceparent`) across processes: injected into every
//! outgoing call from the current span, extracted from every incoming request
//! as the parent of its span, so that one user action is one trace across the
//! client, the control plane and the blob nodes.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The headers that carry the current span's context (none when no trace is
/// being recorded).
pub fn trace_headers() -> Vec<(String, String)> {
    let cx = tracing::Span::current().context();
    let mut headers = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut headers);
    headers.into_iter().collect()
}

/// Adds the current span's context to each call (the calls that carry no
/// credential: blob transfers, whose tickets travel in the messages).
#[derive(Clone, Copy, Debug, Default)]
pub struct Traced;

impl tonic::service::Interceptor for Traced {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        use tonic::metadata::{Ascii, MetadataKey, MetadataValue};
        for (key, value) in trace_headers() {
            if let (Ok(k), Ok(v)) = (
                key.parse::<MetadataKey<Ascii>>(),
                value.parse::<MetadataValue<Ascii>>(),
            ) {
                req.metadata_mut().insert(k, v);
            }
        }
        Ok(req)
    }
}

/// The current span's W3C `traceparent`, to carry its trace past a queue
/// (empty when no trace is being recorded).
pub fn traceparent() -> String {
    trace_headers()
        .into_iter()
        .find_map(|(k, v)| (k == "traceparent").then_some(v))
        .unwrap_or_default()
}

/// Makes the trace a process was started in (the `TRACEPARENT` environment
/// variable, as CI systems and otel-cli pass it) the parent of `span`.
pub fn set_parent_from_env(span: &tracing::Span) {
    let traceparent = std::env::var("TRACEPARENT").ok();
    let tracestate = std::env::var("TRACESTATE").ok();
    set_parent(span, |key| match key {
        "traceparent" => traceparent.as_deref(),
        "tracestate" => tracestate.as_deref(),
        _ => None,
    });
}

/// Makes the context a request carries (its `traceparent`) the parent of `span`.
pub fn set_parent<'a>(span: &tracing::Span, header: impl Fn(&str) -> Option<&'a str>) {
    let carried: HashMap<String, String> = ["traceparent", "tracestate"]
        .into_iter()
        .filter_map(|k| header(k).map(|v| (k.to_owned(), v.to_owned())))
        .collect();
    if carried.is_empty() {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&carried);
    let _ = span.set_parent(cx);
}
