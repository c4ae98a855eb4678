//! Text in and out. Checkpoints bring a Hugging Face tokenizer (tokenizer.json, or one rebuilt
//! from a GGUF file's `tokenizer.ggml.*`) and usually a chat template; random-weight presets
//! have none and use raw bytes as token ids, so a prompt still means something.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub enum Tokenizer {
    HuggingFace {
        inner: Box<tokenizers::Tokenizer>,
        /// The file it came from, which its errors name.
        path: PathBuf,
        chat: Option<ChatTemplate>,
    },
    /// Token id = byte value; `bos` is prepended when the model has one.
    Bytes { bos: Option<u32> },
}

/// A Jinja chat template with the special tokens it may refer to.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    pub source: String,
    pub bos_token: String,
    pub eos_token: String,
}

/// One message of a conversation, as chat templates take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    /// `user` or `assistant`.
    pub role: &'a str,
    pub content: &'a str,
}

impl<'a> Message<'a> {
    pub fn user(content: &'a str) -> Self {
        Self { role: "user", content }
    }

    pub fn assistant(content: &'a str) -> Self {
        Self { role: "assistant", content }
    }
}

impl ChatTemplate {
    /// The prompt for a conversation that ends with a user message, rendered as transformers'
    /// `apply_chat_template(..., add_generation_prompt=True)` renders it (minijinja, as TGI and
    /// mistral.rs use).
    /// A template comes from the model file: its work, nesting and output are bounded
    /// (`TEMPLATE_FUEL`, `TEMPLATE_RECURSION`, `MAX_RENDERED_BYTES`), so that a hostile one is an
    /// error rather than a hang or an allocation that aborts.
    pub fn render(&self, messages: &[Message]) -> std::result::Result<String, String> {
        let mut env = minijinja::Environment::new();
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_recursion_limit(TEMPLATE_RECURSION);
        // Templates call HF's `raise_exception` to reject conversations they do not support.
        env.add_function(
            "raise_exception",
            |message: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, message))
            },
        );
        let template = env.template_from_str(&self.source).map_err(|e| e.to_string())?;
        let limit = MAX_RENDERED_BYTES.max(4 * messages.iter().map(|m| m.content.len()).sum::<usize>());
        let mut out = Capped { text: Vec::new(), limit };
        let context = minijinja::context! {
            messages => messages
                .iter()
                .map(|m| minijinja::context! { role => m.role, content => m.content })
                .collect::<Vec<_>>(),
            add_generation_prompt => true,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        };
        match template.render_captured_to(context, &mut out) {
            Ok(_) => String::from_utf8(out.text).map_err(|_| "the template rendered invalid UTF-8".into()),
            Err(_) if out.text.len() > out.limit => {
                Err(format!("the template rendered more than {limit} bytes for one conversation"))
            }
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Template instructions one render may run: a chat template's few loops over one message take
/// thousands; nested loops over large ranges run out instead of hanging.
const TEMPLATE_FUEL: u64 = 5_000_000;
const TEMPLATE_RECURSION: usize = 64;
/// The most a template may render beyond four times the message.
const MAX_RENDERED_BYTES: usize = 1 << 20;

/// A sink that fails once more than `limit` bytes are written to it.
struct Capped {
    text: Vec<u8>,
    limit: usize,
}

impl std::io::Write for Capped {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if self.text.len() + bytes.len() > self.limit {
            self.text.resize(self.limit + 1, 0);
            return Err(std::io::Error::other("rendered text past the limit"));
        }
        self.text.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Tokenizer {
    /// tokenizer.json, with the chat template of the folder's tokenizer_config.json (or
    /// chat_template.jinja, as transformers 5 saves it) when there is one.
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::MissingFile { path: path.to_path_buf(), what: "tokenizer.json" });
        }
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| Error::Tokenizer { path: path.to_path_buf(), message: e.to_string() })?;
        let chat = folder_chat_template(path.parent().unwrap_or(Path::new(".")))?;
        Ok(Self::HuggingFace { inner: Box::new(inner), path: path.to_path_buf(), chat })
    }

    /// Encodes with the tokenizer's own special tokens (BOS for Llama 3).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_with(text, true)
    }

    fn encode_with(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        match self {
            Self::HuggingFace { inner, path, .. } => inner
                .encode(text, special)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| Error::Tokenizer { path: path.clone(), message: e.to_string() }),
            Self::Bytes { bos } => Ok(bos.iter().copied().chain(text.bytes().map(u32::from)).collect()),
        }
    }

    /// A prompt as a run gives it to the model: one user turn of the chat template when `chat`,
    /// else the text with the tokenizer's own special tokens.
    pub fn encode_prompt(&self, prompt: &str, chat: bool) -> Result<Vec<u32>> {
        self.encode_conversation(&[Message::user(prompt)], chat)
    }

    /// A conversation that ends with a user turn, as the model is asked to answer it: rendered
    /// by the chat template when `chat` (which writes any BOS itself, so none is added, as
    /// `apply_chat_template(tokenize=True)` does); else its messages' texts joined by blank
    /// lines, with the tokenizer's own special tokens.
    pub fn encode_conversation(&self, messages: &[Message], chat: bool) -> Result<Vec<u32>> {
        if chat {
            self.encode_with(&self.render_conversation(messages)?, false)
        } else {
            let text: Vec<&str> = messages.iter().map(|m| m.content).collect();
            self.encode(&text.join("\n\n"))
        }
    }

    /// `message` as one user turn of the model's chat template, tokenized.
    pub fn encode_chat(&self, message: &str) -> Result<Vec<u32>> {
        self.encode_conversation(&[Message::user(message)], true)
    }

    /// The text `encode_chat` tokenizes: `message` as one user turn of the chat template.
    pub fn render_chat(&self, message: &str) -> Result<String> {
        self.render_conversation(&[Message::user(message)])
    }

    /// The text the chat template makes of a conversation, with the generation prompt.
    pub fn render_conversation(&self, messages: &[Message]) -> Result<String> {
        let Self::HuggingFace { path, chat, .. } = self else {
            return Err(Error::Usage("random presets have no chat template".into()));
        };
        let template = chat.as_ref().ok_or_else(|| Error::Tokenizer {
            path: path.clone(),
            message: "the model has no chat template (tokenizer_config.json `chat_template`, \
                      chat_template.jinja or GGUF `tokenizer.chat_template`)"
                .into(),
        })?;
        template
            .render(messages)
            .map_err(|e| Error::Tokenizer { path: path.clone(), message: format!("chat template: {e}") })
    }

    pub fn decode(&self, ids: &[u32]) -> String {
        match self {
            Self::HuggingFace { inner, .. } => inner.decode(ids, true).unwrap_or_else(|_| format!("{ids:?}")),
            Self::Bytes { .. } => {
                let bytes: Vec<u8> = ids.iter().filter_map(|&id| u8::try_from(id).ok()).collect();
                String::from_utf8_lossy(&bytes).into_owned()
            }
        }
    }

    /// The text that `new` adds after `context`. Decoded together and the context's text cut off:
    /// SentencePiece decoders drop the leading space of what they decode, which alone would drop
    /// a continuation's first space. Falls back to `new` alone where the context's text is not a
    /// prefix (it ends inside a character that `new` completes).
    pub fn decode_continuation(&self, context: &[u32], new: &[u32]) -> String {
        let head = self.decode(context);
        let whole = self.decode(&[context, new].concat());
        match whole.strip_prefix(&head) {
            Some(tail) => tail.to_string(),
            None => self.decode(new),
        }
    }

    /// The string of token `id`, or `None` past the tokenizer's vocabulary.
    pub fn token(&self, id: u32) -> Option<String> {
        match self {
            Self::HuggingFace { inner, .. } => inner.id_to_token(id),
            Self::Bytes { .. } => u8::try_from(id).ok().map(|b| format!("<0x{b:02X}>")),
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            Self::HuggingFace { inner, .. } => inner.get_vocab_size(true),
            Self::Bytes { .. } => 256,
        }
    }
}

/// The chat template of a Hugging Face folder: chat_template.jinja, else tokenizer_config.json's
/// `chat_template` (a string, or a list of named templates of which `default` is taken).
fn folder_chat_template(dir: &Path) -> Result<Option<ChatTemplate>> {
    let config_path = dir.join("tokenizer_config.json");
    let config: serde_json::Value = if config_path.is_file() {
        serde_json::from_str(&crate::files::read_text(&config_path)?)
            .map_err(|e| Error::MalformedFile { path: config_path.clone(), message: e.to_string() })?
    } else {
        serde_json::Value::Null
    };
    let jinja = dir.join("chat_template.jinja");
    let source = if jinja.is_file() {
        Some(crate::files::read_text(&jinja)?)
    } else {
        match &config["chat_template"] {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Array(named) => named
                .iter()
                .find(|t| t["name"] == "default")
                .and_then(|t| t["template"].as_str())
                .map(str::to_string),
            _ => None,
        }
    };
    // Special tokens are a string or an AddedToken object with `content`.
    let token = |key: &str| match &config[key] {
        serde_json::Value::String(s) => s.clone(),
        other => other["content"].as_str().unwrap_or_default().to_string(),
    };
    Ok(source.map(|source| ChatTemplate {
        source,
        bos_token: token("bos_token"),
        eos_token: token("eos_token"),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chat_template_renders_a_conversation_with_the_generation_prompt() {
        let template = ChatTemplate {
            source: "{{ bos_token }}{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{{ eos_token }}{% endfor %}\
                     {% if add_generation_prompt %}<|assistant|>{% endif %}"
                .into(),
            bos_token: "<s>".into(),
            eos_token: "</s>".into(),
        };
        assert_eq!(template.render(&[Message::user("Hi?")]).unwrap(), "<s><|user|>Hi?</s><|assistant|>");
        let conversation = [Message::user("Hi?"), Message::assistant("Hello."), Message::user("Bye?")];
        assert_eq!(
            template.render(&conversation).unwrap(),
            "<s><|user|>Hi?</s><|assistant|>Hello.</s><|user|>Bye?</s><|assistant|>"
        );
    }

    #[test]
    fn hostile_templates_run_out_of_fuel_or_room_instead_of_hanging() {
        let template = |source: &str| ChatTemplate {
            source: source.into(),
            bos_token: String::new(),
            eos_token: String::new(),
        };
        let nested = "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}";
        let err = template(nested).render(&[Message::user("hi")]).unwrap_err();
        assert!(err.contains("fuel") || err.contains("more than"), "{err}");
        let wide = "{% for i in range(100000) %}{{ 'x' * 1000000 }}{% endfor %}";
        let err = template(wide).render(&[Message::user("hi")]).unwrap_err();
        assert!(err.contains("more than") || err.contains("fuel"), "{err}");
        let deep = "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}";
        assert!(template(deep).render(&[Message::user("hi")]).is_err());
    }

    #[test]
    fn templates_that_raise_report_the_message() {
        let template = ChatTemplate {
            source: "{{ raise_exception('only user turns') }}".into(),
            bos_token: String::new(),
            eos_token: String::new(),
        };
        assert!(template.render(&[Message::user("x")]).unwrap_err().contains("only user turns"));
    }
}
