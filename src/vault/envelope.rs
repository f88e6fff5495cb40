//! Sealing envelopes for a relay (format in `handoff_protocol::envelope`).
//!
//! `Noise_X_25519_ChaChaPoly_BLAKE2s`: the sender, as initiator, knows the recipient's mailbox
//! key; its own mailbox key travels encrypted in the handshake message and is authenticated
//! by it, so the recipient learns who sealed the envelope and the relay learns nothing of it.
//! The plaintext is `total-len(u32) || inner`, cut across the handshake message and transport
//! messages; opening checks the length, so an envelope cut short does not open.

use handoff_protocol::envelope::{
    self, HANDSHAKE_PLAINTEXT_MAX, NOISE_MAX, PROLOGUE, TRANSPORT_PLAINTEXT_MAX,
};

use super::VaultError;

const PARAMS: &str = "Noise_X_25519_ChaChaPoly_BLAKE2s";

fn failed(what: &'static str) -> VaultError {
    VaultError::Tampered { what }
}

fn builder() -> Result<snow::Builder<'static>, VaultError> {
    let params = PARAMS.parse().map_err(|_| VaultError::SealFailed)?;
    Ok(snow::Builder::new(params))
}

/// Seals `inner` from the holder of `sender_secret` to `recipient_public`.
pub fn seal(
    sender_secret: &[u8; 32],
    recipient_public: &[u8; 32],
    inner: &[u8],
) -> Result<Vec<u8>, VaultError> {
    let len = u32::try_from(inner.len()).map_err(|_| VaultError::SealFailed)?;
    let mut plaintext = Vec::with_capacity(4 + inner.len());
    plaintext.extend_from_slice(&len.to_be_bytes());
    plaintext.extend_from_slice(inner);
    let mut hs = builder()?
        .local_private_key(sender_secret)
        .and_then(|b| b.remote_public_key(recipient_public))
        .and_then(|b| b.prologue(PROLOGUE))
        .and_then(snow::Builder::build_initiator)
        .map_err(|_| VaultError::SealFailed)?;
    let mut buf = vec![0u8; NOISE_MAX];
    let first = plaintext.len().min(HANDSHAKE_PLAINTEXT_MAX);
    let n = hs
        .write_message(&plaintext[..first], &mut buf)
        .map_err(|_| VaultError::SealFailed)?;
    let mut pieces = vec![buf[..n].to_vec()];
    let mut transport = hs
        .into_transport_mode()
        .map_err(|_| VaultError::SealFailed)?;
    for chunk in plaintext[first..].chunks(TRANSPORT_PLAINTEXT_MAX) {
        let n = transport
            .write_message(chunk, &mut buf)
            .map_err(|_| VaultError::SealFailed)?;
        pieces.push(buf[..n].to_vec());
    }
    Ok(envelope::join(&pieces)?)
}

/// Opens an envelope sealed to the holder of `recipient_secret`: the sender's mailbox public
/// key (authenticated by the handshake) and the inner bytes.
pub fn open(recipient_secret: &[u8; 32], sealed: &[u8]) -> Result<([u8; 32], Vec<u8>), VaultError> {
    let pieces = envelope::split(sealed)?;
    let mut hs = builder()?
        .local_private_key(recipient_secret)
        .and_then(|b| b.prologue(PROLOGUE))
        .and_then(snow::Builder::build_responder)
        .map_err(|_| VaultError::SealFailed)?;
    let mut buf = vec![0u8; NOISE_MAX];
    let mut plaintext = Vec::new();
    let n = hs
        .read_message(pieces[0], &mut buf)
        .map_err(|_| failed("an envelope"))?;
    plaintext.extend_from_slice(&buf[..n]);
    let sender: [u8; 32] = hs
        .get_remote_static()
        .and_then(|k| k.try_into().ok())
        .ok_or(failed("an envelope's sender key"))?;
    let mut transport = hs
        .into_transport_mode()
        .map_err(|_| failed("an envelope"))?;
    for piece in &pieces[1..] {
        let n = transport
            .read_message(piece, &mut buf)
            .map_err(|_| failed("an envelope"))?;
        plaintext.extend_from_slice(&buf[..n]);
    }
    let Some((len, inner)) = plaintext.split_first_chunk::<4>() else {
        return Err(failed("an envelope"));
    };
    if u32::from_be_bytes(*len) as usize != inner.len() {
        return Err(failed("an envelope (cut short or padded)"));
    }
    Ok((sender, inner.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use x25519_dalek::{PublicKey, StaticSecret};

    fn pair(seed: u8) -> ([u8; 32], [u8; 32]) {
        let secret = StaticSecret::from([seed; 32]);
        (secret.to_bytes(), PublicKey::from(&secret).to_bytes())
    }

    #[test]
    fn opens_for_the_recipient_only_and_names_the_sender() {
        let (alice, alice_pub) = pair(1);
        let (bob, bob_pub) = pair(2);
        let (carol, _) = pair(3);
        for len in [0usize, 10, HANDSHAKE_PLAINTEXT_MAX, 200_000] {
            let inner: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let sealed = seal(&alice, &bob_pub, &inner).unwrap();
            let (sender, opened) = open(&bob, &sealed).unwrap();
            assert_eq!(sender, alice_pub);
            assert_eq!(opened, inner);
            assert!(open(&carol, &sealed).is_err());
        }
    }

    #[test]
    fn tampered_reordered_or_cut_envelopes_do_not_open() {
        let (alice, _) = pair(1);
        let (bob, bob_pub) = pair(2);
        let inner = vec![7u8; 150_000];
        let sealed = seal(&alice, &bob_pub, &inner).unwrap();
        let mut flipped = sealed.clone();
        flipped[100] ^= 1;
        assert!(open(&bob, &flipped).is_err());
        let pieces: Vec<Vec<u8>> = envelope::split(&sealed)
            .unwrap()
            .into_iter()
            .map(<[u8]>::to_vec)
            .collect();
        assert!(pieces.len() >= 3);
        let cut = envelope::join(&pieces[..pieces.len() - 1]).unwrap();
        assert!(open(&bob, &cut).is_err());
        let mut swapped = pieces.clone();
        swapped.swap(1, 2);
        assert!(open(&bob, &envelope::join(&swapped).unwrap()).is_err());
    }
}
