//! The daemon's half of an open pairing offer: which control connection follows it, and the
//! two channels it follows it by (the steps `peer add` shows, the user's answer to the words).
//!
//! The offer itself (its code, its door in the gate, its one attempt, its expiry) has one
//! owner, the mesh driver (`net/driver/offer.rs`). This only lets the one client that opened
//! it follow and answer it, and tells the daemon when that client goes (the offer is then
//! withdrawn: nobody would see who joins). One lock guards it all.

use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::mpsc;

use crate::net::{PairEvent, PairTicket};
use crate::ops::OpError;
use crate::ops::error::Exit;
use crate::ops::views::PairStep;

/// The offer a client follows, if one is open.
#[derive(Debug, Default)]
pub(super) struct Pairing {
    followed: Mutex<Option<Followed>>,
}

#[derive(Debug)]
struct Followed {
    /// The control connection that opened it.
    client: u64,
    /// Its steps; out of the slot while that client waits for the next one.
    events: Option<mpsc::UnboundedReceiver<PairEvent>>,
    confirm: mpsc::UnboundedSender<bool>,
}

impl Pairing {
    fn lock(&self) -> MutexGuard<'_, Option<Followed>> {
        self.followed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `client` opened `ticket`'s offer and follows it from now on (an offer it replaced is
    /// followed no more).
    pub(super) fn follow(&self, client: u64, ticket: PairTicket) {
        *self.lock() = Some(Followed {
            client,
            events: Some(ticket.events),
            confirm: ticket.confirm,
        });
    }

    /// The offer's next step, for the client that follows it. After the last one (paired or
    /// failed) nothing is followed any more.
    pub(super) async fn next(&self, client: u64) -> Result<PairStep, OpError> {
        let mut events = {
            let mut followed = self.lock();
            match followed.as_mut() {
                Some(f) if f.client == client => f.events.take().ok_or_else(|| {
                    OpError::Busy("this client already waits for the pairing's next step".into())
                })?,
                _ => return Err(OpError::Usage("no pairing offer is open".into())),
            }
        };
        let step = match events.recv().await {
            Some(event) => PairStep::from(event),
            None => PairStep::Failed {
                exit: Exit::Network as u8,
                message: "the pairing offer ended".into(),
            },
        };
        let goes_on = matches!(step, PairStep::Sas { .. } | PairStep::Renewed { .. });
        let mut followed = self.lock();
        // Still the offer this client follows (a newer one may have replaced it meanwhile).
        if let Some(f) = followed.as_mut()
            && f.client == client
            && f.events.is_none()
        {
            if goes_on {
                f.events = Some(events);
            } else {
                *followed = None;
            }
        }
        Ok(step)
    }

    /// The user's answer to the words, from the client that follows the offer.
    pub(super) fn confirm(&self, client: u64, accept: bool) -> Result<(), OpError> {
        match self.lock().as_ref() {
            Some(f) if f.client == client && f.confirm.send(accept).is_ok() => Ok(()),
            _ => Err(OpError::Usage("no pairing is waiting for an answer".into())),
        }
    }

    /// `client` went away: whether it followed an offer (which the caller then withdraws).
    pub(super) fn client_gone(&self, client: u64) -> bool {
        let mut followed = self.lock();
        let owned = followed.as_ref().is_some_and(|f| f.client == client);
        if owned {
            *followed = None;
        }
        owned
    }
}
