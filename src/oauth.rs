//! What handoff reads from an OAuth bundle (a Codex `auth.json`, a Claude `.credentials.json`,
//! a Gemini `oauth_creds.json`) without keeping any secret of it: whether it carries a refresh
//! token (a digest, to tell whether a write-back rotated it), the account it names, and when
//! its access token expires.
//!
//! The bundle is parsed in place: secret strings are borrowed from the caller's (zeroizing)
//! buffer, never copied into memory of their own; a JWT's claims are decoded into a zeroizing
//! buffer and only `exp` and `sub` are kept. A string with JSON escapes cannot be borrowed and
//! reads as absent, which errs on the safe side (a bundle without a refresh token is never
//! written back).
//!
//! | service | refresh token | account | access-token expiry |
//! | --- | --- | --- | --- |
//! | openai-codex | `tokens.refresh_token` | `tokens.account_id`, else the `id_token`'s `sub` | the `access_token` JWT's `exp` |
//! | claude-subscription | `claudeAiOauth.refreshToken` | — | `claudeAiOauth.expiresAt` (ms) |
//! | gemini | `refresh_token` | the `id_token`'s `sub` | `expiry_date` (ms) |
//!
//! A top-level `expires_at` (seconds) is read for any of them when the kind's own field is
//! missing.

use base64ct::Encoding;
use serde::Deserialize;
use sha2::Digest;
use zeroize::Zeroizing;

use crate::doc::Service;

/// What a bundle says about itself. Nothing here is secret.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// SHA-256 of the refresh token, when there is a non-empty one.
    pub refresh: Option<[u8; 32]>,
    /// The account the bundle is for, where the kind names one.
    pub account: Option<String>,
    /// When the access token expires (unix seconds).
    pub expires_at: Option<i64>,
    /// When the bundle says it last refreshed (Codex's `last_refresh`).
    pub refreshed_at: Option<i64>,
}

impl Facts {
    /// Whether the bundle rotates: it carries a refresh token, which its vendor replaces on
    /// every use, so only one holder at a time may use it and what it writes must come back.
    pub fn rotates(&self) -> bool {
        self.refresh.is_some()
    }
}

/// Why a bundle is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotABundle(pub String);

/// A string field borrowed from the input, or absent (missing, null, another type, or a
/// string with escapes, which cannot be borrowed).
#[derive(Debug, Default)]
struct Borrowed<'a>(Option<&'a str>);

impl<'de: 'a, 'a> Deserialize<'de> for Borrowed<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Borrowed<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any value")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Borrowed(Some(v)))
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(Borrowed(None))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Borrowed(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Borrowed(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Borrowed(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Borrowed(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Borrowed(None))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Self::Value, A::Error> {
                while a.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Borrowed(None))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Self::Value, A::Error> {
                while a
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(Borrowed(None))
            }
        }
        d.deserialize_any(Visit)
    }
}

/// A number field (an integer, a float, or a string of one), or absent.
#[derive(Debug, Default)]
struct Number(Option<f64>);

impl<'de> Deserialize<'de> for Number {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Number;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any value")
            }
            fn visit_i64<E>(self, v: i64) -> Result<Number, E> {
                Ok(Number(Some(v as f64)))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Number, E> {
                Ok(Number(Some(v as f64)))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Number, E> {
                Ok(Number(Some(v).filter(|v| v.is_finite())))
            }
            fn visit_str<E>(self, v: &str) -> Result<Number, E> {
                Ok(Number(
                    v.trim().parse().ok().filter(|v: &f64| v.is_finite()),
                ))
            }
            fn visit_unit<E>(self) -> Result<Number, E> {
                Ok(Number(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Number, E> {
                Ok(Number(None))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Number, A::Error> {
                while a.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Number(None))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<Number, A::Error> {
                while a
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(Number(None))
            }
        }
        d.deserialize_any(Visit)
    }
}

#[derive(Deserialize)]
struct CodexAuth<'a> {
    #[serde(borrow, default)]
    tokens: Option<CodexTokens<'a>>,
    #[serde(borrow, default)]
    last_refresh: Borrowed<'a>,
    #[serde(default)]
    expires_at: Number,
}

#[derive(Deserialize)]
struct CodexTokens<'a> {
    #[serde(borrow, default)]
    access_token: Borrowed<'a>,
    #[serde(borrow, default)]
    refresh_token: Borrowed<'a>,
    #[serde(borrow, default)]
    id_token: Borrowed<'a>,
    #[serde(borrow, default)]
    account_id: Borrowed<'a>,
}

#[derive(Deserialize)]
struct ClaudeCredentials<'a> {
    #[serde(borrow, rename = "claudeAiOauth")]
    oauth: Option<ClaudeOauth<'a>>,
    #[serde(default)]
    expires_at: Number,
}

#[derive(Deserialize)]
struct ClaudeOauth<'a> {
    #[serde(borrow, rename = "accessToken", default)]
    access_token: Borrowed<'a>,
    #[serde(borrow, rename = "refreshToken", default)]
    refresh_token: Borrowed<'a>,
    #[serde(rename = "expiresAt", default)]
    expires_at: Number,
    /// Scope names are not secret.
    #[serde(default)]
    scopes: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct GeminiCreds<'a> {
    #[serde(borrow, default)]
    refresh_token: Borrowed<'a>,
    #[serde(borrow, default)]
    id_token: Borrowed<'a>,
    #[serde(default)]
    expiry_date: Number,
    #[serde(default)]
    expires_at: Number,
}

/// Whether `secret` for `service` is a JSON bundle (rather than a key or a setup-token).
pub fn is_json(secret: &[u8]) -> bool {
    secret.trim_ascii_start().first() == Some(&b'{')
}

/// Reads what `secret`, a bundle of `service`, says about itself. Fails when it is not a JSON
/// object, or (Claude) has no `claudeAiOauth` with an access token and the `user:inference`
/// scope: Claude Code
/// says "not logged in" without them.
pub fn read(service: Service, secret: &[u8]) -> Result<Facts, NotABundle> {
    let not = |what: &str| NotABundle(format!("a {service} OAuth credential {what}"));
    // Keys are not secret; values are skipped unread.
    let _: std::collections::BTreeMap<String, serde::de::IgnoredAny> =
        serde_json::from_slice(secret)
            .map_err(|_| not("must be a JSON object (the contents of its auth file)"))?;
    let ms = |n: &Number| n.0.map(|v| (v / 1000.0) as i64);
    let secs = |n: &Number| n.0.map(|v| v as i64);
    let facts = match service {
        Service::OpenaiCodex | Service::Openai | Service::Anthropic => {
            let auth: CodexAuth<'_> =
                serde_json::from_slice(secret).map_err(|_| not("does not read as auth.json"))?;
            let tokens = auth.tokens.as_ref();
            let claims = tokens.and_then(|t| jwt_claims(t.access_token.0));
            let id = tokens.and_then(|t| jwt_claims(t.id_token.0));
            Facts {
                refresh: digest(tokens.and_then(|t| t.refresh_token.0)),
                account: tokens
                    .and_then(|t| t.account_id.0.map(str::to_string))
                    .or_else(|| id.and_then(|c| c.sub)),
                expires_at: claims.and_then(|c| c.exp).or(secs(&auth.expires_at)),
                refreshed_at: auth.last_refresh.0.and_then(|t| {
                    humantime::parse_rfc3339_weak(t)
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .and_then(|d| i64::try_from(d.as_secs()).ok())
                }),
            }
        }
        Service::ClaudeSubscription => {
            let creds: ClaudeCredentials<'_> = serde_json::from_slice(secret)
                .map_err(|_| not("does not read as .credentials.json"))?;
            let oauth = creds.oauth.ok_or_else(|| {
                not("has no claudeAiOauth (the contents of ~/.claude/.credentials.json)")
            })?;
            if oauth.access_token.0.is_none_or(str::is_empty) {
                return Err(not("has no accessToken"));
            }
            // Claude Code refuses a stored login without `user:inference` ("not logged in").
            if !oauth
                .scopes
                .as_ref()
                .is_some_and(|s| s.iter().any(|s| s == "user:inference"))
            {
                return Err(not(
                    "has no user:inference scope; Claude Code would say it is not logged in (copy the whole file)",
                ));
            }
            Facts {
                refresh: digest(oauth.refresh_token.0),
                account: None,
                expires_at: ms(&oauth.expires_at).or(secs(&creds.expires_at)),
                refreshed_at: None,
            }
        }
        Service::Gemini => {
            let creds: GeminiCreds<'_> = serde_json::from_slice(secret)
                .map_err(|_| not("does not read as oauth_creds.json"))?;
            Facts {
                refresh: digest(creds.refresh_token.0),
                account: jwt_claims(creds.id_token.0).and_then(|c| c.sub),
                expires_at: ms(&creds.expiry_date).or(secs(&creds.expires_at)),
                refreshed_at: None,
            }
        }
    };
    Ok(facts)
}

/// What a stored credential of `service` and `kind` says about itself: nothing unless it is
/// an OAuth bundle that reads as one.
pub fn facts_of(service: Service, kind: crate::doc::TokenKind, secret: &[u8]) -> Facts {
    if kind == crate::doc::TokenKind::OauthJson {
        read(service, secret).unwrap_or_default()
    } else {
        Facts::default()
    }
}

fn digest(token: Option<&str>) -> Option<[u8; 32]> {
    token
        .filter(|t| !t.trim().is_empty())
        .map(|t| sha2::Sha256::digest(t.as_bytes()).into())
}

/// The two claims handoff reads from a JWT.
#[derive(Debug, Default)]
struct Claims {
    exp: Option<i64>,
    sub: Option<String>,
}

/// A JWT's `exp` and `sub`, when `token` is one (unverified: it only says when to expect a
/// refresh, and whose account it is).
fn jwt_claims(token: Option<&str>) -> Option<Claims> {
    #[derive(Deserialize)]
    struct Raw {
        #[serde(default)]
        exp: Number,
        #[serde(default)]
        sub: Option<String>,
    }
    let payload = token?.split('.').nth(1)?;
    let mut buf = Zeroizing::new(vec![0u8; payload.len()]);
    let decoded =
        base64ct::Base64UrlUnpadded::decode(payload.trim_end_matches('='), &mut buf).ok()?;
    let raw: Raw = serde_json::from_slice(decoded).ok()?;
    Some(Claims {
        exp: raw.exp.0.map(|v| v as i64),
        sub: raw.sub,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &str) -> String {
        let mut buf = [0u8; 256];
        let body = base64ct::Base64UrlUnpadded::encode(claims.as_bytes(), &mut buf).unwrap();
        format!("eyJhbGciOiJub25lIn0.{body}.sig")
    }

    #[test]
    fn codex_bundles_give_their_refresh_account_and_expiry() {
        let access = jwt(r#"{"exp":1800000000,"sub":"user-1"}"#);
        let bundle = format!(
            r#"{{"OPENAI_API_KEY":null,"tokens":{{"access_token":"{access}","refresh_token":"r1","account_id":"acct-9","id_token":"x"}},"last_refresh":"2026-11-30T10:00:00.123456Z"}}"#
        );
        let facts = read(Service::OpenaiCodex, bundle.as_bytes()).unwrap();
        assert!(facts.rotates());
        assert_eq!(facts.account.as_deref(), Some("acct-9"));
        assert_eq!(facts.expires_at, Some(1_800_000_000));
        assert!(facts.refreshed_at.is_some());
        let other = bundle.replace("\"r1\"", "\"r2\"");
        assert_ne!(
            read(Service::OpenaiCodex, other.as_bytes())
                .unwrap()
                .refresh,
            facts.refresh
        );
        let blanked = bundle.replace("\"r1\"", "\"\"");
        assert!(
            !read(Service::OpenaiCodex, blanked.as_bytes())
                .unwrap()
                .rotates()
        );
        assert!(read(Service::OpenaiCodex, b"garbage").is_err());
        assert!(read(Service::OpenaiCodex, b"[1,2]").is_err());
    }

    #[test]
    fn claude_credentials_need_their_scopes() {
        let good = br#"{"claudeAiOauth":{"accessToken":"a","refreshToken":"r","expiresAt":1800000000000,"scopes":["user:inference"]}}"#;
        let facts = read(Service::ClaudeSubscription, good).unwrap();
        assert!(facts.rotates());
        assert_eq!(facts.expires_at, Some(1_800_000_000));
        let no_scopes = br#"{"claudeAiOauth":{"accessToken":"a","refreshToken":"r"}}"#;
        assert!(read(Service::ClaudeSubscription, no_scopes).is_err());
        let profile_only = br#"{"claudeAiOauth":{"accessToken":"a","refreshToken":"r","scopes":["user:profile"]}}"#;
        assert!(read(Service::ClaudeSubscription, profile_only).is_err());
        assert!(read(Service::ClaudeSubscription, br#"{"other":1}"#).is_err());
    }

    #[test]
    fn gemini_creds_give_expiry_in_milliseconds_and_the_id_tokens_subject() {
        let id = jwt(r#"{"sub":"g-42","exp":1}"#);
        let creds = format!(
            r#"{{"access_token":"a","refresh_token":"r","expiry_date":1800000000999,"id_token":"{id}"}}"#
        );
        let facts = read(Service::Gemini, creds.as_bytes()).unwrap();
        assert_eq!(facts.expires_at, Some(1_800_000_000));
        assert_eq!(facts.account.as_deref(), Some("g-42"));
        // A string with escapes cannot be borrowed: it reads as absent, never as a copy.
        let escaped = br#"{"access_token":"a","refresh_token":"r\u0031"}"#;
        assert!(!read(Service::Gemini, escaped).unwrap().rotates());
    }
}
