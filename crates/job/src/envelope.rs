use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::Lane;

/// The envelope format this build writes and reads. An entry with another version is
/// undecodable and is dead-lettered, never guessed at.
pub const ENVELOPE_VERSION: u32 = 2;

/// One queue entry: the bytes that sit in a role's pending list, scheduled set and
/// in-flight hash.
///
/// `attempt` must stay the **first** field: `fetch.lua` counts a delivery by rewriting the
/// `{"attempt":N,` prefix in place, so that a delivery is counted atomically with the fetch
/// even when the worker that received it dies before it can say anything.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope<A> {
    /// Deliveries so far, this one included once fetched.
    pub attempt: u32,
    /// The priority lane, second on the wire so the scripts read it from the prefix
    /// (`{"attempt":N,"lane":"high",`); absent for `normal`, so normal entries keep the
    /// bytes they always had.
    #[serde(default, skip_serializing_if = "Lane::is_normal")]
    pub lane: Lane,
    pub v: u32,
    /// The job id, unique within its role's queue (agentfleet uses the task id).
    pub id: String,
    pub enqueued_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_failed_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub args: A,
}

/// Why an entry could not be read as a job.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("entry is not valid UTF-8 JSON for this job type: {0}")]
    Json(#[from] serde_json::Error),
    #[error("entry has envelope version {found}, this worker reads version {expected}")]
    Version { found: u32, expected: u32 },
}

impl<A: Serialize + DeserializeOwned> Envelope<A> {
    pub fn new(id: impl Into<String>, args: A) -> Self {
        Self {
            attempt: 0,
            lane: Lane::Normal,
            v: ENVELOPE_VERSION,
            id: id.into(),
            enqueued_at_ms: crate::now_ms(),
            first_failed_at_ms: None,
            last_error: None,
            args,
        }
    }

    /// The same envelope in another lane.
    pub fn in_lane(mut self, lane: Lane) -> Self {
        self.lane = lane;
        self
    }

    pub fn encode(&self) -> String {
        // Serializing plain data structs into a String cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn decode(raw: &[u8]) -> Result<Self, DecodeError> {
        #[derive(Deserialize)]
        struct VersionOnly {
            v: u32,
        }
        let version: VersionOnly = serde_json::from_slice(raw)?;
        if version.v != ENVELOPE_VERSION {
            return Err(DecodeError::Version {
                found: version.v,
                expected: ENVELOPE_VERSION,
            });
        }
        Ok(serde_json::from_slice(raw)?)
    }
}

/// Reads the job id out of any entry that is JSON with an `id` string, whatever its args,
/// so that even an entry of the wrong shape can be dead-lettered under its own id.
pub fn peek_id(raw: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct IdOnly {
        id: String,
    }
    serde_json::from_slice::<IdOnly>(raw).ok().map(|e| e.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempt_is_the_first_field_on_the_wire() {
        let entry = Envelope::new("01J", serde_json::json!({"x": 1})).encode();
        assert!(entry.starts_with("{\"attempt\":0,"), "{entry}");
    }

    #[test]
    fn the_lane_follows_the_attempt_and_normal_is_absent() {
        let normal = Envelope::new("01J", serde_json::json!({})).encode();
        assert!(normal.starts_with("{\"attempt\":0,\"v\":"), "{normal}");
        let high = Envelope::new("01J", serde_json::json!({}))
            .in_lane(Lane::High)
            .encode();
        assert!(
            high.starts_with("{\"attempt\":0,\"lane\":\"high\","),
            "{high}"
        );
        let back = Envelope::<serde_json::Value>::decode(high.as_bytes()).unwrap();
        assert_eq!(back.lane, Lane::High);
    }

    #[test]
    fn unknown_version_is_a_decode_error() {
        let raw = br#"{"attempt":1,"v":99,"id":"a","enqueued_at_ms":1,"args":{}}"#;
        let err = Envelope::<serde_json::Value>::decode(raw).unwrap_err();
        assert!(matches!(err, DecodeError::Version { found: 99, .. }));
    }

    #[test]
    fn garbage_is_a_decode_error_and_has_no_id() {
        assert!(Envelope::<serde_json::Value>::decode(b"\xff\x00garbage").is_err());
        assert_eq!(peek_id(b"\xff\x00garbage"), None);
        assert_eq!(peek_id(br#"{"id":"x","args":1}"#).as_deref(), Some("x"));
    }
}
