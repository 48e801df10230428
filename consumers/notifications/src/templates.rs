//! Message templates: minijinja, one set of parts per template and locale.
//!
//! The starter templates are `consumers/notifications/templates.toml`; `NOTIFY_TEMPLATES_FILE`
//! replaces them. Each `[name.locale]` table holds the parts its channels need: `subject`,
//! `text` and optionally `html` for email, `push_title` and `push_body` for push and live
//! delivery, `sms` for SMS. A locale without a variant falls back to its language
//! (`fr-CA` to `fr`), then to `en`. A variable the event does not have is an error, not an
//! empty string: a message with a hole in it is not sent.

use std::collections::BTreeMap;
use std::path::Path;

use minijinja::{Environment, UndefinedBehavior};
use serde::{Deserialize, Serialize};

use crate::domain::Channel;

pub const DEFAULT_TEMPLATES: &str = include_str!("../templates.toml");
const FALLBACK_LOCALE: &str = "en";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Parts {
    subject: Option<String>,
    text: Option<String>,
    html: Option<String>,
    push_title: Option<String>,
    push_body: Option<String>,
    sms: Option<String>,
}

impl Parts {
    fn named(self) -> impl Iterator<Item = (&'static str, String)> {
        [
            ("subject", self.subject),
            ("text", self.text),
            // The name's extension turns on HTML escaping of every value.
            ("html", self.html),
            ("push_title", self.push_title),
            ("push_body", self.push_body),
            ("sms", self.sms),
        ]
        .into_iter()
        .filter_map(|(part, source)| source.map(|s| (part, s)))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("reading the templates file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the templates are not valid TOML of the expected shape: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("template {name}: {source}")]
    Syntax {
        name: String,
        source: minijinja::Error,
    },
}

/// What a rendered email, push or SMS says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rendered {
    Email {
        subject: String,
        text: String,
        html: Option<String>,
        /// The one-click unsubscribe link of a promotional email (RFC 8058 headers).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        list_unsubscribe: Option<String>,
    },
    Push {
        title: String,
        body: String,
    },
    Sms {
        text: String,
    },
}

pub struct Templates {
    env: Environment<'static>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates").finish_non_exhaustive()
    }
}

impl Templates {
    pub fn embedded() -> Result<Self, TemplateError> {
        Self::parse(DEFAULT_TEMPLATES)
    }

    pub fn load(path: Option<&Path>) -> Result<Self, TemplateError> {
        match path {
            None => Self::embedded(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| TemplateError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                Self::parse(&text)
            }
        }
    }

    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let file: BTreeMap<String, BTreeMap<String, Parts>> = toml::from_str(text)?;
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        for (name, locales) in file {
            for (locale, parts) in locales {
                for (part, source) in parts.named() {
                    let full = template_name(&name, &locale, part);
                    env.add_template_owned(full.clone(), source)
                        .map_err(|source| TemplateError::Syntax { name: full, source })?;
                }
            }
        }
        Ok(Self { env })
    }

    /// Whether `name` has, in the fallback locale, every part `channel` needs.
    pub fn check(&self, name: &str, channel: Channel) -> Result<(), String> {
        for part in parts_of(channel).iter().filter(|p| p.required) {
            if self
                .env
                .get_template(&template_name(name, FALLBACK_LOCALE, part.name))
                .is_err()
            {
                return Err(format!(
                    "no template {name:?} with a {:?} part in locale {FALLBACK_LOCALE:?} for {}",
                    part.name,
                    channel.as_str()
                ));
            }
        }
        Ok(())
    }

    /// Renders the parts `channel` needs, in the closest locale available.
    pub fn render(
        &self,
        name: &str,
        locale: &str,
        channel: Channel,
        context: &serde_json::Value,
    ) -> Result<Rendered, String> {
        let locale = self.closest_locale(name, locale, channel);
        let render = |part: &str| -> Result<Option<String>, String> {
            match self.env.get_template(&template_name(name, &locale, part)) {
                Err(_) => Ok(None),
                Ok(template) => template
                    .render(context)
                    .map(|s| Some(s.trim().to_string()))
                    .map_err(|err| format!("template {name}.{locale}.{part}: {err}")),
            }
        };
        let required = |part: &str| -> Result<String, String> {
            render(part)?.ok_or_else(|| format!("template {name}.{locale} has no {part}"))
        };
        Ok(match channel {
            Channel::Email => Rendered::Email {
                subject: required("subject")?,
                text: required("text")?,
                html: render("html")?,
                list_unsubscribe: None,
            },
            Channel::Push | Channel::Live => Rendered::Push {
                title: required("push_title")?,
                body: required("push_body")?,
            },
            Channel::Sms => Rendered::Sms {
                text: required("sms")?,
            },
        })
    }

    fn closest_locale(&self, name: &str, wanted: &str, channel: Channel) -> String {
        let first_part = parts_of(channel)[0].name;
        let language = wanted.split(['-', '_']).next().unwrap_or(wanted);
        [wanted, language]
            .into_iter()
            .find(|locale| {
                self.env
                    .get_template(&template_name(name, locale, first_part))
                    .is_ok()
            })
            .unwrap_or(FALLBACK_LOCALE)
            .to_string()
    }
}

struct Part {
    name: &'static str,
    required: bool,
}

fn parts_of(channel: Channel) -> &'static [Part] {
    const EMAIL: &[Part] = &[
        Part {
            name: "subject",
            required: true,
        },
        Part {
            name: "text",
            required: true,
        },
        Part {
            name: "html",
            required: false,
        },
    ];
    const PUSH: &[Part] = &[
        Part {
            name: "push_title",
            required: true,
        },
        Part {
            name: "push_body",
            required: true,
        },
    ];
    const SMS: &[Part] = &[Part {
        name: "sms",
        required: true,
    }];
    match channel {
        Channel::Email => EMAIL,
        Channel::Push | Channel::Live => PUSH,
        Channel::Sms => SMS,
    }
}

fn template_name(name: &str, locale: &str, part: &str) -> String {
    let extension = if part == "html" { ".html" } else { "" };
    format!("{name}.{locale}.{part}{extension}")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const SAMPLE: &str = r#"
[hello.en]
subject = "Hello {{ user.name }}"
text = "Hi {{ user.name }}, you have {{ data.count }} new messages."
html = "<p>Hi {{ user.name }}</p>"
push_title = "Hello"
push_body = "{{ data.count }} new"

[hello.fr]
subject = "Bonjour {{ user.name }}"
text = "Salut {{ user.name }}"
"#;

    #[test]
    fn renders_in_the_closest_locale_with_html_escaped() {
        let templates = Templates::parse(SAMPLE).unwrap();
        let context = json!({"user": {"name": "<Zoë>"}, "data": {"count": 3}});
        let english = templates
            .render("hello", "en-GB", Channel::Email, &context)
            .unwrap();
        assert_eq!(
            english,
            Rendered::Email {
                subject: "Hello <Zoë>".into(),
                text: "Hi <Zoë>, you have 3 new messages.".into(),
                html: Some("<p>Hi &lt;Zoë&gt;</p>".into()),
                list_unsubscribe: None,
            }
        );
        let french = templates
            .render("hello", "fr-CA", Channel::Email, &context)
            .unwrap();
        assert!(
            matches!(french, Rendered::Email { ref subject, html: None, .. } if subject == "Bonjour <Zoë>")
        );
        // No French push: English.
        let push = templates
            .render("hello", "fr", Channel::Push, &context)
            .unwrap();
        assert_eq!(
            push,
            Rendered::Push {
                title: "Hello".into(),
                body: "3 new".into()
            }
        );
    }

    #[test]
    fn a_missing_variable_is_an_error_not_a_hole() {
        let templates = Templates::parse(SAMPLE).unwrap();
        let err = templates
            .render("hello", "en", Channel::Email, &json!({"user": {}}))
            .unwrap_err();
        assert!(err.contains("hello.en.subject"), "{err}");
    }

    #[test]
    fn checks_name_missing_parts_and_syntax() {
        let templates = Templates::parse(SAMPLE).unwrap();
        assert!(templates.check("hello", Channel::Email).is_ok());
        assert!(templates.check("hello", Channel::Sms).is_err());
        assert!(templates.check("nope", Channel::Email).is_err());
        assert!(matches!(
            Templates::parse("[x.en]\nsubject = \"{{ oops\""),
            Err(TemplateError::Syntax { .. })
        ));
    }

    #[test]
    fn the_starter_templates_parse() {
        Templates::embedded().unwrap();
    }
}
