use serde::{Deserialize, Serialize};

/// A W3C trace context (`traceparent`), created at enqueue and carried from job to job so
/// that one task is one trace across processes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceContext {
    pub traceparent: String,
}

impl TraceContext {
    /// A fresh, sampled root context.
    pub fn new_root() -> Self {
        let trace_id = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(1..));
        let span_id = format!("{:016x}", fastrand::u64(1..));
        Self {
            traceparent: format!("00-{trace_id}-{span_id}-01"),
        }
    }

    /// The 32-hex-digit trace id, if the traceparent is well formed.
    pub fn trace_id(&self) -> Option<&str> {
        let mut parts = self.traceparent.split('-');
        let _version = parts.next()?;
        let trace_id = parts.next()?;
        (trace_id.len() == 32).then_some(trace_id)
    }

    /// A child context: same trace, new span id.
    pub fn child(&self) -> Self {
        match self.trace_id() {
            Some(trace_id) => Self {
                traceparent: format!("00-{trace_id}-{:016x}-01", fastrand::u64(1..)),
            },
            None => Self::new_root(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_keeps_the_trace_id_and_changes_the_span() {
        let root = TraceContext::new_root();
        let child = root.child();
        assert_eq!(root.trace_id(), child.trace_id());
        assert_ne!(root.traceparent, child.traceparent);
        assert_eq!(root.traceparent.len(), 55);
    }
}
