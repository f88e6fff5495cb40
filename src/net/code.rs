//! Pairing codes and the short authentication string (SAS).
//!
//! A terminal code is `NNNN-word-word-word`: a nameplate (1000–9999) that tells the joiner which
//! offer it means, then three words of the 2048-word BIP-39 English list, 33 bits the user
//! types. SPAKE2 makes those bits enough: an active attacker gets one guess per code, and a
//! recorded exchange gives nothing to test guesses against offline. A phone scans a QR code
//! instead, which carries a 128-bit secret (`NNNN-` and 26 base32 letters) with the adder's
//! PeerId and addresses:
//!
//! ```text
//! handoff://pair?v=1&code=NNNN-<26 letters a-z2-7>&peer=<PeerId>&addr=<multiaddr>&addr=...
//! ```
//! The SAS is four words from the same list, taken from a hash of the pairing handshake, so
//! the two screens show the same words exactly when the two devices share one session.

use std::fmt;

use bip39::Language;
use libp2p::{Multiaddr, PeerId};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::vault::{VaultError, random_array};

/// Words in a terminal code.
const CODE_WORDS: usize = 3;
/// Words in a SAS.
const SAS_WORDS: usize = 4;
/// Base32 letters of a QR code's 128-bit secret.
const LONG_LETTERS: usize = 26;
const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
const URI_PREFIX: &str = "handoff://pair?";

/// Why a code was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodeError {
    #[error(
        "a pairing code looks like 4217-apple-river-stone (the number, then three words); check what you typed"
    )]
    Shape,
    #[error("'{0}' is not one of the pairing words; check the code")]
    UnknownWord(String),
    #[error("the pairing link is malformed: {0}")]
    Uri(&'static str),
}

/// A pairing code: its nameplate and its canonical text. `Debug` shows the nameplate only.
#[derive(Clone, PartialEq, Eq)]
pub struct PairCode {
    nameplate: u16,
    text: Zeroizing<String>,
}

impl fmt::Debug for PairCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PairCode({}-[redacted])", self.nameplate)
    }
}

/// Where a pairing link says the adder is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkHints {
    pub peer: Option<PeerId>,
    pub addrs: Vec<Multiaddr>,
}

fn words() -> &'static [&'static str; 2048] {
    Language::English.word_list()
}

/// Nameplates are 1000–9999: four digits to type, and few enough offers live at once that a
/// stranger guessing one blindly hits it rarely (one reading it from mDNS voids just that
/// code; the offer goes on under a fresh one).
const NAMEPLATES: std::ops::RangeInclusive<u16> = 1000..=9999;

fn random_nameplate() -> Result<u16, VaultError> {
    let [a, b] = random_array::<2>()?;
    let span = NAMEPLATES.end() - NAMEPLATES.start() + 1;
    Ok(NAMEPLATES.start() + u16::from_be_bytes([a, b]) % span)
}

impl PairCode {
    /// A fresh terminal code.
    pub fn generate() -> Result<Self, VaultError> {
        let nameplate = random_nameplate()?;
        let mut text = Zeroizing::new(nameplate.to_string());
        let random = Zeroizing::new(random_array::<{ 2 * CODE_WORDS }>()?);
        for pair in random.chunks(2) {
            let index = usize::from(u16::from_be_bytes([pair[0], pair[1]]) & 0x7ff);
            text.push('-');
            text.push_str(words()[index]);
        }
        Ok(Self { nameplate, text })
    }

    /// A fresh code with a 128-bit secret, for a QR code.
    pub fn generate_long() -> Result<Self, VaultError> {
        let nameplate = random_nameplate()?;
        let secret = Zeroizing::new(random_array::<16>()?);
        let mut text = Zeroizing::new(format!("{nameplate}-"));
        // 26 letters of 5 bits cover the 128 bits (the last letter carries 3).
        let mut acc: u32 = 0;
        let mut bits = 0;
        for &byte in secret.iter() {
            acc = (acc << 8) | u32::from(byte);
            bits += 8;
            while bits >= 5 {
                bits -= 5;
                text.push(char::from(BASE32[((acc >> bits) & 31) as usize]));
            }
        }
        if bits > 0 {
            text.push(char::from(BASE32[((acc << (5 - bits)) & 31) as usize]));
        }
        Ok(Self { nameplate, text })
    }

    /// Reads a code as typed (`4217-apple-river-stone`, any case, spaces for dashes) or a
    /// `handoff://pair?...` link, which may also say where the adder is.
    pub fn parse(input: &str) -> Result<(Self, LinkHints), CodeError> {
        let input = input.trim();
        if let Some(query) = input.strip_prefix(URI_PREFIX) {
            return Self::parse_link(query);
        }
        let lowered = Zeroizing::new(input.to_ascii_lowercase());
        let parts: Vec<&str> = lowered
            .split(|c: char| c == '-' || c.is_whitespace())
            .filter(|p| !p.is_empty())
            .collect();
        let Some((number, rest)) = parts.split_first() else {
            return Err(CodeError::Shape);
        };
        let nameplate: u16 = number.parse().map_err(|_| CodeError::Shape)?;
        if nameplate == 0 {
            return Err(CodeError::Shape);
        }
        let mut text = Zeroizing::new(nameplate.to_string());
        match rest {
            [long] if long.len() == LONG_LETTERS => {
                if !long.bytes().all(|b| BASE32.contains(&b)) {
                    return Err(CodeError::Shape);
                }
                text.push('-');
                text.push_str(long);
            }
            words_typed if words_typed.len() == CODE_WORDS => {
                for word in words_typed {
                    if Language::English.find_word(word).is_none() {
                        return Err(CodeError::UnknownWord((*word).to_string()));
                    }
                    text.push('-');
                    text.push_str(word);
                }
            }
            _ => return Err(CodeError::Shape),
        }
        Ok((Self { nameplate, text }, LinkHints::default()))
    }

    fn parse_link(query: &str) -> Result<(Self, LinkHints), CodeError> {
        let mut code = None;
        let mut hints = LinkHints::default();
        let mut version_ok = false;
        for pair in query.split('&') {
            let (key, value) = pair
                .split_once('=')
                .ok_or(CodeError::Uri("a field without '='"))?;
            match key {
                "v" => version_ok = value == "1",
                "code" => code = Some(Self::parse(value)?.0),
                "peer" => {
                    hints.peer = Some(value.parse().map_err(|_| CodeError::Uri("a bad peer id"))?);
                }
                "addr" => hints
                    .addrs
                    .push(value.parse().map_err(|_| CodeError::Uri("a bad address"))?),
                _ => {} // fields a later version adds
            }
        }
        if !version_ok {
            return Err(CodeError::Uri("an unknown link version"));
        }
        let code = code.ok_or(CodeError::Uri("no code"))?;
        Ok((code, hints))
    }

    pub fn nameplate(&self) -> u16 {
        self.nameplate
    }

    /// The canonical text, to show the user.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The SPAKE2 password.
    pub fn password(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(handoff_protocol::binding::pair_password(&self.text))
    }

    /// The link a QR code carries.
    pub fn link(&self, peer: &PeerId, addrs: &[Multiaddr]) -> Zeroizing<String> {
        let mut link = Zeroizing::new(format!("{URI_PREFIX}v=1&code={}&peer={peer}", self.text()));
        for addr in addrs {
            link.push_str("&addr=");
            link.push_str(&addr.to_string());
        }
        link
    }
}

/// The short authentication string of a pairing handshake.
pub fn sas(handshake_hash: &[u8]) -> String {
    let digest = Sha256::digest(handoff_protocol::binding::pair_sas_input(handshake_hash));
    let mut bits = u64::from_be_bytes([
        digest[0], digest[1], digest[2], digest[3], digest[4], digest[5], digest[6], digest[7],
    ]);
    let mut out = Vec::with_capacity(SAS_WORDS);
    for _ in 0..SAS_WORDS {
        out.push(words()[(bits >> 53) as usize]);
        bits <<= 11;
    }
    out.join(" ")
}

/// The code as a terminal QR image (two rows per character).
pub fn qr(link: &str) -> Option<String> {
    let code = qrcode::QrCode::new(link.as_bytes()).ok()?;
    Some(
        code.render::<qrcode::render::unicode::Dense1x2>()
            .quiet_zone(true)
            .build(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_codes_parse_back_to_themselves() {
        for _ in 0..50 {
            let code = PairCode::generate().unwrap();
            assert!(NAMEPLATES.contains(&code.nameplate()));
            assert_eq!(code.text().split('-').count(), 4);
            let (parsed, hints) = PairCode::parse(&code.text().to_uppercase()).unwrap();
            assert_eq!(parsed, code);
            assert_eq!(hints, LinkHints::default());
            let long = PairCode::generate_long().unwrap();
            assert_eq!(
                long.text().len(),
                long.nameplate().to_string().len() + 1 + 26
            );
            assert_eq!(PairCode::parse(long.text()).unwrap().0, long);
        }
    }

    #[test]
    fn typos_and_shapes_are_refused_with_a_reason() {
        assert_eq!(
            PairCode::parse("42-apple-rivr-stone").unwrap_err(),
            CodeError::UnknownWord("rivr".into())
        );
        for bad in ["", "apple-river-stone", "42-apple-river", "0-a-b-c", "42"] {
            assert!(PairCode::parse(bad).is_err(), "{bad}");
        }
        // Spaces and case do not matter.
        let (a, _) = PairCode::parse("42 Apple river-STONE").unwrap();
        let (b, _) = PairCode::parse("42-apple-river-stone").unwrap();
        assert_eq!(a, b);
        assert_ne!(
            a.password(),
            PairCode::parse("43-apple-river-stone")
                .unwrap()
                .0
                .password()
        );
    }

    #[test]
    fn links_carry_the_code_peer_and_addresses() {
        let code = PairCode::generate_long().unwrap();
        let peer = PeerId::random();
        let addr: Multiaddr = "/ip4/127.0.0.1/tcp/4001".parse().unwrap();
        let link = code.link(&peer, std::slice::from_ref(&addr));
        let (parsed, hints) = PairCode::parse(&link).unwrap();
        assert_eq!(parsed, code);
        assert_eq!(hints.peer, Some(peer));
        assert_eq!(hints.addrs, vec![addr]);
        assert!(PairCode::parse("handoff://pair?v=2&code=42-apple-river-stone").is_err());
        assert!(qr(&link).is_some_and(|q| q.lines().count() > 10));
    }

    #[test]
    fn sas_depends_on_every_bit_of_the_hash() {
        let base = sas(&[7; 32]);
        assert_eq!(base.split(' ').count(), 4);
        assert_eq!(base, sas(&[7; 32]));
        let mut other = [7u8; 32];
        other[31] ^= 1;
        assert_ne!(base, sas(&other));
    }

    #[test]
    fn debug_shows_no_words() {
        let code = PairCode::generate().unwrap();
        assert_eq!(
            format!("{code:?}"),
            format!("PairCode({}-[redacted])", code.nameplate())
        );
    }
}
