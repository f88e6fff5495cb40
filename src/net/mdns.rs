//! LAN discovery with mDNS/DNS-SD (`_handoff._udp.local.`), which phones speak natively
//! (Bonjour, NSD).
//!
//! A member advertises an instance whose name is random and whose TXT record holds `v=1` and
//! `tag=` the first 8 bytes (hex) of HMAC-SHA256 over the hour number, keyed by a key derived
//! from the vault's discovery secret. Only members can compute the tag, and both the tag and
//! the instance name change every hour, so a device is not trackable by what it announces.
//! A pairing offer advertises `pair=<nameplate>` instead. The port is the QUIC (UDP) port;
//! TXT `tcp=` and `udp=` give both. Members browse, and dial what carries their vault's tag
//! for this hour or the last; the connection gate decides the rest.

use std::collections::HashMap;
use std::net::IpAddr;

use hmac::{KeyInit, Mac};
use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;
use mdns_sd::{ServiceDaemon, ServiceEvent, ServiceInfo};

use super::NetError;
use crate::vault::random_array;

/// The DNS-SD service type.
pub(super) const SERVICE: &str = "_handoff._udp.local.";

/// What a resolved advertisement offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Found {
    /// A device with this tag, at these addresses.
    Member { tag: String, addrs: Vec<Multiaddr> },
    /// A pairing offer with this nameplate.
    Pairing {
        nameplate: u16,
        addrs: Vec<Multiaddr>,
    },
}

/// The ports this node listens on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Ports {
    pub tcp: Option<u16>,
    pub udp: Option<u16>,
}

impl Ports {
    /// The first TCP and QUIC ports among listen addresses.
    pub fn of(addrs: &[Multiaddr]) -> Self {
        let mut ports = Self::default();
        for addr in addrs {
            let mut tcp = None;
            let mut udp = None;
            let mut quic = false;
            for p in addr.iter() {
                match p {
                    Protocol::Tcp(port) => tcp = Some(port),
                    Protocol::Udp(port) => udp = Some(port),
                    Protocol::QuicV1 => quic = true,
                    _ => {}
                }
            }
            ports.tcp = ports.tcp.or(tcp);
            if quic {
                ports.udp = ports.udp.or(udp);
            }
        }
        ports
    }

    fn main(&self) -> Option<u16> {
        self.udp.or(self.tcp)
    }
}

/// This vault's tag for `hour` (hours since the Unix epoch).
pub(super) fn tag(discovery_secret: &[u8; 32], hour: u64) -> String {
    let tag_key = crate::vault::primitives::hkdf32(
        &[],
        discovery_secret,
        handoff_protocol::binding::DISCOVERY_DOMAIN,
    );
    let Ok(mut mac) = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&tag_key[..]) else {
        return String::new();
    };
    mac.update(&handoff_protocol::binding::discovery_message(hour));
    hex::encode(&mac.finalize().into_bytes()[..8])
}

/// The current hour number.
pub(super) fn hour_now() -> u64 {
    u64::try_from(crate::entropy::unix_now()).unwrap_or(0) / 3600
}

fn random_label() -> Result<String, NetError> {
    random_array::<8>()
        .map(hex::encode)
        .map_err(|e| NetError::Transport(e.to_string()))
}

/// The mDNS responder and browser.
pub(super) struct Discovery {
    daemon: ServiceDaemon,
    /// Our advertisements: kind ("member" or "pair") → full name.
    advertised: HashMap<&'static str, String>,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("advertised", &self.advertised.len())
            .finish_non_exhaustive()
    }
}

impl Discovery {
    pub fn start() -> Result<Self, NetError> {
        let daemon = ServiceDaemon::new().map_err(|e| NetError::Transport(format!("mDNS: {e}")))?;
        Ok(Self {
            daemon,
            advertised: HashMap::new(),
        })
    }

    /// Browses for handoff services; resolved advertisements arrive on the receiver.
    pub fn browse(&self) -> Result<mdns_sd::Receiver<ServiceEvent>, NetError> {
        self.daemon
            .browse(SERVICE)
            .map_err(|e| NetError::Transport(format!("mDNS browse: {e}")))
    }

    /// (Re-)advertises this member under a fresh random name with `tag`.
    pub fn advertise_member(&mut self, tag: &str, ports: Ports) -> Result<(), NetError> {
        self.advertise("member", &[("tag", tag)], ports)
    }

    /// Advertises a pairing offer.
    pub fn advertise_pairing(&mut self, nameplate: u16, ports: Ports) -> Result<(), NetError> {
        self.advertise("pair", &[("pair", &nameplate.to_string())], ports)
    }

    /// Withdraws the pairing advertisement.
    pub fn withdraw_pairing(&mut self) {
        self.withdraw("pair");
    }

    fn withdraw(&mut self, kind: &str) {
        if let Some(name) = self.advertised.remove(kind) {
            let _ = self.daemon.unregister(&name);
        }
    }

    fn advertise(
        &mut self,
        kind: &'static str,
        fields: &[(&str, &str)],
        ports: Ports,
    ) -> Result<(), NetError> {
        self.withdraw(kind);
        let Some(port) = ports.main() else {
            return Ok(()); // nothing to advertise before we listen
        };
        let label = random_label()?;
        let host = format!("{label}.local.");
        let tcp = ports.tcp.map(|p| p.to_string());
        let udp = ports.udp.map(|p| p.to_string());
        let mut props: Vec<(&str, &str)> = vec![("v", "1")];
        props.extend_from_slice(fields);
        if let Some(tcp) = &tcp {
            props.push(("tcp", tcp));
        }
        if let Some(udp) = &udp {
            props.push(("udp", udp));
        }
        let info = ServiceInfo::new(SERVICE, &label, &host, "", port, &props[..])
            .map_err(|e| NetError::Transport(format!("mDNS: {e}")))?
            .enable_addr_auto();
        let name = info.get_fullname().to_string();
        self.daemon
            .register(info)
            .map_err(|e| NetError::Transport(format!("mDNS register: {e}")))?;
        self.advertised.insert(kind, name);
        Ok(())
    }

    pub fn shutdown(self) {
        let _ = self.daemon.shutdown();
    }
}

/// What a browse event offers, if it is a handoff advertisement we understand.
pub(super) fn found(event: &ServiceEvent) -> Option<Found> {
    let ServiceEvent::ServiceResolved(info) = event else {
        return None;
    };
    if info.get_property_val_str("v") != Some("1") {
        return None;
    }
    let port = |key| {
        info.get_property_val_str(key)
            .and_then(|p| p.parse::<u16>().ok())
    };
    let (tcp, udp) = (port("tcp"), port("udp"));
    let mut addrs = Vec::new();
    let mut ips: Vec<IpAddr> = info
        .get_addresses()
        .iter()
        .map(|ip| ip.to_ip_addr())
        // A link-local IPv6 address needs its interface to be dialled; libp2p cannot say it.
        .filter(|ip| !matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local()))
        .collect();
    ips.sort(); // IPv4 first, then IPv6
    for ip in ips {
        if let Some(udp) = udp {
            addrs.push(
                Multiaddr::from(ip)
                    .with(Protocol::Udp(udp))
                    .with(Protocol::QuicV1),
            );
        }
        if let Some(tcp) = tcp {
            addrs.push(Multiaddr::from(ip).with(Protocol::Tcp(tcp)));
        }
    }
    if let Some(nameplate) = info
        .get_property_val_str("pair")
        .and_then(|n| n.parse().ok())
    {
        return Some(Found::Pairing { nameplate, addrs });
    }
    let tag = info.get_property_val_str("tag")?.to_string();
    Some(Found::Member { tag, addrs })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_differ_by_vault_and_hour() {
        let a = tag(&[1; 32], 500_000);
        assert_eq!(a.len(), 16);
        assert_eq!(a, tag(&[1; 32], 500_000));
        assert_ne!(a, tag(&[1; 32], 500_001));
        assert_ne!(a, tag(&[2; 32], 500_000));
        // Pinned: devices of different versions must compute the same tag.
        assert_eq!(a, "fc2dabe1a7a0576c");
    }

    #[test]
    fn ports_come_from_listen_addresses() {
        let addrs: Vec<Multiaddr> = ["/ip4/0.0.0.0/tcp/4001", "/ip4/0.0.0.0/udp/4002/quic-v1"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(
            Ports::of(&addrs),
            Ports {
                tcp: Some(4001),
                udp: Some(4002)
            }
        );
        assert_eq!(Ports::of(&addrs[..1]).main(), Some(4001));
    }
}
