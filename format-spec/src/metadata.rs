//! The metadata region (format version 2): named UTF-8 strings a chat front end needs.
//!
//! Layout (SPEC.md §3a): a u32 count, then per entry a u32 key length, the key, a u32 value
//! length, the value. Keys are unique, 1..=64 bytes; a reader ignores keys it does not know
//! (so new keys need no version bump).

use crate::FormatError;

/// Keys of the strings this crate knows, in the order the writer stores them.
pub mod keys {
    /// `tokenizer_config.json`'s `chat_template` (a Jinja template), as given.
    pub const CHAT_TEMPLATE: &str = "chat_template";
    /// The text of the BOS token, as templates name it (`bos_token`).
    pub const BOS_TOKEN: &str = "bos_token";
    /// The text of the EOS token, as templates name it (`eos_token`).
    pub const EOS_TOKEN: &str = "eos_token";
}

/// Longest key, in bytes.
pub const MAX_KEY_LEN: usize = 64;

/// The chat template and the special-token strings it refers to, each if the checkpoint
/// has it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChatMetadata {
    pub chat_template: Option<String>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
}

impl ChatMetadata {
    fn fields(&self) -> [(&'static str, &Option<String>); 3] {
        [
            (keys::CHAT_TEMPLATE, &self.chat_template),
            (keys::BOS_TOKEN, &self.bos_token),
            (keys::EOS_TOKEN, &self.eos_token),
        ]
    }

    /// The region's bytes. Fails only on a value longer than 4 GiB.
    pub fn encode(&self) -> Result<Vec<u8>, FormatError> {
        let present: Vec<_> = self.fields().into_iter().filter_map(|(k, v)| Some((k, v.as_deref()?))).collect();
        let mut out = Vec::new();
        out.extend_from_slice(&(present.len() as u32).to_le_bytes());
        for (key, value) in present {
            let len = u32::try_from(value.len())
                .map_err(|_| FormatError::Metadata(format!("{key}: {} bytes is too long", value.len())))?;
            out.extend_from_slice(&(key.len() as u32).to_le_bytes());
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(value.as_bytes());
        }
        Ok(out)
    }

    /// Parses a region, checking every length against the region before using it.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let bad = |reason: String| FormatError::Metadata(reason);
        let mut rest = bytes;
        let mut take = |n: usize, what: &str| -> Result<&[u8], FormatError> {
            if rest.len() < n {
                return Err(bad(format!("{what} needs {n} bytes but the region has {} left", rest.len())));
            }
            let (head, tail) = rest.split_at(n);
            rest = tail;
            Ok(head)
        };
        let u32_at = |b: &[u8]| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize;
        let count = u32_at(take(4, "the entry count")?);
        let mut out = ChatMetadata::default();
        let mut seen: Vec<String> = Vec::new();
        for i in 0..count {
            let key_len = u32_at(take(4, &format!("entry {i}'s key length"))?);
            if key_len == 0 || key_len > MAX_KEY_LEN {
                return Err(bad(format!("entry {i}: key length {key_len} is outside 1..={MAX_KEY_LEN}")));
            }
            let key = std::str::from_utf8(take(key_len, &format!("entry {i}'s key"))?)
                .map_err(|_| bad(format!("entry {i}: key is not UTF-8")))?
                .to_string();
            let value_len = u32_at(take(4, &format!("entry {key}'s value length"))?);
            let value = std::str::from_utf8(take(value_len, &format!("entry {key}'s value"))?)
                .map_err(|e| bad(format!("entry {key}: value is not UTF-8 ({e})")))?
                .to_string();
            if seen.contains(&key) {
                return Err(bad(format!("key {key} appears twice")));
            }
            let slot = match key.as_str() {
                keys::CHAT_TEMPLATE => &mut out.chat_template,
                keys::BOS_TOKEN => &mut out.bos_token,
                keys::EOS_TOKEN => &mut out.eos_token,
                _ => {
                    seen.push(key);
                    continue;
                }
            };
            *slot = Some(value);
            seen.push(key);
        }
        if !rest.is_empty() {
            return Err(bad(format!("{} bytes after the last entry", rest.len())));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_unknown_keys() {
        let m = ChatMetadata {
            chat_template: Some("{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}".into()),
            bos_token: Some("<|begin_of_text|>".into()),
            eos_token: None,
        };
        let bytes = m.encode().unwrap();
        assert_eq!(ChatMetadata::decode(&bytes).unwrap(), m);
        assert_eq!(ChatMetadata::default().encode().unwrap(), [0, 0, 0, 0]);
        // An unknown key is skipped; the known one after it is read.
        let mut b = 2u32.to_le_bytes().to_vec();
        for (k, v) in [("future_key", "x"), ("eos_token", "<|eot_id|>")] {
            b.extend_from_slice(&(k.len() as u32).to_le_bytes());
            b.extend_from_slice(k.as_bytes());
            b.extend_from_slice(&(v.len() as u32).to_le_bytes());
            b.extend_from_slice(v.as_bytes());
        }
        let got = ChatMetadata::decode(&b).unwrap();
        assert_eq!((got.eos_token.as_deref(), got.chat_template), (Some("<|eot_id|>"), None));
    }

    #[test]
    fn damaged_regions_are_named_errors() {
        let good = ChatMetadata { bos_token: Some("<s>".into()), ..Default::default() }.encode().unwrap();
        for cut in 0..good.len() {
            let err = ChatMetadata::decode(&good[..cut]).unwrap_err().to_string();
            assert!(err.starts_with("metadata: ") && err.contains("needs"), "{cut}: {err}");
        }
        let mut long = good.clone();
        long.push(0);
        assert!(ChatMetadata::decode(&long).unwrap_err().to_string().contains("1 bytes after the last entry"));
        let mut twice = good.clone();
        twice[0] = 2;
        twice.extend_from_slice(&good[4..]);
        assert!(ChatMetadata::decode(&twice).unwrap_err().to_string().contains("key bos_token appears twice"));
        let mut huge_count = good.clone();
        huge_count[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(ChatMetadata::decode(&huge_count).is_err());
        let mut bad_utf8 = good;
        let last = bad_utf8.len() - 1;
        bad_utf8[last] = 0xff;
        assert!(ChatMetadata::decode(&bad_utf8).unwrap_err().to_string().contains("not UTF-8"));
    }
}
