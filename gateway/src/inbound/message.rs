//! A generic inbound message as it arrives: `{"channel","external_id","text"}`, validated
//! once, and the idempotency key derived from it when the client sends none.

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// A validated generic inbound message.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Message {
    /// The channel it came from.
    pub channel: String,
    /// Its id in that channel.
    pub external_id: String,
    /// Its text.
    pub text: String,
}

/// Why a body is not a valid message; the text is what the client is told.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    /// Not JSON, or not the expected fields and types.
    #[error("invalid JSON body: {0}")]
    Json(#[from] serde_json::Error),
    /// A field that identifies the message is blank.
    #[error("field `{0}` must not be empty")]
    Empty(&'static str),
    /// A field holds a NUL character, which PostgreSQL text cannot store: refused as bad
    /// input, so a sender does not retry it for ever.
    #[error("field `{0}` must not contain NUL characters (\\u0000)")]
    Nul(&'static str),
}

impl Message {
    /// Parses and validates a body.
    pub fn parse(body: &[u8]) -> Result<Self, MessageError> {
        let message: Message = serde_json::from_slice(body)?;
        for (field, value, may_be_blank) in [
            ("channel", &message.channel, false),
            ("external_id", &message.external_id, false),
            ("text", &message.text, true),
        ] {
            if !may_be_blank && value.trim().is_empty() {
                return Err(MessageError::Empty(field));
            }
            if value.contains('\0') {
                return Err(MessageError::Nul(field));
            }
        }
        Ok(message)
    }

    /// The idempotency key of a message sent without one: a hash of all three fields
    /// (each length-prefixed, so text cannot shift between fields), so an identical resend is
    /// still recognised.
    pub fn derived_key(&self) -> String {
        let mut hash = Sha256::new();
        for part in [&self.channel, &self.external_id, &self.text] {
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part.as_bytes());
        }
        format!("derived:{}", hex::encode(hash.finalize()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_needs_its_three_fields_and_a_channel_and_id() {
        assert!(Message::parse(br#"{"channel":"c","external_id":"1","text":""}"#).is_ok());
        let missing = Message::parse(br#"{"channel":"c","text":"x"}"#).unwrap_err();
        assert!(missing.to_string().contains("external_id"), "{missing}");
        assert!(Message::parse(br#"{"channel":" ","external_id":"1","text":"x"}"#).is_err());
        assert!(Message::parse(br#"{"channel":1,"external_id":"1","text":"x"}"#).is_err());
        assert!(Message::parse(b"not json").is_err());
    }

    #[test]
    fn a_nul_character_in_any_field_is_refused_naming_the_field() {
        for field in ["channel", "external_id", "text"] {
            let mut message = serde_json::json!({"channel":"c","external_id":"1","text":"x"});
            message[field] = "a\u{0}b".into();
            let err = Message::parse(message.to_string().as_bytes()).unwrap_err();
            assert!(matches!(err, MessageError::Nul(f) if f == field), "{err}");
            assert!(err.to_string().contains(&format!("`{field}`")), "{err}");
        }
    }
}
