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
