//! The driver's pairing offer: one open at a time, its door (the gate's guests, the mDNS
//! nameplate), a joiner's attempt, and what follows it: a new member, the end of the offer,
//! or its code voided and the offer waiting again under a fresh one.

use handoff_protocol::pairing::PairRefusal;
use libp2p::{PeerId, Stream};

use super::super::NetError;
use super::super::mdns::Ports;
use super::super::pair::{self, Hello, Offer, PairEvent};
use super::OfferPhase;
use super::{Driver, Internal, far_future};

/// The latest pairing offer. It stays here after its one attempt or its expiry, so a late or
/// repeated attempt is told why it is refused.
pub(super) struct OpenOffer {
    pub(super) nameplate: u16,
    pub(super) deadline: tokio::time::Instant,
    pub(super) state: OfferState,
    /// Nameplates of this offer's codes that were tried and voided (at most [`MAX_VOIDED`]),
    /// so a late try with one is told it is void rather than that there is no such offer.
    pub(super) voided: Vec<u16>,
    /// Its owner withdrew it while an attempt ran: it must not wait again.
    pub(super) withdrawn: bool,
}

/// How many codes of one offer may be voided before the offer ends.
const MAX_VOIDED: usize = 16;

pub(super) enum OfferState {
    Waiting(Box<Offer>),
    /// A joiner took the attempt and the pairing runs on its stream.
    Running,
    /// The attempt ended.
    Taken,
    Expired,
}

impl OfferState {
    fn phase(&self) -> Option<OfferPhase> {
        match self {
            OfferState::Waiting(_) => Some(OfferPhase::Waiting),
            OfferState::Running => Some(OfferPhase::Pairing),
            OfferState::Taken | OfferState::Expired => None,
        }
    }
}

impl Driver {
    fn pairing_runs(&self) -> bool {
        self.offer
            .as_ref()
            .is_some_and(|o| matches!(o.state, OfferState::Running))
    }

    /// Publishes the offer's phase for those who read it without a round trip: the pairing
    /// acceptor (it reads hellos only while an offer waits) and `status`.
    fn publish_offer(&self) {
        self.shared.view().offer = self.offer.as_ref().and_then(|o| o.state.phase());
    }

    pub(super) fn open_offer(&mut self, offer: Box<Offer>) -> Result<(), NetError> {
        if self.pairing_runs() {
            return Err(NetError::OfferOpen);
        }
        // A newer offer replaces one still waiting (its `peer add` may have been abandoned).
        if let Some(OpenOffer {
            state: OfferState::Waiting(old),
            ..
        }) = self.offer.take()
        {
            let _ = old.events.send(PairEvent::Failed(pair::PairFailure::Local(
                "a newer pairing offer replaced this one".into(),
            )));
        }
        self.wait_for_joiner(offer, Vec::new());
        Ok(())
    }

    /// Opens the door for `offer`'s joiner and advertises its nameplate on the LAN.
    pub(super) fn wait_for_joiner(&mut self, offer: Box<Offer>, voided: Vec<u16>) {
        let nameplate = offer.code.nameplate();
        if let Some(discovery) = &mut self.discovery
            && let Err(e) = discovery.advertise_pairing(nameplate, Ports::of(&self.listen))
        {
            tracing::warn!(error = %e, "cannot advertise the pairing offer on the LAN");
        }
        self.offer = Some(OpenOffer {
            nameplate,
            deadline: tokio::time::Instant::from_std(offer.deadline),
            state: OfferState::Waiting(offer),
            voided,
            withdrawn: false,
        });
        self.swarm.behaviour_mut().gate.allow_guests(true);
        self.publish_offer();
        tracing::info!(nameplate, "pairing offer open");
    }

    /// An attempt on the offer ended: a new member, the offer over, or its code voided and
    /// the offer waiting again under a fresh one.
    pub(super) fn attempt_ended(&mut self, joiner: PeerId, attempt: pair::Attempt) {
        if let Some(open) = &mut self.offer
            && matches!(open.state, OfferState::Running)
        {
            open.state = OfferState::Taken;
        }
        match attempt {
            pair::Attempt::Void(mut offer, why) => {
                // Whoever failed pays a new handshake for another try.
                if !self.members.contains_key(&joiner) {
                    self.swarm.behaviour_mut().gate.close_peer(joiner);
                }
                let (voided, withdrawn) = self
                    .offer
                    .take()
                    .map(|open| {
                        let mut v = open.voided;
                        v.push(open.nameplate);
                        (v, open.withdrawn)
                    })
                    .unwrap_or_default();
                // A fresh nameplate, never one already voided (that would turn the real
                // joiner away as "used").
                let mut renewed = offer.renew();
                for _ in 0..8 {
                    if renewed.is_err() || !voided.contains(&offer.code.nameplate()) {
                        break;
                    }
                    renewed = offer.renew();
                }
                match renewed {
                    _ if withdrawn => {
                        let _ = offer
                            .events
                            .send(PairEvent::Failed(pair::PairFailure::Local(
                                "the offer was withdrawn".into(),
                            )));
                        self.close_offer();
                    }
                    // Someone keeps trying: past a few voided codes the offer ends, so
                    // guesses per offer stay few (each one a full handshake).
                    _ if voided.len() > MAX_VOIDED => {
                        let _ = offer.events.send(PairEvent::Failed(pair::PairFailure::Local(
                            format!("{MAX_VOIDED} codes were tried and voided; someone may be guessing. Run `handoff peer add` again")
                        )));
                        self.close_offer();
                    }
                    Ok(()) => {
                        tracing::warn!(failure = %why, "a pairing attempt failed; the offer goes on under a fresh code");
                        let link = offer.long_code.then(|| {
                            offer
                                .code
                                .link(&self.shared.peer_id, &self.listen)
                                .to_string()
                        });
                        let _ = offer.events.send(PairEvent::Renewed {
                            code: offer.code.clone(),
                            link,
                            why,
                        });
                        self.wait_for_joiner(offer, voided);
                    }
                    Err(e) => {
                        let _ = offer
                            .events
                            .send(PairEvent::Failed(pair::PairFailure::Local(e.to_string())));
                        self.close_offer();
                    }
                }
            }
            pair::Attempt::Paired => {
                // (The offer stays recorded as taken until a new one replaces it.)
                self.close_offer();
                // The new member's record is a change to offer everyone else.
                self.shared.nudge.send_modify(|n| *n = n.wrapping_add(1));
            }
            pair::Attempt::Failed => self.close_offer(),
        }
        self.refresh();
    }

    /// Stops accepting guests and withdraws the advertisement; the offer's record stays.
    pub(super) fn close_offer(&mut self) {
        self.publish_offer();
        if let Some(discovery) = &mut self.discovery {
            discovery.withdraw_pairing();
        }
        self.swarm.behaviour_mut().gate.allow_guests(false);
    }

    pub(super) fn expire_offer(&mut self) {
        let Some(open) = &mut self.offer else { return };
        open.deadline = far_future();
        if matches!(open.state, OfferState::Waiting(_))
            && let OfferState::Waiting(offer) =
                std::mem::replace(&mut open.state, OfferState::Expired)
        {
            tracing::info!("pairing offer expired");
            let _ = offer
                .events
                .send(PairEvent::Failed(pair::PairFailure::Expired));
        }
        // A pairing still running ends by the same deadline, and closes the door then.
        if !self.pairing_runs() {
            self.close_offer();
        }
    }

    pub(super) fn on_pair_stream(&mut self, peer: PeerId, stream: Stream, hello: Hello) {
        let why = match &mut self.offer {
            None => PairRefusal::NoSession,
            Some(open) if open.voided.contains(&hello.nameplate) => PairRefusal::Used,
            Some(open) if open.nameplate != hello.nameplate => PairRefusal::NoSession,
            Some(open) => match std::mem::replace(&mut open.state, OfferState::Running) {
                OfferState::Waiting(offer) => {
                    self.publish_offer();
                    // The code is being tried: nobody else should be pointed at it.
                    if let Some(discovery) = &mut self.discovery {
                        discovery.withdraw_pairing();
                    }
                    let host = self.host.clone();
                    let me = self.shared.peer_id;
                    let internal = self.internal_tx.clone();
                    tokio::spawn(async move {
                        let attempt = pair::serve(stream, hello, *offer, host, me, peer).await;
                        let _ = internal.send(Internal::OfferEnded(peer, attempt));
                    });
                    return;
                }
                running @ OfferState::Running => {
                    open.state = running;
                    PairRefusal::Used
                }
                OfferState::Taken => {
                    open.state = OfferState::Taken;
                    PairRefusal::Used
                }
                OfferState::Expired => {
                    open.state = OfferState::Expired;
                    PairRefusal::Expired
                }
            },
        };
        tokio::spawn(pair::refuse(stream, why));
    }
}
