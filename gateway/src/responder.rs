//! The turn: what a reply says. With no model configured, a deterministic built-in
//! responder answers, so the delivery path is exercised end to end without a provider.
//! A model provider plugs in by implementing [`Responder`].

/// An inbound message as the responder sees it.
#[derive(Debug, Clone)]
pub struct Turn<'a> {
    /// The channel the message came from.
    pub channel: &'a str,
    /// The message's id in that channel.
    pub external_id: &'a str,
    /// What was said.
    pub text: &'a str,
}

/// Produces the reply to one inbound message.
pub trait Responder: Send + Sync {
    /// The reply's text. Called inside the inbound transaction, so it must not block.
    fn reply(&self, turn: &Turn<'_>) -> String;
}

/// The built-in responder: acknowledges the message, and always says the same thing for
/// the same input.
#[derive(Debug, Default, Clone, Copy)]
pub struct Builtin;

impl Responder for Builtin {
    fn reply(&self, turn: &Turn<'_>) -> String {
        let words = turn.text.split_whitespace().count();
        format!(
            "Received your message on {} ({} word{}). No model is configured, so this is an automatic acknowledgement.",
            turn.channel,
            words,
            if words == 1 { "" } else { "s" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_reply_is_deterministic_and_mentions_the_channel() {
        let turn = Turn {
            channel: "sms",
            external_id: "1",
            text: "hello there",
        };
        let first = Builtin.reply(&turn);
        assert_eq!(first, Builtin.reply(&turn));
        assert!(
            first.contains("sms") && first.contains("2 words"),
            "{first}"
        );
    }
}
