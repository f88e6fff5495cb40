//! Multiaddrs where records keep them. The document's signed relay record and the store's peer
//! row hold a list of addresses as one space-separated string (the relay's is signed in that
//! form, protocol/README.md); everything above takes and gives typed [`Multiaddr`]s, and the
//! text form is made and read back only here.

pub use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;

/// A multiaddr a person typed (or a config file holds) that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a valid address (a multiaddr such as /ip4/192.168.1.5/tcp/4001)")]
pub struct BadAddress(pub String);

/// Parses a multiaddr given by a person (clap's parser for every address argument).
pub fn parse(text: &str) -> Result<Multiaddr, BadAddress> {
    text.parse().map_err(|_| BadAddress(text.to_string()))
}

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
