//! Multiaddrs where records keep them. The document's signed relay record and the store's peer
//! row hold a list of addresses as one space-separated string (the relay's is signed in that
//! form, protocol/README.md); everything above takes and gives typed [`Multiaddr`]s, and the
//! text form is made and read back only here.

pub use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;

/// Whether `addr` names the peer to be reached there (ends in `/p2p/<PeerId>`): the
/// handshake then proves it is that peer.
pub fn names_peer(addr: &Multiaddr) -> bool {
    matches!(addr.iter().last(), Some(Protocol::P2p(_)))
}

/// The record form of `addrs`.
pub fn to_text(addrs: &[Multiaddr]) -> String {
    addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The addresses a record holds; one that does not parse (from a newer or a hostile writer)
/// is left out.
pub fn from_text(text: &str) -> Vec<Multiaddr> {
    text.split_whitespace()
        .filter_map(|a| a.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_form_round_trips_and_skips_what_does_not_parse() {
        let a: Multiaddr = "/ip4/127.0.0.1/tcp/4001".parse().unwrap();
        let b: Multiaddr = "/ip6/::1/udp/9/quic-v1".parse().unwrap();
        let text = to_text(&[a.clone(), b.clone()]);
        assert_eq!(text, "/ip4/127.0.0.1/tcp/4001 /ip6/::1/udp/9/quic-v1");
        assert_eq!(from_text(&text), vec![a.clone(), b]);
        assert_eq!(
            from_text("nonsense  /ip4/127.0.0.1/tcp/4001\t"),
            vec![a.clone()]
        );
        assert!(!names_peer(&a));
        let named: Multiaddr =
            "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWCeRdFNkfpEHtu27jfSj3f4sEPqQK5rQNTmrzzDVHeEK5"
                .parse()
                .unwrap();
        assert!(names_peer(&named));
    }
}
