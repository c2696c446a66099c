//! Request validation for the gRPC services: every problem of a request is collected and
//! returned at once as an `INVALID_ARGUMENT` status with `google.rpc.BadRequest` field
//! violations.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use crate::state::id::MAX_CONVERSATION_ID_LEN;

/// Longest accepted tool name, in bytes: far above real tool names, and it bounds what a
/// finding and a metric label can carry.
pub const MAX_TOOL_NAME_LEN: usize = 256;

/// The field violations of one request.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    pub fn new() -> Violations {
        Violations::default()
    }

    /// Records that `field` (a path such as `messages[2].role`) is invalid.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    /// Checks a required conversation id: 1 to 256 bytes, not only whitespace.
    pub fn conversation_id(&mut self, field: &str, value: &str) {
        if value.trim().is_empty() {
            self.add(field, "missing; set the conversation id");
        } else if value.len() > MAX_CONVERSATION_ID_LEN {
            self.add(
                field,
                format!(
                    "longer than {MAX_CONVERSATION_ID_LEN} bytes ({} bytes)",
                    value.len()
                ),
            );
        }
    }

    /// Checks an optional conversation id: empty, or valid as in `conversation_id`.
    pub fn optional_conversation_id(&mut self, field: &str, value: &str) {
        if !value.is_empty() {
            self.conversation_id(field, value);
        }
    }

    /// Returns `Ok` when nothing was recorded, else the status that lists every violation.
    pub fn into_result(self) -> Result<(), Status> {
        if self.0.is_empty() {
            return Ok(());
        }
        let message = self
            .0
            .iter()
            .map(|v| format!("{}: {}", v.field, v.description))
            .collect::<Vec<_>>()
            .join("; ");
        Err(Status::with_error_details(
            Code::InvalidArgument,
            format!("invalid request: {message}"),
            ErrorDetails::with_bad_request(self.0),
        ))
    }
}
