//! A conversation turned into the text the model continues.
//!
//! Models without a stored chat template get the plain fallback (documented in README.md,
//! "Python"): one line per message, `System: `, `User: ` or `Assistant: ` and its
//! content, then `Assistant:` for the model to continue. Generation stops at
//! [`FALLBACK_STOP`], the start of the next user line, so a reply stays one turn.

use crate::args::ArgError;
use anyhow::{bail, Result};

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: String,
}

/// The stop string of the fallback template: the model starting the user's next turn.
pub const FALLBACK_STOP: &str = "\nUser:";

/// The prompt for `messages` and the stop strings it needs: rendered with `template`
/// (a model's stored chat template) or, without one, with the plain fallback.
pub fn prompt(template: Option<&str>, messages: &[Message]) -> Result<(String, Vec<String>)> {
    if template.is_some() {
        bail!("this model stores a chat template, and rendering stored chat templates is not implemented yet");
    }
    Ok((fallback(messages)?, vec![FALLBACK_STOP.to_string()]))
}

/// The plain fallback: `Role: content` lines, then `Assistant:`.
pub fn fallback(messages: &[Message]) -> Result<String, ArgError> {
    if messages.is_empty() {
        return Err(ArgError("messages is empty: a chat needs at least one message".into()));
    }
    let mut text = String::new();
    for (i, m) in messages.iter().enumerate() {
        let role = match m.role.as_str() {
            "system" => "System",
            "user" => "User",
            "assistant" => "Assistant",
            other => {
                return Err(ArgError(format!(
                    "messages[{i}]: role {other:?} is not one of \"system\", \"user\", \"assistant\""
                )))
            }
        };
        text.push_str(role);
        text.push_str(": ");
        text.push_str(m.content.trim());
        text.push('\n');
    }
    text.push_str("Assistant:");
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> Message {
        Message { role: role.into(), content: content.into() }
    }

    #[test]
    fn fallback_renders_one_line_per_message() {
        let m = [msg("system", "Be brief."), msg("user", " Hello "), msg("assistant", "Hi."), msg("user", "Who?")];
        assert_eq!(fallback(&m).unwrap(), "System: Be brief.\nUser: Hello\nAssistant: Hi.\nUser: Who?\nAssistant:");
        let (text, stops) = prompt(None, &m[1..2]).unwrap();
        assert_eq!((text.as_str(), stops), ("User: Hello\nAssistant:", vec!["\nUser:".to_string()]));
    }

    #[test]
    fn bad_conversations_are_argument_errors() {
        assert!(fallback(&[]).unwrap_err().0.contains("messages is empty"));
        let e = fallback(&[msg("user", "a"), msg("tool", "b")]).unwrap_err().0;
        assert_eq!(e, "messages[1]: role \"tool\" is not one of \"system\", \"user\", \"assistant\"");
        assert!(prompt(Some("{{ messages }}"), &[msg("user", "a")]).is_err());
    }
}
